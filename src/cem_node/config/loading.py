"""Loading the settings: file, environment overrides and defaults, merged."""

from __future__ import annotations

import json
import os
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ValidationError

from cem_node.config.base import (
    DEFAULT_CONFIG_PATH,
    ENV_CONFIG_VAR,
    ENV_PREFIX,
    _is_path_field,
    _unwrap,
)
from cem_node.config.errors import ConfigError, _describe_error, _model_at
from cem_node.config.settings import Settings


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
