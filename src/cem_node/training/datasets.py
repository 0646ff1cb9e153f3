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

import csv
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
    if parsed.kind == "cdd-cesm":
        return _cdd_cesm(parsed)
    return _manifest(parsed)


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


# --- CDD-CESM ---------------------------------------------------------------------------------


def _cdd_cesm(spec: DatasetSpec) -> TrainingDataset:
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
    shapes = _read_via(outlines)
    files = {
        Path(name).stem.upper(): Path(folder) / name
        for folder, _, names in os.walk(root, followlinks=True)
        for name in names
        if Path(name).suffix.lower() in (".jpg", ".jpeg")
    }
    if not files:
        raise DatasetError(f"no CDD-CESM images (*.jpg) under {root}")

    groups: dict[tuple[str, str, str], dict[str, str]] = defaultdict(dict)
    skipped: list[str] = []
    for name in sorted(image_labels):
        match = _CDD_NAME.match(name)
        if match is None:
            skipped.append(f"{labels.name}: image name {name!r} is not P<id>_<L|R>_<DM|CM>_<view>")
            continue
        pid, lat, kind, view = match.groups()
        groups[(f"P{int(pid)}", lat.upper(), view.upper())][kind.upper()] = name
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
        chosen: tuple[str, ImageLabel, str] | None = None
        for kind in ("CM", "DM"):
            label, raw = image_labels[kinds[kind]]
            if label != "normal" and shapes.get(kinds[kind]):
                chosen = (kinds[kind], label, raw)
                break
        if chosen is not None:
            image_label: ImageLabel = chosen[1]
        else:
            image_label = max(
                (image_labels[n][0] for n in kinds.values()), key=_SEVERITY.__getitem__
            )
        samples.append(
            Sample(
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
                    outlines.name,
                ),
            )
        )
    return TrainingDataset(name=spec.text, samples=samples, skipped=skipped)


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


# --- manifest ---------------------------------------------------------------------------------

_MANIFEST_REQUIRED = ("patient_id", "low_energy", "recombined", "label")


def _manifest(spec: DatasetSpec) -> TrainingDataset:
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
