"""Shared pieces of the settings: constants, field types and their checks.

The annotated field types (:data:`AETitle`, :data:`OptionalPath` ...), the
validators behind them, the :class:`_Section` base of every section, and the
introspection helpers (:func:`_unwrap`, :func:`_is_path_field`) that loading
and rendering use to find a field's item type.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path, PurePath
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

from cem_node.contracts.analysis import ResultType

ENV_PREFIX = "CEM_NODE_"
"""Prefix of the environment variables that override settings."""

ENV_CONFIG_VAR = "CEM_NODE_CONFIG"
"""Environment variable naming the config file."""

DEFAULT_CONFIG_PATH = Path("conf/node.toml")
"""Config file used when none is named and it exists (relative to the working directory)."""

MASK = "***"

ExportObject = ResultType
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


OptionalSecret = Annotated[SecretStr | None, BeforeValidator(_empty_to_none)]
Port = Annotated[int, Field(ge=1, le=65535)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Patterns = Annotated[list[str], AfterValidator(_check_patterns)]


def shipped_models_dir() -> Path:
    """The folder of the model bundles shipped with cem-node.

    The ``models`` folder of the source tree that holds this package (an
    editable install or a checkout), found from this module's location, so
    that it does not depend on the working directory.
    """
    return Path(__file__).resolve().parents[3] / "models"


class _Section(BaseModel):
    """Base of the sections: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- introspection


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


def _is_path_field(field: Any) -> bool:
    inner = _unwrap(field.annotation)
    return isinstance(inner, type) and issubclass(inner, PurePath)
