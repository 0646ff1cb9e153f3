"""Writing settings as TOML: the documented default file and ``config show``."""

from __future__ import annotations

import json
import math
import re
import textwrap
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel, SecretStr

from cem_node.config.base import MASK, _is_path_field
from cem_node.config.network import Peer
from cem_node.config.settings import Settings
from cem_node.config.storage import mask_url

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


def _render(data: Mapping[str, Any], *, describe: bool) -> list[str]:
    """The lines of the sections then the peers; `describe` adds the comments and examples."""
    return [*_render_sections(data, describe=describe), *_render_peers(data, describe=describe)]


def _render_sections(data: Mapping[str, Any], *, describe: bool) -> list[str]:
    """The ``[section]`` tables, in the order of :class:`Settings`' fields."""
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
    return lines


def _render_peers(data: Mapping[str, Any], *, describe: bool) -> list[str]:
    """The ``[[peers]]`` tables; described with examples when there are none."""
    lines: list[str] = []
    peers_field = Settings.model_fields["peers"]
    if describe:
        lines += _comment(peers_field.description or "")
    if data["peers"]:
        for peer in data["peers"]:
            lines.append("[[peers]]")
            lines += _render_table(Peer, peer, describe=False)
            lines.append("")
    elif describe:
        lines += _describe_peer_keys()
    else:
        lines.append("# no peers")
    return lines


def _describe_peer_keys() -> list[str]:
    """Comments listing the keys of a ``[[peers]]`` table, then commented-out examples."""
    lines = ["#", "# Keys of a [[peers]] table:"]
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
