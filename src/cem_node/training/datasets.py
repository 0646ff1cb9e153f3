"""Training datasets: CEM image pairs with lesion masks, named by a SPEC string.

A dataset is a list of :class:`Sample` objects, one per breast and view: a
low-energy (LE) / recombined (RC) pair with its lesions (a boolean mask on
the source image and a label, ``benign`` or ``malignant``). Pixels and masks
are read lazily, when a sample is loaded, so a dataset of thousands of
full-size images costs little memory until it is used.

SPEC strings (:func:`parse_spec`, :func:`load_dataset`):

``synthetic:N[:SEED[:SIZE]]``
    N synthetic studies from :mod:`cem_node.synthetic` (SEED 0, SIZE
    ``small`` by default; SIZE as ``cem-node synth --size``: ``full``,
    ``small`` or ``WxH``). They are generated once into
    ``<cache>/synthetic-N-SEED-SIZE/`` and reused afterwards. LE and RC are
    paired from the DICOM headers with the node's own rules
    (:func:`cem_node.dicom.selection.classify_image` /
    :func:`~cem_node.dicom.selection.pair_images`); lesions and their
    pathology come from ``ground_truth.json``.

``cdd-cesm:PATH``
    The public CDD-CESM dataset (TCIA), in either layout:

    * the 512-px subset: ``PATH/pairs.csv`` with ``images/`` and ``masks/``
      (8-bit JPEGs; masks thresholded at > 127). The recombined image's mask
      is used (the low-energy one when the recombined one is missing); each
      connected region of at least :data:`MIN_COMPONENT_PIXELS` pixels is one
      lesion, with the row's pathology;
    * the official full-resolution layout: the images anywhere under PATH
      (``P<id>_<L|R>_<DM|CM>_<CC|MLO>.jpg``), the VIA outline CSV
      ``Radiology_hand_drawn_segmentations_v2.csv`` (polygon, polyline,
      ellipse, circle and rect shapes; ``point`` shapes carry no outline and
      are ignored) and the label workbook ``Radiology manual
      annotations.xlsx`` (sheet ``all``, column ``Pathology Classification/
      Follow up``: Benign, Malignant or Normal; read with openpyxl). The
      outlines of the recombined (CM) image are used when that image is
      labelled Benign or Malignant and has outlines, else those of the
      low-energy (DM) image under the same condition; each outline is one
      lesion with the label of the image it was drawn on. Outlines on an
      image labelled Normal are ignored.

``manifest:CSV``
    Your own studies, listed in a CSV file (paths relative to the CSV's
    folder), one row per lesion, or one row with an empty ``mask`` for an
    image pair without lesions. Columns (header names, any order):

    ============ ========= ==============================================
    patient_id   required  the patient (splits keep a patient together)
    low_energy   required  the LE image: DICOM (or PNG / JPEG / TIFF)
    recombined   required  the RC image of the same breast and view
    label        required  ``benign``, ``malignant`` or ``normal``
    mask         optional  the lesion's mask: PNG / TIFF / BMP (non-zero
                           is the lesion), JPEG (> 127), NIfTI
                           ``.nii`` / ``.nii.gz`` (non-zero; needs nibabel)
                           or a DICOM SEG; empty for a ``normal`` row
    segment      optional  DICOM SEG segment number (empty: every segment
                           of the SEG is one lesion)
    study_id     optional  default: the patient_id
    laterality   optional  ``L`` / ``R``; default: from the DICOM header
    view         optional  ``CC`` / ``MLO``; default: from the DICOM header
    lesion_id    optional  a name for the lesion
    ============ ========= ==============================================

    Rows naming the same (low_energy, recombined) pair form one sample.
    NIfTI masks are taken in NIfTI's voxel order (x = column first) and
    transposed to (rows, columns); a mask stored as (rows, columns) is
    accepted when the image is not square.

:func:`split` divides a dataset by patient, reproducibly from a seed and
stratified by whether a patient has a malignant lesion.

Errors are :class:`DatasetError` (a :class:`ValueError`) with messages that
name the file, row or value at fault.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "CDD_CESM_LABELS_XLSX",
    "CDD_CESM_OUTLINES_CSV",
    "MIN_COMPONENT_PIXELS",
    "DatasetError",
    "DatasetSpec",
    "DatasetSplit",
    "Lesion",
    "LoadedSample",
    "Sample",
    "TrainingDataset",
    "default_cache_dir",
    "load_dataset",
    "load_datasets",
    "parse_spec",
    "rasterise_via_shape",
    "split",
]

LesionLabel = Literal["benign", "malignant"]
ImageLabel = Literal["normal", "benign", "malignant"]
SpecKind = Literal["synthetic", "cdd-cesm", "manifest"]

CDD_CESM_OUTLINES_CSV = "Radiology_hand_drawn_segmentations_v2.csv"
CDD_CESM_LABELS_XLSX = "Radiology manual annotations.xlsx"
#: Connected regions of a CDD-CESM 512-px mask smaller than this are JPEG noise.
MIN_COMPONENT_PIXELS = 16
_SEVERITY = {"normal": 0, "benign": 1, "malignant": 2}
_RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
_SYNTHETIC_DONE = "dataset.json"


class DatasetError(ValueError):
    """A dataset cannot be read: bad SPEC, missing file, mismatched shapes, unknown label."""


# --- samples -----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Lesion:
    """One lesion of an image.

    Attributes
    ----------
    mask
        bool array of the source image's shape, True on the lesion.
    label
        ``benign`` or ``malignant``: the detector's class.
    pathology
        The pathology as the source states it (``Malignant`` in CDD-CESM,
        ``malignant`` in the synthetic ground truth, the manifest's label).
    lesion_id
        The lesion's name in its source ("" when it has none).
    """

    mask: np.ndarray
    label: LesionLabel
    pathology: str
    lesion_id: str = ""


@dataclass(frozen=True, eq=False)
class LoadedSample:
    """The pixels and lesions of one :class:`Sample`, read from disk."""

    low_energy: np.ndarray
    recombined: np.ndarray
    lesions: tuple[Lesion, ...]


@dataclass(frozen=True, eq=False)
class Sample:
    """One LE / RC pair of one breast and view, with its lesions (read lazily).

    Attributes
    ----------
    key
        Unique and stable name of the sample (``<source>:<patient>:<study>:<L|R><view>``).
    patient_id, study_id
        The patient and study (splits keep all images of a patient together).
    laterality
        ``L`` or ``R``.
    view
        ``CC`` or ``MLO`` (or another view code from a manifest).
    label
        Image label: ``normal``, ``benign`` or ``malignant`` (the most severe
        lesion), known without loading the pixels.
    pixel_spacing_mm
        (row, column) spacing in mm, None when unknown (JPEG sources).
    source
        Where the sample comes from (the files), for messages.
    """

    key: str
    patient_id: str
    study_id: str
    laterality: str
    view: str
    label: ImageLabel
    pixel_spacing_mm: tuple[float, float] | None
    source: str
    loader: Callable[[], LoadedSample] = field(repr=False)

    @property
    def has_malignant(self) -> bool:
        """True when the image holds a malignant lesion."""
        return self.label == "malignant"

    def load(self) -> LoadedSample:
        """Read LE, RC (float32 source pixels) and the lesions, and check their shapes.

        Raises
        ------
        DatasetError
            When a file is missing or unreadable, LE and RC differ in shape, or
            a lesion mask does not have the image's shape.
        """
        loaded = self.loader()
        le, rc = loaded.low_energy, loaded.recombined
        if le.shape != rc.shape:
            raise DatasetError(
                f"{self.source}: low-energy image {le.shape} and recombined image {rc.shape} "
                "differ in shape"
            )
        for lesion in loaded.lesions:
            if lesion.mask.shape != le.shape:
                raise DatasetError(
                    f"{self.source}: mask of lesion {lesion.lesion_id or '?'} has shape "
                    f"{lesion.mask.shape}, the image {le.shape}"
                )
        return loaded

    @property
    def low_energy(self) -> np.ndarray:
        """The low-energy image (float32), read now (use :meth:`load` to read once)."""
        return self.load().low_energy

    @property
    def recombined(self) -> np.ndarray:
        """The recombined image (float32), read now."""
        return self.load().recombined

    @property
    def lesions(self) -> tuple[Lesion, ...]:
        """The lesions, read now."""
        return self.load().lesions


@dataclass
class TrainingDataset:
    """The samples of one or more SPECs, and what was left out (with reasons)."""

    name: str
    samples: list[Sample]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    @property
    def patients(self) -> list[str]:
        """The patient ids, sorted."""
        return sorted({s.patient_id for s in self.samples})

    def counts(self) -> dict[str, int]:
        """Images per image label, and patients."""
        out = {"images": len(self.samples), "patients": len(self.patients)}
        for label in ("normal", "benign", "malignant"):
            out[label] = sum(1 for s in self.samples if s.label == label)
        return out


# --- SPEC ------------------------------------------------------------------------------------

_SPEC_HELP = (
    "use synthetic:N[:SEED[:SIZE]] (e.g. synthetic:20:0:small), cdd-cesm:PATH or manifest:CSV"
)


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed dataset SPEC (see the module documentation)."""

    kind: SpecKind
    text: str
    count: int = 0
    seed: int = 0
    size: str = "small"
    path: Path | None = None

    @property
    def cache_name(self) -> str:
        """Folder name of a synthetic dataset in the cache (names the phantom version:
        a newer generator draws other images from the same seed)."""
        from cem_node.synthetic import PHANTOM_VERSION

        return f"synthetic-{self.count}-{self.seed}-{self.size}-p{PHANTOM_VERSION}"


def parse_spec(text: str) -> DatasetSpec:
    """Parse a dataset SPEC string.

    Raises
    ------
    DatasetError
        For an unknown kind, a missing or non-numeric count, an unknown size,
        extra fields or a missing path; the message says what is expected.
    """
    spec = (text or "").strip()
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower()
    if not spec or not sep:
        raise DatasetError(f"dataset spec {text!r}: {_SPEC_HELP}")
    if kind == "synthetic":
        parts = rest.split(":")
        if len(parts) > 3:
            raise DatasetError(f"dataset spec {text!r}: too many fields; synthetic:N[:SEED[:SIZE]]")
        count = _spec_int(text, "N (the number of studies)", parts[0], minimum=1)
        seed = _spec_int(text, "SEED", parts[1], minimum=0) if len(parts) > 1 else 0
        size = parts[2].strip() if len(parts) > 2 and parts[2].strip() else "small"
        from cem_node.synthetic import grid_for_size

        try:
            grid_for_size(size)
        except ValueError as exc:
            raise DatasetError(f"dataset spec {text!r}: {exc}") from None
        return DatasetSpec("synthetic", spec, count=count, seed=seed, size=size)
    if kind in ("cdd-cesm", "manifest"):
        if not rest.strip():
            what = "the dataset folder" if kind == "cdd-cesm" else "the manifest CSV file"
            raise DatasetError(f"dataset spec {text!r}: {kind}: needs a path ({what})")
        return DatasetSpec(kind, spec, path=Path(rest.strip()).expanduser())  # type: ignore[arg-type]
    raise DatasetError(f"dataset spec {text!r}: unknown kind {kind!r}; {_SPEC_HELP}")


def _spec_int(text: str, name: str, value: str, minimum: int) -> int:
    value = value.strip()
    if not re.fullmatch(r"\d+", value):
        raise DatasetError(
            f"dataset spec {text!r}: {name} must be a whole number, got {value or '(empty)'!r}"
        )
    number = int(value)
    if number < minimum:
        raise DatasetError(f"dataset spec {text!r}: {name} must be at least {minimum}")
    return number


def default_cache_dir() -> Path:
    """Where generated datasets are kept: ``$CEM_NODE_CACHE_DIR/datasets``, else
    ``$XDG_CACHE_HOME/cem-node/datasets``, else ``~/.cache/cem-node/datasets``."""
    if os.environ.get("CEM_NODE_CACHE_DIR"):
        return Path(os.environ["CEM_NODE_CACHE_DIR"]).expanduser() / "datasets"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "cem-node" / "datasets"


def load_dataset(
    spec: str | DatasetSpec,
    cache_dir: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> TrainingDataset:
    """The samples of one SPEC (files are checked; pixels are read later).

    Parameters
    ----------
    spec
        A SPEC string or a parsed :class:`DatasetSpec`.
    cache_dir
        Where synthetic datasets are generated (:func:`default_cache_dir`).
    progress
        Called as ``progress(description, done, total)`` while synthetic
        studies are generated.
    """
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    if parsed.kind == "synthetic":
        return _synthetic(parsed, cache_dir or default_cache_dir(), progress)
    assert parsed.path is not None
    # imported here: those readers build on this module's samples and file helpers
    if parsed.kind == "cdd-cesm":
        from cem_node.training.datasets_cdd import cdd_cesm_dataset

        return cdd_cesm_dataset(parsed)
    from cem_node.training.datasets_manifest import manifest_dataset

    return manifest_dataset(parsed)


def load_datasets(
    specs: Iterable[str | DatasetSpec],
    cache_dir: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> TrainingDataset:
    """Several SPECs as one dataset (sample keys must not collide)."""
    parts = [load_dataset(s, cache_dir, progress) for s in specs]
    if not parts:
        raise DatasetError("no dataset given")
    samples = [s for p in parts for s in p.samples]
    keys: dict[str, str] = {}
    for part in parts:
        for sample in part.samples:
            if sample.key in keys:
                raise DatasetError(
                    f"sample {sample.key} appears twice (in {keys[sample.key]} and {part.name})"
                )
            keys[sample.key] = part.name
    return TrainingDataset(
        name=" + ".join(p.name for p in parts),
        samples=samples,
        skipped=[s for p in parts for s in p.skipped],
    )


# --- reading files -----------------------------------------------------------------------------


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"{what} not found: {path}")
    return path


def _read_raster(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode in ("RGB", "RGBA", "P", "CMYK", "LA"):
                image = image.convert("L")
            return np.asarray(image)
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from None


def _raster_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            cols, rows = image.size
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from None
    return rows, cols


def _read_image(path: Path) -> np.ndarray:
    """float32 pixels of a DICOM image (Modality LUT, MONOCHROME2) or a raster image."""
    if path.suffix.lower() in _RASTER_SUFFIXES:
        return _read_raster(path).astype(np.float32)
    from cem_node.pipeline.pixels import PixelDataError, read_source_image

    if not path.is_file():
        raise DatasetError(f"image file not found: {path}")
    try:
        return np.array(read_source_image(path).pixels, dtype=np.float32)
    except PixelDataError as exc:
        raise DatasetError(str(exc)) from None


def _mask_from_raster(path: Path) -> np.ndarray:
    array = _read_raster(path)
    if array.ndim == 3:
        array = array.max(axis=2)
    threshold = 127 if path.suffix.lower() in (".jpg", ".jpeg") else 0
    return array > threshold


def _components(mask: np.ndarray, min_pixels: int) -> list[np.ndarray]:
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    sizes = np.bincount(labels.ravel())
    return [labels == i for i in range(1, count + 1) if sizes[i] >= min_pixels]


def _lesion_label(value: str) -> ImageLabel | None:
    text = str(value or "").strip().lower()
    return text if text in _SEVERITY else None  # type: ignore[return-value]


# --- synthetic --------------------------------------------------------------------------------


def _synthetic(
    spec: DatasetSpec, cache_dir: Path, progress: Callable[[str, int, int], None] | None
) -> TrainingDataset:
    from cem_node.synthetic import SynthOptions, generate_study

    root = cache_dir / spec.cache_name
    if not (root / _SYNTHETIC_DONE).is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{spec.cache_name}-", dir=cache_dir))
        try:
            options = SynthOptions(size=spec.size)
            for index in range(1, spec.count + 1):
                if progress:
                    progress(f"generating {spec.text}", index - 1, spec.count)
                generate_study(work, spec.seed, index, options)
            if progress:
                progress(f"generating {spec.text}", spec.count, spec.count)
            (work / _SYNTHETIC_DONE).write_text(
                json.dumps(
                    {"spec": spec.text, "count": spec.count, "seed": spec.seed, "size": spec.size},
                    indent=2,
                )
                + "\n"
            )
            try:
                work.rename(root)
            except OSError:  # another process finished first: use its copy
                if not (root / _SYNTHETIC_DONE).is_file():
                    raise
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    samples: list[Sample] = []
    skipped: list[str] = []
    for index in range(1, spec.count + 1):
        study_dir = root / f"study-{index:04d}"
        found, missed = _synthetic_study(study_dir, spec.text)
        samples.extend(found)
        skipped.extend(missed)
    return TrainingDataset(name=spec.text, samples=samples, skipped=skipped)


def _synthetic_study(study_dir: Path, source: str) -> tuple[list[Sample], list[str]]:
    import pydicom

    from cem_node.config import SelectionSection
    from cem_node.dicom.selection import classify_image, plan_study

    truth_path = _require(study_dir / "ground_truth.json", "synthetic ground truth")
    try:
        truth = json.loads(truth_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read {truth_path}: {exc}") from None
    patient_id = str(truth["patient"]["patient_id"])
    study_uid = str(truth["study"]["study_instance_uid"])
    spacing = float(truth["image_geometry"]["imager_pixel_spacing_mm"])
    rules = SelectionSection()
    files: dict[str, Path] = {}
    classified, headers = [], []
    for entry in truth["images"]:
        path = _require(study_dir / entry["file"], "synthetic image")
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        cls = classify_image(ds, rules)
        files[cls.sop_instance_uid] = path
        classified.append(cls)
        headers.append(ds)
    plan = plan_study(
        classified,
        rules,
        study_instance_uid=study_uid,
        analysis_round=1,
        path_of=files,
        headers=headers,
    )
    # an incomplete pairing's reason names the breast and view
    skipped = [f"{source}: {study_dir.name}: {p.reason}" for p in plan.pairings if not p.complete]
    samples = []
    for pair in plan.request.pairs if plan.request else ():
        lat, view = pair.laterality, pair.view
        lesion_files = [
            (
                study_dir / lesion["views"][view]["mask_png"],
                str(lesion["pathology"]),
                str(lesion["lesion_id"]),
            )
            for lesion in truth["lesions"]
            if lesion["laterality"] == lat and view in lesion["views"]
        ]
        for mask_path, pathology, lesion_id in lesion_files:
            _require(mask_path, f"mask of lesion {lesion_id}")
            if _lesion_label(pathology) not in ("benign", "malignant"):
                raise DatasetError(
                    f"{truth_path}: lesion {lesion_id}: unknown pathology {pathology!r}"
                )
        label = max(
            (p.lower() for _, p, _ in lesion_files), key=_SEVERITY.__getitem__, default="normal"
        )
        le_path, rc_path = pair.low_energy_path, pair.recombined_path
        samples.append(
            Sample(
                key=f"synthetic:{patient_id}:{study_uid}:{lat}{view}",
                patient_id=patient_id,
                study_id=study_uid,
                laterality=lat,
                view=view,
                label=label,  # type: ignore[arg-type]
                pixel_spacing_mm=(spacing, spacing),
                source=f"{study_dir} {lat}{view}",
                loader=_raster_loader(le_path, rc_path, lesion_files),
            )
        )
    return samples, skipped


def _raster_loader(
    le_path: Path, rc_path: Path, lesion_files: list[tuple[Path, str, str]]
) -> Callable[[], LoadedSample]:
    def load() -> LoadedSample:
        lesions = tuple(
            Lesion(
                mask=_mask_from_raster(path),
                label=pathology.lower(),  # type: ignore[arg-type]
                pathology=pathology,
                lesion_id=lesion_id,
            )
            for path, pathology, lesion_id in lesion_files
        )
        return LoadedSample(_read_image(le_path), _read_image(rc_path), lesions)

    return load


# --- VIA outlines (CDD-CESM) --------------------------------------------------------------


def rasterise_via_shape(shape: dict[str, Any], image_shape: tuple[int, int]) -> np.ndarray | None:
    """A VIA region (polygon, polyline, ellipse, circle, rect) as a bool mask; None for a point.

    Coordinates are pixel coordinates of the image (x = column, y = row).
    """
    import cv2

    rows, cols = image_shape
    canvas = np.zeros((rows, cols), dtype=np.uint8)
    name = str(shape.get("name", "")).lower()
    if name in ("polygon", "polyline"):
        xs, ys = shape.get("all_points_x") or [], shape.get("all_points_y") or []
        if len(xs) < 3 or len(xs) != len(ys):
            return None
        points = np.round(np.stack([xs, ys], axis=1)).astype(np.int32)
        cv2.fillPoly(canvas, [points], 1)
    elif name in ("ellipse", "circle"):
        cx, cy = float(shape["cx"]), float(shape["cy"])
        rx = float(shape["r"] if name == "circle" else shape["rx"])
        ry = float(shape["r"] if name == "circle" else shape["ry"])
        angle = math.degrees(float(shape.get("theta", 0.0) or 0.0))
        cv2.ellipse(
            canvas,
            (round(cx), round(cy)),
            (max(1, round(rx)), max(1, round(ry))),
            angle,
            0,
            360,
            1,
            thickness=-1,
        )
    elif name == "rect":
        x, y = round(float(shape["x"])), round(float(shape["y"]))
        w, h = round(float(shape["width"])), round(float(shape["height"]))
        canvas[max(0, y) : max(0, y + h), max(0, x) : max(0, x + w)] = 1
    else:  # point (no outline) or unknown
        return None
    return canvas.astype(bool)


# --- splits -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSplit:
    """Samples divided by patient into train, validation and test sets."""

    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    seed: int
    fractions: tuple[float, float, float]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready record of the split (patients and sample keys per part)."""
        out: dict[str, Any] = {"seed": self.seed, "fractions": list(self.fractions)}
        for part in ("train", "val", "test"):
            samples: list[Sample] = getattr(self, part)
            out[part] = {
                "patients": sorted({s.patient_id for s in samples}),
                "samples": [s.key for s in samples],
            }
        return out


def split(
    dataset: TrainingDataset | Sequence[Sample],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> DatasetSplit:
    """Divide the samples by patient into train / validation / test.

    All images of a patient land in one part. Patients are shuffled with
    ``seed`` within two strata (with or without a malignant lesion), the
    strata are interleaved evenly and the list is cut into parts of the
    requested sizes (largest remainder rounding; every part with a non-zero
    fraction gets at least one patient when there are enough), so each part
    holds about the same proportion of patients with a malignant lesion.
    The result depends only on the patient ids, their labels and the seed.

    Parameters
    ----------
    fractions
        (train, val, test) or (train, val); non-negative, summing to 1.
    """
    values = [float(f) for f in fractions]
    if len(values) == 2:
        values.append(0.0)
    if len(values) != 3 or any(f < 0 or not math.isfinite(f) for f in values):
        raise DatasetError(f"split fractions must be 2 or 3 non-negative numbers, got {fractions}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise DatasetError(f"split fractions must sum to 1, got {fractions} (sum {sum(values):g})")
    samples = list(dataset.samples if isinstance(dataset, TrainingDataset) else dataset)
    by_patient: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_patient[sample.patient_id].append(sample)
    patients = sorted(by_patient)
    rng = np.random.default_rng(seed)
    strata: dict[bool, list[str]] = {True: [], False: []}
    for patient in patients:
        strata[any(s.has_malignant for s in by_patient[patient])].append(patient)
    keyed: list[tuple[float, int, str]] = []
    for group, members in strata.items():
        order = rng.permutation(len(members))
        for rank, index in enumerate(order):
            keyed.append(((rank + 0.5) / len(members), int(group), members[int(index)]))
    ordered = [p for _, _, p in sorted(keyed)]
    sizes = _part_sizes(len(ordered), values)
    parts: list[list[Sample]] = []
    start = 0
    # cut the small parts first, so that they see the strata evenly spread from the start
    cut_order = [1, 2, 0]
    chunks: dict[int, list[str]] = {}
    for part in cut_order:
        chunks[part] = ordered[start : start + sizes[part]]
        start += sizes[part]
    for part in range(3):
        members = set(chunks[part])
        parts.append([s for s in samples if s.patient_id in members])
    return DatasetSplit(
        train=parts[0],
        val=parts[1],
        test=parts[2],
        seed=seed,
        fractions=(values[0], values[1], values[2]),
    )


def _part_sizes(total: int, fractions: list[float]) -> list[int]:
    raw = [f * total for f in fractions]
    sizes = [math.floor(r) for r in raw]
    order = sorted(range(3), key=lambda i: (-(raw[i] - sizes[i]), i))
    for i in order[: total - sum(sizes)]:
        sizes[i] += 1
    # every non-empty fraction gets a patient when there are enough patients
    wanted = [i for i in range(3) if fractions[i] > 0]
    if total >= len(wanted):
        for i in wanted:
            if sizes[i] == 0:
                donor = max(range(3), key=lambda j: sizes[j])
                sizes[donor] -= 1
                sizes[i] += 1
    return sizes
