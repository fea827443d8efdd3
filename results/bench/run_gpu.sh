#!/usr/bin/env bash
# The GPU figures in results/bench/: the CUDA tests, then `pdrop-eval bench` (bf16) at the real 7B shapes,
# a randomly initialised decoder built on the GPU (timing does not depend on weight values).
# LLaVA-NeXT-7B (Vicuna): d=4096, m=11008, 32 heads, N=2880 image tokens (anyres 2x2 + base, newlines
# included) and ~60 text tokens; LLaVA-1.5-7B: the same decoder, N=576.
# Usage: bash results/bench/run_gpu.sh OUT_DIR   (writes env.txt, pytest-cuda.log, bench.jsonl)
set -uo pipefail
out=${1:?usage: run_gpu.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
} | tee "$out/env.txt"
python3 -m pytest -q tests/test_cuda.py -p no:cacheprovider 2>&1 | tee "$out/pytest-cuda.log"
seven_b=(--hidden-size 4096 --intermediate-size 11008 --num-layers 32 --num-heads 32 --num-kv-heads 32 --text-tokens 60)
run() {  # NAME ARGS...: one bench, appended to bench.jsonl as {"name": ..., result}
    local name=$1; shift
    echo "== $name: $*"
    python3 -m pdrop_eval.cli bench --device cuda --dtype bfloat16 --warmup 3 --repeats 10 "${seven_b[@]}" "$@" --json \
        | python3 -c "import json, sys; r = json.load(sys.stdin); r['name'] = '$name'; print(json.dumps(r))" | tee -a "$out/bench.jsonl"
}
run next7b-prefill-b1-sdpa --image-tokens 2880 --batch-size 1 --attn-implementation sdpa
run next7b-prefill-b8-sdpa --image-tokens 2880 --batch-size 8 --attn-implementation sdpa
run next7b-prefill-b1-eager --image-tokens 2880 --batch-size 1 --attn-implementation eager
run next7b-train-b1-sdpa --image-tokens 2880 --batch-size 1 --attn-implementation sdpa --train --answer-tokens 8
run llava15-7b-prefill-b1-sdpa --image-tokens 576 --batch-size 1 --attn-implementation sdpa
run llava15-7b-prefill-b8-sdpa --image-tokens 576 --batch-size 8 --attn-implementation sdpa
run next7b-prefill-b8-eager --image-tokens 2880 --batch-size 8 --attn-implementation eager
