"""Write the [validation] table of the research bundle from its evaluation report.

Every figure comes from ``report.json`` (``cem-node evaluate``) as computed
on the stated patients; nothing is typed by hand. The classification is
stated as not validated: the real images available here are all malignant.

Run: ``.venv/bin/python scripts/research_validation.py REPORT.json OUT.toml``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import tomli_w


def _metric(report: dict[str, Any], *path: str) -> dict[str, Any]:
    value: Any = report
    for key in path:
        value = value[key]
    return value


def _percent(metric: dict[str, Any]) -> str:
    low, high = metric["ci"]
    return f"{100 * metric['value']:.0f}% [{100 * low:.0f}, {100 * high:.0f}]"


def _plain(metric: dict[str, Any]) -> str:
    low, high = metric["ci"]
    return f"{metric['value']:.2f} [{low:.2f}, {high:.2f}]"


def validation_table(report: dict[str, Any]) -> dict[str, Any]:
    """The [validation] fields, the figures taken from ``report``."""
    table2 = report["table2"]
    loose, strict = table2["iou>=0.1"], table2["iou>=0.5"]
    data = report.get("data", {})
    counts = data.get("counts", {})
    where = (
        f"{counts.get('patients', '?')} patients, {counts.get('images', '?')} images, "
        f"{counts.get('lesions', '?')} outlined lesions"
    )
    detection = (
        "Detection and segmentation measured on real CEM (CDD-CESM, 8-bit 512-px images, "
        f"{data.get('split', '?')} patients of {data.get('dataset', '?')}, never trained on "
        "but used to choose the epoch and the keep score, so optimistic; no separate test "
        f"set: {where}): per-image sensitivity {_percent(loose['per_image']['sensitivity'])} "
        f"(mask IoU >= 0.1) and {_percent(strict['per_image']['sensitivity'])} (IoU >= 0.5); "
        f"per-lesion sensitivity {_percent(loose['per_lesion']['sensitivity'])} (IoU >= 0.1); "
        f"mean Dice per image {_plain(loose['per_image']['mean_dice'])}, of hit lesions "
        f"{_plain(loose['per_lesion']['mean_dice_hit'])}; false positives per image "
        f"{_plain(report['false_positives']['iou>=0.1']['false_positives_per_image'])} "
        "(95% bootstrap intervals)."
    )
    classification = (
        "Benign-vs-malignant classification NOT validated: the radiomics model was trained on "
        "synthetic phantoms and no real benign lesion was available; the real images are all "
        "malignant. Read every malignancy score as unvalidated."
    )
    return {
        "detection": detection,
        "classification_validated": False,
        "classification": classification,
        "score_caveat": "score not validated",
    }


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    report = json.loads(Path(sys.argv[1]).read_text())
    table = validation_table(report)
    Path(sys.argv[2]).write_text(tomli_w.dumps({"validation": table}))
    print(table["detection"])


if __name__ == "__main__":
    main()
