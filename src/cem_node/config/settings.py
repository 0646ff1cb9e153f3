"""The :class:`Settings` model: every section, and the peers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cem_node.config.analysis import AnalysisSection, AssemblySection, SelectionSection
from cem_node.config.base import ENV_PREFIX
from cem_node.config.network import ExportSection, HttpSection, NodeSection, Peer, TlsSection
from cem_node.config.storage import DatabaseSection, LoggingSection, StorageSection


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
