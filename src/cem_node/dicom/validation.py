"""Run the external DICOM validators on files cem-node writes.

dciodvfy (dicom3tools) checks an object against its IOD; PixelMed's
``DicomInstanceValidator`` / ``DicomSRValidator`` add a second, independent
opinion (SEG, SR), and PixelMed's parser reads every element, pixel data
included. Each function raises :class:`ValidatorMissingError` when its tool is
not installed, so callers decide whether that is an error or a skip.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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


class ValidatorMissingError(RuntimeError):
    """A validator is not installed (the message names the Debian package)."""


def _which(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ValidatorMissingError(f"{name} is not installed (Debian package {package})")
    return path


def pixelmed_jar() -> Path:
    """PixelMed's jar; raises :class:`ValidatorMissingError` without it or Java."""
    _which("java", "default-jre-headless")
    for jar in PIXELMED_JAR_CANDIDATES:
        if jar.is_file():
            return jar
    raise ValidatorMissingError("PixelMed is not installed (Debian package libpixelmed-java)")


def _run(cmd: list[str], timeout: float = 120) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    return done.stdout + done.stderr


def dciodvfy_messages(path: Path | str) -> list[str]:
    """Every non-empty line dciodvfy prints for a file (errors and warnings)."""
    exe = _which("dciodvfy", "dicom3tools")
    return [line for line in _run([exe, str(path)]).splitlines() if line.strip()]


def dciodvfy_errors(path: Path | str) -> list[str]:
    """The lines of dciodvfy's output that report an error (empty: valid)."""
    return [line for line in dciodvfy_messages(path) if "Error" in line]


def dciodvfy_warnings(path: Path | str) -> list[str]:
    """The lines of dciodvfy's output that report a warning."""
    return [line for line in dciodvfy_messages(path) if "Warning" in line]


@dataclass(frozen=True)
class PixelMedReport:
    """What a PixelMed validator said about a file.

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


def pixelmed_validate(
    path: Path | str,
    validator: Literal["DicomInstanceValidator", "DicomSRValidator"] = "DicomInstanceValidator",
) -> PixelMedReport:
    """Run ``com.pixelmed.validate.<validator>`` on a file."""
    jar = pixelmed_jar()
    out = _run(
        [
            "java",
            *_JAVA_XPATH_FLAGS,
            "-cp",
            str(jar),
            f"com.pixelmed.validate.{validator}",
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
