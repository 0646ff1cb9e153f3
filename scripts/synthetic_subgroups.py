"""Identification sensitivity of an evaluation by lesion subgroup (synthetic datasets only).

``cem-node evaluate`` reports the paper's tables over all lesions. On synthetic
phantoms the ground truth also says how each lesion enhances, so the figures
can be split: a benign lesion that does not enhance ("none", a cyst seen on
the low-energy image only) is invisible on the recombined image and, in a
dense breast, on the low-energy image too.

    .venv/bin/python scripts/synthetic_subgroups.py EVAL_DIR DATASET_DIR

EVAL_DIR is the ``--out`` of ``cem-node evaluate`` (its cases.json);
DATASET_DIR the generated synthetic dataset (``~/.cache/cem-node/datasets/
synthetic-N-SEED-SIZE`` or the ``--cache-dir`` given). Prints a Markdown table.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

RULE = "iou>=0.1"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    cases = json.loads((Path(argv[0]) / "cases.json").read_text())
    attributes: dict[tuple[str, str], dict] = {}
    for path in sorted(Path(argv[1]).glob("study-*/ground_truth.json")):
        truth = json.loads(path.read_text())
        study_uid = truth["study"]["study_instance_uid"]
        for lesion in truth["lesions"]:
            attributes[(study_uid, lesion["lesion_id"])] = lesion
    lesions: dict[str, list[bool]] = defaultdict(list)
    images: dict[str, list[bool]] = defaultdict(list)
    for image in cases["images"]:
        study_uid = image["key"].split(":")[2]
        groups = set()
        for lesion in image["lesions"]:
            spec = attributes[(study_uid, lesion["lesion_id"])]
            group = "enhancing" if spec["enhancement"] != "none" else "not enhancing"
            hit = bool(lesion["hit"][RULE])
            lesions[group].append(hit)
            lesions[f"{spec['pathology']}, {group}"].append(hit)
            groups.add(group)
        if image["lesions"]:
            hit = any(lesion["hit"][RULE] for lesion in image["lesions"])
            images["all images with a lesion"].append(hit)
            if groups == {"enhancing"}:
                images["images whose lesions all enhance"].append(hit)
    print(f"| subgroup | identification sensitivity ({RULE}) |")
    print("| --- | --- |")
    for name, hits in [*sorted(lesions.items()), *images.items()]:
        level = "image" if name in images else "lesion"
        print(f"| {name} (per {level}) | {sum(hits)}/{len(hits)} = {sum(hits) / len(hits):.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
