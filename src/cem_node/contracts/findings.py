"""The findings of one analysed study: a typed, versioned document.

The analysis (:mod:`cem_node.pipeline`) produces it, the node stores it with
the job, the DICOM encoders (SEG, SR, GSPS) turn it into objects, and
``cem-node analyse --json`` prints it. Every geometric value is in the pixel
coordinates of the full-size source image (column, row; the centre of the
top-left pixel is (0, 0)), so no consumer has to know the preprocessing.

The JSON schema is :func:`findings_json_schema`; it is shipped as
``findings.schema.json`` next to this module. A change of the document's
meaning bumps :data:`FINDINGS_SCHEMA_VERSION`.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cem_node.contracts.params import DecisionThresholds

__all__ = [
    "FINDINGS_SCHEMA_VERSION",
    "SCORE_CAVEAT_MAX_CHARS",
    "BreastSummary",
    "Findings",
    "Lesion",
    "LesionMask",
    "ModelIdentity",
    "PatientSummary",
    "ViewResult",
    "findings_json_schema",
]

FINDINGS_SCHEMA_VERSION = "1.1"
SCHEMA_PATH = Path(__file__).with_name("findings.schema.json")

#: A score caveat fits in a segment or graphic group label (LO, 64) beside the score.
SCORE_CAVEAT_MAX_CHARS = 24

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Label = Literal["benign", "malignant"]
Laterality = Literal["L", "R"]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelIdentity(_Doc):
    """The model bundle that produced the findings."""

    name: str
    version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of manifest.toml.")
    intended_use: str
    for_clinical_use: bool
    disclaimer: str | None = Field(
        None, description='E.g. "synthetic phantom data, not for clinical use".'
    )
    score_caveat: str | None = Field(
        None,
        max_length=SCORE_CAVEAT_MAX_CHARS,
        description="Shown next to every malignancy score when the bundle's benign-vs-malignant "
        'classification is not validated, e.g. "score not validated".',
    )
    validation: str | None = Field(
        None,
        description="What the bundle is and is not validated for, with its figures "
        "(the manifest's [validation]).",
    )


class LesionMask(_Doc):
    """A binary mask inside a box of the source image, run-length encoded.

    ``runs`` alternate background and foreground lengths, starting with
    background (possibly 0), over the box's pixels in row-major order.
    """

    box: tuple[int, int, int, int] = Field(
        description="x0, y0, x1, y1 in source pixels (x1, y1 exclusive)."
    )
    runs: list[int]

    @model_validator(mode="after")
    def _runs_fill_box(self) -> LesionMask:
        x0, y0, x1, y1 = self.box
        if x1 <= x0 or y1 <= y0 or x0 < 0 or y0 < 0:
            raise ValueError(f"mask box {self.box} is empty or negative")
        if any(r < 0 for r in self.runs) or sum(self.runs) != (x1 - x0) * (y1 - y0):
            raise ValueError(
                f"mask runs cover {sum(self.runs)} pixels, the box holds {(x1 - x0) * (y1 - y0)}"
            )
        return self

    @classmethod
    def from_array(cls, mask: np.ndarray) -> LesionMask:
        """Encode a full-size boolean mask (rows x columns); it must not be empty."""
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 2 or not mask.any():
            raise ValueError("a lesion mask must be a non-empty 2-D array")
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        flat = mask[y0:y1, x0:x1].ravel()
        change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
        bounds = np.concatenate(([0], change, [flat.size]))
        runs = np.diff(bounds).tolist()
        if flat[0]:
            runs = [0, *runs]
        return cls(box=(x0, y0, x1, y1), runs=runs)

    def to_array(self, shape: tuple[int, int]) -> np.ndarray:
        """Decode into a boolean array of the source image's ``shape`` (rows, columns)."""
        x0, y0, x1, y1 = self.box
        if y1 > shape[0] or x1 > shape[1]:
            raise ValueError(f"mask box {self.box} does not fit an image of shape {shape}")
        values = np.zeros(len(self.runs), dtype=bool)
        values[1::2] = True
        flat = np.repeat(values, self.runs)
        out = np.zeros(shape, dtype=bool)
        out[y0:y1, x0:x1] = flat.reshape(y1 - y0, x1 - x0)
        return out

    @property
    def area_px(self) -> int:
        return int(sum(self.runs[1::2]))


class Lesion(_Doc):
    """One detected lesion on one view, with its scores and decisions."""

    lesion_id: str = Field(description='Short id unique in the study, e.g. "R-CC-1".')
    tracking_uid: str = Field(description="UID that tracks the lesion across SEG, SR and GSPS.")
    laterality: Laterality
    view: str = Field(description='View code value meaning, e.g. "CC" or "MLO".')
    recombined_sop_instance_uid: str
    low_energy_sop_instance_uid: str
    box: tuple[float, float, float, float] = Field(
        description="Detector box x0, y0, x1, y1 in source pixels."
    )
    outline: list[tuple[float, float]] = Field(
        min_length=3, description="Closed outline (column, row) in source pixels."
    )
    mask: LesionMask
    area_px: int = Field(ge=1)
    area_mm2: float | None = Field(None, description="None when the image has no pixel spacing.")
    max_diameter_mm: float | None = None
    detector_class: Label
    detector_score: Probability
    dl_probability: Probability
    radiomics_probability: Probability | None = None
    radiomics_error: str | None = Field(
        None, description="Why radiomics could not be computed (the fused score is then DL only)."
    )
    fused_probability: Probability
    fused_source: Literal["mean", "dl_only"]
    dl_label: Label
    radiomics_label: Label | None = None
    fused_label: Label
    agreement: bool | None = Field(
        None, description="DL and radiomics labels agree (None without radiomics)."
    )

    @model_validator(mode="after")
    def _fusion_consistent(self) -> Lesion:
        if (self.radiomics_probability is None) != (self.fused_source == "dl_only"):
            raise ValueError("fused_source must be 'dl_only' exactly when radiomics is missing")
        if self.radiomics_probability is None and self.radiomics_error is None:
            raise ValueError("a lesion without a radiomics probability must say why")
        return self


class ViewResult(_Doc):
    """One analysed LE/RC pair."""

    laterality: Laterality
    view: str
    recombined_sop_instance_uid: str
    low_energy_sop_instance_uid: str
    rows: int = Field(ge=1)
    columns: int = Field(ge=1)
    pixel_spacing_mm: tuple[float, float] | None = Field(
        None, description="Row and column spacing (ImagerPixelSpacing or PixelSpacing)."
    )
    lesion_ids: list[str] = Field(default_factory=list)


class BreastSummary(_Doc):
    """Per breast: the maximum fused probability over its lesions."""

    laterality: Laterality
    lesion_count: int = Field(ge=0)
    score: Probability | None = Field(None, description="None when no lesion was found.")
    label: Label


class PatientSummary(_Doc):
    """Per patient (study): the maximum fused probability over all lesions."""

    lesion_count: int = Field(ge=0)
    score: Probability | None = None
    label: Label


class Findings(_Doc):
    """Everything the analysis found in one study round."""

    # 1.1 added the bundle's score caveat and validation statement; 1.0 documents still read
    schema_version: Literal["1.0", "1.1"] = FINDINGS_SCHEMA_VERSION
    study_instance_uid: str
    patient_id: str | None = None
    patient_name: str | None = None
    accession_number: str | None = None
    patient_age_years: float | None = None
    model: ModelIdentity
    device: str = Field(description='Where the detector ran, e.g. "cpu" or "cuda:0 (H100)".')
    created: datetime
    thresholds: DecisionThresholds
    views: list[ViewResult]
    lesions: list[Lesion]
    breasts: list[BreastSummary]
    patient: PatientSummary
    notes: list[str] = Field(default_factory=list)
    timings_s: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _lesions_belong_to_views(self) -> Findings:
        ids = [lesion.lesion_id for lesion in self.lesions]
        if len(set(ids)) != len(ids):
            raise ValueError(f"lesion ids are not unique: {ids}")
        listed = [i for view in self.views for i in view.lesion_ids]
        if sorted(listed) != sorted(ids):
            raise ValueError("every lesion must be listed by exactly one view")
        return self

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> Findings:
        return cls.model_validate_json(text)


def findings_json_schema() -> dict[str, Any]:
    """The JSON schema of :class:`Findings` (what ``findings.schema.json`` holds)."""
    schema = Findings.model_json_schema()
    schema["$id"] = f"https://cem-node.invalid/schemas/findings-{FINDINGS_SCHEMA_VERSION}.json"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def write_json_schema(path: Path = SCHEMA_PATH) -> None:
    """Write the schema file (tests check the shipped one is current)."""
    path.write_text(json.dumps(findings_json_schema(), indent=2, sort_keys=True) + "\n")
