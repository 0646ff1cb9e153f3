"""The radiomics rows of :func:`~cem_node.training.radiomics_training.train_radiomics`:
the masks whose features are needed, their extraction and the feature cache.

See the module documentation of :mod:`cem_node.training.radiomics_training`
("Feature cache") for the cache's files and when a row is reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cem_node.contracts.params import RadiomicsSettings
from cem_node.pipeline.classifier import write_atomic

# the training's logger: its log lines keep the name they had before this module was split off
log = logging.getLogger("cem_node.training.radiomics_training")

CACHE_FEATURES = "features.npz"
CACHE_ROWS = "features.json"
CACHE_FORMAT = "cem-node/radiomics-feature-cache/v1"
_TRANSIENT = "radiomics worker failed"  # a dead worker: extracted again by the next run

MaskMode = Literal["manual", "detector"]


# --- hashing ----------------------------------------------------------------------------------


def settings_hash(settings: RadiomicsSettings) -> str:
    """A short hash of everything the features depend on besides the pixels and the mask.

    The settings, their pyradiomics parameters and the pyradiomics version.
    """
    import radiomics

    from cem_node.pipeline.radiomics import pyradiomics_params

    document = {
        "settings": settings.model_dump(mode="json"),
        "params": pyradiomics_params(settings),
        "pyradiomics": str(getattr(radiomics, "__version__", "?")),
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _mask_hash(mask: np.ndarray) -> str:
    array = np.asarray(mask, dtype=bool)
    digest = hashlib.sha256(np.asarray(array.shape, dtype=np.int64).tobytes())
    digest.update(np.packbits(array, axis=None).tobytes())
    return digest.hexdigest()[:16]


def _pixels_hash(low_energy: np.ndarray, recombined: np.ndarray) -> str:
    digest = hashlib.sha256()
    for image in (low_energy, recombined):
        array = np.ascontiguousarray(image, dtype=np.float32)
        digest.update(np.asarray(array.shape, dtype=np.int64).tobytes())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    with Path(path).open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# --- rows and the feature cache ----------------------------------------------------------------


@dataclass
class _Row:
    """One mask whose radiomics is needed."""

    sample_key: str
    patient_id: str
    study_id: str
    laterality: str
    view: str
    lesion_id: str
    label: str | None  # benign / malignant; None for an unmatched detection
    mask_mode: MaskMode
    mask_sha: str
    pixels_sha: str
    train: bool  # trains the classifier
    gt_index: int | None = None  # the ground-truth lesion (manual row, matched detection)
    dl_probability: float | None = None  # detections (and manual rows with a match)
    score: float | None = None
    iou: float | None = None
    features: np.ndarray | None = None
    error: str | None = None
    cached: bool = False
    link: int | None = None  # detection row -> its training row (manual mode)

    def key(self, settings_id: str) -> str:
        return "|".join(
            (self.sample_key, self.mask_mode, self.mask_sha, self.pixels_sha, settings_id)
        )

    def describe(self, settings_id: str) -> dict[str, Any]:
        return {
            "sample": self.sample_key,
            "patient_id": self.patient_id,
            "study_id": self.study_id,
            "laterality": self.laterality,
            "view": self.view,
            "lesion_id": self.lesion_id,
            "label": self.label,
            "mask_mode": self.mask_mode,
            "mask_sha256": self.mask_sha,
            "pixels_sha256": self.pixels_sha,
            "settings_hash": settings_id,
            "error": self.error,
        }


@dataclass
class _Cache:
    names: list[str] | None
    rows: dict[str, tuple[dict[str, Any], np.ndarray]]  # key -> (description, features)
    note: str | None = None


def _load_cache(out_dir: Path, settings_id: str) -> _Cache:
    rows_path, matrix_path = out_dir / CACHE_ROWS, out_dir / CACHE_FEATURES
    if not rows_path.is_file() or not matrix_path.is_file():
        return _Cache(None, {})
    try:
        document = json.loads(rows_path.read_text(encoding="utf-8"))
        with np.load(matrix_path, allow_pickle=False) as data:
            matrix = np.asarray(data["features"], dtype=float)
        names = [str(n) for n in document["feature_names"]]
        described = list(document["rows"])
        if document.get("format") != CACHE_FORMAT:
            raise ValueError(f"format {document.get('format')!r} is not {CACHE_FORMAT!r}")
        if matrix.shape != (len(described), len(names)):
            raise ValueError(
                f"{CACHE_FEATURES} has shape {matrix.shape}, {CACHE_ROWS} describes "
                f"{len(described)} rows x {len(names)} features"
            )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        note = f"feature cache in {out_dir} ignored: {exc}"
        log.warning("%s", note)
        return _Cache(None, {}, note)
    rows = {}
    for description, values in zip(described, matrix, strict=True):
        if description.get("settings_hash") != settings_id:
            continue
        key = "|".join(
            str(description.get(k))
            for k in ("sample", "mask_mode", "mask_sha256", "pixels_sha256", "settings_hash")
        )
        rows[key] = (description, values)
    return _Cache(names if rows else None, rows)


def _save_cache(
    out_dir: Path,
    settings_id: str,
    names: list[str],
    rows: Sequence[_Row],
    cache: _Cache,
) -> None:
    described: list[dict[str, Any]] = []
    vectors: list[np.ndarray] = []
    seen: set[str] = set()
    for row in rows:
        key = row.key(settings_id)
        if key in seen or (row.features is None and row.error is None):  # not extracted yet
            continue
        seen.add(key)
        described.append(row.describe(settings_id))
        vectors.append(row.features if row.features is not None else np.full(len(names), np.nan))
    if cache.names == names:  # rows of earlier runs with these settings, not asked for now
        for key, (description, values) in cache.rows.items():
            if key not in seen:
                seen.add(key)
                described.append(description)
                vectors.append(values)
    matrix = np.vstack(vectors) if vectors else np.empty((0, len(names)))
    document = {
        "format": CACHE_FORMAT,
        "settings_hash": settings_id,
        "feature_names": names,
        "rows": described,
    }
    write_atomic(out_dir / CACHE_ROWS, _json_bytes(document))
    handle, temporary = tempfile.mkstemp(prefix=f".{CACHE_FEATURES}.", suffix=".npz", dir=out_dir)
    os.close(handle)
    try:
        np.savez(temporary, features=np.asarray(matrix, dtype=np.float64))
        Path(temporary).replace(out_dir / CACHE_FEATURES)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --- extraction --------------------------------------------------------------------------------


class _FeatureQueue:
    """Every row asked for, and the radiomics extractions still pending.

    A row found in the cache (with its features, or its non-transient error)
    is taken from it; any other is queued. Pending jobs are extracted in
    chunks (a pool of workers per chunk, its startup amortised; the cropped
    images of at most one chunk in memory) and the cache is saved after each,
    so an interrupted run goes on where it stopped.
    """

    def __init__(
        self,
        out: Path,
        settings: RadiomicsSettings,
        settings_id: str,
        cache: _Cache,
        workers: int,
        progress: Callable[[str, int, int], None] | None,
    ) -> None:
        self.out = out
        self.settings = settings
        self.settings_id = settings_id
        self.cache = cache
        self.workers = workers
        self.progress = progress
        self.rows: list[_Row] = []
        self.jobs: list[Any] = []  # RadiomicsJob per row to extract; job_rows: its row index
        self.job_rows: list[int] = []
        self.names: list[str] | None = list(cache.names) if cache.names else None
        self.chunk = max(64, workers * 50)
        self.extracted = 0
        self.seconds = 0.0  # spent in the chunks extracted by extract_if_full

    def want(
        self, row: _Row, le: np.ndarray, rc: np.ndarray, mask: np.ndarray, spacing: Any
    ) -> None:
        """Add ``row``: from the cache when it holds it, else queued for extraction."""
        from cem_node.pipeline.radiomics import make_job

        index = len(self.rows)
        self.rows.append(row)
        hit = self.cache.rows.get(row.key(self.settings_id))
        if hit is not None and not str(hit[0].get("error") or "").startswith(_TRANSIENT):
            description, values = hit
            row.cached = True
            row.error = description.get("error")
            row.features = None if row.error else np.asarray(values, dtype=float)
            return
        self.jobs.append(make_job(f"{index}", le, rc, mask, spacing, self.settings))
        self.job_rows.append(index)

    def extract_if_full(self) -> None:
        """Extract the pending jobs when a chunk is full (timed in :attr:`seconds`)."""
        if len(self.jobs) >= self.chunk:
            tick_radiomics = time.perf_counter()
            self.extract_pending()
            self.seconds += time.perf_counter() - tick_radiomics

    def extract_pending(self) -> None:
        """Extract every pending job, then save the cache."""
        from cem_node.pipeline.radiomics import extract_many

        if not self.jobs:
            return
        if self.progress is not None:
            self.progress("radiomics", self.extracted, self.extracted + len(self.jobs))
        results = extract_many(self.jobs, self.settings, workers=self.workers)
        for index, result in zip(self.job_rows, results, strict=True):
            self._store(self.rows[index], result)
        self.extracted += len(self.jobs)
        self.jobs.clear()
        self.job_rows.clear()
        if self.names is not None:
            _save_cache(self.out, self.settings_id, self.names, self.rows, self.cache)

    def _store(self, row: _Row, result: Any) -> None:
        if result.features is None:
            row.error = result.error or "radiomics unavailable"
            return
        if self.names is None:
            self.names = sorted(result.features)
        if set(result.features) != set(self.names):
            row.error = (
                f"feature set differs from the other rows ({len(result.features)} vs "
                f"{len(self.names)} features)"
            )
            return
        row.features = np.array([result.features[n] for n in self.names], dtype=float)


# --- files -------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _json_bytes(document: Any) -> bytes:
    return (json.dumps(_plain(document), indent=2, allow_nan=False) + "\n").encode("utf-8")
