#!/usr/bin/env bash
# Reproduce the demo model bundle (models/cem-demo) from synthetic phantoms.
#
# Seeded end to end: the phantoms (seed 7 for training, 99 for the held-out
# evaluation set), the patient-level split, the detector's initialisation,
# augmentation and data order, the radiomics model's CV folds. On a 2-core
# CPU (otherwise idle) the detector takes about 250 s per epoch at short side
# 320 (6130 s for the 24 epochs of 0.2.0), then radiomics, packing and the
# held-out evaluation about 12 min; a GPU makes the detector minutes in all.
# The same seed and thread count give the same weights on CPU in our tiny test
# runs; two full runs on fresh machines came close, not bit-identical (the
# hard-example stage below: validation loss 0.1255 and 0.1261 after epoch 1,
# best 0.1142 in both), so a rebuild's figures are close to the shipped ones.
#
#   scripts/train_demo_bundle.sh [WORK_DIR]     # default .cache/demo-training
#   HARD_EXAMPLES=1 scripts/train_demo_bundle.sh [WORK_DIR]
#
# HARD_EXAMPLES=1 adds the experimental second stage (not shipped: on the
# held-out set it was not better than 0.2.0, see docs/RESULTS.md and docs/models/cem-demo.md):
# 10 epochs of hard-example fine-tuning from the float16 weights of stage 1
# (as the bundle ships them), the training images that stage 1 misses a lesion
# on drawn 4x as often, cosine decay from 1e-4, then the keep score chosen on
# the validation patients by Dice alone, as in that experiment (--choose-keep-score
# --operating-rule dice; the sweep now measures on the source images, the experiment's
# did on the network input); about 40 min on the 2-core CPU.
#
# Resumable: re-running continues each detector stage from its last epoch.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-.cache/demo-training}
CEM=.venv/bin/cem-node
TRAIN=synthetic:200:7:small
HELD_OUT=synthetic:24:99:small
EPOCHS=${EPOCHS:-24}
VERSION=0.2.1  # 0.2: phantom version 2 (visible non-enhancing cysts); .1: operating point
mkdir -p "$WORK"

resume=()
[ -f "$WORK/run/detector/last.json" ] && resume=(--resume)
"$CEM" train detector --dataset "$TRAIN" --out "$WORK/run/detector" --preset fast \
    --short-side 320 --lr 0.0005 --lr-schedule cosine --epochs "$EPOCHS" --seed 7 --threads 2 \
    --cache-dir "$WORK/datasets" --no-progress "${resume[@]}"

# the operating point, chosen on the validation patients (most lesion images found, then the
# highest mean Dice per image): the keep score and the network input's short side for
# inference, up to the fast preset's 512. The detector was trained at 320 (for speed) with
# scale augmentation; a larger input enlarges the small lesions (the smallest tenth are about
# 11 px across on these phantoms) on the backbone's coarse feature maps. Shipped 0.2.1 is
# 0.2.0's detector (this script's stage 1, float16 as shipped) with this step; 2.5 min on
# the 2-core CPU.
"$CEM" train operating-point --detector "$WORK/run/detector" \
    --choose-short-side 320,352,384,416,448,512 --threads 2 --cache-dir "$WORK/datasets" \
    --no-progress

RUN="$WORK/run"
if [ "${HARD_EXAMPLES:-0}" = 1 ]; then
    VERSION=0.3.0-experimental
    RUN="$WORK/tuned"
    mkdir -p "$RUN"
    .venv/bin/python - "$WORK/run/detector/best.safetensors" "$WORK/best-float16.safetensors" <<'PY'
import sys

from safetensors.torch import load_file, save_file

state = load_file(sys.argv[1])
save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, sys.argv[2])
PY
    resume=()
    [ -f "$RUN/detector/last.json" ] && resume=(--resume)
    "$CEM" train detector --dataset "$TRAIN" --out "$RUN/detector" --preset fast \
        --short-side 320 --lr 0.0001 --lr-schedule cosine --epochs 10 --seed 7 --threads 2 \
        --pretrained "$WORK/best-float16.safetensors" --hard-example-weight 4 \
        --choose-keep-score --operating-rule dice --cache-dir "$WORK/datasets" --no-progress \
        "${resume[@]}"
fi

# the paper's pyradiomics settings with at most 64 grey levels in a lesion (the bin width
# widens where needed): GLCM's MCC (eigenvalues of an N x N matrix, per filter) then costs
# 0.7 s per lesion instead of 15 s with 256 levels on 12-14-bit phantoms
"$CEM" train radiomics --dataset "$TRAIN" --detector "$RUN/detector" --masks manual \
    --radiomics-settings scripts/demo_radiomics_settings.json \
    --out "$RUN/radiomics" --grid fast --seed 7 --workers 2 --cache-dir "$WORK/datasets" \
    --no-progress

rm -rf "$WORK/models"
"$CEM" models import "$RUN" --models-dir "$WORK/models" --name cem-demo --version "$VERSION" \
    --description "Demo bundle: MobileNetV3-lite Mask R-CNN + radiomics XGBoost, synthetic phantoms" \
    --weights-dtype float16

"$CEM" evaluate --model cem-demo --models-dir "$WORK/models" --dataset "$HELD_OUT" --split all \
    --out "$WORK/evaluation" --seed 99 --radiomics-workers 2

# pack again with the held-out metrics in the manifest
rm -rf "$WORK/models"
"$CEM" models import "$RUN" --models-dir "$WORK/models" --name cem-demo --version "$VERSION" \
    --description "Demo bundle: MobileNetV3-lite Mask R-CNN + radiomics XGBoost, synthetic phantoms" \
    --weights-dtype float16 --metrics "$WORK/evaluation/report.json"
# the held-out figures by lesion subgroup (enhancing or not, benign or malignant)
HELD_OUT_DIR=$(.venv/bin/python -c "from cem_node.training.datasets import default_cache_dir, \
parse_spec; print(default_cache_dir() / parse_spec('$HELD_OUT').cache_name)")
.venv/bin/python scripts/synthetic_subgroups.py "$WORK/evaluation" "$HELD_OUT_DIR" \
    | tee "$WORK/evaluation/subgroups.md"
echo "bundle: $WORK/models/cem-demo (copy to models/ to ship it); report: $WORK/evaluation/report.md"
