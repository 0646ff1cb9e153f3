"""Typed settings of a cem-node, loaded from TOML and the environment.

The settings are one :class:`Settings` object made of sections (``[node]``,
``[tls]``, ``[storage]`` ...), each a pydantic model that forbids unknown keys,
so that a typo is an error naming the key rather than a silently ignored
option. Values come from, in order of precedence:

1. environment variables ``CEM_NODE_<SECTION>__<KEY>`` (for example
   ``CEM_NODE_NODE__PORT=11113``); lists and tables are given as JSON,
2. the TOML file (``conf/node.toml`` by default),
3. the built-in defaults.

Every field carries a description; :func:`render_default_toml` turns them into
the commented default file that ``cem-node config init`` writes.

Examples
--------
>>> from cem_node.config import load_settings
>>> settings = load_settings(environ={})  # doctest: +SKIP
>>> settings.node.port  # doctest: +SKIP
11112
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import textwrap
import tomllib
import types
import typing
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "ENV_CONFIG_VAR",
    "ENV_PREFIX",
    "ROLES",
    "AnalysisSection",
    "AssemblySection",
    "ConfigError",
    "DatabaseSection",
    "ExportObject",
    "ExportSection",
    "HttpSection",
    "LoadedSettings",
    "LoggingSection",
    "NodeSection",
    "Peer",
    "Role",
    "SelectionSection",
    "Settings",
    "StorageSection",
    "TlsSection",
    "load_settings",
    "load_settings_with_origin",
    "mask_url",
    "render_default_toml",
    "render_settings_toml",
    "resolve_config_path",
    "settings_to_dict",
]

ENV_PREFIX = "CEM_NODE_"
"""Prefix of the environment variables that override settings."""

ENV_CONFIG_VAR = "CEM_NODE_CONFIG"
"""Environment variable naming the config file."""

DEFAULT_CONFIG_PATH = Path("conf/node.toml")
"""Config file used when none is named and it exists (relative to the working directory)."""

MASK = "***"

ExportObject = Literal["seg", "sr", "gsps"]
"""A kind of result object: DICOM SEG, TID 1500 SR or GSPS."""


# --------------------------------------------------------------------------- validators


def _check_ae_title(value: str) -> str:
    # PS3.5 AE VR: 16 chars of the default repertoire, no backslash or control chars
    if not 1 <= len(value) <= 16:
        raise ValueError(f"AE title must be 1 to 16 characters long, not {len(value)}")
    if not value.strip(" "):
        raise ValueError("AE title must not be all spaces")
    if "\\" in value:
        raise ValueError("AE title must not contain a backslash")
    if any(not 0x20 <= ord(c) < 0x7F for c in value):
        raise ValueError("AE title must contain printable ASCII characters only (no control chars)")
    return value


_PEER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _check_peer_name(value: str) -> str:
    if not _PEER_NAME_RE.fullmatch(value):
        raise ValueError(
            "peer name must start with a letter or digit and contain only letters, digits, "
            "'.', '_' or '-' (at most 64 characters)"
        )
    return value


def _empty_to_none(value: Any) -> Any:
    # TOML has no null, and an empty env var is the natural way to unset a value
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _unique(values: list[Any] | None) -> list[Any] | None:
    if values is not None:
        dupes = sorted({str(v) for v in values if values.count(v) > 1})
        if dupes:
            raise ValueError(f"duplicate values: {', '.join(dupes)}")
    return values


def _check_patterns(values: list[str]) -> list[str]:
    for i, pattern in enumerate(values):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(
                f"pattern [{i}] {pattern!r} is not a valid regular expression: {exc}"
            ) from None
    return values


AETitle = Annotated[str, AfterValidator(_check_ae_title)]
"""A DICOM Application Entity title (1-16 printable ASCII characters, no backslash)."""

PeerName = Annotated[str, AfterValidator(_check_peer_name)]
OptionalPath = Annotated[Path | None, BeforeValidator(_empty_to_none)]


def shipped_models_dir() -> Path:
    """The folder of the model bundles shipped with cem-node.

    The ``models`` folder of the source tree that holds this package (an
    editable install or a checkout), found from this module's location, so
    that it does not depend on the working directory.
    """
    return Path(__file__).resolve().parents[2] / "models"


OptionalSecret = Annotated[SecretStr | None, BeforeValidator(_empty_to_none)]
Port = Annotated[int, Field(ge=1, le=65535)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Patterns = Annotated[list[str], AfterValidator(_check_patterns)]


class _Section(BaseModel):
    """Base of the sections: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- sections


Role = Literal["receiver", "worker", "exporter", "scheduler"]
#: The parts of a node, in the order ``serve`` starts them.
ROLES: tuple[Role, ...] = ("receiver", "worker", "exporter", "scheduler")


class NodeSection(_Section):
    """DICOM network service of this node (the SCP that receives studies) and its roles."""

    ae_title: AETitle = Field(
        "CEM_NODE",
        description=(
            "Application Entity title of this node: 1 to 16 printable ASCII characters, "
            "no backslash. Peers must send to this title."
        ),
    )
    host: str = Field(
        "0.0.0.0",
        min_length=1,
        description="Address to listen on for DICOM associations (0.0.0.0: all interfaces).",
    )
    port: int = Field(
        11112,
        ge=0,
        le=65535,
        description="TCP port to listen on for DICOM associations (0: any free port).",
    )
    max_associations: int = Field(
        10, ge=1, description="Maximum number of simultaneous associations (per process)."
    )
    receiver_processes: int = Field(
        1,
        ge=1,
        le=64,
        description=(
            "Processes receiving associations on the port (SO_REUSEPORT, the kernel "
            "spreads the associations): one per expected concurrent sender lets them use "
            "every core (4 senders on 2 cores: 4 processes, as fast as dcmtk storescp "
            "--fork). The first process also runs the scheduler, the worker and the "
            "exporter."
        ),
    )
    max_pdu_size: int = Field(
        131072,
        le=16 * 1024 * 1024,
        description=(
            "Maximum length in bytes of the P-DATA-TF PDUs this node receives (announced to "
            "every sender). A PDU announced longer is refused with an A-ABORT and never "
            "allocated. 131072 is the largest dcmtk sends, and as fast as unlimited."
        ),
    )
    max_association_pdu_size: int = Field(
        1024 * 1024,
        ge=4096,
        le=64 * 1024 * 1024,
        description=(
            "Maximum length in bytes of an A-ASSOCIATE-RQ PDU (read before the sender is "
            "authenticated). A real request with every storage SOP class stays far below "
            "the default of 1 MiB; a larger one is refused with an A-ABORT."
        ),
    )
    artim_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description=(
            "Seconds a new connection has, from TCP accept, to complete the TLS handshake "
            "and send its A-ASSOCIATE-RQ (the ARTIM timer, PS3.8 9.1.5); then it is closed."
        ),
    )
    max_pending_connections: int = Field(
        32,
        ge=1,
        description=(
            "Connections that have not yet sent an A-ASSOCIATE-RQ, in total (per process); "
            "more are closed at accept, so idle sockets cannot take the association slots."
        ),
    )
    max_pending_per_address: int = Field(
        4,
        ge=1,
        description="The same limit for the connections from one address.",
    )
    acse_timeout_s: float = Field(
        30.0, gt=0, description="Seconds to wait for association messages (ACSE)."
    )
    dimse_timeout_s: float = Field(
        60.0, gt=0, description="Seconds to wait for DIMSE messages (C-ECHO, C-STORE ...)."
    )
    network_timeout_s: float = Field(
        60.0, gt=0, description="Seconds without network activity before an association is aborted."
    )
    require_called_ae_title: bool = Field(
        True,
        description=(
            "Reject associations whose called AE title is not ae_title. "
            "Set to false to accept any called AE title."
        ),
    )
    accept_unknown_sources: bool = Field(
        False,
        description=(
            "Accept associations from any calling AE title and address, not only from the "
            "source peers. For a test bench only: never on a hospital network."
        ),
    )
    accept_unknown_sop_classes: Literal["ignore", "refuse"] = Field(
        "ignore",
        description=(
            "What to do with objects that are not CEM images (dose reports, secondary "
            'captures ...): "ignore" accepts and discards them (a PACS forwarding a whole '
            'study then sees success), "refuse" rejects them.'
        ),
    )

    roles: list[Role] = Field(
        default_factory=lambda: list(ROLES),
        description=(
            "What this node runs (`serve --role` overrides): receiver (the DICOM listener, "
            "its extra receiver processes and the hasher; no torch, no GPU), worker (the "
            "analysis), exporter (sends the results), scheduler (study assembly, lease "
            "recovery, retention). Every role serves /healthz and /metrics when [http] is "
            "enabled. Nodes with different roles share one PostgreSQL database and one store."
        ),
    )
    poll_interval_s: float = Field(
        1.0,
        gt=0,
        le=600,
        description=(
            "Seconds between two looks at the queue by an idle worker or exporter. On "
            "PostgreSQL they are also woken at once (LISTEN/NOTIFY) when any node queues "
            "their work; polling is the fallback."
        ),
    )

    id: str | None = Field(
        None,
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$",
        description=(
            "This node's identity in claims, the audit trail and the store (`serve "
            "--node-id` overrides). Unset: a unique one, created once and kept in "
            "<storage.root>/nodes/ (docs/STORE.md). Two running nodes never share one: "
            "the second is refused."
        ),
        examples=["worker-gpu-1"],
    )
    analysis_lease_s: float = Field(
        120.0,
        ge=1,
        le=86400,
        description=(
            "Seconds a worker's claim on a study lasts without renewal; renewed every "
            "third of it while the analysis runs. When a node stops (kill -9, host down), "
            "another node takes its study over this long after the last renewal (plus up "
            "to recovery_interval_s)."
        ),
    )
    export_lease_s: float = Field(
        120.0,
        ge=1,
        le=86400,
        description="The same for an exporter's claim on a batch of results to send.",
    )
    recovery_interval_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description=(
            "Seconds between two looks, by a scheduler, for claims whose lease ran out "
            "(their work goes back to the queue, or fails after its last attempt)."
        ),
    )

    @field_validator("roles")
    @classmethod
    def _some_roles(cls, value: list[Role]) -> list[Role]:
        if not value:
            raise ValueError(f"at least one role is needed, from {', '.join(ROLES)}")
        _unique(value)
        return value

    @field_validator("max_pdu_size")
    @classmethod
    def _finite_pdu_size(cls, value: int) -> int:
        # 0 meant "unlimited" in earlier versions, and their `config init` wrote it
        if value == 0:
            raise ValueError(
                "0 (unlimited) is no longer allowed: an unlimited PDU length lets any "
                "peer make the node reserve gigabytes; use 131072 (the default)"
            )
        if value < 4096:
            raise ValueError(f"{value} is below the smallest useful PDU length, 4096")
        return value


class TlsSection(_Section):
    """DICOM TLS for incoming associations (and outgoing ones to peers with tls = true)."""

    enabled: bool = Field(False, description="Use TLS for the DICOM service.")
    certificate: OptionalPath = Field(
        None,
        description="PEM certificate (chain) of this node. Required when enabled.",
        examples=["conf/tls/node.crt"],
    )
    private_key: OptionalPath = Field(
        None,
        description="PEM private key of the certificate. Required when enabled.",
        examples=["conf/tls/node.key"],
    )
    private_key_password: OptionalSecret = Field(
        None,
        description=(
            "Password of an encrypted private key. Prefer the environment variable "
            "CEM_NODE_TLS__PRIVATE_KEY_PASSWORD to writing it here; it is masked in "
            "`cem-node config show`."
        ),
        examples=["change-me"],
    )
    ca_certificates: OptionalPath = Field(
        None,
        description=(
            "PEM bundle of the certificate authorities trusted to sign peer certificates. "
            "Required when require_client_certificate is true."
        ),
        examples=["conf/tls/ca.pem"],
    )
    require_client_certificate: bool = Field(
        False, description="Refuse incoming connections without a valid client certificate."
    )

    @model_validator(mode="after")
    def _paths_when_enabled(self) -> TlsSection:
        if self.enabled:
            missing = [k for k in ("certificate", "private_key") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"{' and '.join(missing)} must be set when enabled = true")
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("ca_certificates must be set when require_client_certificate = true")
        return self


class StorageSection(_Section):
    """Where received instances and results are kept on disk."""

    root: Path = Field(
        Path("var/cem-node"),
        description=(
            "Root folder of the instance and result store (and of the default SQLite "
            "database). Written in a config file, a relative path is relative to the "
            "file's folder; the default, var/cem-node, to the working directory."
        ),
    )
    incoming_subdir: str = Field(
        "incoming", description="Sub-folder of root for received instances."
    )
    results_subdir: str = Field(
        "results", description="Sub-folder of root for the result objects (SEG, SR, GSPS)."
    )
    disk_high_watermark_percent: float = Field(
        90.0,
        gt=0,
        le=100,
        description=(
            "Disk usage (percent) of the store's file system above which new associations "
            'are refused ("out of resources").'
        ),
    )
    min_free_mb: int = Field(
        2048,
        ge=0,
        description="Free space (MiB) below which new associations are refused.",
    )
    retention_days: int = Field(
        30,
        ge=0,
        description=(
            "Days to keep a study's files after its results were delivered; 0 keeps them forever."
        ),
    )

    @field_validator("incoming_subdir", "results_subdir")
    @classmethod
    def _relative(cls, value: str) -> str:
        path = PurePath(value)
        if not value.strip() or path.is_absolute() or ".." in path.parts:
            raise ValueError("must be a relative folder name inside root (no '..')")
        return value


_URL_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@]*:)[^@]*@")
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")


def mask_url(url: str) -> str:
    """Return a database URL with its password replaced by ``***``.

    Parameters
    ----------
    url : str
        An SQLAlchemy or libpq URL, e.g.
        ``postgresql+psycopg://user:secret@host/db``.

    Returns
    -------
    str
        The URL with the password of the user-info part, and any
        ``password=`` query parameter, masked. URLs without a password are
        returned unchanged.

    Examples
    --------
    >>> mask_url("postgresql+psycopg://cem:s3cret@db:5432/cem")
    'postgresql+psycopg://cem:***@db:5432/cem'
    """
    # same split as SQLAlchemy's URL parser: the password runs up to the first "@"
    masked = _URL_PASSWORD.sub(rf"\g<head>{MASK}@", url, count=1)
    return _QUERY_PASSWORD.sub(rf"\g<1>{MASK}", masked)


class DatabaseSection(_Section):
    """The database holding instances, studies, jobs and the export outbox."""

    url: str = Field(
        "",
        repr=False,  # may hold a password
        description=(
            "SQLAlchemy URL, e.g. postgresql+psycopg://cem:PASSWORD@db-host/cem for a "
            "scale-out deployment. Empty: an SQLite file <storage.root>/cem-node.db. "
            "Prefer the environment variable CEM_NODE_DATABASE__URL for a URL with a "
            "password; it is masked in `cem-node config show`."
        ),
    )
    echo: bool = Field(False, description="Log every SQL statement (debugging only).")
    pool_size: int = Field(
        5, ge=1, description="Connections kept in the pool (server databases only)."
    )

    @field_validator("url")
    @classmethod
    def _url_shape(cls, value: str) -> str:
        if value and not re.match(r"[A-Za-z][A-Za-z0-9+.\-]*://", value):
            raise ValueError(
                "must be an SQLAlchemy URL such as postgresql+psycopg://user:password@host/db "
                "or sqlite:///path/to/file.db, or empty for the built-in SQLite database"
            )
        return value


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
    radiomics_workers: int = Field(
        1,
        ge=1,
        description=(
            "Processes computing radiomics features. 1: a thread of the analysis, overlapping "
            "the detection; more: worker processes started with the model and kept (worth it "
            "with spare cores, e.g. a GPU worker; on 2 cores they compete with the detector)."
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


class ExportSection(_Section):
    """What is sent back to the destinations, and how failed sends are retried."""

    objects: Annotated[list[ExportObject], AfterValidator(_unique)] = Field(
        default_factory=lambda: ["seg", "sr", "gsps"],
        description=(
            'Result objects sent to each destination: "seg" (DICOM SEG per view), '
            '"sr" (TID 1500 report per study), "gsps" (presentation state with outlines).'
        ),
    )
    max_attempts: int = Field(
        8, ge=1, description="Attempts per object and destination before the job fails."
    )
    initial_backoff_s: float = Field(
        5.0, gt=0, description="Seconds before the first retry; doubled after each failure."
    )
    max_backoff_s: float = Field(600.0, gt=0, description="Longest wait between two retries.")

    @model_validator(mode="after")
    def _backoff_ordered(self) -> ExportSection:
        if self.max_backoff_s < self.initial_backoff_s:
            raise ValueError(
                f"max_backoff_s ({self.max_backoff_s}) must not be shorter than "
                f"initial_backoff_s ({self.initial_backoff_s})"
            )
        return self


class HttpSection(_Section):
    """The small HTTP endpoint: GET /healthz (JSON) and /metrics (Prometheus)."""

    enabled: bool = Field(True, description="Serve the HTTP endpoint.")
    host: str = Field(
        "127.0.0.1", min_length=1, description="Address to listen on (127.0.0.1: this host only)."
    )
    port: int = Field(
        8765, ge=0, le=65535, description="TCP port of the HTTP endpoint (0: any free port)."
    )


# "json" shadows the deprecated BaseModel.json(); the field wins on instances, which is
# what the [logging] json key needs, so the warning pydantic gives for it is silenced
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "json"', category=UserWarning)

    class LoggingSection(_Section):
        """Logging."""

        level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(_upper)] = (
            Field("INFO", description='Lowest level logged: "DEBUG", "INFO", "WARNING" or "ERROR".')
        )
        json: bool = Field(  # type: ignore[assignment]
            False, description="Write one JSON object per line instead of human-readable text."
        )
        file: OptionalPath = Field(
            None,
            description=("Also write the log to this file. Unset: standard error only."),
            examples=["var/cem-node/cem-node.log"],
        )


class Peer(_Section):
    """A remote DICOM node: a source that sends studies or a destination for results."""

    name: PeerName = Field(
        description="Short unique name used on the command line (cem-node echo NAME).",
        examples=["pacs"],
    )
    ae_title: AETitle = Field(description="AE title of the peer.", examples=["PACS"])
    host: str = Field(
        min_length=1,
        description=(
            "Host name or address of the peer. For a source it is also the address "
            "allow-list: associations with its AE title are accepted only from this host "
            "(a name, an address or a network such as 10.1.2.0/24)."
        ),
    )
    port: Port = Field(description="DICOM port of the peer.", examples=[104])
    role: Literal["source", "destination"] = Field(
        description=(
            '"source": sends studies to this node; "destination": results are sent to it.'
        ),
    )
    tls: bool = Field(False, description="Use TLS (see [tls]) for associations with this peer.")
    objects: Annotated[list[ExportObject] | None, AfterValidator(_unique)] = Field(
        None,
        description="Result objects sent to this destination; unset: export.objects.",
        examples=[["seg", "sr"]],
    )


_EXAMPLE_PEERS = (
    Peer(name="senographe", ae_title="SENO_PRISTINA", host="192.0.2.10", port=104, role="source"),
    Peer(
        name="pacs",
        ae_title="PACS",
        host="pacs.example.org",
        port=11112,
        role="destination",
        objects=["seg", "sr"],
    ),
)


class _SettingsFields(BaseModel):
    """The fields and checks of :class:`Settings`, validated without reading the environment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    node: NodeSection = Field(default_factory=NodeSection, description=NodeSection.__doc__ or "")
    tls: TlsSection = Field(default_factory=TlsSection, description=TlsSection.__doc__ or "")
    storage: StorageSection = Field(
        default_factory=StorageSection, description=StorageSection.__doc__ or ""
    )
    database: DatabaseSection = Field(
        default_factory=DatabaseSection, description=DatabaseSection.__doc__ or ""
    )
    assembly: AssemblySection = Field(
        default_factory=AssemblySection, description=AssemblySection.__doc__ or ""
    )
    selection: SelectionSection = Field(
        default_factory=SelectionSection, description=SelectionSection.__doc__ or ""
    )
    analysis: AnalysisSection = Field(
        default_factory=AnalysisSection, description=AnalysisSection.__doc__ or ""
    )
    export: ExportSection = Field(
        default_factory=ExportSection, description=ExportSection.__doc__ or ""
    )
    http: HttpSection = Field(default_factory=HttpSection, description=HttpSection.__doc__ or "")
    logging: LoggingSection = Field(
        default_factory=LoggingSection, description=LoggingSection.__doc__ or ""
    )
    peers: list[Peer] = Field(
        default_factory=list,
        description=(
            "Remote DICOM nodes that send studies to this node or receive its results, "
            "one [[peers]] table each (none by default)."
        ),
    )

    @field_validator("peers")
    @classmethod
    def _unique_peer_names(cls, peers: list[Peer]) -> list[Peer]:
        names = [p.name for p in peers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"peer names must be unique; duplicated: {', '.join(dupes)}")
        return peers


class Settings(BaseSettings, _SettingsFields):
    """Every setting of a cem-node.

    Build it with :func:`load_settings` (file + environment, clear errors),
    :meth:`from_mapping` (plain data, no environment) or :meth:`defaults`.
    ``Settings(**values)`` also works; like any pydantic-settings class it then
    reads ``CEM_NODE_<SECTION>__<KEY>`` from ``os.environ``, but no file.

    Examples
    --------
    >>> settings = Settings.defaults()
    >>> settings.node.ae_title, settings.node.port
    ('CEM_NODE', 11112)
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Settings:
        """Validate plain data (as read from TOML) into settings, ignoring the environment.

        Parameters
        ----------
        data : Mapping[str, Any]
            Sections keyed as in the TOML file; missing keys take their default.

        Returns
        -------
        Settings
            The validated settings.

        Raises
        ------
        pydantic.ValidationError
            If a key is unknown or a value invalid.
        """
        # Settings' own __init__ would also read os.environ, so validate the fields
        # alone and assemble the already-valid values
        fields = _SettingsFields.model_validate(data)
        values = {name: getattr(fields, name) for name in type(fields).model_fields}
        return cls.model_construct(_fields_set=set(fields.model_fields_set), **values)

    @classmethod
    def defaults(cls) -> Settings:
        """Return the built-in defaults, ignoring files and the environment."""
        return cls.from_mapping({})

    def database_url(self) -> str:
        """Return the database URL in use.

        Returns
        -------
        str
            ``database.url`` if set, else the SQLite file
            ``<storage.root>/cem-node.db``.
        """
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(self.storage.root / 'cem-node.db').as_posix()}"

    def peer(self, name: str) -> Peer:
        """Return the peer called `name`.

        Raises
        ------
        KeyError
            If no peer has that name.
        """
        for p in self.peers:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.peers) or "none configured"
        raise KeyError(f"no peer named {name!r} (known: {known})")


# --------------------------------------------------------------------------- errors


class ConfigError(ValueError):
    """An invalid configuration: bad TOML, an unknown key or a bad value.

    Parameters
    ----------
    message : str
        The human-readable message (shown as is by the CLI).
    problems : Sequence[str], optional
        One line per problem, ``dotted.key: why``.
    source : str, optional
        Where the configuration came from (file name, environment).
    """

    def __init__(
        self, message: str, *, problems: Sequence[str] = (), source: str | None = None
    ) -> None:
        super().__init__(message)
        self.problems = list(problems)
        self.source = source


# Values never echoed in error messages (a malformed URL may not mask cleanly)
_SECRET_KEYS = {("tls", "private_key_password"), ("database", "url")}


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class whose fields are valid keys at `loc` (for spelling hints)."""
    model: type[BaseModel] = Settings
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        inner = _unwrap(field.annotation)
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return None
        model = inner
    return model


def _unwrap(annotation: Any) -> Any:
    """Strip Optional / list / Annotated to reach the item type."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (list, typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0]
        else:
            return annotation


def _is_complex(path: Sequence[str]) -> bool:
    """Whether the setting at `path` is a table or a list (given as JSON in the env)."""
    if len(path) == 1:
        return True
    model = _model_at(path[:-1])
    field = model.model_fields.get(path[-1]) if model else None
    if field is None:
        return False
    annotation = field.annotation
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    origins = {typing.get_origin(a) or a for a in typing.get_args(annotation)} | {
        typing.get_origin(annotation) or annotation
    }
    return bool(origins & {list, dict}) or any(
        isinstance(o, type) and issubclass(o, BaseModel) for o in origins
    )


def _describe_error(err: Mapping[str, Any], env_paths: Mapping[tuple[str, ...], str]) -> str:
    loc = tuple(err["loc"])
    key = _dotted(loc)
    kind = err["type"]
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if kind == "extra_forbidden":
        msg = "unknown key"
        model = _model_at(loc[:-1])
        if model is not None and isinstance(loc[-1], str):
            keys = list(model.model_fields)
            match = difflib.get_close_matches(loc[-1], keys, n=1, cutoff=0.6)
            msg += f"; did you mean {match[0]!r}?" if match else f" (valid keys: {', '.join(keys)})"
    elif "input" in err and tuple(p for p in loc if isinstance(p, str)) not in _SECRET_KEYS:
        value = err["input"]
        if value is None or isinstance(value, str | int | float | bool | PurePath):
            msg += f" (got {value!r})"
    for path, var in env_paths.items():
        n = min(len(path), len(loc))
        if n and tuple(loc[:n]) == path[:n]:
            msg += f" [from environment variable {var}]"
            break
    return f"{key}: {msg}"


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class LoadedSettings:
    """Settings together with where they came from.

    Attributes
    ----------
    settings : Settings
        The effective settings.
    file : pathlib.Path or None
        The TOML file read, or None (defaults only).
    env_overrides : tuple of str
        Names of the environment variables that overrode a setting.
    """

    settings: Settings
    file: Path | None
    env_overrides: tuple[str, ...]


def resolve_config_path(
    path: Path | None = None, *, environ: Mapping[str, str] | None = None
) -> Path | None:
    """Return the config file to read.

    Parameters
    ----------
    path : pathlib.Path, optional
        An explicit file; returned as is.
    environ : Mapping[str, str], optional
        The environment (default ``os.environ``).

    Returns
    -------
    pathlib.Path or None
        `path`, else ``$CEM_NODE_CONFIG`` if set, else ``conf/node.toml`` if
        it exists in the working directory, else None (defaults).
    """
    env = os.environ if environ is None else environ
    if path is not None:
        return Path(path)
    if env.get(ENV_CONFIG_VAR, "").strip():
        return Path(env[ENV_CONFIG_VAR])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found", source=str(path)) from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file", source=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        # the message carries "(at line L, column C)"
        raise ConfigError(
            f"{path}: invalid TOML: {exc}", problems=[str(exc)], source=str(path)
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}", source=str(path)) from None


def _env_overrides(
    environ: Mapping[str, str],
) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """Nested data from ``CEM_NODE_<SECTION>[__<KEY>]`` variables, and their origins."""
    data: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    problems: list[str] = []
    for var in sorted(environ):
        if not var.upper().startswith(ENV_PREFIX) or var.upper() == ENV_CONFIG_VAR:
            continue
        path = tuple(var[len(ENV_PREFIX) :].lower().split("__"))
        if path[0] not in Settings.model_fields:
            # CEM_NODE_REQUIRE_TOOLS and the like are not settings; a typo'd section is
            if len(path) > 1:
                problems.append(f"{var}: unknown section {path[0]!r}")
            continue
        if not all(path):
            problems.append(f"{var}: empty key between '__' separators")
            continue
        raw = environ[var]
        value: Any = raw
        if _is_complex(path):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                problems.append(f"{var}: expected JSON for a list or table: {exc}")
                continue
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
        origins[path] = var
    if problems:
        raise ConfigError(
            "Invalid environment overrides:\n" + "\n".join(f"  {p}" for p in problems),
            problems=problems,
            source="environment",
        )
    return data, origins


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _is_path_field(field: Any) -> bool:
    inner = _unwrap(field.annotation)
    return isinstance(inner, type) and issubclass(inner, PurePath)


def _anchor_table(model: type[BaseModel], table: Mapping[str, Any], base: Path) -> dict[str, Any]:
    out = dict(table)
    for name, field in model.model_fields.items():
        key = field.alias or name
        value = out.get(key)
        if isinstance(value, str) and value.strip() and _is_path_field(field):
            path = Path(value).expanduser()
            out[key] = str(path if path.is_absolute() else base / path)
    return out


def anchor_relative_paths(data: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """Make the relative paths of a config file's data relative to ``base``.

    A path written in a config file means the same file whatever folder
    cem-node is started from: it is relative to the folder holding the config
    file. Paths given by environment variables or on the command line stay
    relative to the working directory, as any command-line path.

    Parameters
    ----------
    data : Mapping[str, Any]
        The file's data, as read from TOML (sections and ``peers``).
    base : pathlib.Path
        The folder holding the file.

    Returns
    -------
    dict
        A copy of `data` with every relative path setting joined to `base`.
    """
    out = dict(data)
    for name, field in Settings.model_fields.items():
        value = out.get(name)
        model = _unwrap(field.annotation)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        if isinstance(value, Mapping):
            out[name] = _anchor_table(model, value, base)
        elif isinstance(value, list):
            out[name] = [
                _anchor_table(model, item, base) if isinstance(item, Mapping) else item
                for item in value
            ]
    return out


def load_settings_with_origin(
    path: Path | None = None, *, environ: Mapping[str, str] | None = None
) -> LoadedSettings:
    """Load the settings and report which file and environment variables were used.

    Same parameters and errors as :func:`load_settings`.
    """
    env = os.environ if environ is None else environ
    file = resolve_config_path(path, environ=env)
    file_data = _read_toml(file) if file is not None else {}
    if file is not None:
        file_data = anchor_relative_paths(file_data, file.resolve().parent)
    env_data, origins = _env_overrides(env)
    try:
        settings = Settings.from_mapping(_merge(file_data, env_data))
    except ValidationError as exc:
        problems = [_describe_error(e, origins) for e in exc.errors()]
        where = f"in {file}" if file is not None else "(built-in defaults)"
        if origins:
            where += " with environment overrides"
        count = f"{len(problems)} error{'s' if len(problems) != 1 else ''}"
        message = f"Invalid configuration {where} ({count}):\n" + "\n".join(
            f"  {p}" for p in problems
        )
        raise ConfigError(
            message, problems=problems, source=str(file) if file else "environment"
        ) from exc
    return LoadedSettings(settings=settings, file=file, env_overrides=tuple(origins.values()))


def load_settings(
    path: Path | None = None, *, environ: Mapping[str, str] | None = None
) -> Settings:
    """Load the effective settings: environment over file over defaults.

    Parameters
    ----------
    path : pathlib.Path, optional
        The TOML file. Default: ``$CEM_NODE_CONFIG`` if set, else
        ``./conf/node.toml`` if it exists, else the built-in defaults only.
    environ : Mapping[str, str], optional
        The environment to read ``CEM_NODE_*`` overrides from (default
        ``os.environ``); pass ``{}`` to ignore it.

    Returns
    -------
    Settings
        The validated settings.

    Raises
    ------
    ConfigError
        If the file is missing or is not valid TOML (with line and column), or
        a key is unknown or a value invalid; the message names every bad key
        as a dotted path and the file.
    """
    return load_settings_with_origin(path, environ=environ).settings


# --------------------------------------------------------------------------- TOML output

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_string(value: str) -> str:
    # a literal string keeps regular expressions readable when it can hold the value
    if (
        "\\" in value
        and "'" not in value
        and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
    ):
        return f"'{value}'"
    # JSON escapes are valid TOML basic-string escapes, but JSON leaves DEL raw
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, PurePath):
        return _toml_string(value.as_posix())
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _plain(value: Any, *, mask: bool) -> Any:
    if isinstance(value, SecretStr):
        return MASK if mask else value.get_secret_value()
    if isinstance(value, PurePath):
        return value.as_posix()
    if isinstance(value, BaseModel):
        return {
            (field.alias or name): _plain(getattr(value, name), mask=mask)
            for name, field in type(value).model_fields.items()
        }
    if isinstance(value, list | tuple):
        return [_plain(v, mask=mask) for v in value]
    return value


def settings_to_dict(settings: Settings, *, mask_secrets: bool = True) -> dict[str, Any]:
    """Return the settings as plain TOML/JSON-ready data, keyed as in the file.

    Parameters
    ----------
    settings : Settings
        The settings.
    mask_secrets : bool
        Replace the TLS key password and the database URL password by ``***``.

    Returns
    -------
    dict
        Sections as dicts; paths as POSIX strings; unset values as None.
    """
    data = _plain(settings, mask=mask_secrets)
    if mask_secrets:
        data["database"]["url"] = mask_url(data["database"]["url"])
    return data


def _comment(text: str, width: int = 88) -> list[str]:
    lines: list[str] = []
    for paragraph in textwrap.dedent(text).strip().split("\n\n"):
        if lines:
            lines.append("#")
        lines += ["# " + line for line in textwrap.wrap(" ".join(paragraph.split()), width)]
    return lines


def _render_table(
    model: type[BaseModel], data: Mapping[str, Any], *, describe: bool, prefix: str = ""
) -> Iterator[str]:
    for name, field in model.model_fields.items():
        key = field.alias or name
        if describe and field.description:
            yield from (prefix + line for line in _comment(field.description))
        value = data.get(key)
        if value is None:
            example = field.examples[0] if describe and field.examples else None
            yield f"{prefix}# {key} = {_toml_value(example) if example is not None else '(unset)'}"
        elif describe and _is_path_field(field):
            # written in a file, a relative path would be read against the file's folder
            yield f"{prefix}# {key} = {_toml_value(value)}"
        else:
            yield f"{prefix}{key} = {_toml_value(value)}"
        if describe:
            yield ""


def _render(data: Mapping[str, Any], *, describe: bool) -> list[str]:
    lines: list[str] = []
    for name, field in Settings.model_fields.items():
        if name == "peers":
            continue
        section = typing.cast(type[BaseModel], field.annotation)
        if describe:
            lines += _comment(field.description or "")
        lines.append(f"[{name}]")
        if describe:
            lines.append("")
        lines += _render_table(section, data[name], describe=describe)
        if not describe:
            lines.append("")
    peers_field = Settings.model_fields["peers"]
    if describe:
        lines += _comment(peers_field.description or "")
    if data["peers"]:
        for peer in data["peers"]:
            lines.append("[[peers]]")
            lines += _render_table(Peer, peer, describe=False)
            lines.append("")
    elif describe:
        lines += ["#", "# Keys of a [[peers]] table:"]
        for name, field in Peer.model_fields.items():
            desc = _comment(f"{name}: {field.description or ''}", width=84)
            lines += [desc[0]] + ["#   " + line[2:] for line in desc[1:]]
        lines.append("# Examples (remove the leading '# ' to use them):")
        for example in _EXAMPLE_PEERS:
            lines.append("# [[peers]]")
            lines += [
                "# " + line
                for line in _render_table(Peer, _plain(example, mask=False), describe=False)
                if not line.startswith("#")
            ]
            lines.append("#")
        lines[-1] = ""
    else:
        lines.append("# no peers")
    return lines


_HEADER = """\
cem-node configuration.

Written by `cem-node config init`: every key is listed with its description and
its default value. A relative path written in this file is relative to the
folder holding this file (paths are commented out here: unset, they take their
defaults, relative to the working directory of cem-node).

Any key can be overridden by an environment variable
CEM_NODE_<SECTION>__<KEY>, e.g. CEM_NODE_NODE__PORT=11113 or
CEM_NODE_DATABASE__URL=postgresql+psycopg://cem:PASSWORD@db-host/cem; lists and
tables are given as JSON there. Precedence: environment, then this file, then
the built-in defaults. CEM_NODE_CONFIG names the file to read.

Check a file with `cem-node config validate FILE`; print the effective
configuration (secrets masked) with `cem-node config show`.
"""


def render_default_toml() -> str:
    """Return the commented default configuration file.

    Generated from the field descriptions of :class:`Settings`; parsing the
    result gives the defaults back. ``conf/node.toml`` is this text.

    Returns
    -------
    str
        TOML text ending with a newline.
    """
    data = settings_to_dict(Settings.defaults(), mask_secrets=False)
    lines = [*_comment(_HEADER), "", *_render(data, describe=True)]
    return "\n".join(lines).rstrip("\n") + "\n"


def render_settings_toml(settings: Settings, *, mask_secrets: bool = True) -> str:
    """Return `settings` as TOML without comments (what ``config show`` prints).

    Parameters
    ----------
    settings : Settings
        The settings.
    mask_secrets : bool
        Mask the TLS key password and the database URL password.

    Returns
    -------
    str
        TOML text; unset values appear as ``# key = (unset)`` comments.
    """
    data = settings_to_dict(settings, mask_secrets=mask_secrets)
    return "\n".join(_render(data, describe=False)).rstrip("\n") + "\n"
