"""Configuration errors, and the messages that name every bad key."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel

from cem_node.config.base import _unwrap
from cem_node.config.settings import Settings


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
