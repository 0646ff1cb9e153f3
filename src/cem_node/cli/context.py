"""State shared by the sub-commands of one ``cem-node`` invocation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cem_node.config import Settings


@dataclass
class CliContext:
    """What the root callback learned from the global options.

    Settings are loaded lazily so that ``--help`` and commands that do not
    need a config (``config validate FILE``) never fail on a bad default file.
    """

    config_path: Path | None = None
    _settings: Settings | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        """Load (once) and return the effective settings."""
        if self._settings is None:
            from cem_node.config import load_settings

            self._settings = load_settings(self.config_path)
        return self._settings
