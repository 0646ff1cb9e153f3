"""Synthetic CEM studies: sample a patient, render, write DICOM and ground truth.

One study is one patient examined with contrast-enhanced mammography: both
breasts (or one), CC and MLO views, each a low-energy (LE) and a recombined
(RC) image, as a GE Senographe Pristina with SenoBright would send them, or
in the header style of another vendor (``SynthOptions.vendor``, see
docs/VENDORS.md). The same ``(seed, index, options)`` always gives the same
bytes.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom.uid import generate_uid

from cem_node import __version__
from cem_node.synthetic.anatomy import (
    BreastShape,
    Grid,
    View,
    sample_bpe,
    sample_breast_shapes,
    sample_density,
)
from cem_node.synthetic.dicom_writer import (
    VENDOR_STYLES,
    AcquisitionInfo,
    PatientInfo,
    StudyInfo,
    TransferSyntaxName,
    VendorName,
    VendorStyle,
    write_mg_image,
)
from cem_node.synthetic.ground_truth import clusters_truth, lesions_truth
from cem_node.synthetic.lesions import (
    CalcificationCluster,
    LesionSpec,
    lesion_centre_mm,
    outline_radius,
    sample_calcifications,
    sample_lesion,
)
from cem_node.synthetic.phantom import BreastSpec, Laterality, RenderedView, render_view

#: Field of view of a GE Senographe Pristina detector (24 x 29 cm class).
FULL_ROWS, FULL_COLS, FULL_PIXEL_MM = 2294, 1914, 0.1
FIELD_ROWS_MM = FULL_ROWS * FULL_PIXEL_MM
FIELD_COLS_MM = FULL_COLS * FULL_PIXEL_MM
#: Root for the UIDs of synthetic objects (pydicom's registered root).
UID_PREFIX = "1.2.826.0.1.3680043.8.498."
GROUND_TRUTH_SCHEMA = "cem-node/synthetic-ground-truth/v1"
DISCLAIMER = "SYNTHETIC PHANTOM - NOT PATIENT DATA - NOT FOR CLINICAL USE"
#: Bumped whenever a seed draws different images (cached datasets of an older
#: phantom are then not reused). 2: cysts visible on the low-energy image.
PHANTOM_VERSION = 2

EdgeCase = Literal[
    "one-breast",
    "missing-rc",
    "extra-non-cem",
    "for-processing",
    "split-series",
    "old-view-codes",
]
#: Order in which a technologist acquires the views (after the injection).
VIEW_ORDER: tuple[tuple[Laterality, View], ...] = (
    ("R", "CC"),
    ("L", "CC"),
    ("R", "MLO"),
    ("L", "MLO"),
)


def grid_for_size(size: str) -> Grid:
    """Pixel grid for ``--size``: ``full``, ``small`` or ``WxH`` (columns x rows).

    The detector's field of view is kept; the pixel size follows (square
    pixels), so lesion sizes in mm stay realistic at any matrix size.

    Raises
    ------
    ValueError
        For an unknown size or one outside 64..4096 pixels.
    """
    if size == "full":
        return Grid(FULL_ROWS, FULL_COLS, FULL_PIXEL_MM)
    if size == "small":
        return Grid(FULL_ROWS // 4, FULL_COLS // 4, FULL_PIXEL_MM * 4)
    try:
        cols, rows = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise ValueError(
            f"size must be 'full', 'small' or WxH (e.g. 957x1147), got {size!r}"
        ) from None
    if not (64 <= rows <= 4096 and 64 <= cols <= 4096):
        raise ValueError(f"size {size!r}: width and height must be between 64 and 4096 pixels")
    pixel = max(FIELD_ROWS_MM / rows, FIELD_COLS_MM / cols)
    return Grid(rows, cols, round(pixel, 4))


@dataclass(frozen=True)
class SynthOptions:
    """What to generate.

    Parameters
    ----------
    size
        ``full``, ``small`` or ``WxH``.
    transfer_syntax
        Encoding of the DICOM files.
    edge_cases
        Deviations from a complete study, for tests of the node's selection
        and pairing: ``one-breast`` (a unilateral study), ``missing-rc`` (the
        recombined image of one view is not sent), ``extra-non-cem`` (an
        additional conventional 2D mammogram in its own series),
        ``for-processing`` (a For Processing copy of each low-energy image,
        in a series of its own), ``split-series`` (every image in a series of
        its own, the recombined images apart from the low-energy ones, as a
        PACS that splits series sends them), ``old-view-codes`` (views coded
        with the SNOMED-RT codes R-10242/R-10226 only, no View Position).
    vendor
        Header style: ``standard`` (the DICOM standard's CEM Image Type values,
        GE names), ``ge``, ``hologic``, ``siemens`` or ``fujifilm``.
    """

    size: str = "full"
    transfer_syntax: TransferSyntaxName = "explicit"
    edge_cases: frozenset[EdgeCase] = frozenset()
    vendor: VendorName = "standard"


def _uid(seed: int, index: int, *parts: object) -> str:
    return generate_uid(
        prefix=UID_PREFIX, entropy_srcs=["cem-node-synth", str(seed), str(index), *map(str, parts)]
    )


def _sample_age(rng: np.random.Generator) -> int:
    # women referred for CEM: most between 40 and 70, none under 35 or over 85
    while True:
        age = rng.normal(56.0, 10.5)
        if 35 <= age <= 85:
            return int(age)


def _inside_margin(shape: BreastShape, row_mm: float, col_mm: float, margin: float) -> bool:
    """True when a point is at least ``margin`` mm inside the breast."""
    ys = np.array([row_mm - margin, row_mm, row_mm + margin], dtype=np.float32)
    if np.any(ys < 1.0) or np.any(ys > FIELD_ROWS_MM - 1.0):
        return False
    depth = shape.depth(ys)
    if np.any(col_mm + margin > depth):
        return False
    return not np.any(
        col_mm - margin < shape.pectoral_depth(ys) + (3.0 if shape.view == "MLO" else 8.0)
    )


def _place(
    rng: np.random.Generator,
    spec: LesionSpec | CalcificationCluster,
    shapes: dict[View, BreastShape],
    radius_mm: float,
    placed: list[tuple[dict[View, tuple[float, float]], float]],
) -> LesionSpec | CalcificationCluster | None:
    """Find a position inside the breast in both views, clear of other lesions."""
    cc = shapes["CC"]
    half_height = 0.5 * (cc.bottom_mm - cc.top_mm)
    for _ in range(400):
        candidate = replace(
            spec,
            depth_fraction=float(rng.uniform(0.15, 0.85)),
            lateral_mm=float(rng.normal(0.0, 0.35 * half_height)),
            superior_mm=float(rng.normal(0.0, 0.35 * half_height)),
        )
        centres = {v: lesion_centre_mm(candidate, s) for v, s in shapes.items()}
        if not all(_inside_margin(shapes[v], *c, radius_mm + 4.0) for v, c in centres.items()):
            continue
        clear = all(
            np.hypot(centres[v][0] - other[v][0], centres[v][1] - other[v][1]) > radius_mm + r + 4.0
            for other, r in placed
            for v in centres
        )
        if clear:
            placed.append((centres, radius_mm))
            return candidate
    return None


def _max_radius(spec: LesionSpec) -> float:
    theta = np.linspace(0, 2 * np.pi, 180, dtype=np.float32)
    r = max(float(outline_radius(spec, theta, v).max()) for v in ("CC", "MLO"))
    spic = max((s[1] for s in spec.spicules), default=0.0)
    return r * (1.0 + 0.6 * spic)


def sample_breast(
    rng: np.random.Generator,
    laterality: Laterality,
    age: int,
    density: str,
    bpe: str,
    shape_seed: int,
    thickness_mm: float,
) -> BreastSpec:
    """Draw one breast: silhouettes, thickness, lesions and calcifications.

    Both breasts of a patient start from the same ``shape_seed`` (a woman's
    breasts are alike in size and shape) and differ by a few percent.
    """
    shapes = sample_breast_shapes(np.random.default_rng(shape_seed), FIELD_ROWS_MM, FIELD_COLS_MM)
    scale = float(rng.uniform(0.94, 1.06))
    shapes = {
        view: replace(
            shape,
            depth_mm=shape.depth_mm * scale,
            top_depth_mm=shape.top_depth_mm * scale,
            nipple_y_mm=shape.nipple_y_mm + float(rng.normal(0, 3)),
            wobble=tuple((a, c, float(rng.uniform(0, 2 * np.pi))) for a, c, _ in shape.wobble),
        )
        for view, shape in shapes.items()
    }
    n_lesions = int(rng.choice([0, 1, 2], p=[0.4, 0.45, 0.15]))
    placed: list[tuple[dict[View, tuple[float, float]], float]] = []
    lesions: list[LesionSpec] = []
    clusters: list[CalcificationCluster] = []
    for i in range(n_lesions):
        pathology = "malignant" if rng.random() < 0.5 else "benign"
        spec = sample_lesion(rng, f"{laterality}{i + 1}", pathology)
        for _ in range(3):  # shrink a lesion that does not fit this breast
            positioned = _place(rng, spec, shapes, _max_radius(spec), placed)
            if positioned is not None:
                break
            spec = replace(spec, diameter_mm=max(5.0, spec.diameter_mm * 0.7))
        if positioned is None:
            continue
        assert isinstance(positioned, LesionSpec)
        lesions.append(positioned)
        if positioned.with_calcifications:
            cluster = sample_calcifications(rng, f"C{laterality}{len(clusters) + 1}", "pleomorphic")
            clusters.append(
                replace(
                    cluster,
                    depth_fraction=positioned.depth_fraction,
                    lateral_mm=positioned.lateral_mm,
                    superior_mm=positioned.superior_mm,
                    lesion_id=positioned.lesion_id,
                )
            )
    if rng.random() < 0.15:
        cluster = sample_calcifications(rng, f"C{laterality}{len(clusters) + 1}", "punctate")
        positioned = _place(rng, cluster, shapes, 6.0, placed)
        if positioned is not None:
            assert isinstance(positioned, CalcificationCluster)
            clusters.append(positioned)
    return BreastSpec(
        laterality=laterality,
        shapes=shapes,
        thickness_mm=float(np.clip(thickness_mm + rng.normal(0, 2.5), 30, 85)),
        density=density,  # type: ignore[arg-type]
        bpe=bpe,  # type: ignore[arg-type]
        lesions=tuple(lesions),
        calcifications=tuple(clusters),
        nipple_marker=False,
    )


def _to_stored(image: np.ndarray, bits: int, laterality: Laterality) -> np.ndarray:
    """Normalised canonical image -> stored uint16 in the stored orientation
    (chest wall at the last column for right breasts)."""
    top = (1 << bits) - 1
    stored = np.rint(image * top).astype(np.uint16)
    return np.ascontiguousarray(stored[:, ::-1]) if laterality == "R" else stored


def _window(stored: np.ndarray, breast: np.ndarray, kind: str, bits: int) -> tuple[float, float]:
    """Default VOI window: the breast's range on LE; on RC a fixed window that
    shows the enhancement (what the modality's processing would choose)."""
    if kind == "recombined":
        top = (1 << bits) - 1
        lo, hi = 0.12 * top, 0.55 * top
    else:
        lo, hi = np.percentile(stored[breast][::7], [0.5, 99.9])
    return float(round((lo + hi) / 2)), float(round(max(hi - lo, 16) * 1.1))


@dataclass
class _Image:
    file: Path
    kind: str
    laterality: Laterality
    view: View
    sop_instance_uid: str
    series_instance_uid: str
    pixels: np.ndarray
    window: tuple[float, float]
    for_processing: bool = False


@dataclass(frozen=True)
class _StudyContext:
    """What every image and the ground truth of one study are made with."""

    study_dir: Path
    seed: int
    index: int
    options: SynthOptions
    grid: Grid
    bits: int
    rng: np.random.Generator
    patient: PatientInfo
    study: StudyInfo

    def uid(self, *parts: object) -> str:
        return _uid(self.seed, self.index, *parts)


def generate_study(out_dir: Path, seed: int, index: int, options: SynthOptions) -> Path:
    """Generate one study into ``out_dir/study-NNNN`` and return that folder.

    Writes ``dicom/*.dcm``, ``masks/*.png`` (one binary mask per lesion and
    view, full image size), ``ground_truth.json`` and ``contact_sheet.png``.
    """
    from cem_node.synthetic.contact_sheet import write_contact_sheet

    grid = grid_for_size(options.size)
    if options.vendor not in VENDOR_STYLES:
        raise ValueError(f"vendor must be one of {sorted(VENDOR_STYLES)}, got {options.vendor!r}")
    style = VENDOR_STYLES[options.vendor]
    rng = np.random.default_rng([seed, index])
    study_dir = out_dir / f"study-{index:04d}"
    (study_dir / "dicom").mkdir(parents=True, exist_ok=True)
    (study_dir / "masks").mkdir(exist_ok=True)

    # every draw from rng happens in the same order for the same seed: the
    # helpers below are called in the order the draws were always made
    patient, study, start = _sample_patient_and_study(rng, seed, index)
    breasts = _sample_breasts(rng, patient.age_years, options)
    bits = int(rng.choice([12, 14]))
    ctx = _StudyContext(study_dir, seed, index, options, grid, bits, rng, patient, study)
    rendered, images = _acquire(ctx, breasts, style, start)

    masks: dict[str, np.ndarray] = {}
    truth = _ground_truth(ctx, breasts, rendered, images, masks)
    (study_dir / "ground_truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    write_contact_sheet(
        study_dir / "contact_sheet.png", truth, {i.file.name: i.pixels for i in images}, masks
    )
    return study_dir


def _sample_patient_and_study(
    rng: np.random.Generator, seed: int, index: int
) -> tuple[PatientInfo, StudyInfo, dt.datetime]:
    """Draw the patient's age and the study's date and time; return the
    patient, the study and the time it starts."""
    age = _sample_age(rng)
    study_day = dt.date(2025, 1, 6) + dt.timedelta(days=int(rng.integers(0, 700)))
    birth = study_day - dt.timedelta(days=int(age * 365.25 + rng.integers(0, 360)))
    start = dt.datetime.combine(study_day, dt.time(8, 0)) + dt.timedelta(
        minutes=int(rng.integers(0, 540))
    )
    patient = PatientInfo(
        patient_id=f"SYN{seed % 100000:05d}{index:04d}",
        patient_name=f"SYNTHETIC^PHANTOM{index:04d}^S{seed}",
        birth_date=birth.strftime("%Y%m%d"),
        age_years=age,
    )
    study = StudyInfo(
        study_instance_uid=_uid(seed, index, "study"),
        study_id=str(index),
        accession_number=f"SYNA{seed % 10000:04d}{index:05d}",
        study_date=start.strftime("%Y%m%d"),
        study_time=start.strftime("%H%M%S"),
    )
    return patient, study, start


def _sample_breasts(
    rng: np.random.Generator, age: int, options: SynthOptions
) -> dict[Laterality, BreastSpec]:
    """Draw the breasts of the study: both, or one with ``one-breast``."""
    density = sample_density(rng, age)
    bpe = sample_bpe(rng, age)
    sides: tuple[Laterality, ...] = ("R", "L")
    if "one-breast" in options.edge_cases:
        sides = ("R",) if rng.random() < 0.5 else ("L",)
    marker = bool(rng.random() < 0.25)
    shape_seed = int(rng.integers(0, 2**31))
    thickness = float(np.clip(rng.normal(55, 11), 30, 85))
    return {
        lat: replace(
            sample_breast(rng, lat, age, density, bpe, shape_seed, thickness), nipple_marker=marker
        )
        for lat in sides
    }


def _series_plan(ctx: _StudyContext, style: VendorStyle) -> dict[str, tuple[str, int, str]]:
    """Series (UID, number, description) of each kind of image."""
    uid = ctx.uid
    series = {
        "low_energy": (uid("series", 1), 1, "CESM Low Energy"),
        "recombined": (uid("series", 2), 2, "CESM Recombined"),
        "non_contrast": (uid("series", 3), 3, "2D Mammography"),
        "for_processing": (uid("series", 4), 4, "CESM Low Energy For Processing"),
    }
    if style.series_layout == "one_series":  # LE and RC of the examination together
        series["recombined"] = series["low_energy"] = (
            uid("series", 1),
            1,
            "Contrast Enhanced Mammography",
        )
    return series


def _acquire(
    ctx: _StudyContext,
    breasts: dict[Laterality, BreastSpec],
    style: VendorStyle,
    start: dt.datetime,
) -> tuple[dict[tuple[Laterality, View], RenderedView], list[_Image]]:
    """Render every view and write its images, in the technologist's order;
    return the rendered views and the images written."""
    rng, edge_cases = ctx.rng, ctx.options.edge_cases
    present = [v for v in VIEW_ORDER if v[0] in breasts]
    missing_rc = present[int(rng.integers(0, len(present)))] if "missing-rc" in edge_cases else None
    series = _series_plan(ctx, style)
    split = "split-series" in edge_cases

    images: list[_Image] = []
    rendered: dict[tuple[Laterality, View], RenderedView] = {}
    instance = 0
    injection = start + dt.timedelta(minutes=2)
    for n, (lat, view) in enumerate(present):
        breast = breasts[lat]
        result = render_view(breast, view, ctx.grid, rng)
        rendered[(lat, view)] = result
        acquired = injection + dt.timedelta(seconds=75 * n + int(rng.integers(0, 20)))
        mask = result.breast[:, ::-1] if lat == "R" else result.breast
        kinds = ["low_energy", "recombined"]
        if missing_rc == (lat, view):
            kinds.remove("recombined")
        if "for-processing" in edge_cases:
            kinds.append("for_processing")
        for kind in kinds:
            image_kind = "low_energy" if kind == "for_processing" else kind
            pixels = _to_stored(result.rc if kind == "recombined" else result.le, ctx.bits, lat)
            instance += 1
            name = series[kind][2]
            in_series = (
                (ctx.uid("series", lat, view, kind), 10 + instance, name) if split else series[kind]
            )
            images.append(
                _write(
                    ctx,
                    breast,
                    view,
                    image_kind,
                    pixels,
                    mask,
                    acquired,
                    in_series,
                    instance,
                    ctx.uid("image", lat, view, kind),
                    for_processing=kind == "for_processing",
                )
            )
    if "extra-non-cem" in edge_cases:
        instance += 1
        images.append(_write_non_cem(ctx, breasts, rendered, series, instance, start))
    return rendered, images


def _write_non_cem(
    ctx: _StudyContext,
    breasts: dict[Laterality, BreastSpec],
    rendered: dict[tuple[Laterality, View], RenderedView],
    series: dict[str, tuple[str, int, str]],
    instance: int,
    start: dt.datetime,
) -> _Image:
    """The ``extra-non-cem`` image: a conventional 2D mammogram of the first
    view, taken a minute before the study (a noisy copy of its low energy)."""
    lat, view = next(v for v in VIEW_ORDER if v[0] in breasts)
    base = rendered[(lat, view)]
    noisy = np.clip(base.le + ctx.rng.normal(0, 0.006, base.le.shape).astype(np.float32), 0, 1)
    pixels = _to_stored(noisy, ctx.bits, lat)
    mask = base.breast[:, ::-1] if lat == "R" else base.breast
    prior = start - dt.timedelta(minutes=1)
    return _write(
        ctx,
        breasts[lat],
        view,
        "non_contrast",
        pixels,
        mask,
        prior,
        series["non_contrast"],
        instance,
        ctx.uid("image", lat, view, "dm"),
    )


def _exposure(
    kind: str, thick: float, style: VendorStyle, rng: np.random.Generator
) -> tuple[float, str, str, float, int, float]:
    """Technique of one image: kVp, anode, filter, mAs, tube current and
    average glandular dose."""
    # automatic exposure control: thicker breasts get harder beams
    le_kvp = float(np.clip(round(24 + 0.12 * thick), 26, 34))
    anode = "MOLYBDENUM" if thick < 45 else "RHODIUM"
    if kind == "recombined":  # the high-energy exposure that the recombination used
        kvp, filt, mas = (
            float(np.clip(round(43 + 0.07 * thick), 45, 49)),
            style.high_energy_filter,
            float(rng.uniform(30, 70)),
        )
    else:
        kvp, filt, mas = (
            le_kvp,
            ("MOLYBDENUM" if anode == "MOLYBDENUM" else "RHODIUM"),
            float(rng.uniform(40, 140)),
        )
    current = int(rng.uniform(60, 100))
    agd = float(0.4 + 0.025 * thick + rng.normal(0, 0.1))
    return kvp, anode, filt, mas, current, agd


def _write(
    ctx: _StudyContext,
    breast: BreastSpec,
    view: View,
    kind: str,
    pixels: np.ndarray,
    mask: np.ndarray,
    acquired: dt.datetime,
    series: tuple[str, int, str],
    instance: int,
    sop_uid: str,
    *,
    for_processing: bool = False,
) -> _Image:
    options = ctx.options
    style = VENDOR_STYLES[options.vendor]
    lat = breast.laterality
    thick = breast.thickness_mm
    kvp, anode, filt, mas, current, agd = _exposure(kind, thick, style, ctx.rng)
    center, width = _window(pixels, mask, kind, ctx.bits)
    acquisition = AcquisitionInfo(
        laterality=lat,
        view=view,
        kind=kind,  # type: ignore[arg-type]
        series_instance_uid=series[0],
        series_number=series[1],
        series_description=series[2],
        sop_instance_uid=sop_uid,
        instance_number=instance,
        acquisition_date=acquired.strftime("%Y%m%d"),
        acquisition_time=acquired.strftime("%H%M%S"),
        kvp=kvp,
        anode=anode,
        filter_material=filt,
        exposure_mas=round(mas, 1),
        exposure_time_ms=int(1000 * mas / current),
        tube_current_ma=current,
        compressed_thickness_mm=round(thick, 1),
        compression_force_n=round(float(ctx.rng.uniform(60, 140)), 1),
        entrance_dose_mgy=round(agd * 3.2, 2),
        organ_dose_mgy=round(agd * (1.2 if kind == "recombined" else 1.0), 2),
        positioner_primary_angle_deg=0.0 if view == "CC" else (45.0 if lat == "R" else -45.0),
        window_center=center,
        window_width=width,
        for_processing=for_processing,
        old_view_codes="old-view-codes" in options.edge_cases,
    )
    prefix = {"low_energy": "LE", "recombined": "RC", "non_contrast": "DM"}[kind]
    suffix = "_for_processing" if for_processing else ""
    path = ctx.study_dir / "dicom" / f"{prefix}_{lat}{view}{suffix}.dcm"
    write_mg_image(
        path,
        pixels,
        transfer_syntax=options.transfer_syntax,
        patient=ctx.patient,
        study=ctx.study,
        acquisition=acquisition,
        pixel_spacing_mm=ctx.grid.pixel_mm,
        bits_stored=ctx.bits,
        vendor=style,
    )
    image = _Image(path, kind, lat, view, sop_uid, series[0], pixels, (center, width))
    image.for_processing = for_processing
    return image


def _ground_truth(
    ctx: _StudyContext,
    breasts: dict[Laterality, BreastSpec],
    rendered: dict[tuple[Laterality, View], RenderedView],
    images: list[_Image],
    masks: dict[str, np.ndarray],
) -> dict[str, Any]:
    """The ground-truth document; writes the mask PNGs and fills ``masks``
    (keyed by their path in the document) for the contact sheet."""
    options, grid, patient, study = ctx.options, ctx.grid, ctx.patient, ctx.study
    return {
        "schema": GROUND_TRUTH_SCHEMA,
        "disclaimer": DISCLAIMER,
        "generator": {
            "name": "cem-node synth",
            "version": __version__,
            "phantom_version": PHANTOM_VERSION,
            "seed": ctx.seed,
            "index": ctx.index,
            "size": options.size,
            "transfer_syntax": options.transfer_syntax,
            "edge_cases": sorted(options.edge_cases),
            "vendor": options.vendor,
        },
        "patient": {
            "patient_id": patient.patient_id,
            "patient_name": patient.patient_name,
            "birth_date": patient.birth_date,
            "age_years": patient.age_years,
            "sex": patient.sex,
        },
        "study": {
            "study_instance_uid": study.study_instance_uid,
            "accession_number": study.accession_number,
            "study_date": study.study_date,
            "study_time": study.study_time,
        },
        "image_geometry": {
            "rows": grid.rows,
            "columns": grid.cols,
            "imager_pixel_spacing_mm": grid.pixel_mm,
            "bits_stored": ctx.bits,
        },
        "breasts": [
            {
                "laterality": lat,
                "density": b.density,
                "bpe": b.bpe,
                "compressed_thickness_mm": round(b.thickness_mm, 1),
                "lesion_ids": [s.lesion_id for s in b.lesions],
                "nipple_marker": b.nipple_marker,
            }
            for lat, b in breasts.items()
        ],
        "images": [
            {
                "file": str(i.file.relative_to(ctx.study_dir)),
                "kind": i.kind,
                "laterality": i.laterality,
                "view": i.view,
                "sop_instance_uid": i.sop_instance_uid,
                "series_instance_uid": i.series_instance_uid,
                "window_center_width": list(i.window),
                "for_processing": i.for_processing,
            }
            for i in images
        ],
        "lesions": lesions_truth(ctx.study_dir, grid.pixel_mm, breasts, rendered, images, masks),
        "calcification_clusters": clusters_truth(grid, breasts, rendered),
    }


def generate_studies(
    out_dir: Path,
    count: int,
    seed: int,
    options: SynthOptions,
) -> Iterator[Path]:
    """Generate ``count`` studies (indices 1..count) and yield their folders."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for index in range(1, count + 1):
        yield generate_study(out_dir, seed, index, options)
