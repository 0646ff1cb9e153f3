"""Fixtures of the browser test: Orthanc with DICOMweb, OHIF in front of it, a browser driver.

What it needs (``scripts/setup.sh`` installs all of it):

* Debian ``orthanc`` and ``orthanc-dicomweb`` (the DICOMweb plugin);
* Debian ``chromium`` and Node.js, with ``puppeteer-core`` in
  ``tests/e2e/node_modules`` (``npm ci`` in tests/e2e);
* OHIF's prebuilt viewer (npm ``@ohif/app``, its ``dist/``) in
  ``.cache/ohif/<version>/dist``, or where ``CEM_NODE_OHIF_DIST`` says.

Without one of them the test skips, saying what is missing, or fails under
``CEM_NODE_REQUIRE_TOOLS=1`` (``make test``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from tests.dicom_validators import missing_tool
from tests.e2e.viewer import ViewerServer
from tests.peers import OrthancServer

E2E_DIR = Path(__file__).resolve().parent
REPO = E2E_DIR.parents[1]
#: The OHIF release the test is written for (scripts/setup.sh installs it).
OHIF_VERSION = "3.13.2"
DICOMWEB_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins")


@dataclass(frozen=True)
class BrowserTools:
    """What the browser test runs: Node.js, Chromium and OHIF's files."""

    node: str
    chromium: str
    ohif_dist: Path
    dicomweb_plugin: Path
    shot_script: Path = E2E_DIR / "shot.mjs"

    def run_shots(self, job: dict[str, Any], workdir: Path, *, timeout_s: float) -> dict[str, Any]:
        """Run ``shot.mjs`` on a job (see its header) and return what it printed."""
        pid_file = workdir / "browser.pid"
        job = {"executablePath": self.chromium, "pidFile": str(pid_file), **job}
        job_path = workdir / "shot-job.json"
        job_path.write_text(json.dumps(job, indent=1))
        # node in a process group of its own; puppeteer starts Chromium in
        # another one, and closes it on SIGTERM
        proc = subprocess.Popen(
            [self.node, str(self.shot_script), str(job_path)],
            cwd=E2E_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            stdout, stderr = proc.communicate(timeout=30)
            raise AssertionError(
                f"shot.mjs ran over {timeout_s:.0f} s:\n{stderr[-4000:]}"
            ) from None
        finally:
            if proc.poll() is None:  # an exception above (KeyboardInterrupt ...)
                _stop_group(proc)
            if proc.returncode != 0:  # the browser may be left behind
                _kill_group_of(pid_file)
        if proc.returncode != 0 or not stdout.strip():
            raise AssertionError(
                f"shot.mjs failed (exit {proc.returncode}):\n{stderr[-4000:]}\n{stdout[-2000:]}"
            )
        return dict(json.loads(stdout.strip().splitlines()[-1]))


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to a process group (puppeteer then closes the browser), SIGKILL after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _kill_group_of(pid_file: Path) -> None:
    """Kill the process group led by the pid in a file (the browser's), if any."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _dicomweb_plugin() -> Path | None:
    for folder in DICOMWEB_PLUGIN_DIRS:
        path = Path(folder) / "libOrthancDicomWeb.so"
        if path.is_file():
            return path
    return None


def ohif_dist() -> Path:
    """Where OHIF's prebuilt viewer is expected."""
    env = os.environ.get("CEM_NODE_OHIF_DIST")
    return (Path(env) if env else REPO / ".cache" / "ohif" / OHIF_VERSION / "dist").resolve()


def screenshot_dir() -> Path:
    """Where screenshots are kept after the test (``CEM_NODE_E2E_SCREENSHOTS``)."""
    env = os.environ.get("CEM_NODE_E2E_SCREENSHOTS")
    folder = (Path(env) if env else REPO / ".cache" / "e2e-screenshots").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def browser_tools() -> BrowserTools:
    """The browser test's programs and files, or skip/fail naming what is missing."""
    node = shutil.which("node")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    dist = ohif_dist()
    plugin = _dicomweb_plugin()
    missing = []
    if node is None:
        missing.append("node (Debian nodejs)")
    if chromium is None:
        missing.append("chromium (Debian chromium)")
    if not (E2E_DIR / "node_modules" / "puppeteer-core" / "package.json").is_file():
        missing.append("puppeteer-core (npm ci in tests/e2e)")
    if not (dist / "index.html").is_file():
        missing.append(f"OHIF {OHIF_VERSION} in {dist} (npm pack @ohif/app@{OHIF_VERSION})")
    if plugin is None:
        missing.append("Orthanc's DICOMweb plugin (Debian orthanc-dicomweb)")
    if missing:
        missing_tool("browser test needs " + ", ".join(missing) + ": run scripts/setup.sh")
    assert node and chromium and plugin
    return BrowserTools(node=node, chromium=chromium, ohif_dist=dist, dicomweb_plugin=plugin)


class DicomWebOrthanc(OrthancServer):
    """An Orthanc with its DICOMweb plugin (``/dicom-web``, WADO-URI at ``/wado``)."""

    def __init__(self, workdir: Path, plugin: Path) -> None:
        super().__init__(
            workdir,
            extra_config={
                "Plugins": [str(plugin)],
                "DicomWeb": {
                    "Enable": True,
                    "Root": "/dicom-web/",
                    "EnableWado": True,
                    "WadoRoot": "/wado",
                    "Ssl": False,
                    "StudiesMetadata": "Full",
                    "SeriesMetadata": "Full",
                },
            },
        )

    def store(self, datasets: Iterable[Dataset]) -> list[str]:
        """Store datasets through the REST API (POST /instances); their Orthanc ids."""
        ids = []
        for ds in datasets:
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            request = urllib.request.Request(
                f"{self.url}/instances", data=buffer.getvalue(), method="POST"
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.loads(response.read())
            if answer.get("Status") not in ("Success", "AlreadyStored"):
                raise AssertionError(f"Orthanc did not store {ds.SOPInstanceUID}: {answer}")
            ids.append(answer["ID"])
        return ids


@pytest.fixture
def dicomweb_orthanc(browser_tools: BrowserTools, tmp_path: Path) -> Iterator[DicomWebOrthanc]:
    """A started Orthanc with DICOMweb, stopped after the test."""
    with DicomWebOrthanc(tmp_path / "orthanc", browser_tools.dicomweb_plugin) as server:
        yield server


@pytest.fixture
def ohif(browser_tools: BrowserTools, dicomweb_orthanc: DicomWebOrthanc) -> Iterator[ViewerServer]:
    """OHIF served on a free loopback port, reading from ``dicomweb_orthanc``."""
    with ViewerServer(browser_tools.ohif_dist, dicomweb_orthanc.url) as server:
        yield server
