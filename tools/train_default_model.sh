#!/usr/bin/env bash
# Retrain the packaged default model from scratch, exactly as it was made (see docs/model-card.md).
# Takes about 85 minutes (one CPU core for stage 1, two for stage 2). Run from the repository root after `make venv`.
set -euo pipefail
BIN=${BIN:-.venv/bin}
WORK=${WORK:-build/default_model}
mkdir -p "$WORK"
N_TRAIN=500
EPOCHS=9
# 1. training data: 500 simulated galaxies (FITS + JPEG = 1000 images), seed 1000
$BIN/napari-clumps simulate "$WORK/data" --n $N_TRAIN --seed 1000
# 2. train convnext_pico from random initialisation (no Zoobot weights can be downloaded here)
$BIN/napari-clumps train --images "$WORK/data" --labels "$WORK/data/truth.csv" \
    --out "$WORK/trained.safetensors" --model zoobot-convnext_pico --backbone-weights none \
    --trainable-blocks -1 --epochs $EPOCHS --lr 5e-4 --val-fraction 0.1 --scale-jitter 0.15 --seed 0
# 2b. second stage (one session was too short for all epochs): resume from the first stage's
#     file at a lower peak rate, same data and validation split (same seed)
$BIN/napari-clumps train --images "$WORK/data" --labels "$WORK/data/truth.csv" \
    --out "$WORK/trained_stage2.safetensors" --model "$WORK/trained.safetensors" \
    --trainable-blocks -1 --epochs 4 --lr 2e-4 --val-fraction 0.1 --scale-jitter 0.15 --seed 0
# 3. calibration set (picks the score threshold) and held-out test set: seeds never used in training
$BIN/napari-clumps simulate "$WORK/calib" --n 100 --seed 5000
$BIN/napari-clumps simulate "$WORK/test" --n 200 --seed 424242
# 4. package (float16 weights, provenance, calibrated threshold) and evaluate on the test set
$BIN/python tools/package_model.py "$WORK/trained_stage2.safetensors" src/napari_clumps/models/default_clump_detector.safetensors \
    --calibration "$WORK/calib" --test "$WORK/test" --model-id default-v2 \
    --data "napari-clumps simulate --n $N_TRAIN --seed 1000 ($((2 * N_TRAIN)) images: FITS composites + JPEGs); default SimulationSettings; 10 % held out for validation"
