"""Your own studies as training samples: the ``manifest:CSV`` SPEC of
:func:`cem_node.training.datasets.load_dataset` (its module docstring lists the columns).

Masks may be raster images, NIfTI files or DICOM SEG objects; rows naming the same
(low_energy, recombined) pair form one sample.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cem_node.training.datasets import (
    _RASTER_SUFFIXES,
    _SEVERITY,
    DatasetError,
    DatasetSpec,
    ImageLabel,
    Lesion,
    LoadedSample,
    Sample,
    TrainingDataset,
    _lesion_label,
    _mask_from_raster,
    _raster_size,
    _read_image,
    _require,
)

__all__ = ["manifest_dataset"]

_MANIFEST_REQUIRED = ("patient_id", "low_energy", "recombined", "label")


def manifest_dataset(spec: DatasetSpec) -> TrainingDataset:
    """The samples of a ``manifest:CSV`` SPEC (files are checked; pixels are read later)."""
    table = spec.path
    assert table is not None
    if not table.is_file():
        raise DatasetError(f"manifest CSV not found: {table}")
    base = table.parent
    with table.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip().lower() for h in reader.fieldnames or []]
        missing = [c for c in _MANIFEST_REQUIRED if c not in header]
        if missing:
            raise DatasetError(
                f"{table}: missing column(s) {', '.join(missing)} "
                f"(required: {', '.join(_MANIFEST_REQUIRED)})"
            )
        rows = [
            {str(k).strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
            for row in reader
        ]
    if not rows:
        raise DatasetError(f"{table}: no rows")
    groups: dict[tuple[Path, Path], list[tuple[int, dict[str, str]]]] = defaultdict(list)
    for number, row in enumerate(rows, start=1):
        where = f"{table.name} row {number}"
        label = _lesion_label(row["label"])
        if label is None:
            raise DatasetError(
                f"{where}: unknown label {row['label']!r} (use benign, malignant or normal)"
            )
        if not row["patient_id"]:
            raise DatasetError(f"{where}: empty patient_id")
        for column in ("low_energy", "recombined"):
            if not row[column]:
                raise DatasetError(f"{where}: empty {column}")
        le = _require(base / row["low_energy"], f"{where}: low-energy image")
        rc = _require(base / row["recombined"], f"{where}: recombined image")
        mask = row.get("mask", "")
        if label == "normal" and mask:
            raise DatasetError(f"{where}: label normal with a mask ({mask}); leave mask empty")
        if label != "normal" and not mask:
            raise DatasetError(f"{where}: a {label} lesion needs a mask")
        if mask:
            _require(base / mask, f"{where}: mask")
        groups[(le, rc)].append((number, row))
    samples = []
    for (le, rc), members in groups.items():
        samples.append(_manifest_sample(table, le, rc, members))
    keys: dict[str, int] = {}
    for sample in samples:
        if sample.key in keys:
            raise DatasetError(
                f"{table}: two image pairs share patient, study, laterality and view ({sample.key})"
            )
        keys[sample.key] = 1
    return TrainingDataset(name=spec.text, samples=samples)


def _header(path: Path) -> Any | None:
    if path.suffix.lower() in _RASTER_SUFFIXES:
        return None
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError) as exc:
        raise DatasetError(f"cannot read DICOM {path}: {exc}") from None


def _image_shape(path: Path, ds: Any | None) -> tuple[int, int]:
    if ds is None:
        return _raster_size(path)
    try:
        return int(ds.Rows), int(ds.Columns)
    except AttributeError:
        raise DatasetError(f"{path}: DICOM header without Rows / Columns") from None


def _manifest_sample(
    table: Path, le: Path, rc: Path, members: list[tuple[int, dict[str, str]]]
) -> Sample:
    from cem_node.dicom.selection import image_laterality, image_view
    from cem_node.pipeline.pixels import _spacing

    number, first = members[0]
    where = f"{table.name} row {number}"
    le_ds, rc_ds = _header(le), _header(rc)
    header = rc_ds if rc_ds is not None else le_ds
    lat = (first.get("laterality") or "").upper() or (
        image_laterality(header) if header is not None else None
    )
    view = (first.get("view") or "").upper() or (image_view(header) if header is not None else None)
    if lat not in ("L", "R"):
        raise DatasetError(
            f"{where}: laterality {lat or '(none)'!r}: give L or R in the laterality column"
        )
    if not view:
        raise DatasetError(f"{where}: no view: give CC or MLO in the view column")
    le_shape, rc_shape = _image_shape(le, le_ds), _image_shape(rc, rc_ds)
    if le_shape != rc_shape:
        raise DatasetError(
            f"{where}: low-energy image {le.name} {le_shape} and recombined image "
            f"{rc.name} {rc_shape} differ in shape"
        )
    lesions: list[tuple[Path, str, str, int | None, str]] = []
    labels: list[ImageLabel] = []
    for row_number, row in members:
        label = _lesion_label(row["label"])
        assert label is not None
        labels.append(label)
        if label == "normal":
            continue
        mask = table.parent / row["mask"]
        segment = row.get("segment") or ""
        if segment and not segment.isdigit():
            raise DatasetError(
                f"{table.name} row {row_number}: segment {segment!r} is not a number"
            )
        mask_shape = _mask_shape(mask)
        if mask_shape is not None and mask_shape != rc_shape:
            raise DatasetError(
                f"{table.name} row {row_number}: mask {mask.name} has shape {mask_shape}, "
                f"the image {rc.name} {rc_shape}"
            )
        lesions.append(
            (
                mask,
                label,
                row.get("lesion_id") or f"row{row_number}",
                int(segment) if segment else None,
                row["label"],
            )
        )
    patient = first["patient_id"]
    study = first.get("study_id") or patient
    spacing = _spacing(header) if header is not None else None
    return Sample(
        key=f"manifest:{patient}:{study}:{lat}{view}",
        patient_id=patient,
        study_id=study,
        laterality=lat,
        view=view,
        label=max(labels, key=_SEVERITY.__getitem__),
        pixel_spacing_mm=spacing,
        source=f"{table.name} row {number}: {le.name} / {rc.name}",
        loader=_manifest_loader(le, rc, lesions, table.name),
    )


def _mask_shape(path: Path) -> tuple[int, int] | None:
    """(rows, columns) of a mask file from its header, None when it is not cheap to know."""
    name = path.name.lower()
    if path.suffix.lower() in _RASTER_SUFFIXES:
        return _raster_size(path)
    if name.endswith((".nii", ".nii.gz")):
        return None
    ds = _header(path)
    return _image_shape(path, ds)


def _read_mask(path: Path, segment: int | None, image_shape: tuple[int, int]) -> list[np.ndarray]:
    name = path.name.lower()
    if path.suffix.lower() in _RASTER_SUFFIXES:
        return [_mask_from_raster(path)]
    if name.endswith((".nii", ".nii.gz")):
        return [_read_nifti(path, image_shape)]
    return _read_seg(path, segment)


def _read_nifti(path: Path, image_shape: tuple[int, int]) -> np.ndarray:
    try:
        import nibabel
    except ImportError:
        raise DatasetError(
            f"mask {path.name} is NIfTI: reading it needs nibabel (pip install nibabel)"
        ) from None
    try:
        data = np.asarray(nibabel.load(str(path)).dataobj)
    except Exception as exc:  # nibabel raises several types
        raise DatasetError(f"cannot read NIfTI mask {path}: {exc}") from None
    data = np.squeeze(data)
    if data.ndim != 2:
        raise DatasetError(f"NIfTI mask {path.name}: expected one 2-D slice, got {data.shape}")
    mask = data != 0
    if mask.shape == tuple(image_shape[::-1]):
        return mask.T  # NIfTI voxel order: x (column) first
    return mask


def _read_seg(path: Path, segment: int | None) -> list[np.ndarray]:
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # not DICOM, truncated ...
        raise DatasetError(f"cannot read mask {path}: {exc}") from None
    if str(ds.get("SOPClassUID", "")) != "1.2.840.10008.5.1.4.1.1.66.4":
        raise DatasetError(f"mask {path.name} is a DICOM file but not a Segmentation (SEG) object")
    try:
        frames = np.asarray(ds.pixel_array)
    except Exception as exc:
        raise DatasetError(f"cannot decode the SEG {path}: {exc}") from None
    if frames.ndim == 2:
        frames = frames[None]
    numbers = []
    for item in ds.get("PerFrameFunctionalGroupsSequence") or []:
        ident = item.get("SegmentIdentificationSequence")
        numbers.append(int(ident[0].ReferencedSegmentNumber) if ident else 1)
    if len(numbers) != frames.shape[0]:
        numbers = [1] * frames.shape[0]
    fractional = str(ds.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL"
    top = float(ds.get("MaximumFractionalValue", 255) or 255)
    per_segment: dict[int, np.ndarray] = {}
    for number, frame in zip(numbers, frames, strict=True):
        on = frame >= 0.5 * top if fractional else frame != 0
        per_segment[number] = per_segment.get(number, np.zeros_like(on)) | on
    if segment is not None:
        if segment not in per_segment:
            raise DatasetError(
                f"SEG {path.name} has no segment {segment} "
                f"(segments: {', '.join(map(str, sorted(per_segment)))})"
            )
        return [per_segment[segment]]
    return [per_segment[n] for n in sorted(per_segment) if per_segment[n].any()]


def _manifest_loader(
    le: Path,
    rc: Path,
    lesions: list[tuple[Path, str, str, int | None, str]],
    table_name: str,
) -> Callable[[], LoadedSample]:
    def load() -> LoadedSample:
        low, rec = _read_image(le), _read_image(rc)
        out = []
        for path, label, lesion_id, segment, raw in lesions:
            masks = _read_mask(path, segment, rec.shape)
            for i, mask in enumerate(masks):
                if mask.shape != rec.shape:
                    raise DatasetError(
                        f"{table_name}: mask {path.name} has shape {mask.shape}, "
                        f"the image {rc.name} {rec.shape}"
                    )
                name = lesion_id if len(masks) == 1 else f"{lesion_id}#{i + 1}"
                out.append(Lesion(mask, label, raw, name))  # type: ignore[arg-type]
        return LoadedSample(low, rec, tuple(out))

    return load
