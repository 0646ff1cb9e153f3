"""Wrap real CDD-CESM image pairs as a CEM DICOM study, with their lesion masks.

The 512-px subset of CDD-CESM (``../shared/data/cdd-cesm-512``: 8-bit JPEG
low-energy (DM) and recombined (CM) pairs, ``pairs.csv`` with one row per
patient / side / view) is read with the training loader
(:func:`cem_node.training.datasets.load_dataset`, ``cdd-cesm:PATH``), so the
pixels and lesion masks are exactly the ones training and evaluation see.
Each pair of one patient becomes two Digital Mammography X-Ray images (For
Presentation) in one study, with the GE SenoBright header style of the phantom
writer (:func:`cem_node.synthetic.dicom_writer.build_mg_dataset`, vendor
``ge``): a low-energy series and a recombined series, the recombined image
referencing its low-energy image, LE and RC of a view sharing a Frame of
Reference.

What is real and what is not:

* Pixels: real. The 8-bit values ``v`` (0-255) are stored as ``16 * v`` with
  Bits Stored 12 (0-4080): lossless (``v = stored // 16``), monotonic and
  exactly linear, so the node's percentile normalisation sees the same image
  as training on the JPEGs. The JPEGs themselves were lossy: Lossy Image
  Compression is ``01`` (ISO_10918_1) with the JPEG's own ratio (its 8-bit
  raw size over its file size); a SEG of a lossy image needs that ratio.
* Orientation: CDD-CESM stores left breasts with the chest wall at column 0
  and right breasts with it at the last column, the writer's convention, so
  the pixels are written as they are and Patient Orientation holds.
* Pixel spacing: assumed. The 512 px images are the originals padded to a
  square and resized, and the original sizes are not in the subset. A
  full-field detector (24 x 30 cm class) has a long side of about 300 mm, so
  :data:`ASSUMED_PIXEL_SPACING_MM` = 0.6 mm (300 mm / 512 px, rounded) is
  written as Imager Pixel Spacing; sizes in mm the node reports from these
  files are approximate (about +-20 %).
* Everything else is nominal: the patient's name, birth date and age are not
  known (Patient's Birth Date empty, no Patient's Age), the dates and times are
  a fixed nominal day, the technique (kVp, filters, mAs, doses, thickness)
  is a typical SenoBright examination's, not the real exposure, and the header
  style is GE's whichever of the dataset's two units took the image. Image
  Comments say so on every image.
* UIDs are deterministic: derived from the patient id (and side, view, kind),
  so the same patient always gives the same study, series and image UIDs.

The Patient ID is ``CDD-P<id>`` (e.g. ``CDD-P2``).

Data attribution (CDD-CESM is licensed CC BY 4.0; TCIA's data usage policy
asks for these citations):

* Khaled R. et al. Categorized Digital Database for Low energy and Subtracted
  Contrast Enhanced Spectral Mammography images [Dataset]. The Cancer Imaging
  Archive, 2021. DOI 10.7937/29kw-ae92
* Khaled R. et al. Categorized contrast enhanced mammography dataset for
  diagnostic and artificial intelligence research. Scientific Data 9, 2022.
  DOI 10.1038/s41597-022-01238-0
* Clark K. et al. The Cancer Imaging Archive (TCIA). J Digit Imaging 26(6),
  2013. DOI 10.1007/s10278-013-9622-7

The written files are for testing the node: never copy them (or the data)
into the project repository.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom import Dataset
from pydicom.uid import generate_uid

from cem_node.synthetic.dicom_writer import (
    AcquisitionInfo,
    PatientInfo,
    StudyInfo,
    TransferSyntaxName,
    build_mg_dataset,
    write_dataset,
)
from cem_node.synthetic.study import UID_PREFIX

if TYPE_CHECKING:  # the training package imports nothing heavy by itself, but keep it lazy
    from cem_node.training.datasets import Sample

__all__ = [
    "ASSUMED_PIXEL_SPACING_MM",
    "BITS_STORED",
    "CDD_ATTRIBUTION",
    "RealPairError",
    "RealPairStudy",
    "cdd_patient_id",
    "cdd_patients",
    "write_cdd_study",
]

#: Imager Pixel Spacing written for the 512 px images (assumed, see the module notes).
ASSUMED_PIXEL_SPACING_MM = 0.6
#: Bits Stored of the written images; 8-bit values are multiplied by :data:`_SCALE`.
BITS_STORED = 12
_SCALE = 1 << (BITS_STORED - 8)
#: Nominal day and time of every wrapped study (the dataset gives none).
_STUDY_DATE, _STUDY_TIME = "20210101", "090000"
_VIEW_ORDER = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))
_PATIENT_RE = re.compile(r"^(?:CDD-)?P?(\d+)$", re.IGNORECASE)
CDD_ATTRIBUTION = (
    "CDD-CESM (Khaled R. et al., TCIA 2021, DOI 10.7937/29kw-ae92; Sci Data 9, 2022, "
    "DOI 10.1038/s41597-022-01238-0), CC BY 4.0"
)


class RealPairError(ValueError):
    """The CDD-CESM folder, patient or view asked for cannot be wrapped."""


@dataclass(frozen=True)
class RealPairStudy:
    """A wrapped patient: the files written and the ground truth.

    Attributes
    ----------
    study_dir
        The folder holding the files.
    files
        The DICOM files, LE then RC of each view, in acquisition order.
    patient_id
        The Patient ID written (``CDD-P<id>``).
    study_instance_uid
        The Study Instance UID.
    masks
        ``(laterality, view) -> bool array`` of the recombined image's shape:
        the union of the view's outlined lesions (the loader's lesions: the
        recombined mask thresholded at > 127, regions under 16 px dropped; the
        low-energy mask where the recombined one is empty). All False for a
        view without an outline.
    recombined_uids
        ``(laterality, view) -> SOP Instance UID`` of each recombined image.
    """

    study_dir: Path
    files: tuple[Path, ...]
    patient_id: str
    study_instance_uid: str
    masks: dict[tuple[str, str], np.ndarray]
    recombined_uids: dict[tuple[str, str], str]


def cdd_patient_id(patient: str | int) -> str:
    """The dataset's patient name, ``P<id>``, of ``"P2"``, ``"p2"``, ``"CDD-P2"``, ``"2"`` or 2.

    Raises
    ------
    RealPairError
        When `patient` is not of one of those forms.
    """
    match = _PATIENT_RE.match(str(patient).strip())
    if match is None:
        raise RealPairError(
            f"patient must be a CDD-CESM patient such as P2 (or 2, CDD-P2), got {patient!r}"
        )
    return f"P{int(match.group(1))}"


def cdd_patients(cdd_dir: Path | str) -> dict[str, list[tuple[str, str]]]:
    """The patients of a CDD-CESM 512-px folder and their (laterality, view) pairs.

    Raises
    ------
    RealPairError
        When the folder or its ``pairs.csv`` is missing, or the loader rejects it.
    """
    by_patient: dict[str, list[tuple[str, str]]] = {}
    for sample in _load(Path(cdd_dir)):
        by_patient.setdefault(sample.patient_id, []).append((sample.laterality, sample.view))
    return by_patient


def _load(root: Path) -> list[Sample]:
    from cem_node.training.datasets import DatasetError, load_dataset

    if not root.is_dir():
        raise RealPairError(f"CDD-CESM folder not found: {root}")
    if not (root / "pairs.csv").is_file():
        raise RealPairError(
            f"{root} holds no pairs.csv: not the CDD-CESM 512-px subset "
            "(see ../shared/data/cdd-cesm-512/README.md)"
        )
    try:
        return list(load_dataset(f"cdd-cesm:{root}"))
    except DatasetError as exc:
        raise RealPairError(str(exc)) from None


def _jpegs(root: Path, patient: str) -> dict[tuple[str, str, str], Path]:
    """``(laterality, view, kind) -> JPEG`` of a patient's rows in ``pairs.csv``."""
    with (root / "pairs.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["patient"].strip() == patient]
    return {
        (r["side"].strip().upper(), r["view"].strip().upper(), kind): root / r[kind]
        for r in rows
        for kind in ("low_energy", "recombined")
    }


def _uid(patient: str, *parts: object) -> str:
    return str(
        generate_uid(
            prefix=UID_PREFIX, entropy_srcs=["cem-node-cdd-cesm", patient, *map(str, parts)]
        )
    )


def _stored(image: np.ndarray, source: str) -> np.ndarray:
    """8-bit values (float32 from the loader) -> uint16 ``16 * v``, checked to be exact."""
    values = np.rint(image)
    if (
        image.ndim != 2
        or values.min() < 0
        or values.max() > 255
        or not np.array_equal(values, image)
    ):
        raise RealPairError(
            f"{source}: expected a 2-D 8-bit image, got {image.shape} {image.dtype}"
        )
    return (values.astype(np.uint16) * _SCALE).astype("<u2")


def _window(stored: np.ndarray) -> tuple[float, float]:
    """A LINEAR window over the breast's values (the pixels above the dark background)."""
    inside = stored[stored > 16 * _SCALE]
    low, high = np.percentile(inside if inside.size else stored, [0.5, 99.9])
    return float(round((low + high) / 2)), float(round(max(high - low, 16) * 1.1))


def _acquisition(
    patient: str, lat: str, view: str, kind: str, instance: int, stored: np.ndarray, le_uid: str
) -> AcquisitionInfo:
    """Nominal SenoBright technique: Rh-filtered ~29 kVp low energy, Cu-filtered 47 kVp high."""
    recombined = kind == "recombined"
    center, width = _window(stored)
    order = _VIEW_ORDER.index((lat, view))
    series = 2 if recombined else 1
    return AcquisitionInfo(
        laterality=lat,  # type: ignore[arg-type]
        view=view,  # type: ignore[arg-type]
        kind=kind,  # type: ignore[arg-type]
        series_instance_uid=_uid(patient, "series", series),
        series_number=series,
        series_description="CESM Recombined" if recombined else "CESM Low Energy",
        sop_instance_uid=_uid(patient, "image", lat, view, kind),
        instance_number=instance,
        acquisition_date=_STUDY_DATE,
        acquisition_time=f"09{2 + order:02d}{15 if recombined else 0:02d}",
        kvp=47.0 if recombined else 29.0,
        anode="RHODIUM",
        filter_material="COPPER" if recombined else "RHODIUM",
        exposure_mas=50.0 if recombined else 90.0,
        exposure_time_ms=700 if recombined else 1200,
        tube_current_ma=75,
        compressed_thickness_mm=55.0,
        compression_force_n=100.0,
        entrance_dose_mgy=5.6,
        organ_dose_mgy=2.1 if recombined else 1.8,
        positioner_primary_angle_deg=0.0 if view == "CC" else (45.0 if lat == "R" else -45.0),
        window_center=center,
        window_width=width,
        source_sop_instance_uids=(le_uid,) if recombined else (),
        frame_of_reference_uid=_uid(patient, "frame", lat, view),
    )


def _select(
    samples: list[Sample], patient: str, views: Iterable[tuple[str, str]] | None, root: Path
) -> list[Sample]:
    mine = {(s.laterality, s.view): s for s in samples if s.patient_id == patient}
    if not mine:
        known = sorted({s.patient_id for s in samples}, key=lambda p: int(p[1:]))
        raise RealPairError(
            f"patient {patient} is not in {root / 'pairs.csv'} ({len(known)} patients: "
            f"{', '.join(known[:8])}{', ...' if len(known) > 8 else ''})"
        )
    if views is None:
        wanted = list(mine)
    else:
        wanted = [(str(lat).upper(), str(view).upper()) for lat, view in views]
        missing = [w for w in wanted if w not in mine]
        if missing or not wanted:
            have = ", ".join(f"{lat} {view}" for lat, view in sorted(mine))
            raise RealPairError(
                f"patient {patient} has no "
                f"{', '.join(f'{lat} {view}' for lat, view in missing) or 'view asked for'} "
                f"in {root / 'pairs.csv'} (it has: {have})"
            )
    return [mine[v] for v in _VIEW_ORDER if v in set(wanted)]


def write_cdd_study(
    cdd_dir: Path | str,
    patient: str | int,
    out_dir: Path | str,
    *,
    views: Iterable[tuple[str, str]] | None = None,
    pixel_spacing_mm: float = ASSUMED_PIXEL_SPACING_MM,
    transfer_syntax: TransferSyntaxName = "explicit",
) -> RealPairStudy:
    """Write one CDD-CESM patient's pairs as one CEM DICOM study.

    Parameters
    ----------
    cdd_dir
        The CDD-CESM 512-px folder (with ``pairs.csv``).
    patient
        The patient: ``"P2"``, ``2`` or ``"CDD-P2"``.
    out_dir
        Folder to write ``LE_<L|R><CC|MLO>.dcm`` and ``RC_...dcm`` into
        (created; files of the same names are replaced).
    views
        (laterality, view) pairs to write, e.g. ``[("L", "CC")]``; all of
        the patient's rows in ``pairs.csv`` when None.
    pixel_spacing_mm
        Imager Pixel Spacing to write (assumed; see the module notes).
    transfer_syntax
        ``explicit`` or a lossless compressed syntax (``jpeg2000``, ``jpegls``, ``rle``).

    Returns
    -------
    RealPairStudy
        The files, the UIDs and the ground-truth mask of each view.

    Raises
    ------
    RealPairError
        When the folder or ``pairs.csv`` is missing or rejected by the loader,
        the patient is not in it, or a view asked for is not the patient's.
    """
    root, out = Path(cdd_dir), Path(out_dir)
    name = cdd_patient_id(patient)
    chosen = _select(_load(root), name, views, root)
    out.mkdir(parents=True, exist_ok=True)
    patient_info = PatientInfo(
        patient_id=f"CDD-{name}",
        patient_name=f"CDD-CESM^{name}",
        birth_date="19700101",  # placeholder for the writer's checks; emptied below
        age_years=51,
    )
    study = StudyInfo(
        study_instance_uid=_uid(name, "study"),
        study_id=name,
        accession_number=f"CDD{name}"[:16],
        study_date=_STUDY_DATE,
        study_time=_STUDY_TIME,
        description="CESM (CDD-CESM, TCIA)",
    )
    jpegs = _jpegs(root, name)
    files: list[Path] = []
    masks: dict[tuple[str, str], np.ndarray] = {}
    rc_uids: dict[tuple[str, str], str] = {}
    for sample in chosen:
        loaded = sample.load()
        key = (sample.laterality, sample.view)
        le_uid = _uid(name, "image", *key, "low_energy")
        for kind, image in (("low_energy", loaded.low_energy), ("recombined", loaded.recombined)):
            stored = _stored(image, sample.source)
            acq = _acquisition(name, *key, kind, len(files) + 1, stored, le_uid)
            ds = build_mg_dataset(
                stored,
                patient=patient_info,
                study=study,
                acquisition=acq,
                pixel_spacing_mm=pixel_spacing_mm,
                bits_stored=BITS_STORED,
                vendor="ge",
            )
            _mark_real(ds, jpegs[(*key, kind)], root, kind, pixel_spacing_mm)
            path = out / f"{'RC' if kind == 'recombined' else 'LE'}_{key[0]}{key[1]}.dcm"
            write_dataset(ds, path, transfer_syntax)
            files.append(path)
        rc_uids[key] = _uid(name, "image", *key, "recombined")
        union = np.zeros(loaded.recombined.shape, dtype=bool)
        for lesion in loaded.lesions:
            union |= lesion.mask
        masks[key] = union
    return RealPairStudy(out, tuple(files), f"CDD-{name}", study.study_instance_uid, masks, rc_uids)


def _mark_real(ds: Dataset, jpeg: Path, root: Path, kind: str, spacing: float) -> None:
    """Replace the phantom writer's statements by what this image really is."""
    what = "recombined (CM)" if kind == "recombined" else "low-energy (DM)"
    note = (
        f"Real {what} image of {CDD_ATTRIBUTION}, wrapped as DICOM by cem-node for testing: "
        f"8-bit 512 px JPEG ({root.name}/{jpeg.relative_to(root)}) stored as 16 x value; "
        f"pixel spacing {spacing:g} mm assumed; dates, technique and equipment nominal. "
        "Not for clinical use."
    )
    ds.ImageComments = note
    if kind == "recombined":
        ds.DerivationDescription = note[:1024]
    ds.InstitutionName = "CDD-CESM (TCIA)"
    ds.PatientBirthDate = ""  # unknown (Type 2)
    del ds.PatientAge
    del ds.PatientWeight
    # the dataset's JPEGs were lossy: say so, with this JPEG's ratio (8-bit raw size / file
    # size), which derived objects copy (a SEG of a lossy source needs the ratio)
    ds.LossyImageCompression = "01"
    ratio = ds.Rows * ds.Columns / max(jpeg.stat().st_size, 1)
    ds.LossyImageCompressionRatio = f"{ratio:.2f}"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
