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

The package's modules, by topic:

- :mod:`~cem_node.config.base`: constants, field types and their checks,
- :mod:`~cem_node.config.network`: ``[node]`` (and its roles), ``[tls]``,
  ``[export]``, ``[http]`` and the ``[[peers]]``,
- :mod:`~cem_node.config.storage`: ``[storage]``, ``[database]``, ``[logging]``,
- :mod:`~cem_node.config.analysis`: ``[assembly]``, ``[selection]``, ``[analysis]``,
- :mod:`~cem_node.config.settings`: :class:`Settings`, every section together,
- :mod:`~cem_node.config.errors`: :class:`ConfigError` and its messages,
- :mod:`~cem_node.config.loading`: file + environment + defaults,
- :mod:`~cem_node.config.render`: the TOML writer and the documented defaults.

Import the names from ``cem_node.config`` itself; the modules are its layout.

Examples
--------
>>> from cem_node.config import load_settings
>>> settings = load_settings(environ={})  # doctest: +SKIP
>>> settings.node.port  # doctest: +SKIP
11112
"""

from __future__ import annotations

from cem_node.config.analysis import (
    AnalysisSection,
    AssemblySection,
    PrivateTagRule,
    SelectionSection,
)
from cem_node.config.base import (
    DEFAULT_CONFIG_PATH,
    ENV_CONFIG_VAR,
    ENV_PREFIX,
    ExportObject,
    shipped_models_dir,
)
from cem_node.config.errors import ConfigError
from cem_node.config.loading import (
    LoadedSettings,
    anchor_relative_paths,
    load_settings,
    load_settings_with_origin,
    resolve_config_path,
)
from cem_node.config.network import (
    ROLES,
    ExportSection,
    HttpSection,
    NodeSection,
    Peer,
    Role,
    TlsSection,
)
from cem_node.config.render import render_default_toml, render_settings_toml, settings_to_dict
from cem_node.config.settings import Settings
from cem_node.config.storage import DatabaseSection, LoggingSection, StorageSection, mask_url

__all__ = [
    "DEFAULT_CONFIG_PATH",
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
    "PrivateTagRule",
    "Role",
    "SelectionSection",
    "Settings",
    "StorageSection",
    "TlsSection",
    "anchor_relative_paths",
    "load_settings",
    "load_settings_with_origin",
    "mask_url",
    "render_default_toml",
    "render_settings_toml",
    "resolve_config_path",
    "settings_to_dict",
    "shipped_models_dir",
]
