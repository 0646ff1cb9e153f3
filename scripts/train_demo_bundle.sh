#!/usr/bin/env bash
# Reproduce the demo model bundle (models/cem-demo) from synthetic phantoms.
#
# Seeded end to end: the phantoms (seed 7 for training, 99 for the held-out
# evaluation set), the patient-level split, the detector's initialisation,
# augmentation and data order, the radiomics model's CV folds. On a 2-core
# CPU (otherwise idle) the detector takes about 2 min per epoch at short side
# 320, the whole script under an hour; a GPU makes the detector minutes in
# all. The same seed and thread count give the same weights on CPU (--threads 2).
#
#   scripts/train_demo_bundle.sh [WORK_DIR]     # default .cache/demo-training
#
# Resumable: re-running continues the detector from its last epoch.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-.cache/demo-training}
CEM=.venv/bin/cem-node
TRAIN=synthetic:200:7:small
HELD_OUT=synthetic:24:99:small
EPOCHS=${EPOCHS:-24}
VERSION=0.2.0  # 0.2: phantom version 2 (visible non-enhancing cysts)
mkdir -p "$WORK"

resume=()
[ -f "$WORK/run/detector/last.json" ] && resume=(--resume)
"$CEM" train detector --dataset "$TRAIN" --out "$WORK/run/detector" --preset fast \
    --short-side 320 --lr 0.0005 --lr-schedule cosine --epochs "$EPOCHS" --seed 7 --threads 2 \
    --cache-dir "$WORK/datasets" --no-progress "${resume[@]}"

# the paper's pyradiomics settings with at most 64 grey levels in a lesion (the bin width
# widens where needed): GLCM's MCC (eigenvalues of an N x N matrix, per filter) then costs
# 0.7 s per lesion instead of 15 s with 256 levels on 12-14-bit phantoms
"$CEM" train radiomics --dataset "$TRAIN" --detector "$WORK/run/detector" --masks manual \
    --radiomics-settings scripts/demo_radiomics_settings.json \
    --out "$WORK/run/radiomics" --grid fast --seed 7 --workers 2 --cache-dir "$WORK/datasets" \
    --no-progress

rm -rf "$WORK/models"
"$CEM" models import "$WORK/run" --models-dir "$WORK/models" --name cem-demo --version "$VERSION" \
    --description "Demo bundle: MobileNetV3-lite Mask R-CNN + radiomics XGBoost, synthetic phantoms" \
    --weights-dtype float16

"$CEM" evaluate --model cem-demo --models-dir "$WORK/models" --dataset "$HELD_OUT" --split all \
    --out "$WORK/evaluation" --seed 99 --radiomics-workers 2

# pack again with the held-out metrics in the manifest
rm -rf "$WORK/models"
"$CEM" models import "$WORK/run" --models-dir "$WORK/models" --name cem-demo --version "$VERSION" \
    --description "Demo bundle: MobileNetV3-lite Mask R-CNN + radiomics XGBoost, synthetic phantoms" \
    --weights-dtype float16 --metrics "$WORK/evaluation/report.json"
# the held-out figures by lesion subgroup (enhancing or not, benign or malignant)
HELD_OUT_DIR=$(.venv/bin/python -c "from cem_node.training.datasets import default_cache_dir, \
parse_spec; print(default_cache_dir() / parse_spec('$HELD_OUT').cache_name)")
.venv/bin/python scripts/synthetic_subgroups.py "$WORK/evaluation" "$HELD_OUT_DIR" \
    | tee "$WORK/evaluation/subgroups.md"
echo "bundle: $WORK/models/cem-demo (copy to models/ to ship it); report: $WORK/evaluation/report.md"
