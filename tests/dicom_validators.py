"""The external DICOM validators (cem_node.dicom.validation) for tests.

A missing tool skips the test with a message, or fails it when the
environment variable ``CEM_NODE_REQUIRE_TOOLS=1`` says the tools were
installed (``make test`` sets it).
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from cem_node.dicom import validation
from cem_node.dicom.validation import PixelMedReport

__all__ = [
    "PixelMedReport",
    "dciodvfy_messages",
    "dciodvfy_warnings",
    "find_tool",
    "missing_tool",
    "pixelmed_jar",
    "pixelmed_parse_errors",
    "require_tool",
    "run_dciodvfy",
    "run_pixelmed_validator",
    "tools_required",
]

T = TypeVar("T")


def tools_required() -> bool:
    """Return whether missing tools must fail tests instead of skipping them."""
    return os.environ.get("CEM_NODE_REQUIRE_TOOLS", "") == "1"


def missing_tool(message: str) -> None:
    """Skip the running test, or fail it when tools are required."""
    if tools_required():
        pytest.fail(f"{message} (CEM_NODE_REQUIRE_TOOLS=1)")
    pytest.skip(message)


def find_tool(name: str) -> str | None:
    """Return the path of a system tool on PATH, or None.

    The virtual environment's scripts folder is passed over: pynetdicom 3
    installs its own ``echoscu``, ``storescu`` and others there, with other
    options than dcmtk's, and an activated environment puts them first.
    """
    scripts = os.path.realpath(sysconfig.get_path("scripts"))
    folders = os.environ.get("PATH", os.defpath).split(os.pathsep)
    outside = [f for f in folders if f and os.path.realpath(f) != scripts]
    return shutil.which(name, path=os.pathsep.join(outside))


def require_tool(name: str) -> str:
    """Return the path of a system tool, or skip/fail the test without it."""
    path = find_tool(name)
    if path is None:
        missing_tool(f"{name} is not installed (Debian packages dicom3tools, dcmtk)")
    assert path is not None
    return path


def _or_skip(check: Callable[..., T], *args: object) -> T:
    try:
        return check(*args)
    except validation.ValidatorMissingError as exc:
        missing_tool(str(exc))
        raise AssertionError("unreachable") from exc


def pixelmed_jar() -> Path:
    """Return PixelMed's jar, or skip/fail the test without it."""
    return _or_skip(validation.pixelmed_jar)


def dciodvfy_messages(path: Path | str) -> list[str]:
    """Every line dciodvfy prints for a file (errors and warnings)."""
    return _or_skip(validation.dciodvfy_messages, path)


def run_dciodvfy(path: Path | str) -> list[str]:
    """The lines of dciodvfy's output that report an error (empty: valid)."""
    return _or_skip(validation.dciodvfy_errors, path)


def dciodvfy_warnings(path: Path | str) -> list[str]:
    """The lines of dciodvfy's output that report a warning."""
    return _or_skip(validation.dciodvfy_warnings, path)


def run_pixelmed_validator(path: Path | str) -> PixelMedReport:
    """PixelMed's DicomInstanceValidator on a file."""
    return _or_skip(validation.pixelmed_validate, path)


def pixelmed_parse_errors(path: Path | str) -> list[str]:
    """Problems PixelMed's parser finds in a file."""
    return _or_skip(validation.pixelmed_parse_errors, path)
