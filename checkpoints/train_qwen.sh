#!/usr/bin/env bash
# Reproduces the shipped tiny Qwen2.5-VL (pdrop_eval/data/checkpoints/pdrop-synth-qwen2_5_vl-vanilla) on CPU.
# Not from scratch (train.sh's route, about 100 minutes for LLaVA-NeXT): the untrained synth Qwen2.5-VL
# gets the decoder of the shipped vanilla-trained LLaVA-NeXT, and its vision path (patch embedding and
# merger) is fitted to give each cell LLaVA-NeXT's feature of that cell (checkpoints/qwen_warm_start.py);
# `pdrop-eval train` then teaches Qwen's chat format and 3-D image positions, without dropping, on one
# CPU thread, in three runs (each continues the last with a fresh cosine schedule, as the shipped model
# was made: each time the last had ended short of the target).
# Usage: bash checkpoints/train_qwen.sh [WORK_DIR]   (from the repository root; timings: checkpoints/README.md)
set -euo pipefail
work=${1:-build/qwen-synth-training}
mkdir -p "$work"
pdrop-eval make-synth --out-dir "$work/data" --train-images 16000
pdrop-eval make-tiny-model "$work/init" --arch qwen2_5_vl --preset synth --seed 1 --force
python checkpoints/qwen_warm_start.py "$work/init" "$work/warm" --align-data "$work/data/train.parquet" --align-images 800
pdrop-eval train --pretrained "$work/warm" --data "$work/data/train.parquet" --output-dir "$work/first" \
    --max-steps 600 --batch-size 16 --lr 5e-4 --warmup 30 --scheduler cosine --seed 1 --logging-steps 50 --threads 1
pdrop-eval train --pretrained "$work/first" --data "$work/data/train.parquet" --output-dir "$work/second" \
    --max-steps 700 --batch-size 16 --lr 5e-4 --warmup 20 --scheduler cosine --seed 2 --logging-steps 50 --threads 1
pdrop-eval train --pretrained "$work/second" --data "$work/data/train.parquet" --output-dir pdrop_eval/data/checkpoints/pdrop-synth-qwen2_5_vl-vanilla \
    --max-steps 400 --batch-size 16 --lr 3e-4 --warmup 20 --scheduler cosine --seed 3 --logging-steps 50 --save-dtype float16 --threads 1
