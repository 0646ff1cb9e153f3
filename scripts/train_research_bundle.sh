#!/usr/bin/env bash
# Build the research bundle (models/cem-cdd-research): a detector trained on real CEM.
#
# Data: the 216 real 512-px low-energy / recombined pairs of ../shared/data/cdd-cesm-512
# (119 patients, all malignant; CDD-CESM, CC BY 4.0: Khaled R. et al., TCIA 2021,
# DOI 10.7937/29kw-ae92, and Scientific Data 9, 2022, DOI 10.1038/s41597-022-01238-0).
# The patient split is seeded (seed 11: 175 training and 41 validation images of 24
# patients); the validation patients are never trained on, and every figure of the
# bundle's [validation] and [metrics] is computed on them by `cem-node evaluate`.
#
# Steps (seeded end to end; 38 min of detector training on a 2-core CPU at about
# 100 s per epoch, then about 12 min for the rest):
#   1. the detector: the small backbone at the images' own resolution (short side 512),
#      22 epochs with a cosine decay, initialised from the demo bundle's detector
#      (no ImageNet weights offline), the paper's augmentation (flip, shear, scale);
#      the epoch with the lowest validation loss is kept;
#   2. the operating point (keep score, inference short side) on the validation patients;
#   3. a radiomics classifier on synthetic phantoms with this detector: no real benign
#      lesion is available, so the bundle states that its classification is NOT
#      validated, and every score it produces says so;
#   4. the evaluation on the validation patients, then the bundle packed with those
#      figures in [metrics] and [validation] (scripts/research_validation.py).
#
#   scripts/train_research_bundle.sh [WORK_DIR]     # default .cache/cdd
#
# Resumable: re-running continues the detector from its last epoch.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-.cache/cdd}
CEM=.venv/bin/cem-node
DATA=cdd-cesm:../shared/data/cdd-cesm-512
PHANTOMS=synthetic:80:7:small
EPOCHS=${EPOCHS:-22}
NAME=cem-cdd-research
VERSION=0.1.0
RUN="$WORK/run"
mkdir -p "$RUN"

resume=()
[ -f "$RUN/detector/last.json" ] && resume=(--resume)
"$CEM" train detector --dataset "$DATA" --out "$RUN/detector" --preset fast \
    --short-side 512 --lr 0.0005 --lr-schedule cosine --epochs "$EPOCHS" --seed 11 --threads 2 \
    --pretrained models/cem-demo/detector.safetensors --cache-dir "$WORK/datasets" \
    --no-progress "${resume[@]}"

"$CEM" train operating-point --detector "$RUN/detector" --choose-short-side 512,576,640 \
    --threads 2 --cache-dir "$WORK/datasets" --no-progress

# the radiomics trains on every phantom patient: the detector's split.json names real
# images, so the phantoms get their own split file (the project's split, all in 'train')
.venv/bin/python - "$PHANTOMS" "$WORK/datasets" "$WORK/phantom_split.json" <<'PY'
import json, sys
from pathlib import Path
from cem_node.training.datasets import load_dataset, split
spec, cache, out = sys.argv[1:]
record = split(load_dataset(spec, cache_dir=Path(cache)), (1.0, 0.0)).as_dict()
Path(out).write_text(json.dumps({"datasets": [spec], **record}, indent=1))
PY
"$CEM" train radiomics --dataset "$PHANTOMS" --detector "$RUN/detector" --masks manual \
    --split-file "$WORK/phantom_split.json" \
    --radiomics-settings scripts/demo_radiomics_settings.json --out "$RUN/radiomics" \
    --grid fast --seed 7 --workers 2 --cache-dir "$WORK/datasets" --no-progress

DESCRIPTION="Research bundle: MobileNetV3-lite Mask R-CNN trained on real CEM (CDD-CESM, \
CC BY 4.0, Khaled et al. 2021/2022); radiomics XGBoost on synthetic phantoms (classification \
not validated)"
rm -rf "$WORK/models"
"$CEM" models import "$RUN" --models-dir "$WORK/models" --name "$NAME" --version "$VERSION" \
    --description "$DESCRIPTION" --weights-dtype float16

"$CEM" evaluate --model "$NAME" --models-dir "$WORK/models" --dataset "$DATA" \
    --split-file "$RUN/detector/split.json" --split val --out "$WORK/evaluation" \
    --radiomics-workers 2

.venv/bin/python scripts/research_validation.py "$WORK/evaluation/report.json" \
    "$WORK/validation.toml"
rm -rf "$WORK/models"
"$CEM" models import "$RUN" --models-dir "$WORK/models" --name "$NAME" --version "$VERSION" \
    --description "$DESCRIPTION" --weights-dtype float16 \
    --metrics "$WORK/evaluation/report.json" --validation "$WORK/validation.toml"
echo "bundle: $WORK/models/$NAME (copy to models/ to ship it); report: $WORK/evaluation/report.md"
