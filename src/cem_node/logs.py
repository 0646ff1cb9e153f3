"""Logging set-up: human-readable lines or one JSON object per line.

Log records carry identifiers only (UIDs, AE titles, addresses, job ids),
never patient names; pynetdicom's own logger, which can dump datasets at
DEBUG level, is kept at WARNING unless the node runs at DEBUG.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from pathlib import Path
from typing import Any

from cem_node.config import LoggingSection

__all__ = ["JsonFormatter", "configure_logging"]

#: Extra attributes worth keeping in JSON records when a call passes them.
_EXTRA_KEYS = (
    "event_type",
    "study_instance_uid",
    "sop_instance_uid",
    "calling_ae_title",
    "remote_address",
    "job_id",
)


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object (time in UTC, ISO 8601)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _EXTRA_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(section: LoggingSection, *, json_output: bool | None = None) -> None:
    """Configure the root logger from the [logging] section (replacing its handlers)."""
    use_json = section.json if json_output is None else json_output
    formatter: logging.Formatter = (
        JsonFormatter()
        if use_json
        else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if section.file is not None:
        Path(section.file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(section.file, encoding="utf-8"))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(section.level)
    quiet = logging.DEBUG if section.level == "DEBUG" else logging.WARNING
    logging.getLogger("pynetdicom").setLevel(quiet)
    logging.getLogger("apscheduler").setLevel(quiet)
