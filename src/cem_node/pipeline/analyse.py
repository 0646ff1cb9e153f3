"""The analysis of one study: paired LE/RC images in,
:class:`~cem_node.contracts.findings.Findings` out.

Steps (PAPER.md): preprocess each pair, detect lesions on all views in one
batch, map every mask back to the full-size source image, compute the
handcrafted radiomics on the original LE and RC images inside each mask,
score them with the bundle's XGBoost model, fuse with the DL probability
and decide per lesion, breast and patient with the bundle's thresholds.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from cem_node.contracts.findings import Findings, Lesion, LesionMask, ViewResult
from cem_node.contracts.params import PostprocessParams, PreprocessParams, RadiomicsSettings
from cem_node.models import Bundle
from cem_node.pipeline import fusion
from cem_node.pipeline.classifier import RadiomicsClassifier
from cem_node.pipeline.detector import Detection, detect, load_detector, select_device
from cem_node.pipeline.lesion_geometry import (
    largest_component,
    max_diameter,
    outline,
    remove_overlaps,
)
from cem_node.pipeline.pixels import SourceImage
from cem_node.pipeline.prefetch import prefetched
from cem_node.pipeline.preprocess import PreprocessedPair, preprocess_pair
from cem_node.pipeline.radiomics import (
    LesionRadiomics,
    RadiomicsJob,
    RadiomicsPool,
    make_job,
    plan_extraction,
    result_or_error,
    run_job,
)

__all__ = [
    "LoadedModels",
    "PairInput",
    "StudyContext",
    "analyse_study",
    "source_masks",
    "study_context",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PairInput:
    """The decoded low-energy and recombined images of one breast and view."""

    laterality: str
    view: str
    low_energy: SourceImage
    recombined: SourceImage


@dataclass(frozen=True, slots=True)
class StudyContext:
    """What the findings need from the study's headers."""

    study_instance_uid: str
    patient_id: str | None = None
    patient_name: str | None = None
    accession_number: str | None = None
    patient_age_years: float | None = None
    analysis_round: int = 1


def _age_years(ds: Dataset) -> float | None:
    age = str(ds.get("PatientAge", "") or "")
    if len(age) == 4 and age[:3].isdigit() and age[3] in "DWMY":
        per_year = {"D": 365.25, "W": 52.1775, "M": 12.0, "Y": 1.0}[age[3]]
        return int(age[:3]) / per_year
    birth, study = str(ds.get("PatientBirthDate", "") or ""), str(ds.get("StudyDate", "") or "")
    try:
        born = dt.datetime.strptime(birth[:8], "%Y%m%d").date()
        seen = dt.datetime.strptime(study[:8], "%Y%m%d").date()
    except ValueError:
        return None
    return (seen - born).days / 365.25


def study_context(headers: Sequence[Dataset], analysis_round: int = 1) -> StudyContext:
    """Identifiers and age of the study, from its first header that has them."""
    if not headers:
        raise ValueError("a study needs at least one header")
    first = headers[0]
    ages = [a for a in (_age_years(h) for h in headers) if a is not None]
    return StudyContext(
        study_instance_uid=str(first.StudyInstanceUID),
        patient_id=str(first.get("PatientID", "")) or None,
        patient_name=str(first.get("PatientName", "")) or None,
        accession_number=str(first.get("AccessionNumber", "")) or None,
        patient_age_years=ages[0] if ages else None,
        analysis_round=analysis_round,
    )


@dataclass
class LoadedModels:
    """A verified bundle with its detector and radiomics model loaded."""

    bundle: Bundle
    detector: object
    classifier: RadiomicsClassifier
    device: object
    device_description: str
    timings_s: dict[str, float] = field(default_factory=dict)
    _radiomics_pool: RadiomicsPool | None = field(default=None, repr=False)

    def radiomics_pool(self, workers: int) -> RadiomicsPool:
        """The worker processes for radiomics, started at the first call and kept.

        A call with another number of workers replaces the pool.
        """
        if self._radiomics_pool is None or self._radiomics_pool.workers != workers:
            self.close()
            self._radiomics_pool = RadiomicsPool(workers)
            self._radiomics_pool.start()
        return self._radiomics_pool

    def close(self) -> None:
        """Stop the radiomics workers, if any (the networks need nothing)."""
        pool, self._radiomics_pool = self._radiomics_pool, None
        if pool is not None:
            pool.close()

    @classmethod
    def load(cls, bundle: Bundle, device: str = "auto") -> LoadedModels:
        """Load the bundle's networks (checksums were verified by the registry)."""
        started = time.perf_counter()
        torch_device, description = select_device(device)
        manifest = bundle.manifest
        detector = load_detector(
            bundle.file(manifest.detector.weights),
            manifest.detector.config(),
            manifest.preprocessing,
            device=torch_device,
        )
        classifier = RadiomicsClassifier.load(
            bundle.file(manifest.radiomics.model), bundle.file(manifest.radiomics.features)
        )
        log.info(
            "loaded model bundle %s %s (sha256 %s) on %s",
            manifest.bundle.name,
            manifest.bundle.version,
            bundle.sha256[:12],
            description,
        )
        return cls(
            bundle=bundle,
            detector=detector,
            classifier=classifier,
            device=torch_device,
            device_description=description,
            timings_s={"load": time.perf_counter() - started},
        )


@dataclass
class _Candidate:
    mask: np.ndarray
    box: tuple[float, float, float, float]
    detector_class: str
    detector_score: float
    dl_probability: float
    radiomics: Future[LesionRadiomics]


@dataclass
class _View:
    """What the findings need of one pair once its pixels are let go."""

    laterality: str
    view: str
    recombined_sop_instance_uid: str
    low_energy_sop_instance_uid: str
    shape: tuple[int, int]
    pixel_spacing_mm: tuple[float, float] | None
    candidates: list[_Candidate]


@dataclass
class _Prepared:
    pair: PairInput
    prepared: PreprocessedPair
    decode_s: float
    preprocess_s: float


def _prepare(pairs: Iterable[PairInput], params: PreprocessParams) -> Iterator[_Prepared]:
    """Decode (when ``pairs`` is lazy) and preprocess one pair after the other."""
    iterator = iter(pairs)
    while True:
        tick = time.perf_counter()
        try:
            pair = next(iterator)
        except StopIteration:
            return
        decoded = time.perf_counter()
        prepared = preprocess_pair(
            pair.low_energy.pixels,
            pair.recombined.pixels,
            params,
            pair.laterality,
        )
        yield _Prepared(pair, prepared, decoded - tick, time.perf_counter() - decoded)


class _Completed(Future[LesionRadiomics]):
    """A job computed at once (no overlap): a finished future."""

    def __init__(self, result: LesionRadiomics) -> None:
        super().__init__()
        self.set_result(result)


def source_masks(
    prepared: PreprocessedPair, found: Sequence[Detection], post: PostprocessParams
) -> list[np.ndarray]:
    """The detections' masks on the source image, as every lesion is reported.

    Each mask probability is mapped back to the source image and binarised
    (``post.mask_threshold``), restricted to the breast (the network saw
    nothing outside it) and to its largest region; overlaps go to the
    higher-scored detection (``found`` is sorted by score), so a SEG's
    segments never overlap, and a mask mostly inside higher-scored ones
    (``post.duplicate_overlap``) is a duplicate and comes out empty. An empty
    mask is dropped by the caller.
    """
    masks = [
        largest_component(
            prepared.geometry.mask_to_source(d.mask_probability, post.mask_threshold)
            & prepared.breast_mask
        )
        for d in found
    ]
    return remove_overlaps(masks, post.duplicate_overlap)


def _lesion_id(laterality: str, view: str, index: int) -> str:
    return f"{laterality}-{view}-{index}"


def _map_back(
    step: _Prepared,
    found: Sequence[Detection],
    post: PostprocessParams,
    rad_settings: RadiomicsSettings,
    submit: Callable[[RadiomicsJob], Future[LesionRadiomics]],
    notes: list[str],
) -> _View:
    """One view's detections as lesion masks on the source image, their radiomics queued.

    Each lesion's radiomics crops are made here, so the caller can let the
    pair's full-size pixels go.
    """
    pair, prep = step.pair, step.prepared
    candidates = []
    for det, mask in zip(found, source_masks(prep, found, post), strict=True):
        if not mask.any():
            notes.append(
                f"{pair.laterality}-{pair.view}: a detection (score {det.score:.2f}) "
                "was dropped: no mask of its own on the source image (outside the "
                "breast, or mostly inside a higher-scored detection: a duplicate)"
            )
            continue
        box = prep.geometry.boxes_to_source(np.array([det.box], dtype=np.float64))[0]
        job = make_job(
            job_id=_lesion_id(pair.laterality, pair.view, len(candidates) + 1),
            low_energy=pair.low_energy.pixels,
            recombined=pair.recombined.pixels,
            mask=mask,
            spacing_mm=pair.recombined.pixel_spacing_mm,
            settings=rad_settings,
        )
        candidates.append(
            _Candidate(
                mask=mask,
                box=tuple(float(v) for v in box),  # type: ignore[arg-type]
                detector_class=det.label,
                detector_score=det.score,
                dl_probability=fusion.dl_probability(det.p_benign, det.p_malignant),
                radiomics=submit(job),
            )
        )
    return _View(
        laterality=pair.laterality,
        view=pair.view,
        recombined_sop_instance_uid=pair.recombined.sop_instance_uid,
        low_energy_sop_instance_uid=pair.low_energy.sop_instance_uid,
        shape=pair.recombined.pixels.shape,  # type: ignore[arg-type]
        pixel_spacing_mm=pair.recombined.pixel_spacing_mm,
        candidates=candidates,
    )


def analyse_study(
    models: LoadedModels,
    context: StudyContext,
    pairs: Iterable[PairInput],
    postprocess: PostprocessParams | None = None,
    radiomics_settings: RadiomicsSettings | None = None,
    radiomics_workers: int = 1,
    overlap: bool = True,
) -> Findings:
    """Analyse the study's pairs with the loaded bundle; return its findings.

    ``postprocess`` and ``radiomics_settings`` default to the bundle's.

    The stages overlap (``overlap``, the default): the next pair is decoded
    (when ``pairs`` is a lazy iterable, e.g.
    :func:`~cem_node.pipeline.service.iter_decoded_pairs`) and preprocessed in
    a background thread while the detector runs on this one, and the
    radiomics of a view's lesions run (in a thread, or in the bundle's worker
    processes when ``radiomics_workers`` > 1) while the next view is
    detected. Each view is detected on its own, so its findings never depend
    on the study's other views; the results are those of ``overlap=False``,
    which runs every step in turn. A pair's full-size pixels are let go once
    its lesions' radiomics crops are made, so at most three pairs are held
    at once whatever the size of the study.

    ``timings_s`` gives each stage's own time (they overlap: their sum can
    exceed the wall time) and ``radiomics_wait``, the time spent waiting for
    the radiomics after the last view was detected.
    """
    manifest = models.bundle.manifest
    post = postprocess or manifest.postprocessing
    rad_settings = radiomics_settings or manifest.radiomics.settings()
    notes: list[str] = []
    timings = dict.fromkeys(("decode", "preprocess", "detect", "map_back", "radiomics"), 0.0)
    # only what the bundle's classifier reads (training extracts everything)
    plan = plan_extraction(models.classifier.selected_features, rad_settings)

    thread_pool: ThreadPoolExecutor | None = None
    submit: Callable[[RadiomicsJob], Future[LesionRadiomics]]
    if not overlap:
        submit = lambda job: _Completed(run_job(job, rad_settings, plan))  # noqa: E731
    elif radiomics_workers > 1:
        pool = models.radiomics_pool(radiomics_workers)
        submit = lambda job: pool.submit(job, rad_settings, plan)  # noqa: E731
    else:
        thread_pool = ThreadPoolExecutor(1, thread_name_prefix="radiomics")
        submit = lambda job: thread_pool.submit(run_job, job, rad_settings, plan)  # noqa: E731

    steps = _prepare(pairs, manifest.preprocessing)
    if overlap:
        steps = prefetched(steps, depth=1, name="analysis-prefetch")
    views: list[_View] = []
    try:
        for step in steps:
            timings["decode"] += step.decode_s
            timings["preprocess"] += step.preprocess_s

            tick = time.perf_counter()
            found = detect(models.detector, [step.prepared.image], post, models.device)[0]
            timings["detect"] += time.perf_counter() - tick

            tick = time.perf_counter()
            views.append(_map_back(step, found, post, rad_settings, submit, notes))
            timings["map_back"] += time.perf_counter() - tick
            del step  # its pixels go now (the radiomics crops are kept)

        tick = time.perf_counter()
        radiomics = [result_or_error(c.radiomics) for v in views for c in v.candidates]
        timings["radiomics_wait"] = time.perf_counter() - tick
    finally:
        if thread_pool is not None:
            thread_pool.shutdown(wait=True, cancel_futures=True)
    timings["radiomics"] = sum(r.seconds for r in radiomics)

    return _findings(models, context, views, radiomics, notes, timings)


def _findings(
    models: LoadedModels,
    context: StudyContext,
    views: Sequence[_View],
    radiomics: Sequence[LesionRadiomics],
    notes: list[str],
    timings: dict[str, float],
) -> Findings:
    """Classify, fuse and decide each lesion (``radiomics`` in the views' lesion order)."""
    thresholds = models.bundle.manifest.thresholds
    rad_probability = _radiomics_probabilities(models, context, radiomics)

    lesions: list[Lesion] = []
    view_results: list[ViewResult] = []
    index = 0
    for view in views:
        ids = []
        for number, cand in enumerate(view.candidates, start=1):
            lesion = _lesion(
                models,
                context,
                view,
                cand,
                number,
                radiomics[index],
                rad_probability.get(index),
                notes,
            )
            index += 1
            lesions.append(lesion)
            ids.append(lesion.lesion_id)
        view_results.append(_view_result(view, ids))

    lateralities = sorted({v.laterality for v in views})
    breasts = fusion.breast_summaries(
        [(lesion.laterality, lesion.fused_probability) for lesion in lesions],
        lateralities,
        thresholds,
    )
    patient = fusion.patient_summary([lesion.fused_probability for lesion in lesions], thresholds)
    return Findings(
        study_instance_uid=context.study_instance_uid,
        patient_id=context.patient_id,
        patient_name=context.patient_name,
        accession_number=context.accession_number,
        patient_age_years=context.patient_age_years,
        model=models.bundle.identity(),
        device=models.device_description,
        created=dt.datetime.now(dt.UTC),
        thresholds=thresholds,
        views=view_results,
        lesions=lesions,
        breasts=breasts,
        patient=patient,
        notes=notes,
        timings_s={k: round(v, 4) for k, v in timings.items()},
    )


def _radiomics_probabilities(
    models: LoadedModels, context: StudyContext, radiomics: Sequence[LesionRadiomics]
) -> dict[int, float]:
    """The classifier's probability of each lesion with features, by its index."""
    ok = [i for i, r in enumerate(radiomics) if r.features is not None]
    if not ok:
        return {}
    ages = [context.patient_age_years] * len(ok)
    probs = models.classifier.predict_proba([radiomics[i].features for i in ok], ages=ages)
    return {i: float(p) for i, p in zip(ok, probs, strict=True)}


def _lesion(
    models: LoadedModels,
    context: StudyContext,
    view: _View,
    cand: _Candidate,
    number: int,
    rad: LesionRadiomics,
    rad_p: float | None,
    notes: list[str],
) -> Lesion:
    """Lesion ``number`` of ``view``, fused and decided; its notes go to ``notes``."""
    decision = fusion.decide_lesion(cand.dl_probability, rad_p, models.bundle.manifest.thresholds)
    lesion_id = _lesion_id(view.laterality, view.view, number)
    points = outline(cand.mask)
    spacing = view.pixel_spacing_mm
    area_px = int(cand.mask.sum())
    error = None if rad_p is not None else (rad.error or "radiomics unavailable")
    if error is not None:
        notes.append(f"{lesion_id}: radiomics failed ({error}); fused score = DL only")
    lesion = Lesion(
        lesion_id=lesion_id,
        tracking_uid=generate_uid(
            entropy_srcs=[
                context.study_instance_uid,
                str(context.analysis_round),
                models.bundle.sha256,
                lesion_id,
            ]
        ),
        laterality=view.laterality,  # type: ignore[arg-type]
        view=view.view,
        recombined_sop_instance_uid=view.recombined_sop_instance_uid,
        low_energy_sop_instance_uid=view.low_energy_sop_instance_uid,
        box=cand.box,
        outline=points,
        mask=LesionMask.from_array(cand.mask),
        area_px=area_px,
        area_mm2=None if spacing is None else area_px * spacing[0] * spacing[1],
        max_diameter_mm=max_diameter(points, spacing),
        detector_class=cand.detector_class,  # type: ignore[arg-type]
        detector_score=cand.detector_score,
        dl_probability=cand.dl_probability,
        radiomics_probability=rad_p,
        radiomics_error=error,
        fused_probability=decision.fused_probability,
        fused_source=decision.fused_source,
        dl_label=decision.dl_label,
        radiomics_label=decision.radiomics_label,
        fused_label=decision.fused_label,
        agreement=decision.agreement,
    )
    notes.extend(f"{lesion_id}: {n}" for n in rad.notes)
    return lesion


def _view_result(view: _View, lesion_ids: list[str]) -> ViewResult:
    """The findings' entry of ``view`` with the ids of its lesions."""
    rows, columns = view.shape
    return ViewResult(
        laterality=view.laterality,  # type: ignore[arg-type]
        view=view.view,
        recombined_sop_instance_uid=view.recombined_sop_instance_uid,
        low_energy_sop_instance_uid=view.low_energy_sop_instance_uid,
        rows=rows,
        columns=columns,
        pixel_spacing_mm=view.pixel_spacing_mm,
        lesion_ids=lesion_ids,
    )
