"""Run external DICOM validators (dicom3tools, PixelMed, dcmtk) from tests.

A missing tool skips the test with a message, or fails it when the
environment variable ``CEM_NODE_REQUIRE_TOOLS=1`` says the tools were
installed (``make test`` sets it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

PIXELMED_JAR_CANDIDATES = (
    Path("/usr/share/java/pixelmed.jar"),
    Path("/usr/share/pixelmed/pixelmed.jar"),
)
# PixelMed's compiled XSLT exceeds the XPath operator limits of JDK >= 17
_JAVA_XPATH_FLAGS = (
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
)


def tools_required() -> bool:
    """Return whether missing tools must fail tests instead of skipping them."""
    return os.environ.get("CEM_NODE_REQUIRE_TOOLS", "") == "1"


def missing_tool(message: str) -> None:
    """Skip the running test, or fail it when tools are required."""
    if tools_required():
        pytest.fail(f"{message} (CEM_NODE_REQUIRE_TOOLS=1)")
    pytest.skip(message)


def require_tool(name: str) -> str:
    """Return the path of an executable, or skip/fail the test without it."""
    path = shutil.which(name)
    if path is None:
        missing_tool(f"{name} is not installed (Debian packages dicom3tools, dcmtk)")
    assert path is not None
    return path


def pixelmed_jar() -> Path:
    """Return PixelMed's jar, or skip/fail the test without it."""
    require_tool("java")
    for jar in PIXELMED_JAR_CANDIDATES:
        if jar.is_file():
            return jar
    missing_tool("PixelMed is not installed (Debian package libpixelmed-java)")
    raise AssertionError("unreachable")


def _run(cmd: list[str], timeout: float = 120) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    return done.stdout + done.stderr


def dciodvfy_messages(path: Path | str) -> list[str]:
    """Return every line dciodvfy prints for a file (errors and warnings)."""
    exe = require_tool("dciodvfy")
    return [line for line in _run([exe, str(path)]).splitlines() if line.strip()]


def run_dciodvfy(path: Path | str) -> list[str]:
    """Return the lines of dciodvfy's output that report an error.

    Parameters
    ----------
    path: pathlib.Path or str
        The DICOM file.

    Returns
    -------
    list of str
        Lines containing "Error"; empty for a file dciodvfy accepts.
    """
    return [line for line in dciodvfy_messages(path) if "Error" in line]


def dciodvfy_warnings(path: Path | str) -> list[str]:
    """Return the lines of dciodvfy's output that report a warning."""
    return [line for line in dciodvfy_messages(path) if "Warning" in line]


@dataclass(frozen=True)
class PixelMedReport:
    """What PixelMed's DicomInstanceValidator said about a file.

    Attributes
    ----------
    supported: bool
        False when the validator has no rules for the file's SOP class (it
        prints "IOD (SOP Class) unrecognized"; the 2022 release covers only
        a few IODs, e.g. Segmentation and the enhanced CT/MR images, not
        Digital Mammography).
    errors: list of str
        Lines reporting an error ("Error: ...") or a Java exception.
    output: str
        Everything it printed.
    """

    supported: bool
    errors: list[str]
    output: str


def run_pixelmed_validator(path: Path | str) -> PixelMedReport:
    """Run ``com.pixelmed.validate.DicomInstanceValidator`` on a file."""
    jar = pixelmed_jar()
    out = _run(
        [
            "java",
            *_JAVA_XPATH_FLAGS,
            "-cp",
            str(jar),
            "com.pixelmed.validate.DicomInstanceValidator",
            str(path),
        ]
    )
    errors = [
        line
        for line in out.splitlines()
        if line.startswith("Error") or "Exception" in line or line.startswith("\tat ")
    ]
    return PixelMedReport("IOD (SOP Class) unrecognized" not in out, errors, out)


def pixelmed_parse_errors(path: Path | str) -> list[str]:
    """Parse a file with PixelMed's AttributeList and return any problems.

    An independent (Java) parser: it must read every element, including
    encapsulated pixel data, without an exception.
    """
    jar = pixelmed_jar()
    out = _run(["java", "-cp", str(jar), "com.pixelmed.dicom.AttributeList", str(path)])
    problems = [
        line for line in out.splitlines() if "Exception" in line or line.startswith("\tat ")
    ]
    if "(0x7fe0,0x0010)" not in out:
        problems.append("PixelMed did not reach the Pixel Data element")
    return problems
