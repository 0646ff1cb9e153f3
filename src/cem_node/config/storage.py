"""What the node keeps locally: the store folders, the database and the log."""

from __future__ import annotations

import re
import warnings
from pathlib import Path, PurePath
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator

from cem_node.config.base import MASK, OptionalPath, _Section, _upper


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
