"""Logging set-up: human-readable lines or one JSON object per line.

Log records carry identifiers only (UIDs, AE titles, addresses, job ids),
never patient names; pynetdicom's own logger, which can dump datasets at
DEBUG level, is kept at WARNING unless the node runs at DEBUG.

The libraries that read datasets quote the values they warn about
(highdicom: ``The string "Mass-Test_P_00173" is unlikely to represent the
intended person name``; pydicom: ``Invalid value for VR PN: 'DOE^JANE'``),
and so do exceptions (a database error repeats the row it could not
write). Python warnings are therefore routed into the log
(:func:`logging.captureWarnings`), and every handler of the node redacts
quoted values (:class:`RedactQuotedValues`) in messages and tracebacks:
what a warning was about stays readable, the value does not reach the log.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from cem_node.config import LoggingSection

__all__ = ["JsonFormatter", "RedactQuotedValues", "configure_logging", "redact_quoted_values"]

#: A quoted value: '...' or "..." (also a bytes repr, b'...'), opened and closed at
#: word boundaries so that the apostrophe of "doesn't" opens nothing.
_QUOTED = re.compile(r"""(?<!\w)b?(['"])(?:(?!\1).)+?\1(?!\w)""")
#: The text of an exception in a message (the node writes ``f"{type(exc).__name__}: {exc}"``).
_EXCEPTION_TEXT = re.compile(r"\b[A-Z]\w*(?:Error|Exception|Warning)\b: .*", re.DOTALL)
#: A frame of a traceback: ``  File "/path/x.py", line 12, in f``.
_FRAME = re.compile(r'^\s*File "[^"]*", line \d+')
#: Loggers whose messages the node composes from identifiers (its own, and the
#: scheduler naming the node's jobs): only exception text in them is redacted.
_OWN_LOGGERS = ("cem_node", "apscheduler")
REDACTED = "<redacted>"

#: Extra attributes worth keeping in JSON records when a call passes them.
_EXTRA_KEYS = (
    "event_type",
    "study_instance_uid",
    "sop_instance_uid",
    "calling_ae_title",
    "remote_address",
    "job_id",
)


def redact_quoted_values(text: str) -> str:
    """``text`` with every quoted value replaced by ``<redacted>`` (the quotes kept).

    Examples
    --------
    >>> redact_quoted_values('The string "DOE JANE" is unlikely to represent ...')
    'The string "<redacted>" is unlikely to represent ...'
    """
    return _QUOTED.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(1)}", text)


def _own(name: str) -> bool:
    return any(name == own or name.startswith(f"{own}.") for own in _OWN_LOGGERS)


def _foreign(value: object) -> bool:
    """Whether ``value`` is an exception of a library (the node's own are worded like its
    messages: only the library text they quote is redacted, as in a message)."""
    return isinstance(value, BaseException) and not _own(type(value).__module__)


class RedactQuotedValues(logging.Filter):
    """A handler filter that keeps quoted values (possibly patient data) out of the log.

    Redacted with :func:`redact_quoted_values`: the whole message of a
    library's record (Python warnings included, logger ``py.warnings``);
    in the node's own records, the text of libraries' exceptions (arguments
    that are such exceptions, and what follows ``SomeError: `` in the
    message); the traceback of every record. The node's own words (an AE
    title or a bundle name it quotes) stay. The record is changed in place,
    so every handler writes the same text.
    """

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(_foreign(a) for a in record.args):
            record.args = tuple(
                redact_quoted_values(str(a)) if _foreign(a) else a for a in record.args
            )
        message = record.getMessage()
        if _own(record.name):
            redacted = _EXCEPTION_TEXT.sub(lambda m: redact_quoted_values(m.group(0)), message)
        else:
            redacted = redact_quoted_values(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            # the formatters use this text instead of formatting the exception again
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = _redact_traceback(record.exc_text)
        if record.stack_info:
            record.stack_info = _redact_traceback(record.stack_info)
        return True


def _redact_traceback(text: str) -> str:
    """A traceback with its exception messages redacted; where it ran (file, line
    and source code) is kept."""
    out: list[str] = []
    code_line = False
    for line in text.splitlines(keepends=True):
        if _FRAME.match(line):
            out.append(line)
            code_line = True  # the frame's source line follows, indented
        elif code_line and line.startswith("    "):
            out.append(line)
        else:
            out.append(redact_quoted_values(line))
            code_line = False
    return "".join(out)


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
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
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
        handler.addFilter(RedactQuotedValues())
        root.addHandler(handler)
    # warnings (pydicom's, highdicom's ...) go through the handlers above, redacted,
    # instead of straight to standard error
    logging.captureWarnings(True)
    root.setLevel(section.level)
    quiet = logging.DEBUG if section.level == "DEBUG" else logging.WARNING
    logging.getLogger("pynetdicom").setLevel(quiet)
    logging.getLogger("apscheduler").setLevel(quiet)
