"""The analysis behind the node's worker and ``cem-node analyse``.

:func:`requests_from_files` groups DICOM files into studies and pairs their
images with the node's own selection rules; :func:`analyse_request` runs
the analysis of one :class:`~cem_node.contracts.analysis.AnalysisRequest`;
:class:`BundleAnalyser` is the node's :class:`~cem_node.contracts.analysis.Analyser`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from cem_node.config import AnalysisSection, SelectionSection
from cem_node.contracts.analysis import (
    AnalysisRequest,
    AnalysisResult,
    AnalysisUnavailableError,
    InstanceUnusableError,
)
from cem_node.contracts.findings import Findings
from cem_node.contracts.params import PostprocessParams, RadiomicsSettings
from cem_node.dicom.selection import classify_image, plan_study
from cem_node.models import Bundle, BundleError, BundleRegistry

if TYPE_CHECKING:
    from cem_node.dicom.objects.common import ReportingDevice
    from cem_node.pipeline.analyse import LoadedModels, PairInput
    from cem_node.pipeline.pixels import SourceImage

__all__ = [
    "BundleAnalyser",
    "StudyFiles",
    "analyse_request",
    "decode_pairs",
    "effective_params",
    "iter_decoded_pairs",
    "overlap_stages",
    "release_freed_memory",
    "requests_from_files",
]

log = logging.getLogger(__name__)


def effective_params(
    analysis: AnalysisSection, bundle: Bundle
) -> tuple[PostprocessParams, RadiomicsSettings, list[str]]:
    """The bundle's post-processing and radiomics settings with ``[analysis]`` overrides.

    Returns them and one note per override (recorded in the findings: the
    bundle's thresholds were chosen with its own values).
    """
    manifest = bundle.manifest
    overrides = {
        name: getattr(analysis, name)
        for name in ("score_threshold", "nms_iou", "max_lesions", "keep_score")
        if getattr(analysis, name) is not None
    }
    post = manifest.postprocessing.model_copy(update=overrides)
    radiomics = manifest.radiomics.settings()
    notes = [
        f"[analysis] {name} = {value} overrides the bundle's "
        f"{getattr(manifest.postprocessing, name)}"
        for name, value in overrides.items()
        if value != getattr(manifest.postprocessing, name)
    ]
    cap = analysis.radiomics_max_grey_levels
    if cap is not None and cap != radiomics.max_grey_levels:
        notes.append(
            f"[analysis] radiomics_max_grey_levels = {cap} overrides the bundle's "
            f"{radiomics.max_grey_levels}"
        )
        radiomics = radiomics.model_copy(update={"max_grey_levels": cap})
    return post, radiomics, notes


@dataclass(frozen=True, slots=True)
class StudyFiles:
    """One study found among the given files: a request, or why there is none."""

    study_instance_uid: str
    request: AnalysisRequest | None
    reason: str
    """Pairing summary, or why the study cannot be analysed."""


def _dicom_files(paths: Iterable[Path]) -> tuple[list[tuple[Path, Dataset]], list[str]]:
    found: list[tuple[Path, Dataset]] = []
    skipped: list[str] = []
    for root in paths:
        if not root.exists():
            raise FileNotFoundError(f"no such file or folder: {root}")
        candidates = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in candidates:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError) as exc:
                skipped.append(f"{path}: not a readable DICOM file ({exc})")
                continue
            if "StudyInstanceUID" not in ds or "SOPInstanceUID" not in ds:
                skipped.append(f"{path}: no Study or SOP Instance UID")
                continue
            found.append((path, ds))
    return found, skipped


def requests_from_files(
    paths: Sequence[Path], selection: SelectionSection
) -> tuple[list[StudyFiles], list[str]]:
    """Group DICOM files by study and pair their images as the node would.

    Returns the studies and the files that were skipped (with the reason).
    """
    files, skipped = _dicom_files(paths)
    by_study: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path, ds in files:
        by_study[str(ds.StudyInstanceUID)].append((path, ds))
    studies = []
    for uid, members in by_study.items():
        plan = plan_study(
            [classify_image(ds, selection) for _, ds in members],
            selection,
            study_instance_uid=uid,
            analysis_round=1,
            path_of={str(ds.SOPInstanceUID): path for path, ds in members},
            headers=[ds for _, ds in members],
        )
        if plan.request is None:
            studies.append(StudyFiles(uid, None, f"not analysable: {plan.reason}"))
        else:
            studies.append(StudyFiles(uid, plan.request, plan.reason))
    return studies, skipped


def iter_decoded_pairs(request: AnalysisRequest) -> Iterator[PairInput]:
    """Decode the request's LE and RC images one pair at a time, as they are needed.

    The analysis decodes the next pair while it detects on this one, and
    lets each pair's pixels go once used (:func:`~cem_node.pipeline.analyse.analyse_study`).

    Raises
    ------
    InstanceUnusableError
        For the first image whose pixel data cannot be used (the worker
        excludes it and analyses the rest).
    """
    from cem_node.pipeline.analyse import PairInput
    from cem_node.pipeline.pixels import PixelDataError, read_source_image

    def read(path: Path, sop_instance_uid: str) -> SourceImage:
        try:
            return read_source_image(path)
        except PixelDataError as exc:
            # the message starts with the file's path: the UID says which image
            reason = str(exc).removeprefix(f"{path}: ")
            raise InstanceUnusableError(sop_instance_uid, reason) from exc

    for p in request.pairs:
        yield PairInput(
            laterality=p.laterality,
            view=p.view,
            low_energy=read(p.low_energy_path, p.low_energy_sop_instance_uid),
            recombined=read(p.recombined_path, p.recombined_sop_instance_uid),
        )


def decode_pairs(request: AnalysisRequest) -> list[PairInput]:
    """Decode all the request's LE and RC images (once: callers reuse them, e.g. for overlays).

    Raises
    ------
    InstanceUnusableError
        As :func:`iter_decoded_pairs`.
    """
    return list(iter_decoded_pairs(request))


def analyse_request(
    models: LoadedModels,
    request: AnalysisRequest,
    analysis: AnalysisSection,
    pairs: Sequence[PairInput] | None = None,
) -> Findings:
    """Analyse the request's images (decoded here unless ``pairs`` holds them already)."""
    from cem_node.pipeline.analyse import analyse_study, study_context

    started = time.perf_counter()
    post, radiomics, notes = effective_params(analysis, models.bundle)
    findings = analyse_study(
        models,
        study_context(list(request.headers), request.analysis_round),
        iter_decoded_pairs(request) if pairs is None else pairs,
        post,
        radiomics,
        radiomics_workers=analysis.radiomics_workers,
        overlap=overlap_stages(analysis.overlap_stages, models.device),
    )
    timings = dict(findings.timings_s)
    timings["total"] = round(time.perf_counter() - started, 4)
    return findings.model_copy(update={"timings_s": timings, "notes": notes + findings.notes})


#: CPU cores from which overlapping the stages pays on a CPU-only machine (measured: on 2
#: cores the overlapped stages compete for them and a study takes longer).
OVERLAP_MIN_CPUS = 4


def overlap_stages(setting: str, device: str, cpus: int | None = None) -> bool:
    """Whether a study's stages overlap: ``[analysis] overlap_stages`` with "auto" resolved.

    "auto" overlaps on a CUDA device (the CPU is free while the GPU detects) or
    with at least :data:`OVERLAP_MIN_CPUS` usable CPU cores; ``cpus`` defaults
    to this process' CPU affinity.
    """
    if setting != "auto":
        return setting == "on"
    if str(device).startswith("cuda"):
        return True
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (cpus or 1) >= OVERLAP_MIN_CPUS


def release_freed_memory() -> bool:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim``).

    A study's full-size arrays are freed when it is done, but glibc keeps the
    freed pages of its arenas, so an idle node would keep the resident size of
    its largest study. Returns False where the C library has no
    ``malloc_trim`` (not glibc).
    """
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


class BundleAnalyser:
    """The node's analysis: the active (or configured) model bundle.

    Before each study the bundle is resolved and its checksums verified
    again; the networks are loaded once and reloaded only when another
    bundle was activated (its hash changed), so ``cem-node models activate``
    takes effect without a restart. A missing or corrupt bundle is a
    permanent failure (:class:`~cem_node.contracts.analysis.AnalysisUnavailableError`):
    the job fails at once, saying why, instead of retrying.
    """

    def __init__(
        self,
        analysis: AnalysisSection,
        models_dir: Path | None = None,
        *,
        device: ReportingDevice | None = None,
    ) -> None:
        self._analysis = analysis
        self._device = device
        self._registry = BundleRegistry(models_dir or analysis.bundles_dir)
        self._models: LoadedModels | None = None
        self._lock = threading.Lock()
        self._status = "analysis: model bundle not loaded yet"

    def _loaded(self) -> LoadedModels:
        try:
            from cem_node.pipeline.analyse import LoadedModels
        except ImportError as exc:
            raise AnalysisUnavailableError(
                f"the analysis packages are not installed ({exc.name}): "
                "pip install 'cem-node[ml]' (scripts/setup.sh does)"
            ) from exc

        with self._lock:
            try:
                bundle = self._registry.resolve(None, self._analysis.model)
            except BundleError as exc:
                raise AnalysisUnavailableError(f"model bundle: {exc}") from exc
            if self._models is None or self._models.bundle.sha256 != bundle.sha256:
                if self._models is not None:
                    self._models.close()  # its radiomics workers
                    self._models = None
                try:
                    self._models = LoadedModels.load(bundle, self._analysis.device)
                    if self._analysis.radiomics_workers > 1:
                        # started with the model, not during the first study
                        self._models.radiomics_pool(self._analysis.radiomics_workers)
                except Exception as exc:  # verified files that still cannot be used
                    raise AnalysisUnavailableError(
                        f"model bundle {bundle.name} {bundle.version} cannot be loaded: {exc}"
                    ) from exc
                line = (
                    f"analysis: model bundle {bundle.name} {bundle.version} "
                    f"(sha256 {bundle.sha256[:12]}) on {self._models.device_description}"
                )
                disclaimer = bundle.identity().disclaimer
                self._status = f"{line}; {disclaimer}" if disclaimer else line
            return self._models

    def preload(self) -> str:
        """Load the bundle now (at start-up); return a line saying which, or why not."""
        try:
            self._loaded()
        except AnalysisUnavailableError as exc:
            log.error("no analysis until this is fixed: %s", exc)
            self._status = f"analysis unavailable: {exc}"
        return self._status

    def close(self) -> None:
        """Stop what the loaded bundle started (its radiomics worker processes)."""
        with self._lock:
            if self._models is not None:
                self._models.close()

    def status_line(self) -> str:
        """Which bundle is loaded (or why none), for /healthz."""
        return self._status

    def analyse(self, request: AnalysisRequest) -> AnalysisResult:
        from cem_node.dicom.objects.results import encode_results

        models = self._loaded()
        try:
            findings = analyse_request(models, request, self._analysis)
        finally:
            release_freed_memory()
        identity = findings.model
        # every object type: the worker sends each destination the types it wants
        started = time.perf_counter()
        objects = encode_results(
            findings,
            list(request.headers),
            analysis_round=max(1, request.analysis_round),
            device=self._device,
        )
        timings = {**findings.timings_s, "encode": round(time.perf_counter() - started, 4)}
        return AnalysisResult(
            objects=objects,
            model_name=identity.name,
            model_version=identity.version,
            model_sha256=identity.sha256,
            device=findings.device,
            document=findings.model_dump(mode="json"),
            patient_score=findings.patient.score,
            findings=findings,
            details={"timings_s": timings},
        )
