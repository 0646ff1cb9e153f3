"""The analysis sections: study assembly, CEM image selection and the model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from cem_node.config.base import (
    Fraction,
    OptionalPath,
    Patterns,
    _check_patterns,
    _Section,
    shipped_models_dir,
)


class AssemblySection(_Section):
    """When a received study is considered complete (no DICOM message says so)."""

    quiet_period_s: float = Field(
        30.0,
        ge=0,
        description="Seconds without a new instance after which a study is complete.",
    )
    max_wait_s: float = Field(
        600.0,
        gt=0,
        description=(
            "Seconds after the first instance after which a study is completed even if "
            "instances keep arriving. Later instances trigger a re-analysis. A quiet study "
            "whose low-energy images have no recombined image yet also waits this long "
            "before it is analysed (or reported not analysable)."
        ),
    )
    check_interval_s: float = Field(
        5.0, gt=0, description="Seconds between two checks for complete studies."
    )

    @model_validator(mode="after")
    def _ordered(self) -> AssemblySection:
        if self.max_wait_s < self.quiet_period_s:
            raise ValueError(
                f"max_wait_s ({self.max_wait_s}) must not be shorter than "
                f"quiet_period_s ({self.quiet_period_s})"
            )
        return self


_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")
_HEX2 = re.compile(r"[0-9A-Fa-f]{2}")


class PrivateTagRule(_Section):
    """A vendor private attribute whose value marks a CEM role."""

    group: str = Field(description="Odd group number, 4 hex digits, e.g. 0045 (GE).")
    private_creator: str = Field(
        min_length=1, description="Private Creator of the block, e.g. GEMS_SENO_02."
    )
    element: str = Field(description="Element offset in the block, 2 hex digits, e.g. 10.")
    pattern: str = Field(description="Regular expression searched in the value (as text).")
    role: Literal["low_energy", "recombined", "high_energy"] = Field(
        description="The role an image gets when the pattern matches."
    )

    @field_validator("group")
    @classmethod
    def _odd_group(cls, value: str) -> str:
        if not _HEX4.fullmatch(value) or int(value, 16) % 2 == 0:
            raise ValueError("must be an odd group of 4 hex digits, e.g. 0045")
        return value.upper()

    @field_validator("element")
    @classmethod
    def _offset(cls, value: str) -> str:
        if not _HEX2.fullmatch(value):
            raise ValueError("must be 2 hex digits, the element's offset in its block, e.g. 10")
        return value.upper()

    @field_validator("pattern")
    @classmethod
    def _regex(cls, value: str) -> str:
        _check_patterns([value])
        return value


VendorPresetName = Literal["ge", "hologic", "siemens", "fujifilm"]


class SelectionSection(_Section):
    """Rules that classify CEM images as low energy (LE), high energy (HE) or recombined (RC),
    and how they are paired.

    Signals, first that decides wins: the SOP class; explicit DICOM markers
    (Image Type values, the multi-energy derivation code, vendor presets'
    terms and codes, private_tag_rules); then heuristics (a DERIVED image's
    description, kVp/filter/contrast, SeriesDescription). docs/VENDORS.md
    gives the vendor facts and their sources.
    """

    low_energy_kvp_max: float = Field(
        35.0,
        gt=0,
        description="An image acquired at or below this kVp is low energy (LE is ~26-32 kVp).",
    )
    high_energy_kvp_min: float = Field(
        40.0,
        gt=0,
        description="An image acquired at or above this kVp is high energy (HE is ~45-49 kVp).",
    )
    recombined_image_type_values: list[str] = Field(
        default_factory=lambda: ["SUBTRACTION", "RECOMBINED"],
        description=(
            "ImageType values (value 4 and later) that mark a recombined image, whatever "
            "the manufacturer. PS3.3 C.8.11.7.1.4 defines SUBTRACTION; RECOMBINED is GE's "
            "term, reported for other vendors too (unconfirmed, docs/VENDORS.md), and no "
            "conventional image carries it, so it is accepted from an image whose "
            "Manufacturer was removed or is another's."
        ),
    )
    low_energy_image_type_values: list[str] = Field(
        default_factory=lambda: ["LOW_ENERGY"],
        description="ImageType values (value 4 and later) that mark a low-energy image.",
    )
    high_energy_image_type_values: list[str] = Field(
        default_factory=lambda: ["HIGH_ENERGY"],
        description="ImageType values (value 4 and later) that mark a high-energy image.",
    )
    vendor_presets: list[VendorPresetName] = Field(
        default_factory=lambda: ["ge", "hologic", "siemens", "fujifilm"],
        description=(
            "Vendor rule sets used for the images whose Manufacturer is that vendor's (all "
            "of them when an image has no Manufacturer): the vendor's own ImageType terms "
            "and processing codes, as docs/VENDORS.md lists them with their sources (GE: "
            "RECOMBINED, GEMS_CESM_1; no public source confirms further values)."
        ),
    )
    low_energy_series_description_patterns: Patterns = Field(
        default_factory=lambda: [
            r"(?i)(?<![a-z])low[\s_-]*energy(?![a-z])",
            r"(?<![A-Za-z])LE(?![A-Za-z])",
        ],
        description=(
            "Regular expressions (Python syntax) searched in SeriesDescription that mark "
            "a low-energy image. The short label LE is matched in capitals only, between "
            "non-letters (CESM_LE, LE CC), so that words such as the French 'le' do not."
        ),
    )
    high_energy_series_description_patterns: Patterns = Field(
        default_factory=lambda: [
            r"(?i)(?<![a-z])high[\s_-]*energy(?![a-z])",
            r"(?<![A-Za-z])HE(?![A-Za-z])",
        ],
        description=(
            "Regular expressions searched in SeriesDescription that mark a high-energy "
            "image (HE in capitals only)."
        ),
    )
    recombined_series_description_patterns: Patterns = Field(
        default_factory=lambda: [
            r"(?i)(?<![a-z])recombin",
            r"(?i)(?<![a-z])subtra[ck]t",
            r"(?<![A-Za-z])(SUB|Sub)(?![A-Za-z])",
        ],
        description=(
            "Regular expressions searched in SeriesDescription (and, for a DERIVED image, "
            "DerivationDescription) that mark a recombined image."
        ),
    )
    high_energy_filter_materials: list[str] = Field(
        default_factory=lambda: ["COPPER", "TITANIUM"],
        description=(
            "FilterMaterial values of a CEM high-energy exposure (copper or titanium). An "
            "image with one of them and kVp >= high_energy_kvp_min is high energy "
            "(ORIGINAL) or recombined (DERIVED), even if no contrast agent is recorded."
        ),
    )
    use_private_tags: bool = Field(
        True,
        description=(
            "Also use vendor codes when the Image Type does not decide: the processing "
            "codes of vendor_presets (GE's GEMS_CESM_1) and the private_tag_rules below."
        ),
    )
    private_tag_rules: list[PrivateTagRule] = Field(
        default_factory=list,
        description=(
            "Vendor private attributes that mark a role, as inline tables: "
            '{ group = "0045", private_creator = "GEMS_SENO_02", element = "10", '
            'pattern = "RECOMB", role = "recombined" }. Exact vendor values are not '
            "documented publicly: check them on your own images (cem-node studies show "
            "prints why each image got its role)."
        ),
    )
    for_processing: Literal["fallback", "exclude", "prefer"] = Field(
        "fallback",
        description=(
            "For Processing (raw) images, when a modality sends them beside the For "
            'Presentation ones: "fallback" pairs the For Presentation images (the model '
            "was trained on them) and a For Processing one only where a breast and view "
            'has no For Presentation image of that role, saying so; "exclude" never pairs '
            'them; "prefer" pairs them first. The reason is shown by cem-node studies show.'
        ),
    )
    not_analysable_report: bool = Field(
        True,
        description=(
            "Send an SR saying why a study could not be analysed (no LE/RC pair ...) "
            "instead of sending nothing."
        ),
    )

    @model_validator(mode="after")
    def _kvp_ordered(self) -> SelectionSection:
        if self.low_energy_kvp_max >= self.high_energy_kvp_min:
            raise ValueError(
                f"low_energy_kvp_max ({self.low_energy_kvp_max}) must be below "
                f"high_energy_kvp_min ({self.high_energy_kvp_min})"
            )
        return self


class AnalysisSection(_Section):
    """The analysis: model bundle, device and detection parameters."""

    @property
    def bundles_dir(self) -> Path:
        """The folder of model bundles in use: ``models_dir``, else the shipped one."""
        return self.models_dir if self.models_dir is not None else shipped_models_dir()

    model: str = Field(
        "cem-cdd-research",
        min_length=1,
        description=(
            "Name of the model bundle to use (a folder in models_dir). Shipped: "
            "cem-cdd-research (the default: its detector trained on real CEM) and cem-demo "
            "(trained on phantoms)."
        ),
    )
    models_dir: OptionalPath = Field(
        None,
        description=(
            "Folder holding the model bundles. Unset: the bundles shipped with cem-node "
            "(the models folder of its installation), whatever the working directory."
        ),
        examples=["/var/lib/cem-node/models"],
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description='Where to run the networks: "auto" (a GPU if there is one), "cpu" or "cuda".',
    )
    score_threshold: Fraction | None = Field(
        None,
        description=(
            "Detector score below which a candidate is dropped before NMS. Unset: the model "
            "bundle's value (its thresholds were chosen with it)."
        ),
        examples=[0.05],
    )
    nms_iou: Fraction | None = Field(
        None,
        description="Overlap (IoU) above which the weaker of two detections is suppressed. "
        "Unset: the bundle's value.",
        examples=[0.5],
    )
    max_lesions: int | None = Field(
        None,
        ge=1,
        description="Maximum number of lesions reported per image. Unset: the bundle's value.",
        examples=[5],
    )
    keep_score: Fraction | None = Field(
        None,
        description="Final lesion score below which a detection is not reported. "
        "Unset: the bundle's value.",
        examples=[0.1],
    )
    retry_initial_backoff_s: float = Field(
        5.0,
        gt=0,
        description=(
            "Seconds before a failed analysis (a transient error) is tried again; doubled "
            "after each failure."
        ),
    )
    retry_max_backoff_s: float = Field(
        600.0, gt=0, description="Longest wait between two attempts of an analysis."
    )
    radiomics_workers: int = Field(
        1,
        ge=1,
        description=(
            "Processes computing radiomics features. 1: a thread of the analysis, overlapping "
            "the detection; more: worker processes started with the model and kept (worth it "
            "with spare cores, e.g. a GPU worker; on 2 cores they compete with the detector)."
        ),
    )
    overlap_stages: Literal["auto", "on", "off"] = Field(
        "auto",
        description=(
            "Overlap the stages of a study (decode and preprocess the next view, radiomics of "
            "the last one, while a view is detected) or run them one after the other; the "
            "findings are the same. auto: overlap on a GPU or with at least 4 CPU cores; on "
            "fewer cores the stages only compete for them (measured: slower on 2 cores)."
        ),
    )
    radiomics_max_grey_levels: int | None = Field(
        None,
        ge=8,
        description=(
            "Cap on the grey levels inside a lesion for texture features (the bin width is "
            "widened above it, so one odd lesion cannot stall the node). Unset: the bundle's value."
        ),
        examples=[256],
    )

    @model_validator(mode="after")
    def _retry_backoff_ordered(self) -> AnalysisSection:
        if self.retry_max_backoff_s < self.retry_initial_backoff_s:
            raise ValueError(
                f"retry_max_backoff_s ({self.retry_max_backoff_s}) must not be shorter than "
                f"retry_initial_backoff_s ({self.retry_initial_backoff_s})"
            )
        return self
