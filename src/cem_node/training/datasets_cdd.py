"""The CDD-CESM dataset (TCIA) as training samples, in either of its layouts.

The ``cdd-cesm:PATH`` SPEC of :func:`cem_node.training.datasets.load_dataset`
(its module docstring describes both layouts): the 512-px subset
(``pairs.csv`` with 8-bit images and masks) and the official full-resolution
layout (JPEG images, the VIA outline CSV and the label workbook).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cem_node.training.datasets import (
    _SEVERITY,
    CDD_CESM_LABELS_XLSX,
    CDD_CESM_OUTLINES_CSV,
    MIN_COMPONENT_PIXELS,
    DatasetError,
    DatasetSpec,
    ImageLabel,
    Lesion,
    LoadedSample,
    Sample,
    TrainingDataset,
    _components,
    _lesion_label,
    _mask_from_raster,
    _read_image,
    _require,
    rasterise_via_shape,
)

__all__ = ["cdd_cesm_dataset"]


def cdd_cesm_dataset(spec: DatasetSpec) -> TrainingDataset:
    """The samples of a ``cdd-cesm:PATH`` SPEC, in whichever layout PATH holds."""
    root = spec.path
    assert root is not None
    if not root.is_dir():
        raise DatasetError(f"CDD-CESM folder not found: {root}")
    if (root / "pairs.csv").is_file():
        return _cdd_cesm_512(spec, root)
    outlines = _find_one(root, CDD_CESM_OUTLINES_CSV, "*segmentation*.csv")
    labels = _find_one(root, CDD_CESM_LABELS_XLSX, "*annotation*.xlsx")
    if outlines is None or labels is None:
        raise DatasetError(
            f"{root} is not a CDD-CESM folder: expected pairs.csv (the 512-px subset) or "
            f"{CDD_CESM_OUTLINES_CSV} and {CDD_CESM_LABELS_XLSX!r} (the official layout)"
        )
    return _cdd_cesm_full(spec, root, outlines, labels)


def _find_one(root: Path, name: str, pattern: str) -> Path | None:
    if (root / name).is_file():
        return root / name
    found = sorted(root.glob(pattern)) or sorted(root.glob(f"*/{pattern}"))
    return found[0] if found else None


def _cdd_cesm_512(spec: DatasetSpec, root: Path) -> TrainingDataset:
    table = root / "pairs.csv"
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    needed = {"patient", "side", "view", "low_energy", "recombined", "pathology"}
    missing = needed - set(rows[0] if rows else {})
    if missing:
        raise DatasetError(f"{table}: missing column(s) {', '.join(sorted(missing))}")
    samples = []
    for number, row in enumerate(rows, start=2):
        label = _lesion_label(row["pathology"])
        if label is None:
            raise DatasetError(
                f"{table} line {number}: unknown pathology {row['pathology']!r} "
                "(Benign, Malignant or Normal)"
            )
        le = _require(root / row["low_energy"], f"{table} line {number}: low-energy image")
        rc = _require(root / row["recombined"], f"{table} line {number}: recombined image")
        masks = [
            root / row[c]
            for c in ("recombined_mask", "low_energy_mask")
            if (row.get(c) or "").strip()
        ]
        if label != "normal":
            if not masks:
                raise DatasetError(f"{table} line {number}: a {label} image without a mask")
            for mask in masks:
                _require(mask, f"{table} line {number}: mask")
        patient = row["patient"].strip()
        lat, view = row["side"].strip().upper(), row["view"].strip().upper()
        samples.append(
            Sample(
                key=f"cdd-cesm:{patient}:{patient}:{lat}{view}",
                patient_id=patient,
                study_id=patient,
                laterality=lat,
                view=view,
                label=label,
                pixel_spacing_mm=None,
                source=f"{root.name}/{row['recombined']}",
                loader=_cdd512_loader(le, rc, masks, label, row["pathology"].strip()),
            )
        )
    return TrainingDataset(name=spec.text, samples=samples)


def _cdd512_loader(
    le: Path, rc: Path, masks: list[Path], label: ImageLabel, pathology: str
) -> Callable[[], LoadedSample]:
    def load() -> LoadedSample:
        lesions: list[Lesion] = []
        if label != "normal":
            for path in masks:  # the recombined mask first; the low-energy one if it is empty
                mask = _mask_from_raster(path)
                regions = _components(mask, MIN_COMPONENT_PIXELS)
                if regions:
                    lesions = [
                        Lesion(m, label, pathology, f"{path.stem}#{i + 1}")
                        for i, m in enumerate(regions)
                    ]
                    break
        return LoadedSample(_read_image(le), _read_image(rc), tuple(lesions))

    return load


_CDD_NAME = re.compile(r"^P(\d+)_([LR])_(DM|CM)_(CC|MLO)$", re.IGNORECASE)


def _read_xlsx_rows(path: Path) -> list[dict[str, Any]]:
    try:
        import openpyxl
    except ImportError:
        raise DatasetError(
            f"reading {path.name} needs openpyxl: pip install 'cem-node[ml]' (or openpyxl)"
        ) from None
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises several types for a bad file
        raise DatasetError(f"cannot read {path}: {exc}") from None
    try:
        sheet = book["all"] if "all" in book.sheetnames else book.worksheets[0]
        rows = sheet.iter_rows(values_only=True)
        header = [str(h or "").strip() for h in next(rows, ())]
        return [dict(zip(header, r, strict=False)) for r in rows if any(v is not None for v in r)]
    finally:
        book.close()


def _column(header: Iterable[str], *prefixes: str) -> str | None:
    for name in header:
        low = name.lower()
        if any(low.startswith(p) for p in prefixes):
            return name
    return None


def _cdd_cesm_full(spec: DatasetSpec, root: Path, outlines: Path, labels: Path) -> TrainingDataset:
    image_labels = _cdd_image_labels(labels)
    shapes = _read_via(outlines)
    files = {
        Path(name).stem.upper(): Path(folder) / name
        for folder, _, names in os.walk(root, followlinks=True)
        for name in names
        if Path(name).suffix.lower() in (".jpg", ".jpeg")
    }
    if not files:
        raise DatasetError(f"no CDD-CESM images (*.jpg) under {root}")

    skipped: list[str] = []
    groups = _cdd_views(image_labels, labels.name, skipped)
    samples = []
    for (patient, lat, view), kinds in sorted(groups.items()):
        if "DM" not in kinds or "CM" not in kinds:
            have = next(iter(kinds.values()))
            skipped.append(f"{have}: no {'CM' if 'DM' in kinds else 'DM'} image of that view")
            continue
        paths = {}
        for kind, name in kinds.items():
            if name not in files:
                raise DatasetError(f"CDD-CESM image {name}.jpg (listed in {labels.name}) not found")
            paths[kind] = files[name]
        samples.append(
            _cdd_full_sample(
                (patient, lat, view), kinds, paths, image_labels, shapes, outlines.name
            )
        )
    return TrainingDataset(name=spec.text, samples=samples, skipped=skipped)


def _cdd_image_labels(labels: Path) -> dict[str, tuple[ImageLabel, str]]:
    """The label workbook: {image stem (upper case): (label, the workbook's word)}."""
    rows = _read_xlsx_rows(labels)
    header = list(rows[0]) if rows else []
    name_col = _column(header, "image_name", "image name")
    label_col = _column(header, "pathology")
    if name_col is None or label_col is None:
        raise DatasetError(
            f"{labels}: needs the columns Image_name and 'Pathology Classification/ Follow up'"
        )
    image_labels: dict[str, tuple[ImageLabel, str]] = {}
    for number, row in enumerate(rows, start=2):
        name = str(row.get(name_col) or "").strip()
        if not name:
            continue
        raw = str(row.get(label_col) or "").strip()
        label = _lesion_label(raw)
        if label is None:
            raise DatasetError(
                f"{labels.name} row {number} ({name}): unknown pathology {raw!r} "
                "(Benign, Malignant or Normal)"
            )
        image_labels[Path(name).stem.upper()] = (label, raw)
    return image_labels


def _cdd_views(
    image_labels: dict[str, tuple[ImageLabel, str]], labels_name: str, skipped: list[str]
) -> dict[tuple[str, str, str], dict[str, str]]:
    """The labelled images by (patient, laterality, view): {``DM`` / ``CM``: image stem};
    names that do not follow the dataset's pattern go to ``skipped``."""
    groups: dict[tuple[str, str, str], dict[str, str]] = defaultdict(dict)
    for name in sorted(image_labels):
        match = _CDD_NAME.match(name)
        if match is None:
            skipped.append(f"{labels_name}: image name {name!r} is not P<id>_<L|R>_<DM|CM>_<view>")
            continue
        pid, lat, kind, view = match.groups()
        groups[(f"P{int(pid)}", lat.upper(), view.upper())][kind.upper()] = name
    return groups


def _cdd_full_sample(
    where: tuple[str, str, str],
    kinds: dict[str, str],
    paths: dict[str, Path],
    image_labels: dict[str, tuple[ImageLabel, str]],
    shapes: dict[str, list[dict[str, Any]]],
    csv_name: str,
) -> Sample:
    """One breast and view: its lesions are the outlines of the recombined image when it is
    labelled Benign or Malignant and has outlines, else those of the low-energy image."""
    patient, lat, view = where
    chosen: tuple[str, ImageLabel, str] | None = None
    for kind in ("CM", "DM"):
        label, raw = image_labels[kinds[kind]]
        if label != "normal" and shapes.get(kinds[kind]):
            chosen = (kinds[kind], label, raw)
            break
    if chosen is not None:
        image_label: ImageLabel = chosen[1]
    else:
        image_label = max((image_labels[n][0] for n in kinds.values()), key=_SEVERITY.__getitem__)
    return Sample(
        key=f"cdd-cesm:{patient}:{patient}:{lat}{view}",
        patient_id=patient,
        study_id=patient,
        laterality=lat,
        view=view,
        label=image_label,
        pixel_spacing_mm=None,
        source=f"{paths['CM'].name} / {paths['DM'].name}",
        loader=_cdd_full_loader(
            paths["DM"],
            paths["CM"],
            (shapes[chosen[0]], chosen[0], chosen[1], chosen[2]) if chosen else None,
            csv_name,
        ),
    )


def _read_via(path: Path) -> dict[str, list[dict[str, Any]]]:
    """VIA CSV -> {image stem (upper case): [shape attributes]}."""
    shapes: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        file_col = next((c for c in reader.fieldnames or [] if c.lstrip("#") == "filename"), None)
        if file_col is None or "region_shape_attributes" not in (reader.fieldnames or []):
            raise DatasetError(
                f"{path}: not a VIA CSV (needs the columns filename and region_shape_attributes)"
            )
        for number, row in enumerate(reader, start=2):
            text = (row.get("region_shape_attributes") or "").strip()
            if not text or text == "{}":
                continue
            try:
                shape = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path.name} line {number}: bad region shape: {exc}") from None
            shapes[Path(row[file_col].strip()).stem.upper()].append(shape)
    return dict(shapes)


def _shape_extent(shape: dict[str, Any]) -> tuple[float, float] | None:
    """The largest (x, y) a VIA shape reaches, for the full-resolution check."""
    name = str(shape.get("name", "")).lower()
    if name in ("polygon", "polyline"):
        xs, ys = shape.get("all_points_x") or [0], shape.get("all_points_y") or [0]
        return float(max(xs)), float(max(ys))
    if name in ("ellipse", "circle", "point"):
        return float(shape.get("cx", 0)), float(shape.get("cy", 0))
    if name == "rect":
        return float(shape.get("x", 0)), float(shape.get("y", 0))
    return None


def _cdd_full_loader(
    le: Path,
    rc: Path,
    outlined: tuple[list[dict[str, Any]], str, ImageLabel, str] | None,
    csv_name: str,
) -> Callable[[], LoadedSample]:
    def load() -> LoadedSample:
        low, rec = _read_image(le), _read_image(rc)
        lesions: list[Lesion] = []
        if outlined is not None:
            shapes, image_name, label, raw = outlined
            rows, cols = rec.shape
            for i, shape in enumerate(shapes):
                extent = _shape_extent(shape)
                if extent is not None and (
                    extent[0] > cols * 1.02 + 10 or extent[1] > rows * 1.02 + 10
                ):
                    raise DatasetError(
                        f"{csv_name}: outline {i + 1} of {image_name} reaches "
                        f"({extent[0]:g}, {extent[1]:g}), outside the {cols} x {rows} image: "
                        "the outlines are in full-resolution pixels (use the original images)"
                    )
                mask = rasterise_via_shape(shape, (rows, cols))
                if mask is not None and mask.any():
                    lesions.append(Lesion(mask, label, raw, f"{image_name}#{i + 1}"))  # type: ignore[arg-type]
        return LoadedSample(low, rec, tuple(lesions))

    return load
