#!/usr/bin/env bash
# The GPU figures in results/bench/: the CUDA tests, then `pdrop-eval bench` (bf16) at the real 7B shapes,
# a randomly initialised decoder built on the GPU (timing does not depend on weight values).
# LLaVA-NeXT-7B (Vicuna): d=4096, m=11008, 32 heads, N=2880 image tokens (anyres 2x2 + base, newlines
# included) and ~60 text tokens; LLaVA-1.5-7B: the same decoder, N=576.
# Usage: bash experiments/run_gpu.sh OUT_DIR [all|prefill|generate]
#   prefill: env.txt, pytest-cuda.log, bench.jsonl (prefill and training step); generate: generate.jsonl
set -uo pipefail
out=${1:?usage: run_gpu.sh OUT_DIR [all|prefill|generate]}
part=${2:-all}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
seven_b=(--hidden-size 4096 --intermediate-size 11008 --num-layers 32 --num-heads 32 --num-kv-heads 32 --text-tokens 60)
run() {  # FILE NAME ARGS...: one bench, appended to FILE as {"name": NAME, result}
    local file=$1 name=$2; shift 2
    echo "== $name: $*"
    python3 -m pdrop_eval.cli bench --device cuda --dtype bfloat16 "${seven_b[@]}" "$@" --json \
        | python3 -c "import json, sys; r = json.load(sys.stdin); r['name'] = '$name'; print(json.dumps(r))" | tee -a "$out/$file"
}
if [ "$part" = all ] || [ "$part" = prefill ]; then
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
      python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
    } | tee "$out/env.txt"
    python3 -m pytest -q tests/test_cuda.py -p no:cacheprovider 2>&1 | tee "$out/pytest-cuda.log"
    prefill=(--warmup 3 --repeats 10)
    run bench.jsonl next7b-prefill-b1-sdpa "${prefill[@]}" --image-tokens 2880 --batch-size 1 --attn-implementation sdpa
    run bench.jsonl next7b-prefill-b8-sdpa "${prefill[@]}" --image-tokens 2880 --batch-size 8 --attn-implementation sdpa
    run bench.jsonl next7b-prefill-b1-eager "${prefill[@]}" --image-tokens 2880 --batch-size 1 --attn-implementation eager
    run bench.jsonl next7b-train-b1-sdpa "${prefill[@]}" --image-tokens 2880 --batch-size 1 --attn-implementation sdpa --train --answer-tokens 8
    run bench.jsonl llava15-7b-prefill-b1-sdpa "${prefill[@]}" --image-tokens 576 --batch-size 1 --attn-implementation sdpa
    run bench.jsonl llava15-7b-prefill-b8-sdpa "${prefill[@]}" --image-tokens 576 --batch-size 8 --attn-implementation sdpa
    run bench.jsonl next7b-prefill-b8-eager "${prefill[@]}" --image-tokens 2880 --batch-size 8 --attn-implementation eager
fi
if [ "$part" = all ] || [ "$part" = generate ]; then
    # 32 new tokens: the prefill, then 31 cached decoding steps over each method's pruned KV cache
    generate=(--warmup 2 --repeats 5 --generate-tokens 32 --attn-implementation sdpa)
    run generate.jsonl next7b-generate32-b1-sdpa "${generate[@]}" --image-tokens 2880 --batch-size 1
    run generate.jsonl next7b-generate32-b8-sdpa "${generate[@]}" --image-tokens 2880 --batch-size 8
    run generate.jsonl llava15-7b-generate32-b1-sdpa "${generate[@]}" --image-tokens 576 --batch-size 1
    run generate.jsonl llava15-7b-generate32-b8-sdpa "${generate[@]}" --image-tokens 576 --batch-size 8
fi
