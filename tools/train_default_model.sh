#!/usr/bin/env bash
# Retrain the packaged default model from scratch, exactly as it was made (see docs/model-card.md).
# Takes about 2.5 hours (one CPU core for stages 1, 3 and 4, two for stage 2). Run from the repository root after `make venv`.
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
# 2c. third stage (validation F1 was still rising after stage 2): resume from stage 2's weights
#     as packaged in default-v2 (float16, cast back to float32 on loading), 8 epochs at peak lr
#     2e-4, same data and validation split; the file keeps the epoch with the best validation F1
$BIN/python -c "import sys; from napari_clumps.model import load_model, save_model; save_model(load_model(sys.argv[1]), sys.argv[2], half=True)" \
    "$WORK/trained_stage2.safetensors" "$WORK/stage2_float16.safetensors"
$BIN/napari-clumps train --images "$WORK/data" --labels "$WORK/data/truth.csv" \
    --out "$WORK/trained_stage3.safetensors" --model "$WORK/stage2_float16.safetensors" \
    --trainable-blocks -1 --epochs 8 --lr 2e-4 --val-fraction 0.1 --scale-jitter 0.15 --seed 0
# 2d. fourth stage (stage 3's last epochs were still improving): 4 epochs at peak lr 1e-4 from
#     stage 3's file (its best epoch, float32), same data and validation split
$BIN/napari-clumps train --images "$WORK/data" --labels "$WORK/data/truth.csv" \
    --out "$WORK/trained_stage4.safetensors" --model "$WORK/trained_stage3.safetensors" \
    --trainable-blocks -1 --epochs 3 --lr 1e-4 --val-fraction 0.1 --scale-jitter 0.15 --seed 0
# 3. calibration set (picks the score threshold) and held-out test set: seeds never used in training
$BIN/napari-clumps simulate "$WORK/calib" --n 100 --seed 5000
$BIN/napari-clumps simulate "$WORK/test" --n 200 --seed 424242
# 4. package (float16 weights, provenance, calibrated threshold) and evaluate on the test set
$BIN/python tools/package_model.py "$WORK/trained_stage4.safetensors" src/napari_clumps/models/default_clump_detector.safetensors \
    --calibration "$WORK/calib" --test "$WORK/test" --model-id default-v4 --rule balanced \
    --data "napari-clumps simulate --n $N_TRAIN --seed 1000 ($((2 * N_TRAIN)) images: FITS composites + JPEGs); default SimulationSettings; 10 % held out for validation"
# 5. a second held-out set, evaluated once at the packaged threshold (see docs/model-card.md)
$BIN/napari-clumps simulate "$WORK/fresh" --n 200 --seed 777777
$BIN/napari-clumps detect "$WORK/fresh" --out "$WORK/fresh_detections.csv" --score-threshold 0.05
THRESHOLD=$($BIN/python -c "from napari_clumps.model import get_detector; print(get_detector(None, 'cpu').score_threshold)")
$BIN/napari-clumps evaluate --truth "$WORK/fresh/truth.csv" --detections "$WORK/fresh_detections.csv" --score-threshold "$THRESHOLD"

# ---------------------------------------------------------------------------------------------
# default-v5: default-v4 fine-tuned with real clump-free galaxies as negatives (docs/model-card.md).
# Needs ../shared/data/real_galaxies (REAL_GALAXIES to change); about 25 min on 2 cores.
# The real-sky set is made with injected clumps too (the same command as the ablation in
# docs/benchmarks/real_data_ablation.md); default-v5 uses only its 400 untouched negatives,
# because the injected images lowered F1 on the real dev set in every arm of the ablation.
REAL_GALAXIES=${REAL_GALAXIES:-../shared/data/real_galaxies}
V5=$WORK/v5
# 6. data: 400 real GZ1 ellipticals (centre crops, no injection) + 250 simulated galaxies
#    (FITS + JPEG, 500 images) of the training seed
$BIN/python tools/make_real_training_set.py --data "$REAL_GALAXIES" --out "$V5/real" --n-injected 800 \
    --n-negatives 400 --seed 0 --jobs 2
$BIN/napari-clumps simulate "$V5/sim" --n 250 --seed 1000
# 7. fine-tune all layers from default-v4 as packaged (float16 weights, cast back to float32); the
#    negatives have no rows in the labels, so they train as images without clumps
$BIN/python -c "import sys; from napari_clumps.model import load_model, save_model; save_model(load_model(sys.argv[1]), sys.argv[2], half=True)" \
    "$WORK/trained_stage4.safetensors" "$WORK/stage4_float16.safetensors"
$BIN/napari-clumps train --images "$V5/sim" "$V5"/real/images/neg_*.jpg --labels "$V5/sim/truth.csv" \
    --out "$V5/trained_negatives.safetensors" --model "$WORK/stage4_float16.safetensors" \
    --trainable-blocks -1 --epochs 4 --lr 1e-4 --val-fraction 0.1 --scale-jitter 0.15 --seed 0
