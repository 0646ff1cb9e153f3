"""The SCP's streamed receive path (cem_node.dicom.net.pynetdicom_internals.GuardedDUL)
against dcmtk's storescu: the middle fragments of a dataset are written straight to its file, and
the stored dataset is byte for byte what was sent, whichever path a PDU took."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from cem_node.dicom.net import pynetdicom_internals as internals
from cem_node.node import Node
from cem_node.store import Instance
from cem_node.synthetic.study import SynthOptions, generate_study
from tests.analysis_double import DoubleAnalyser
from tests.peers import storescu
from tests.test_node import MODALITY_AE, NODE_AE, make_settings

pytestmark = pytest.mark.tools


@pytest.fixture(scope="module")
def sent_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    study = generate_study(tmp_path_factory.mktemp("streamed"), 31, 0, SynthOptions(size="small"))
    return sorted((study / "dicom").glob("*.dcm"))


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    settings = make_settings(tmp_path / "store")
    settings.assembly.max_wait_s = 3600
    settings.assembly.quiet_period_s = 3600  # receiving only
    running = Node(settings, analyser=DoubleAnalyser(), node_id="streaming-test")
    running.start()
    yield running
    running.stop()


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the File Meta Information (which the receiver writes itself)."""
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    data = path.read_bytes()
    return data[132 + 12 + int(meta.FileMetaInformationGroupLength) :]


def stored_datasets(node: Node) -> dict[str, bytes]:
    assert node.sessions is not None and node.files is not None
    with node.sessions.begin() as session:
        rows = session.execute(select(Instance.sop_instance_uid, Instance.file_path)).all()
    return {uid: dataset_bytes(node.files.absolute(path)) for uid, path in rows}


@pytest.mark.parametrize("path", ["direct", "pynetdicom"])
def test_streamed_datasets_arrive_byte_identical(
    node: Node, sent_files: list[Path], monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    written = []
    direct = internals.GuardedDUL._write_middle_fragments

    def counting(self: internals.GuardedDUL, body: bytearray) -> bool:
        done = direct(self, body)
        written.append(done)
        return done

    monkeypatch.setattr(internals.GuardedDUL, "_write_middle_fragments", counting)
    pynetdicom_log = logging.getLogger("pynetdicom")
    level = pynetdicom_log.level
    if path == "pynetdicom":
        # something listens to every PDU: each one must take pynetdicom's own path
        pynetdicom_log.setLevel(logging.DEBUG)  # setLevel: the logger caches its answer
    try:
        # small PDUs: every image is many P-DATA-TF PDUs, most of them middle fragments
        result = storescu(
            sent_files,
            port=node.port,
            called_ae=NODE_AE,
            calling_ae=MODALITY_AE,
            extra=["--max-send-pdu", "16384"],
        )
    finally:
        pynetdicom_log.setLevel(level)
    assert result.returncode == 0, result.stderr
    if path == "direct":
        # all but the last PDU of each dataset went straight to the file
        assert sum(written) >= len(sent_files) * 10
    else:
        assert not any(written)
    stored = stored_datasets(node)
    assert len(stored) == len(sent_files)
    for sent in sent_files:
        uid = pydicom.dcmread(sent, stop_before_pixels=True).SOPInstanceUID
        assert stored[uid] == dataset_bytes(sent), f"{sent.name} changed on its way"
    # nothing left behind in the receiving folder
    assert node.files is not None
    assert not list(node.files.receiving_dir.iterdir())


def test_fallback_on_another_pynetdicom_receives_the_same_bytes(
    sent_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a pynetdicom the fast path was not written for, pynetdicom's own reading path
    receives (the front door still applies): same stored bytes."""
    monkeypatch.setattr(internals, "FAST_PATH", False)
    settings = make_settings(tmp_path / "fallback")
    settings.assembly.max_wait_s = settings.assembly.quiet_period_s = 3600
    running = Node(settings, analyser=DoubleAnalyser(), node_id="fallback-test")
    running.start()
    try:
        result = storescu(sent_files, port=running.port, called_ae=NODE_AE, calling_ae=MODALITY_AE)
        assert result.returncode == 0, result.stderr
        stored = stored_datasets(running)
    finally:
        running.stop()
    for sent in sent_files:
        uid = pydicom.dcmread(sent, stop_before_pixels=True).SOPInstanceUID
        assert stored[uid] == dataset_bytes(sent)


@pytest.mark.parametrize(
    ("version", "supported"), [("3.0.4", True), ("3.1.0", False), ("x", False)]
)
def test_version_check(version: str, supported: bool) -> None:
    assert internals.fast_path_supported(version) is supported


def test_unsupported_pynetdicom_warns_at_import() -> None:
    code = (
        "import logging, sys; logging.basicConfig(stream=sys.stdout);"
        "import pynetdicom; pynetdicom.__version__ = '3.1.0';"
        "import cem_node.dicom.net.pynetdicom_internals as m; print('FAST_PATH', m.FAST_PATH)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "FAST_PATH False" in done.stdout
    assert "pynetdicom 3.1.0 is not the 3.0 series" in done.stdout
