"""kill -9 of the node at the worst moments, then a restart: nothing acknowledged is lost.

The node runs in its own process (tests/node_process.py: ``cem-node serve``
with the test-double analysis), so it can be killed like a crashed server.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from sqlalchemy import Engine, select

from cem_node.store import (
    AuditEvent,
    Export,
    ExportState,
    Instance,
    Job,
    Study,
    StudyState,
    make_engine,
    session_factory,
)
from cem_node.synthetic.study import SynthOptions, generate_study
from tests.peers import LOOPBACK, OrthancServer, free_port, storescu
from tests.test_node import MODALITY_AE, NODE_AE, dicom_files, study_uid, wait_until

pytestmark = pytest.mark.tools

REPO = Path(__file__).resolve().parents[1]


def send(node: NodeProcess, files: list[Path]) -> subprocess.CompletedProcess[str]:
    return storescu(files, port=node.port, called_ae=NODE_AE, calling_ae=MODALITY_AE)


@pytest.fixture(scope="module")
def burst_studies(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("burst")
    return [generate_study(root, 21, i, SynthOptions(size="small")) for i in range(3)]


class NodeProcess:
    """``python -m tests.node_process`` with a config file, killable with SIGKILL."""

    def __init__(self, workdir: Path, *, destination: OrthancServer | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.root = workdir / "store"
        self.log = workdir / "node.log"
        self.config = workdir / "node.toml"
        peers = [
            f'[[peers]]\nname = "modality"\nae_title = "{MODALITY_AE}"\n'
            f'host = "127.0.0.1"\nport = 104\nrole = "source"\n'
        ]
        if destination is not None:
            peers.append(
                f'[[peers]]\nname = "pacs"\nae_title = "{destination.aet}"\n'
                f'host = "{LOOPBACK}"\nport = {destination.dicom_port}\nrole = "destination"\n'
            )
        self.config.write_text(
            f'[node]\nae_title = "{NODE_AE}"\nhost = "{LOOPBACK}"\nport = {self.port}\n'
            f'[storage]\nroot = "{self.root}"\nmin_free_mb = 0\n'
            "disk_high_watermark_percent = 99.99\n"
            "[assembly]\nquiet_period_s = 1.5\nmax_wait_s = 60\ncheck_interval_s = 0.2\n"
            "[export]\ninitial_backoff_s = 0.3\nmax_backoff_s = 1.0\n"
            f'[logging]\njson = true\nfile = "{self.log}"\n' + "\n".join(peers)
        )
        self.proc: subprocess.Popen[str] | None = None
        self._engine: Engine | None = None

    def start(self, *, pause_s: float = 0.0, marker: Path | None = None) -> NodeProcess:
        cmd = [sys.executable, "-m", "tests.node_process", str(self.config)]
        if pause_s:
            cmd += ["--pause", str(pause_s)]
        if marker is not None:
            cmd += ["--marker", str(marker)]
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("READY"), f"node did not start: {line!r}"
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None
        if self._engine is not None:
            self._engine.dispose()

    def sessions(self):
        if self._engine is None:
            self._engine = make_engine(f"sqlite:///{self.root / 'cem-node.db'}")
        return session_factory(self._engine)

    def study(self, uid: str) -> Study | None:
        with self.sessions().begin() as session:
            return session.scalar(select(Study).where(Study.study_instance_uid == uid))

    def state_is(self, uid: str, state: StudyState) -> Callable[[], bool]:
        return lambda: (s := self.study(uid)) is not None and s.state is state


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    made: list[NodeProcess] = []

    def make(**kwargs) -> NodeProcess:
        node = NodeProcess(tmp_path / f"node-{len(made)}", **kwargs)
        made.append(node)
        return node

    yield make
    for node in made:
        node.stop()


def _send_until_killed(port: int, files: list[Path], acked: list[str], errors: list[str]) -> None:
    """Send ``files`` one by one, recording each SOP Instance UID that got 0x0000."""
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.1.2.1")
    assoc = ae.associate(LOOPBACK, port, ae_title=NODE_AE)
    if not assoc.is_established:
        errors.append("association failed")
        return
    try:
        for path in files:
            status = assoc.send_c_store(path)
            if not assoc.is_established:
                break
            if status and int(status.Status) == 0x0000:
                acked.append(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
    except Exception as exc:  # the node died under us: that is the point
        errors.append(repr(exc))
    finally:
        if assoc.is_established:
            assoc.abort()


def test_kill9_during_a_cstore_burst_keeps_every_acknowledged_instance(
    burst_studies: list[Path], node_process
) -> None:
    node = node_process().start()
    files = [f for study in burst_studies for f in dicom_files(study)]
    halves = [files[0::2], files[1::2]]
    acked: list[list[str]] = [[], []]
    errors: list[str] = []
    senders = [
        threading.Thread(target=_send_until_killed, args=(node.port, part, acks, errors))
        for part, acks in zip(halves, acked, strict=True)
    ]
    for sender in senders:
        sender.start()
    wait_until(lambda: sum(map(len, acked)) >= 6, what="a few acknowledged instances")
    node.kill9()
    for sender in senders:
        sender.join(30)
    acknowledged = set(acked[0] + acked[1])
    assert 6 <= len(acknowledged) < len(files), "the kill must land mid-burst"

    node.start()  # restart: recovery runs before the service opens
    by_uid = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    with node.sessions().begin() as session:
        rows = {r.sop_instance_uid: r for r in session.scalars(select(Instance))}
    missing = acknowledged - set(rows)
    assert not missing, f"acknowledged but lost: {missing}"

    def all_hashed() -> dict[str, Instance] | None:
        # hashes are computed after the answer; the restarted node completes them
        with node.sessions().begin() as session:
            hashed = {r.sop_instance_uid: r for r in session.scalars(select(Instance))}
        return hashed if all(r.sha256 for r in hashed.values()) else None

    rows = wait_until(all_hashed, what="every stored instance hashed")
    assert not missing, f"acknowledged but lost: {missing}"
    for uid in acknowledged:
        stored = node.root / rows[uid].file_path
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == rows[uid].sha256
        assert pydicom.dcmread(stored).PixelData == pydicom.dcmread(by_uid[uid]).PixelData
    assert not list(node.root.rglob(".tmp-*")), "temporary files of the aborted writes remain"

    # the modality sends the rest again; every study completes and is analysed
    assert (
        storescu(files, port=node.port, called_ae=NODE_AE, calling_ae=MODALITY_AE).returncode == 0
    )
    for study in burst_studies:
        uid = study_uid(dicom_files(study))
        wait_until(node.state_is(uid, StudyState.DONE), what=f"{uid} analysed after restart")


def test_kill9_mid_analysis_requeues_and_delivers_once(
    tmp_path: Path, burst_studies: list[Path], orthanc, node_process
) -> None:
    pacs = orthanc()
    node = node_process(destination=pacs)
    marker = tmp_path / "analysis-started"
    node.start(pause_s=60, marker=marker)
    files = dicom_files(burst_studies[0])
    uid = study_uid(files)
    assert (
        storescu(files, port=node.port, called_ae=NODE_AE, calling_ae=MODALITY_AE).returncode == 0
    )
    wait_until(marker.exists, timeout_s=30, what="the analysis to start")
    node.kill9()
    node.start()  # no pause now
    wait_until(node.state_is(uid, StudyState.DONE), timeout_s=30, what="done after restart")
    with node.sessions().begin() as session:
        (job,) = session.scalars(select(Job)).all()
        (export,) = session.scalars(select(Export)).all()
        recovered = session.scalars(
            select(AuditEvent).where(AuditEvent.event_type == "recovery")
        ).all()
    assert job.attempts == 2 and export.state is ExportState.DONE
    assert recovered and "1 job(s)" in (recovered[0].message or "")
    assert pacs.sop_instance_uids() == {export.sop_instance_uid}

    # the JSON log: one object per line, no patient name anywhere
    patient_name = str(pydicom.dcmread(files[0], stop_before_pixels=True).PatientName)
    text = node.log.read_text()
    assert patient_name and patient_name not in text
    assert patient_name.split("^")[0] not in text
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert any(r["message"].startswith("study complete") for r in records)


def test_kill9_mid_export_sends_pending_results_after_restart(
    burst_studies: list[Path], orthanc, node_process
) -> None:
    pacs = orthanc()
    node = node_process(destination=pacs)
    pacs.stop()  # the PACS is down: the export stays pending
    node.start()
    files = dicom_files(burst_studies[1])
    uid = study_uid(files)
    assert (
        storescu(files, port=node.port, called_ae=NODE_AE, calling_ae=MODALITY_AE).returncode == 0
    )

    def pending_after_a_failure() -> bool:
        with node.sessions().begin() as session:
            export = session.scalar(select(Export))
            return export is not None and export.attempts >= 1

    wait_until(pending_after_a_failure, what="a failed export attempt")
    node.kill9()
    pacs.start()
    node.start()
    wait_until(node.state_is(uid, StudyState.DONE), timeout_s=30, what="exported after restart")
    with node.sessions().begin() as session:
        (export,) = session.scalars(select(Export)).all()
    assert export.state is ExportState.DONE
    assert pacs.sop_instance_uids() == {export.sop_instance_uid}
    assert pacs.count_instances() == 1
