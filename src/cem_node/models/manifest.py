"""The manifest of a model bundle: ``manifest.toml``, validated strictly.

A bundle is a folder holding ``manifest.toml`` and the files it lists (see
``models/README.md`` for the format). The manifest pins every parameter
of the analysis (:mod:`cem_node.contracts.params`), says what the models
are for (and, where it applies, that they are not for clinical use), how
they were trained, and the SHA-256 of every other file of the bundle; the
SHA-256 of the manifest's bytes is therefore the hash of the whole bundle.

Validation is strict: unknown keys are errors, values are not coerced
(``"yes"`` is not a boolean, ``"256"`` not a number), and every problem is
reported with its dotted field path (``detector.fpn_channels: ...``).

This module must not import torch or xgboost: loading weights is the
analysis's job, this is only the description of what to load.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cem_node.contracts.findings import SCORE_CAVEAT_MAX_CHARS
from cem_node.contracts.params import (
    CLASS_NAMES,
    DecisionThresholds,
    DetectorConfig,
    PostprocessParams,
    PreprocessParams,
    RadiomicsSettings,
)

__all__ = [
    "BUNDLE_NAME_PATTERN",
    "DEFAULT_SCORE_CAVEAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "BundleError",
    "BundleExistsError",
    "BundleInfo",
    "BundleManifest",
    "BundleUsageError",
    "DetectorSection",
    "IntendedUse",
    "ManifestDraft",
    "RadiomicsSection",
    "TrainingInfo",
    "UnknownBundleError",
    "Validation",
    "check_bundle_name",
    "check_bundle_path",
    "describe_validation_error",
    "draft_from",
    "manifest_to_toml",
    "parse_manifest",
]

FORMAT_VERSION = 1
"""The ``format_version`` this code reads and writes."""

MANIFEST_NAME = "manifest.toml"

BUNDLE_NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$"
"""A bundle name: a safe folder name (lower case letters, digits, ``.``, ``_``, ``-``)."""

_NAME_RE = re.compile(BUNDLE_NAME_PATTERN)
_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")
_SHA256_PATTERN = r"^[0-9a-f]{64}$"

NOT_FOR_CLINICAL_USE = "not for clinical use"

DEFAULT_SCORE_CAVEAT = "score not validated"
"""Next to every malignancy score of a bundle whose classification is not validated."""


# --------------------------------------------------------------------------- errors


class BundleError(ValueError):
    """A model bundle that cannot be used: what is wrong and what to do.

    Attributes
    ----------
    problems : list of str
        One line per problem (a checksum mismatch, a missing file ...).
    path : pathlib.Path or None
        The bundle folder (or file) concerned.
    """

    def __init__(
        self, message: str, *, problems: Sequence[str] = (), path: Path | None = None
    ) -> None:
        super().__init__(message)
        self.problems = list(problems) or [message]
        self.path = path


class BundleUsageError(BundleError):
    """The request itself is wrong (the command line exits with 2, not 1)."""


class UnknownBundleError(BundleUsageError):
    """No bundle of that name (or not a valid bundle name)."""


class BundleExistsError(BundleUsageError):
    """A bundle (or folder) of that name is already there."""


# --------------------------------------------------------------------------- field types


def check_bundle_name(value: str) -> str:
    """Return `value` if it is a valid bundle name, else raise ValueError saying why."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid bundle name: 1-64 lower-case letters, digits, '.', "
            "'_' or '-', starting and ending with a letter or digit (e.g. 'cem-demo')"
        )
    if value.endswith(".toml"):
        raise ValueError(f"{value!r} is not a valid bundle name: it must not end in '.toml'")
    return value


def check_bundle_path(value: str) -> str:
    """Return `value` if it is a plain relative file name inside a bundle, else raise ValueError.

    Allowed: ``detector.safetensors``, ``radiomics/params.json``. Refused: absolute
    paths, ``..``, backslashes, hidden names (``.x``), ``manifest.toml`` itself.
    """
    if not value:
        raise ValueError("a file name must not be empty")
    if "\\" in value:
        raise ValueError(f"{value!r}: use '/' to separate folders, not '\\'")
    path = PurePosixPath(value)
    if path.is_absolute() or re.match(r"^[A-Za-z]:", value):
        raise ValueError(f"{value!r}: must be a relative path inside the bundle, not absolute")
    parts = value.split("/")
    if ".." in parts:
        raise ValueError(f"{value!r}: must stay inside the bundle (no '..')")
    for part in parts:
        if not _PART_RE.match(part):
            raise ValueError(
                f"{value!r}: each part of a file name must be letters, digits, '.', '_', '+' "
                "or '-', not empty and not starting with '.'"
            )
    if value == MANIFEST_NAME:
        raise ValueError(f"{MANIFEST_NAME} is the manifest itself and is not listed in [files]")
    return value


BundleName = Annotated[str, AfterValidator(check_bundle_name)]
BundlePath = Annotated[str, AfterValidator(check_bundle_path)]
Sha256Hex = Annotated[str, Field(pattern=_SHA256_PATTERN)]
Text = Annotated[str, Field(min_length=1)]
Scalar = bool | int | float | str


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# --------------------------------------------------------------------------- sections


class BundleInfo(_Section):
    """``[bundle]``: what this bundle is."""

    name: BundleName = Field(description="The bundle's name; also its folder's name.")
    version: Text = Field(description='Free-form version, e.g. "1.0.0" or "2025-01-06".')
    created: dt.datetime = Field(description="When the bundle was made (TOML date-time).")
    description: Text


class IntendedUse(_Section):
    """``[intended_use]``: what the models may be used for."""

    statement: Text = Field(description="What the models are for, in one or two sentences.")
    for_clinical_use: bool
    disclaimer: str | None = Field(
        None, description='Shown with every result, e.g. "synthetic data, not for clinical use".'
    )

    @model_validator(mode="after")
    def _disclaimer_when_not_clinical(self) -> IntendedUse:
        if not self.for_clinical_use and not (self.disclaimer or "").strip():
            raise ValueError(
                "for_clinical_use = false requires a disclaimer (shown with every result), "
                f'e.g. disclaimer = "research software, {NOT_FOR_CLINICAL_USE}"'
            )
        return self


class Validation(_Section):
    """``[validation]``: what the models were validated on, with the figures, and what not.

    Without this section a bundle's benign-vs-malignant classification counts
    as not validated: every score it produces carries :data:`DEFAULT_SCORE_CAVEAT`.
    """

    detection: str | None = Field(
        None,
        description="Detection and segmentation: the data (real or synthetic, patients, "
        "split) and the figures with their intervals; absent: not validated.",
    )
    classification_validated: bool = Field(
        False,
        description="Whether the benign-vs-malignant classification was validated on real "
        "benign and malignant lesions.",
    )
    classification: Text = Field(
        description="Classification: on what it was validated, or why it is not."
    )
    score_caveat: str | None = Field(
        None,
        max_length=SCORE_CAVEAT_MAX_CHARS,
        description="Shown next to every score while classification_validated is false "
        f'(default "{DEFAULT_SCORE_CAVEAT}").',
    )

    @model_validator(mode="after")
    def _caveat_only_when_not_validated(self) -> Validation:
        if self.classification_validated and self.score_caveat:
            raise ValueError("score_caveat is for a classification that is not validated")
        return self

    def caveat(self) -> str | None:
        """The text shown next to every malignancy score (None: validated)."""
        if self.classification_validated:
            return None
        return self.score_caveat or DEFAULT_SCORE_CAVEAT

    def statement(self) -> str:
        """One paragraph: what is validated and what is not."""
        detection = self.detection or "Detection and segmentation: not validated."
        return f"{detection} {self.classification}"


class TrainingInfo(_Section):
    """``[training]``: how the models were made, so that it can be reproduced."""

    description: Text
    synthetic: bool = Field(description="Trained on synthetic (phantom) data only.")
    command: str | None = Field(None, description="The command that reproduces the training.")
    seed: int
    data: str | dict[str, Scalar] = Field(
        description="The training data: free text, or a table (e.g. studies = 400)."
    )


class DetectorSection(DetectorConfig):
    """``[detector]``: the :class:`DetectorConfig` fields and the weights file."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    weights: BundlePath = Field(
        "detector.safetensors", description="The detector's weights (safetensors)."
    )
    classes: tuple[str, ...] = Field(
        CLASS_NAMES, description="The detector's classes, in the order of its outputs."
    )

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if tuple(value) != CLASS_NAMES:
            raise ValueError(f"must be {list(CLASS_NAMES)} (the classes this code knows)")
        return value

    def config(self) -> DetectorConfig:
        """The architecture alone (without the bundle's file names)."""
        return DetectorConfig(**self.model_dump(include=set(DetectorConfig.model_fields)))


class RadiomicsSection(RadiomicsSettings):
    """``[radiomics]``: the :class:`RadiomicsSettings` fields and the radiomics files."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    model: BundlePath = Field(
        "radiomics_model.json", description="The XGBoost classifier (XGBoost JSON)."
    )
    features: BundlePath = Field(
        "radiomics_features.json", description="The selected features (JSON)."
    )
    params: BundlePath = Field(
        "radiomics_params.json", description="The pyradiomics parameter file (JSON)."
    )
    scaler: BundlePath | None = Field(
        None, description="Optional feature scaler (JSON), when not inside the features file."
    )

    def settings(self) -> RadiomicsSettings:
        """The pyradiomics settings alone (without the bundle's file names)."""
        return RadiomicsSettings(**self.model_dump(include=set(RadiomicsSettings.model_fields)))


class ManifestDraft(_Section):
    """A manifest without its ``[files]`` table: what :func:`write_bundle` is given."""

    format_version: Literal[1] = FORMAT_VERSION
    bundle: BundleInfo
    intended_use: IntendedUse
    training: TrainingInfo
    detector: DetectorSection = Field(default_factory=DetectorSection)
    preprocessing: PreprocessParams = Field(default_factory=PreprocessParams)
    postprocessing: PostprocessParams = Field(default_factory=PostprocessParams)
    radiomics: RadiomicsSection = Field(default_factory=RadiomicsSection)
    thresholds: DecisionThresholds = Field(default_factory=DecisionThresholds)
    validation: Validation | None = Field(
        None, description="What is and is not validated (absent: classification is not)."
    )
    metrics: dict[str, float | str] = Field(
        default_factory=dict, description="Evaluation results, e.g. auc_patient = 0.91."
    )

    @model_validator(mode="after")
    def _synthetic_is_not_clinical(self) -> ManifestDraft:
        use = self.intended_use
        if self.training.synthetic and (
            use.for_clinical_use or NOT_FOR_CLINICAL_USE not in (use.disclaimer or "").lower()
        ):
            raise ValueError(
                "training.synthetic = true requires intended_use.for_clinical_use = false and "
                f'an intended_use.disclaimer containing "{NOT_FOR_CLINICAL_USE}"'
            )
        return self

    def score_caveat(self) -> str | None:
        """What every malignancy score of this bundle is shown with (None: validated)."""
        if self.validation is None:
            return DEFAULT_SCORE_CAVEAT
        return self.validation.caveat()

    def referenced_files(self) -> dict[str, str]:
        """The files the sections name: ``{"detector.weights": "detector.safetensors", ...}``."""
        refs = {
            "detector.weights": self.detector.weights,
            "radiomics.model": self.radiomics.model,
            "radiomics.features": self.radiomics.features,
            "radiomics.params": self.radiomics.params,
        }
        if self.radiomics.scaler is not None:
            refs["radiomics.scaler"] = self.radiomics.scaler
        return refs


class BundleManifest(ManifestDraft):
    """The whole ``manifest.toml``: the draft plus ``[files]`` (name -> sha256)."""

    files: dict[BundlePath, Sha256Hex] = Field(
        description="Every other file of the bundle: relative path -> SHA-256 (hex)."
    )

    @model_validator(mode="after")
    def _references_listed(self) -> BundleManifest:
        missing = [
            f"{key} = {name!r}"
            for key, name in self.referenced_files().items()
            if name not in self.files
        ]
        if missing:
            raise ValueError(
                f"not listed in [files]: {', '.join(missing)} "
                "(every file the manifest names needs its sha256 in [files])"
            )
        return self

    def draft(self) -> ManifestDraft:
        """This manifest without its ``[files]`` table."""
        return ManifestDraft.model_validate_json(self.model_dump_json(exclude={"files"}))


# --------------------------------------------------------------------------- reading, writing


def _jsonable(value: Any) -> Any:
    """TOML values as JSON (date-times as ISO text) for strict JSON-mode validation."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return value


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            out += " (the name)"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}" if out else part
        else:
            out += f'."{part}"' if out else f'"{part}"'
    return out


_UNION_TAGS = re.compile(r"^(bool|int|float|str|dict\[.*\]|function-.*|none)$")


def describe_validation_error(exc: ValidationError) -> list[str]:
    """One ``dotted.path: why (got X)`` line per problem of a pydantic error."""
    lines: dict[str, list[str]] = {}
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        if len(loc) > 1 and isinstance(loc[-1], str) and _UNION_TAGS.match(loc[-1]):
            loc = loc[:-1]  # one line per field for "int | str" unions
        key = _dotted(loc)
        msg = str(err["msg"])
        for prefix in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(prefix)
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not part of the bundle format; see models/README.md)"
        elif err["type"] == "missing":
            msg = "missing (required)"
        elif err["type"] != "value_error" and isinstance(
            err.get("input"), str | int | float | bool
        ):
            msg += f" (got {err['input']!r})"
        bucket = lines.setdefault(key, [])
        if msg not in bucket:
            bucket.append(msg)
    return [
        f"{key}: {'; or '.join(msgs)}" if key else "; ".join(msgs) for key, msgs in lines.items()
    ]


def parse_manifest(data: bytes, source: str = MANIFEST_NAME) -> BundleManifest:
    """Parse and validate the bytes of a ``manifest.toml``.

    Raises
    ------
    BundleError
        Invalid TOML (with its line and column) or an invalid manifest (one
        line per problem, each with its field path).
    """
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BundleError(f"{source}: not UTF-8 text ({exc}): not a manifest") from None
    except tomllib.TOMLDecodeError as exc:
        raise BundleError(
            f"{source}: invalid TOML: {exc}; fix the file or restore the original bundle"
        ) from None
    version = raw.get("format_version")
    if version is None:
        raise BundleError(
            f"{source}: format_version is missing: the first line of a manifest must be "
            f"format_version = {FORMAT_VERSION}; is this a cem-node model bundle?"
        )
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{source}: format_version = {version!r} is not supported: this cem-node reads "
            f"format_version = {FORMAT_VERSION}"
            + (" (a newer cem-node wrote it?)" if isinstance(version, int) else "")
        )
    try:
        return BundleManifest.model_validate_json(json.dumps(_jsonable(raw)), strict=True)
    except ValidationError as exc:
        problems = describe_validation_error(exc)
        raise BundleError(
            f"{source}: invalid manifest:\n  " + "\n  ".join(problems), problems=problems
        ) from None


def manifest_to_toml(manifest: BundleManifest) -> bytes:
    """The bytes of ``manifest.toml`` for `manifest` (parse_manifest reads them back equal)."""
    data = manifest.model_dump(mode="python", exclude_none=True)
    if not data.get("metrics"):
        data.pop("metrics", None)
    header = (
        "# cem-node model bundle manifest (format described in models/README.md).\n"
        "# The SHA-256 of this file identifies the bundle; [files] pins every other file.\n\n"
    )
    return (header + tomli_w.dumps(data)).encode("utf-8")


def draft_from(value: ManifestDraft | Mapping[str, Any]) -> ManifestDraft:
    """A :class:`ManifestDraft` from a draft, a manifest (its [files] dropped) or a mapping."""
    if isinstance(value, BundleManifest):
        return value.draft()
    if isinstance(value, ManifestDraft):
        return value
    data = dict(value)
    data.pop("files", None)
    try:
        return ManifestDraft.model_validate_json(json.dumps(_jsonable(data)))
    except ValidationError as exc:
        problems = describe_validation_error(exc)
        raise BundleError(
            "invalid manifest:\n  " + "\n  ".join(problems), problems=problems
        ) from None
