#!/usr/bin/env bash
# Reproduces the two shipped checkpoints (pdrop_eval/data/checkpoints/: pdrop-synth-vanilla, pdrop-synth-pdrop)
# from scratch on CPU.
# Stage 1 (shared, as LLaVA's stages share their start): the untrained synth LLaVA-NeXT learns to read
# pdrop_synth on its curriculum-ordered train split. Stage 2 fine-tunes that one model twice, once
# without dropping and once with PyramidDrop λ=0.5 at layers 8/16/24 (the paper's training setting),
# side by side with one CPU thread each, so that their step times compare like for like. Stage 1 uses
# one thread too, as the shipped run did: the thread count can change the order of float sums, and so
# the trained model.
# Usage: bash checkpoints/train.sh [WORK_DIR]   (from the repository root; timings: checkpoints/README.md)
set -euo pipefail
work=${1:-build/synth-training}
mkdir -p "$work"
pdrop-eval make-synth --out-dir "$work/data" --train-images 72000
pdrop-eval make-tiny-model "$work/init" --arch llava_next --preset synth --seed 1 --force
pdrop-eval train --pretrained "$work/init" --data "$work/data/train.parquet" --output-dir "$work/stage1" \
    --max-steps 4500 --batch-size 16 --lr 1e-3 --warmup 100 --scheduler constant_with_warmup --sequential --logging-steps 50 --threads 1
pids=()
for variant in vanilla pdrop; do
    drop=""
    if [ "$variant" = pdrop ]; then drop="layer_list=8;16;24,lambda=0.5"; fi
    pdrop-eval train --pretrained "$work/stage1" --data "$work/data/train.parquet" --output-dir "pdrop_eval/data/checkpoints/pdrop-synth-$variant" \
        --drop "$drop" --max-steps 6000 --batch-size 16 --lr 5e-4 --warmup 50 --scheduler cosine --seed 1 \
        --logging-steps 50 --save-dtype float16 --threads 1 > "$work/stage2-$variant.log" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done  # fails if either run failed
