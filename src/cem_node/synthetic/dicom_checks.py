"""Checks of the values the synthetic mammography writer is given.

Each check raises a TypeError or ValueError that names the argument, and
returns the value in the form the writer uses.
"""

from __future__ import annotations

import datetime as dt
import math
import re

import numpy as np
from pydicom.uid import UID

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_DATE_RE = re.compile(r"^\d{8}$")
_TIME_RE = re.compile(r"^(\d{2})(\d{2})(\d{2})(\.\d{1,6})?$")


def _check_text(name: str, value: object, max_len: int, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value and not empty_ok:
        raise ValueError(f"{name} must not be empty")
    if len(value) > max_len:
        raise ValueError(
            f"{name} must have at most {max_len} characters, got {len(value)}: {value!r}"
        )
    if "\\" in value or any(ord(c) < 32 for c in value):
        raise ValueError(f"{name} must not contain a backslash or control characters: {value!r}")
    try:
        value.encode("iso8859-1")
    except UnicodeEncodeError:
        raise ValueError(f"{name} must be encodable as ISO_IR 100 (Latin-1): {value!r}") from None
    return value


def _check_uid(name: str, value: object) -> UID:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if len(value) > 64 or not _UID_RE.match(value):
        raise ValueError(
            f"{name} is not a valid UID (dot-separated numbers without leading zeros, "
            f"at most 64 characters): {value!r}"
        )
    return UID(value)


def _check_date(name: str, value: object) -> dt.date:
    if not isinstance(value, str) or not _DATE_RE.match(value):
        raise ValueError(f"{name} must be a date string YYYYMMDD, got {value!r}")
    try:
        return dt.datetime.strptime(value, "%Y%m%d").date()
    except ValueError:
        raise ValueError(f"{name} is not a valid calendar date: {value!r}") from None


def _check_time(name: str, value: object) -> str:
    match = _TIME_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{name} must be a time string HHMMSS or HHMMSS.ffffff, got {value!r}")
    hours, minutes, seconds = (int(g) for g in match.groups()[:3])
    if hours > 23 or minutes > 59 or seconds > 59:
        raise ValueError(f"{name} is not a valid time of day: {value!r}")
    return value


def _check_number(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return number


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= int(value) <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value!r}")
    return int(value)


def _check_choice(name: str, value: object, choices: frozenset[str] | tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return str(value)


def _check_person_name(name: str, value: object) -> str:
    text = _check_text(name, value, 5 * 64 + 4)
    parts = text.split("^")
    if len(parts) > 5 or any(len(p) > 64 for p in parts) or "=" in text:
        raise ValueError(
            f"{name} must be a single-group DICOM person name with at most 5 '^'-separated "
            f"components of at most 64 characters each, got {value!r}"
        )
    return text


def _age_at(birth: dt.date, day: dt.date) -> int:
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def _check_pixels(pixels: object, bits_stored: int) -> np.ndarray:
    if not isinstance(pixels, np.ndarray):
        raise TypeError(f"pixels must be a numpy.ndarray, got {type(pixels).__name__}")
    if pixels.dtype != np.dtype("<u2") and pixels.dtype != np.dtype("=u2"):
        raise ValueError(
            f"pixels must have dtype uint16 (native little endian), got {pixels.dtype}"
        )
    if pixels.ndim != 2:
        raise ValueError(f"pixels must be 2D (rows, columns), got shape {pixels.shape}")
    rows, cols = pixels.shape
    if not (1 <= rows <= 65535 and 1 <= cols <= 65535):
        raise ValueError(f"pixels must have 1 to 65535 rows and columns, got shape {pixels.shape}")
    top = int(pixels.max())
    if top >= 1 << bits_stored:
        raise ValueError(
            f"pixel values must be below 2**bits_stored = {1 << bits_stored} "
            f"(bits_stored={bits_stored}), got a maximum of {top}"
        )
    return np.ascontiguousarray(pixels)
