"""The whole node as a hospital runs it, for the end-to-end test and benchmark.

``cem-node serve`` in a subprocess (embedded defaults, a data folder of its
own, the model bundle named by the caller), a modality allowed to send to it
(dcmtk ``storescu``), and an Orthanc registered as the destination of the
results. Nothing is mocked: the study goes over DICOM networking into the
node, the node analyses it with the bundle and stores its SEG, SR and GSPS
objects at Orthanc by C-STORE.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from tests.peers import OrthancServer, echoscu, free_port, storescu

REPO = Path(__file__).resolve().parents[2]
#: The shipped demo bundle (issue #6), what `cem-node demo` and `serve` use by default.
DEMO_MODELS_DIR = REPO / "models"
DEMO_MODEL = "cem-demo"
NODE_AE = "CEM_NODE"
MODALITY_AE = "SENO_E2E"

#: Modality of each result object type at the PACS.
RESULT_MODALITIES = {"SEG": "seg", "SR": "sr", "PR": "gsps"}


def demo_bundle_present(models_dir: Path = DEMO_MODELS_DIR, name: str = DEMO_MODEL) -> bool:
    """Whether the demo bundle is installed (its manifest is there)."""
    return (models_dir / name / "manifest.toml").is_file()


def run_cli(*args: str, data: Path, cwd: Path, timeout_s: float = 120) -> dict[str, Any] | str:
    """Run ``cem-node --data-dir DATA ARGS``; JSON output parsed, text otherwise."""
    done = subprocess.run(
        [sys.executable, "-m", "cem_node", "--data-dir", str(data), *args],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"cem-node {' '.join(args)} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout) if "--json" in args else done.stdout


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CEM_NODE_")}


@dataclass
class ServedNode:
    """``cem-node serve`` with a destination PACS and one modality allowed to send.

    Parameters
    ----------
    workdir
        Folder of the node (its data folder is ``workdir/data``, its log ``workdir/serve.log``).
    pacs
        The destination of the results (a started Orthanc).
    quiet_period_s, check_interval_s
        Seconds without a new image after which a study is complete; how often that is checked.
    models_dir, model
        The model bundle the node analyses with.
    """

    workdir: Path
    pacs: OrthancServer
    quiet_period_s: float = 5.0
    check_interval_s: float = 0.5
    models_dir: Path = DEMO_MODELS_DIR
    model: str = DEMO_MODEL
    port: int = 0
    http_port: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    _proc: subprocess.Popen[str] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        """The node's process ID (it must be started)."""
        if self._proc is None:
            raise RuntimeError("the node is not started")
        return self._proc.pid

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        return self.workdir / "serve.log"

    def cli(self, *args: str, timeout_s: float = 120) -> dict[str, Any] | str:
        """The admin CLI on this node's data folder."""
        return run_cli(*args, data=self.data, cwd=self.workdir, timeout_s=timeout_s)

    def start(self, timeout_s: float = 60.0) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port, self.http_port = free_port(), free_port()
        pacs = self.pacs.remote
        # the PACS accepts results from known AEs only (DicomAlwaysAllowStore false)
        modalities = dict(self.pacs.modalities)
        modalities["cem-node"] = (NODE_AE, "127.0.0.1", self.port)
        self.pacs.set_modalities(modalities)
        self.cli(
            "peers", "add", "modality", "--ae-title", MODALITY_AE, "--host", "127.0.0.1",
            "--port", "104", "--role", "source",
        )  # fmt: skip
        self.cli(
            "peers", "add", "pacs", "--ae-title", pacs.ae_title, "--host", pacs.host,
            "--port", str(pacs.port), "--role", "destination",
        )  # fmt: skip
        env = (
            _clean_env()
            | {
                "CEM_NODE_ASSEMBLY__QUIET_PERIOD_S": str(self.quiet_period_s),
                "CEM_NODE_ASSEMBLY__CHECK_INTERVAL_S": str(self.check_interval_s),
                "CEM_NODE_STORAGE__MIN_FREE_MB": "0",
                "CEM_NODE_ANALYSIS__MODELS_DIR": str(self.models_dir),
                "CEM_NODE_ANALYSIS__MODEL": self.model,
                "CEM_NODE_HTTP__PORT": str(self.http_port),
            }
            | self.extra_env
        )
        command = [sys.executable, "-m", "cem_node", "--data-dir", str(self.data), "serve"]
        command += ["--port", str(self.port), "--host", "127.0.0.1", "--ae-title", NODE_AE]
        with self.log_path.open("w") as log:
            self._proc = subprocess.Popen(
                command, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT, text=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise AssertionError(f"cem-node serve exited: {self.log_tail()}")
            if echoscu(port=self.port, called_ae=NODE_AE, calling_ae=MODALITY_AE).returncode == 0:
                return self
            time.sleep(0.3)
        raise AssertionError(f"cem-node serve not answering after {timeout_s:g} s")

    def send(self, files: Sequence[Path]) -> None:
        """Send files as the modality does (dcmtk storescu); fails unless all were stored."""
        done = storescu(files, port=self.port, called_ae=NODE_AE, calling_ae=MODALITY_AE)
        if done.returncode != 0:
            raise AssertionError(f"storescu failed: {done.stderr[-2000:]}")

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM, as systemd stops it; returns its exit code."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        return self._proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.is_file():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class ArrivedResults:
    """The result objects of a study as stored at the PACS."""

    instances: dict[str, list[str]]  # seg / sr / gsps -> Orthanc instance ids
    seconds: float  # from the call to the moment all three kinds were there


def wait_for_results(
    pacs: OrthancServer, study_instance_uid: str, timeout_s: float, *, poll_s: float = 0.1
) -> ArrivedResults:
    """Poll the PACS until the study has SEG, SR and GSPS series (no more arriving)."""
    started = time.monotonic()
    deadline = started + timeout_s
    arrived_at: float | None = None
    seen: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        found: dict[str, list[str]] = {}
        for series in pacs.series_of_study(study_instance_uid):
            kind = RESULT_MODALITIES.get(series["MainDicomTags"].get("Modality", ""))
            if kind is not None:
                found.setdefault(kind, []).extend(series["Instances"])
        if set(found) == set(RESULT_MODALITIES.values()):
            if arrived_at is None:
                arrived_at = time.monotonic()
            # the exporter sends a study's objects over one association: wait until it is over
            if found == seen and time.monotonic() - arrived_at > 1.0:
                return ArrivedResults(found, arrived_at - started)
        seen = found
        time.sleep(poll_s)
    raise AssertionError(
        f"results of {study_instance_uid} not at the PACS after {timeout_s:g} s "
        f"(found {sorted(seen)})"
    )
