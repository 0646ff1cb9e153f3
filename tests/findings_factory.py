"""Hand-made findings (:mod:`cem_node.contracts.findings`) for a synthetic study, from its
ground truth.

The DICOM encoders (SEG, SR, GSPS) and everything downstream of the analysis
need realistic findings without running a model: these are built from a
synthetic study's ``ground_truth.json`` and ``masks/*.png``, as a perfect
detector would report them. Scores are fixed per pathology (malignant lesions
score high, benign low) and decided with the pipeline's own fusion rules, so
labels, breast and patient summaries are consistent with the thresholds.

Typical use::

    study = synthetic_study(tmp_path)                 # small, seed 2: see synthetic_study
    findings = findings_from_ground_truth(study)      # one lesion per GT lesion and view
    headers = study_headers(study)                    # pixel-free source headers

``max_lesions=0`` gives a study without lesions ("no suspicious lesion found").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import generate_uid

from cem_node.contracts.findings import Findings, Lesion, LesionMask, ModelIdentity, ViewResult
from cem_node.contracts.params import DecisionThresholds
from cem_node.pipeline import fusion
from cem_node.pipeline.lesion_geometry import largest_component, max_diameter, outline
from cem_node.synthetic import SynthOptions, generate_study

__all__ = [
    "CREATED",
    "DEMO_MODEL",
    "RADIOMICS_ERROR",
    "findings_from_ground_truth",
    "model_identity",
    "study_headers",
    "synthetic_study",
]

#: The findings' creation time (fixed: encoders derive content dates from it).
CREATED = dt.datetime(2025, 6, 12, 10, 30, 5, tzinfo=dt.UTC)
RADIOMICS_ERROR = "pyradiomics failed: the mask has fewer than 10 pixels inside the breast"
#: (dl, radiomics) probabilities by ground-truth pathology; lesion n adds n * 0.01.
_SCORES = {"malignant": (0.86, 0.78), "benign": (0.18, 0.31)}
#: Ground-truth view order (the acquisition order of the synthetic studies).
_VIEW_ORDER = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))


def model_identity(
    *,
    for_clinical_use: bool = False,
    disclaimer: str | None = "synthetic phantom data, not for clinical use",
    name: str = "cem-demo",
    version: str = "0.3.0",
    score_caveat: str | None = "score not validated",
    validation: str | None = (
        "Detection and segmentation validated on phantoms. "
        "Classification not validated on real lesions."
    ),
) -> ModelIdentity:
    """A model bundle identity (sha256 derived from the name and version)."""
    return ModelIdentity(
        name=name,
        version=version,
        sha256=hashlib.sha256(f"{name} {version}".encode()).hexdigest(),
        intended_use="tests of the DICOM encoders on synthetic CEM phantoms",
        for_clinical_use=for_clinical_use,
        disclaimer=disclaimer,
        score_caveat=score_caveat,
        validation=validation,
    )


DEMO_MODEL = model_identity()


def synthetic_study(
    out_dir: Path,
    *,
    seed: int = 2,
    index: int = 1,
    size: str = "small",
    edge_cases: Collection[str] = (),
) -> Path:
    """Generate a synthetic study (``small``: about 1 s) and return its folder.

    Seed 2, index 1 (the default) has two right lesions, one benign and one
    malignant, each seen on CC and MLO, and none on the left: four lesions in
    the two right views, two left views without lesions. Seed 7 has one
    malignant right and one benign left lesion: one lesion in each of the four
    views.
    """
    options = SynthOptions(size=size, edge_cases=frozenset(edge_cases))  # type: ignore[arg-type]
    return generate_study(out_dir, seed, index, options)


def study_headers(study_dir: Path) -> list[pydicom.Dataset]:
    """The study's DICOM headers without pixel data, in file name order."""
    return [
        pydicom.dcmread(path, stop_before_pixels=True)
        for path in sorted((study_dir / "dicom").glob("*.dcm"))
    ]


def findings_from_ground_truth(
    study_dir: Path,
    *,
    max_lesions: int | None = None,
    model: ModelIdentity = DEMO_MODEL,
    radiomics_missing: Collection[str] = (),
    scores: Mapping[str, tuple[float, float]] | None = None,
    analysis_round: int = 1,
    thresholds: DecisionThresholds | None = None,
    created: dt.datetime = CREATED,
) -> Findings:
    """Findings of a perfect detector on a synthetic study.

    Parameters
    ----------
    study_dir
        A folder written by :func:`synthetic_study` / ``generate_study``.
    max_lesions
        Keep at most this many lesions (in view order R-CC, L-CC, R-MLO,
        L-MLO); ``0`` gives a study without lesions. Views are all kept.
    scores
        ``(dl, radiomics)`` probabilities by lesion id, instead of the fixed
        ones by pathology (e.g. to make DL and radiomics disagree).
    model
        The bundle identity recorded in the findings.
    radiomics_missing
        Lesion ids (e.g. ``"R-CC-1"``) whose radiomics failed: their fused
        score is the DL probability and ``radiomics_error`` says why.
    analysis_round
        Enters the lesions' tracking UIDs, as in the pipeline.
    thresholds
        Decision thresholds (default: all 0.5).
    created
        The findings' creation time.
    """
    truth = json.loads((study_dir / "ground_truth.json").read_text())
    thresholds = thresholds or DecisionThresholds()
    spacing_mm = float(truth["image_geometry"]["imager_pixel_spacing_mm"])
    spacing = (spacing_mm, spacing_mm)
    images = {(i["laterality"], i["view"], i["kind"]): i for i in truth["images"]}
    paired = [
        (lat, view)
        for lat, view in _VIEW_ORDER
        if (lat, view, "low_energy") in images and (lat, view, "recombined") in images
    ]
    lesions: list[Lesion] = []
    views: list[ViewResult] = []
    for lat, view in paired:
        le = images[(lat, view, "low_energy")]["sop_instance_uid"]
        rc = images[(lat, view, "recombined")]["sop_instance_uid"]
        rows = int(truth["image_geometry"]["rows"])
        columns = int(truth["image_geometry"]["columns"])
        taken = np.zeros((rows, columns), dtype=bool)
        ids: list[str] = []
        for spec in truth["lesions"]:
            if spec["laterality"] != lat or view not in spec["views"]:
                continue
            if max_lesions is not None and len(lesions) >= max_lesions:
                break
            png = study_dir / spec["views"][view]["mask_png"]
            mask = largest_component(np.asarray(Image.open(png)).astype(bool) & ~taken)
            if not mask.any():
                continue
            taken |= mask
            lesion_id = f"{lat}-{view}-{len(ids) + 1}"
            lesions.append(
                _lesion(
                    lesion_id,
                    lat,
                    view,
                    mask,
                    spec["pathology"],
                    len(lesions),
                    rc=rc,
                    le=le,
                    spacing=spacing,
                    thresholds=thresholds,
                    radiomics_failed=lesion_id in radiomics_missing,
                    scores=(scores or {}).get(lesion_id),
                    tracking=[truth["study"]["study_instance_uid"], str(analysis_round)],
                    model=model,
                )
            )
            ids.append(lesion_id)
        views.append(
            ViewResult(
                laterality=lat,  # type: ignore[arg-type]
                view=view,
                recombined_sop_instance_uid=rc,
                low_energy_sop_instance_uid=le,
                rows=rows,
                columns=columns,
                pixel_spacing_mm=spacing,
                lesion_ids=ids,
            )
        )
    lateralities = sorted({lat for lat, _ in paired})
    patient = truth["patient"]
    return Findings(
        study_instance_uid=truth["study"]["study_instance_uid"],
        patient_id=patient["patient_id"],
        patient_name=patient["patient_name"],
        accession_number=truth["study"]["accession_number"],
        patient_age_years=float(patient["age_years"]),
        model=model,
        device="cpu",
        created=created,
        thresholds=thresholds,
        views=views,
        lesions=lesions,
        breasts=fusion.breast_summaries(
            [(lesion.laterality, lesion.fused_probability) for lesion in lesions],
            lateralities,  # type: ignore[arg-type]
            thresholds,
        ),
        patient=fusion.patient_summary(
            [lesion.fused_probability for lesion in lesions], thresholds
        ),
        notes=[
            f"{lesion.lesion_id}: radiomics failed" for lesion in lesions if lesion.radiomics_error
        ],
    )


def _lesion(
    lesion_id: str,
    lat: str,
    view: str,
    mask: np.ndarray,
    pathology: str,
    number: int,
    *,
    rc: str,
    le: str,
    spacing: tuple[float, float],
    thresholds: DecisionThresholds,
    radiomics_failed: bool,
    scores: tuple[float, float] | None,
    tracking: list[str],
    model: ModelIdentity,
) -> Lesion:
    if scores is None:
        dl, rad = _SCORES[pathology]
        dl, rad = round(dl + 0.01 * number, 4), round(rad + 0.01 * number, 4)
    else:
        dl, rad = scores
    radiomics = None if radiomics_failed else rad
    decision = fusion.decide_lesion(dl, radiomics, thresholds)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    points = outline(mask)
    area_px = int(mask.sum())
    return Lesion(
        lesion_id=lesion_id,
        tracking_uid=generate_uid(entropy_srcs=[*tracking, model.sha256, lesion_id]),
        laterality=lat,  # type: ignore[arg-type]
        view=view,
        recombined_sop_instance_uid=rc,
        low_energy_sop_instance_uid=le,
        box=(float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)),
        outline=points,
        mask=LesionMask.from_array(mask),
        area_px=area_px,
        area_mm2=area_px * spacing[0] * spacing[1],
        max_diameter_mm=max_diameter(points, spacing),
        detector_class="malignant" if pathology == "malignant" else "benign",
        detector_score=0.93,
        dl_probability=dl,
        radiomics_probability=radiomics,
        radiomics_error=RADIOMICS_ERROR if radiomics_failed else None,
        fused_probability=decision.fused_probability,
        fused_source=decision.fused_source,
        dl_label=decision.dl_label,
        radiomics_label=decision.radiomics_label,
        fused_label=decision.fused_label,
        agreement=decision.agreement,
    )
