"""The radiomics classifier of a model bundle (PAPER.md "Radiomics classifier").

A :class:`RadiomicsClassifier` holds what inference needs and nothing else:

* the selected radiomics feature names, in the model's input order;
* the z-score scaler: the TRAINING mean and standard deviation of each
  selected feature (a feature whose training std is 0 becomes 0);
* an :class:`xgboost.Booster` (objective ``binary:logistic``), whose output is
  the probability of malignancy;
* ``use_age``: whether the patient's age in years is an extra, unscaled input
  (named :data:`AGE_FEATURE`, after the radiomics features); a missing age is
  passed as NaN, which XGBoost routes down each split's learned default branch.

It is stored as two plain files, never a pickle: :data:`MODEL_FILE`
(XGBoost's own JSON model format) and :data:`FEATURES_FILE`::

    {"format": 1,
     "selected_features": ["original_firstorder_Mean_recombined", ...],
     "scaler": {"mean": {"<name>": 12.3, ...}, "std": {"<name>": 4.5, ...}},
     "use_age": false}

The fitting side is :mod:`cem_node.training.radiomics_model`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "AGE_FEATURE",
    "FEATURES_FILE",
    "FEATURES_FORMAT",
    "MODEL_FILE",
    "ClassifierError",
    "RadiomicsClassifier",
    "write_atomic",
]

AGE_FEATURE = "clinical_age_years"
"""Input name of the patient's age (years) when a model uses it."""

MODEL_FILE = "radiomics_model.json"
FEATURES_FILE = "radiomics_features.json"
FEATURES_FORMAT = 1
"""Version of the :data:`FEATURES_FILE` layout."""

_FORBIDDEN_NAME_CHARS = "[]<"  # XGBoost rejects feature names containing these
_OBJECTIVE = "binary:logistic"


class ClassifierError(ValueError):
    """A radiomics model that cannot be built, loaded or applied (the message says why)."""


def _scaler_values(
    name: str, values: Mapping[str, float] | Sequence[float], features: Sequence[str]
) -> np.ndarray:
    """The scaler's ``mean`` or ``std`` as an array in the order of ``features``."""
    if isinstance(values, Mapping):
        missing = [f for f in features if f not in values]
        extra = sorted(set(values) - set(features))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"no value for {missing}")
            if extra:
                parts.append(f"values for unselected features {extra}")
            raise ClassifierError(f"scaler {name}: {'; '.join(parts)}")
        raw = [values[f] for f in features]
    else:
        raw = list(values)
        if len(raw) != len(features):
            raise ClassifierError(
                f"scaler {name} has {len(raw)} values for {len(features)} selected features"
            )
    out = np.empty(len(raw), dtype=float)
    for index, (feature, value) in enumerate(zip(features, raw, strict=True)):
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise ClassifierError(f"scaler {name} of {feature!r} is not a number: {value!r}")
        if not math.isfinite(float(value)):
            raise ClassifierError(f"scaler {name} of {feature!r} is not finite: {value!r}")
        out[index] = float(value)
    return out


class RadiomicsClassifier:
    """XGBoost on z-scored selected radiomics features (and optionally age).

    Parameters
    ----------
    booster
        A trained :class:`xgboost.Booster` with objective ``binary:logistic``
        and ``len(selected_features) + use_age`` inputs, in the order
        ``[*selected_features, AGE_FEATURE]``. Its feature names, when set,
        must be these; when unset they are set.
    selected_features
        The radiomics feature names the model uses, in input order (unique,
        non-empty, without ``[``, ``]`` or ``<``, and not :data:`AGE_FEATURE`).
    mean, std
        The training mean and standard deviation of each selected feature: a
        mapping name -> value, or a sequence aligned with
        ``selected_features``. ``std`` must be >= 0; a feature with std 0 is
        always scaled to 0.
    use_age
        Whether the age in years is the model's last input.

    Raises
    ------
    ClassifierError
        When the parts do not fit together (the message says how).
    """

    def __init__(
        self,
        booster: Any,
        selected_features: Sequence[str],
        mean: Mapping[str, float] | Sequence[float],
        std: Mapping[str, float] | Sequence[float],
        *,
        use_age: bool = False,
    ) -> None:
        import xgboost as xgb

        if not isinstance(booster, xgb.Booster):
            raise ClassifierError(f"booster must be an xgboost.Booster, got {type(booster)!r}")
        if isinstance(selected_features, str):
            raise ClassifierError("selected_features must be a sequence of names, not one string")
        features = tuple(selected_features)
        if not features:
            raise ClassifierError("a radiomics model needs at least one selected feature")
        for feature in features:
            if not isinstance(feature, str) or not feature:
                raise ClassifierError(f"feature names must be non-empty strings, got {feature!r}")
            if any(c in feature for c in _FORBIDDEN_NAME_CHARS):
                raise ClassifierError(
                    f"feature name {feature!r} contains one of {_FORBIDDEN_NAME_CHARS!r}, "
                    "which XGBoost does not accept"
                )
        duplicates = sorted({f for f in features if features.count(f) > 1})
        if duplicates:
            raise ClassifierError(f"selected features are not unique: {duplicates}")
        if AGE_FEATURE in features:
            raise ClassifierError(
                f"{AGE_FEATURE!r} is reserved for the age input (use_age), not a radiomics feature"
            )
        if not isinstance(use_age, bool):
            raise ClassifierError(f"use_age must be a bool, got {use_age!r}")
        mean_values = _scaler_values("mean", mean, features)
        std_values = _scaler_values("std", std, features)
        negative = [f for f, s in zip(features, std_values, strict=True) if s < 0]
        if negative:
            raise ClassifierError(f"scaler std is negative for {negative}")

        inputs = [*features, AGE_FEATURE] if use_age else list(features)
        objective = _objective(booster)
        if objective != _OBJECTIVE:
            raise ClassifierError(
                f"the booster's objective is {objective!r}; a radiomics model must use "
                f"{_OBJECTIVE!r} (its output is the probability of malignancy)"
            )
        if booster.num_features() != len(inputs):
            raise ClassifierError(
                f"the booster expects {booster.num_features()} inputs, the model has "
                f"{len(inputs)} ({len(features)} selected features"
                f"{' + age' if use_age else ''})"
            )
        if booster.feature_names is None:
            booster.feature_names = inputs
        elif list(booster.feature_names) != inputs:
            raise ClassifierError(
                f"the booster's feature names {list(booster.feature_names)} differ from the "
                f"model's inputs {inputs}"
            )
        self._booster = booster
        self._features = features
        self._mean = mean_values
        self._std = std_values
        self._use_age = use_age

    # --- what it holds -------------------------------------------------------------------

    @property
    def booster(self) -> Any:
        """The :class:`xgboost.Booster`."""
        return self._booster

    @property
    def selected_features(self) -> tuple[str, ...]:
        """The radiomics feature names, in input order."""
        return self._features

    @property
    def use_age(self) -> bool:
        return self._use_age

    @property
    def input_names(self) -> tuple[str, ...]:
        """The booster's inputs: the selected features, then :data:`AGE_FEATURE` if used."""
        return (*self._features, AGE_FEATURE) if self._use_age else self._features

    @property
    def scaler_mean(self) -> dict[str, float]:
        return dict(zip(self._features, self._mean.tolist(), strict=True))

    @property
    def scaler_std(self) -> dict[str, float]:
        return dict(zip(self._features, self._std.tolist(), strict=True))

    def __repr__(self) -> str:
        return (
            f"RadiomicsClassifier({len(self._features)} features, use_age={self._use_age}, "
            f"{self._booster.num_boosted_rounds()} trees)"
        )

    # --- inference -----------------------------------------------------------------------

    def feature_matrix(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        """The raw (unscaled) inputs of ``rows``: one row per lesion, selected features in order.

        Parameters
        ----------
        rows
            Per lesion, a mapping feature name -> value (it may hold more
            features than the selected ones). NaN is passed on as missing.

        Raises
        ------
        ClassifierError
            When a selected feature is missing from a row (all missing names
            are listed), or a value is not a number or infinite.
        """
        if isinstance(rows, Mapping):
            raise ClassifierError("rows must be a sequence of mappings (one per lesion), not one")
        matrix = np.empty((len(rows), len(self._features)), dtype=float)
        missing: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise ClassifierError(f"row {i} is not a mapping of feature values: {type(row)!r}")
            for j, feature in enumerate(self._features):
                if feature not in row:
                    missing.setdefault(feature, []).append(i)
                    continue
                value = row[feature]
                if isinstance(value, bool) or not isinstance(
                    value, int | float | np.integer | np.floating
                ):
                    raise ClassifierError(f"row {i}: {feature!r} is not a number: {value!r}")
                if math.isinf(float(value)):
                    raise ClassifierError(f"row {i}: {feature!r} is infinite")
                matrix[i, j] = float(value)
        if missing:
            listed = ", ".join(
                f"{feature!r} (rows {_row_list(where)})" for feature, where in missing.items()
            )
            raise ClassifierError(f"{len(missing)} selected radiomics feature(s) missing: {listed}")
        return matrix

    def scale(self, matrix: np.ndarray) -> np.ndarray:
        """Z-score a raw matrix (columns = selected features); 0 where the std is 0."""
        values = np.asarray(matrix, dtype=float)
        if values.ndim != 2 or values.shape[1] != len(self._features):
            raise ClassifierError(
                f"expected a matrix with {len(self._features)} columns, got shape {values.shape}"
            )
        constant = self._std == 0
        safe_std = np.where(constant, 1.0, self._std)
        scaled = (values - self._mean) / safe_std
        # a constant training feature carries no information: 0 (its mean), NaN stays missing
        scaled[:, constant] = np.where(np.isnan(values[:, constant]), np.nan, 0.0)
        return scaled

    def predict_matrix(
        self, matrix: np.ndarray, ages: Sequence[float | None] | np.ndarray | None = None
    ) -> np.ndarray:
        """P(malignant) for a raw matrix whose columns are :attr:`selected_features`.

        ``ages`` as in :meth:`predict_proba`. This is the path of
        :meth:`predict_proba` after the rows are turned into a matrix; training
        uses it to compute its predictions exactly as inference does.
        """
        import xgboost as xgb

        scaled = self.scale(matrix)
        if self._use_age:
            scaled = np.column_stack([scaled, _age_column(ages, scaled.shape[0])])
        elif ages is not None and len(ages) != scaled.shape[0]:
            raise ClassifierError(f"{len(ages)} ages for {scaled.shape[0]} rows")
        if scaled.shape[0] == 0:
            return np.empty(0, dtype=float)
        data = xgb.DMatrix(scaled, feature_names=list(self.input_names), missing=np.nan)
        return np.asarray(self._booster.predict(data, validate_features=True), dtype=float)

    def predict_proba(
        self, rows: Sequence[Mapping[str, float]], ages: Sequence[float | None] | None = None
    ) -> np.ndarray:
        """The probability of malignancy of each lesion.

        Parameters
        ----------
        rows
            Per lesion, a mapping radiomics feature name -> value (extra
            features are ignored; NaN is treated as missing by XGBoost).
        ages
            The patient's age in years per row (``None`` or NaN when unknown);
            ignored unless :attr:`use_age`. ``None`` means every age is
            unknown.

        Returns
        -------
        numpy.ndarray
            Shape ``(len(rows),)``, float64 in [0, 1].

        Raises
        ------
        ClassifierError
            When a selected feature is missing from a row (the message names
            every missing feature), a value is not a finite-or-NaN number, or
            ``ages`` has the wrong length or a negative age.
        """
        return self.predict_matrix(self.feature_matrix(rows), ages)

    # --- persistence ---------------------------------------------------------------------

    def features_document(self) -> dict[str, Any]:
        """The content of :data:`FEATURES_FILE` (plain JSON data)."""
        return {
            "format": FEATURES_FORMAT,
            "selected_features": list(self._features),
            "scaler": {"mean": self.scaler_mean, "std": self.scaler_std},
            "use_age": self._use_age,
        }

    def save(self, directory: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write :data:`MODEL_FILE` and :data:`FEATURES_FILE` into ``directory``.

        The directory is created if need be; each file is written to a
        temporary name and renamed, so a reader never sees half a file.

        Returns
        -------
        tuple of (Path, Path)
            The model JSON path and the features JSON path.
        """
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        model_path = folder / MODEL_FILE
        features_path = folder / FEATURES_FILE
        # XGBoost's own JSON model format (what Booster.save_model writes for *.json)
        write_atomic(model_path, bytes(self._booster.save_raw(raw_format="json")))
        text = json.dumps(self.features_document(), indent=2, allow_nan=False) + "\n"
        write_atomic(features_path, text.encode("utf-8"))
        return model_path, features_path

    @classmethod
    def load(
        cls, model_json_path: str | os.PathLike[str], features_json_path: str | os.PathLike[str]
    ) -> RadiomicsClassifier:
        """Read a model written by :meth:`save`.

        Raises
        ------
        ClassifierError
            When a file is missing or unreadable, is not valid JSON, has the
            wrong layout or format version, or the two files do not fit together.
        """
        import xgboost as xgb

        features_path = Path(features_json_path)
        model_path = Path(model_json_path)
        document = _read_json(features_path, "features file")
        selected, mean, std, use_age = _parse_features_document(document, features_path)
        model_document = _read_json(model_path, "model file")
        if not isinstance(model_document, dict) or "learner" not in model_document:
            raise ClassifierError(
                f"model file {model_path}: not an XGBoost JSON model (no 'learner' object)"
            )
        booster = xgb.Booster()
        try:
            booster.load_model(bytearray(model_path.read_bytes()))
        except xgb.core.XGBoostError as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise ClassifierError(
                f"model file {model_path}: XGBoost cannot load it: {first}"
            ) from error
        try:
            return cls(booster, selected, mean, std, use_age=use_age)
        except ClassifierError as error:
            raise ClassifierError(f"{model_path} with {features_path}: {error}") from error


# --- helpers -----------------------------------------------------------------------------


def _objective(booster: Any) -> str:
    try:
        config = json.loads(booster.save_config())
        return str(config["learner"]["objective"]["name"])
    except (ValueError, KeyError, TypeError) as error:  # pragma: no cover - XGBoost's own data
        raise ClassifierError(f"cannot read the booster's objective: {error}") from error


def _row_list(rows: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f", ... ({len(rows)} in all)" if len(rows) > limit else "")


def _age_column(ages: Sequence[float | None] | np.ndarray | None, n: int) -> np.ndarray:
    """Ages as a float column, NaN where unknown."""
    if ages is None:
        return np.full(n, np.nan)
    if isinstance(ages, str | bytes) or len(ages) != n:
        raise ClassifierError(f"{len(ages)} ages for {n} rows")
    column = np.empty(n, dtype=float)
    for i, age in enumerate(ages):
        if age is None:
            column[i] = np.nan
            continue
        if isinstance(age, bool) or not isinstance(age, int | float | np.integer | np.floating):
            raise ClassifierError(f"age of row {i} is not a number: {age!r}")
        value = float(age)
        if math.isinf(value) or value < 0:
            raise ClassifierError(f"age of row {i} must be a non-negative number of years: {age!r}")
        column[i] = value
    return column


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in its folder: a reader sees
    the old file or the new one, never a part."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise ClassifierError(f"{what} {path} does not exist") from error
    except UnicodeDecodeError as error:
        raise ClassifierError(
            f"{what} {path} is not valid JSON (not UTF-8 text: byte {error.start}; a binary "
            "model such as XGBoost's UBJSON is not accepted)"
        ) from error
    except OSError as error:
        raise ClassifierError(f"{what} {path} cannot be read: {error}") from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ClassifierError(
            f"{what} {path} is not valid JSON (line {error.lineno}, column {error.colno}: "
            f"{error.msg})"
        ) from error


def _parse_features_document(
    document: Any, path: Path
) -> tuple[list[str], dict[str, float], dict[str, float], bool]:
    where = f"features file {path}"
    if not isinstance(document, dict):
        raise ClassifierError(f"{where}: expected a JSON object, got {type(document).__name__}")
    expected = {"format", "selected_features", "scaler", "use_age"}
    missing = sorted(expected - set(document))
    if missing:
        raise ClassifierError(f"{where}: missing key(s) {missing}")
    unknown = sorted(set(document) - expected)
    if unknown:
        raise ClassifierError(f"{where}: unknown key(s) {unknown}")
    if document["format"] != FEATURES_FORMAT or isinstance(document["format"], bool):
        raise ClassifierError(
            f"{where}: format {document['format']!r} is not supported (expected {FEATURES_FORMAT})"
        )
    selected = document["selected_features"]
    if not isinstance(selected, list) or not all(isinstance(f, str) for f in selected):
        raise ClassifierError(f"{where}: 'selected_features' must be a list of strings")
    scaler = document["scaler"]
    if not isinstance(scaler, dict) or set(scaler) != {"mean", "std"}:
        raise ClassifierError(f"{where}: 'scaler' must be an object with 'mean' and 'std'")
    for key in ("mean", "std"):
        if not isinstance(scaler[key], dict):
            raise ClassifierError(f"{where}: 'scaler.{key}' must be an object name -> number")
    use_age = document["use_age"]
    if not isinstance(use_age, bool):
        raise ClassifierError(f"{where}: 'use_age' must be true or false, got {use_age!r}")
    return selected, scaler["mean"], scaler["std"], use_age
