"""Check received identifiers and headers before they are trusted.

Pure functions over values and datasets, shared by the C-STORE path
(:mod:`cem_node.store.ingest`, which refuses what fails) and the worker
(:mod:`cem_node.jobs.worker`, which excludes an instance stored before these
checks existed, with the reason). Every message is short enough to follow
an attribute name in a C-STORE ErrorComment (64 characters).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.valuerep import VR

__all__ = [
    "IDENTIFYING_UIDS",
    "header_problem",
    "identifier_problem",
    "image_identifiers_problem",
    "uid_problem",
    "unreadable_element",
]

#: The UIDs that place an image in the store and in a study, in the order checked.
IDENTIFYING_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")

#: Longest UID (PS3.5 9.1).
_UID_MAX = 64
_UID_CHARACTERS = frozenset("0123456789.")
_KNOWN_VRS = frozenset(v.value for v in VR)
#: VRs whose conversion from bytes cannot raise (text, numbers as text included, is
#: decoded with replacement and kept as text when malformed; bytes are kept as
#: they are): a cheap walk need not convert them.
_PLAIN_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
    | {"DS", "IS", "OB", "OW", "UN"}
)
#: Binary VRs and their value size: their conversion fails only on a length that is
#: not a multiple of it.
_FIXED_SIZE = {
    "AT": 4,
    "FD": 8,
    "FL": 4,
    "OD": 8,
    "OF": 4,
    "OL": 4,
    "OV": 8,
    "SL": 4,
    "SS": 2,
    "SV": 8,
    "UL": 4,
    "US": 2,
    "UV": 8,
}


def uid_problem(value: object) -> str | None:
    """Say why ``value`` is not one valid UID, or return ``None`` if it is.

    PS3.5 9.1: one value of 1 to 64 characters, components of digits
    separated by single periods, no component empty, no component of more
    than one digit starting with ``0``. Trailing NUL or space padding (the
    even-length pad byte) is not part of the value.

    Parameters
    ----------
    value
        An element value as pydicom gives it: a string, a ``MultiValue`` of
        several, bytes, or ``None``.

    Returns
    -------
    str or None
        A short reason ("not a single UID", "component with a leading
        zero", ...), at most 33 characters, or ``None`` for a valid UID.
    """
    if isinstance(value, MultiValue | list | tuple):
        return "not a single UID" if len(value) > 1 else uid_problem(value[0] if value else "")
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return "characters other than 0-9 and ."
    if value is None:
        return "empty"
    text = str(value).rstrip("\x00 ")
    if not text:
        return "empty"
    if "\\" in text:  # the value delimiter: several values in one
        return "not a single UID"
    if len(text) > _UID_MAX:
        return f"longer than {_UID_MAX} characters"
    if not set(text) <= _UID_CHARACTERS:
        return "characters other than 0-9 and ."
    components = text.split(".")
    if any(not c for c in components):
        return "empty component"
    if any(len(c) > 1 and c.startswith("0") for c in components):
        return "component with a leading zero"
    return None


def identifier_problem(
    ds: Dataset, *, required: Iterable[str], optional: Iterable[str] = ()
) -> str | None:
    """Check a dataset's identifying UIDs; return the first problem, naming the attribute.

    Parameters
    ----------
    ds
        The dataset (its values are read; call :func:`unreadable_element` first
        when they may not convert).
    required
        Keywords that must be present with a valid UID.
    optional
        Keywords checked only when present.

    Returns
    -------
    str or None
        ``"Missing StudyInstanceUID"`` or ``"Invalid StudyInstanceUID: <why>"``,
        at most 60 characters, or ``None`` when every UID is valid.
    """
    wanted = [(k, True) for k in required] + [(k, False) for k in optional]
    for keyword, needed in sorted(wanted, key=lambda kw: IDENTIFYING_UIDS.index(kw[0])):
        value = ds.get(keyword)
        if value is None or value == "":
            if needed:
                return f"Missing {keyword}"
            continue
        problem = uid_problem(value)
        if problem:
            return f"Invalid {keyword}: {problem}"
    return None


def unreadable_element(ds: Dataset, *, convert_plain: bool = True) -> str | None:
    """Convert every element of ``ds`` (and its sequence items); say which one cannot be.

    Values pydicom left unread (``defer_size``) stay unread. A value that
    cannot be converted (an unknown VR, a binary value of the wrong length,
    a malformed sequence) would otherwise raise wherever it is first used.

    Parameters
    ----------
    ds
        A dataset as read by ``pydicom.dcmread``.
    convert_plain
        ``False`` leaves unconverted the elements whose conversion cannot
        raise (text and numbers as text, OB, OW, UN, binary values of a
        whole number of values): the C-STORE path does that, the walk then
        costs a tenth of the full one.

    Returns
    -------
    str or None
        For example ``"Cannot parse (0010,0010) PatientName: unknown VR 'ZZ'"``,
        or ``None`` when everything converts.
    """
    with warnings.catch_warnings():
        # pydicom warns about each questionable value; only failures matter here
        warnings.simplefilter("ignore")
        return _walk(ds, convert_plain)


def _walk(ds: Dataset, convert_plain: bool) -> str | None:
    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement):
            if raw.value is None:  # deferred: a large value left on disk
                continue
            if raw.VR is not None and raw.VR not in _KNOWN_VRS:
                return _cannot_parse(tag, f"unknown VR {raw.VR!r}")
            if not convert_plain and _converts(raw.VR or _dictionary_vr(tag), raw.length):
                continue
        try:
            element = ds[tag]
            items = element.value if element.VR == "SQ" else ()
        except Exception as exc:  # pydicom raises many types; any is the data's fault
            return _cannot_parse(tag, f"{type(exc).__name__}: {exc}")
        for item in items or ():
            problem = _walk(item, convert_plain)
            if problem:
                return problem
    return None


def _converts(vr: str | None, length: int) -> bool:
    """Whether a raw value of this VR and length surely converts (without converting it)."""
    if vr in _PLAIN_VRS:
        return True
    size = _FIXED_SIZE.get(vr or "")
    return size is not None and length % size == 0


def _dictionary_vr(tag: int) -> str | None:
    # implicit VR data: the VR comes from the dictionary when the value is converted
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _cannot_parse(tag: object, why: str) -> str:
    t = Tag(tag)  # type: ignore[arg-type]
    keyword = keyword_for_tag(t)
    return f"Cannot parse {t}{' ' + keyword if keyword else ''}: {why}"


def image_identifiers_problem(ds: Dataset, *, series_required: bool = True) -> str | None:
    """Check the four identifying UIDs of a received object (:func:`identifier_problem`).

    The Series Instance UID is Type 1 in every image IOD (``series_required``);
    for other objects it is checked only when present.
    """
    return identifier_problem(
        ds,
        required=IDENTIFYING_UIDS[: 4 if series_required else 3],
        optional=() if series_required else IDENTIFYING_UIDS[3:],
    )


def header_problem(ds: Dataset, *, series_required: bool = True) -> str | None:
    """Say why an image header cannot be used, or return ``None``.

    Every element must convert (:func:`unreadable_element`) and the four
    identifying UIDs be valid (:func:`image_identifiers_problem`).
    """
    return unreadable_element(ds) or image_identifiers_problem(ds, series_required=series_required)
