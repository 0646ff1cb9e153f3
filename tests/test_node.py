"""The node end to end with real peers: dcmtk's storescu/echoscu as the
modality, Orthanc as the PACS, the node in-process (or in its own process for
the kill -9 tests), the test-double analysis (tests/analysis_double.py).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from sqlalchemy import func, select

from cem_node.config import Peer, Settings
from cem_node.jobs.admin import show_study
from cem_node.node import Node
from cem_node.store import (
    Analysis,
    AuditEvent,
    Export,
    ExportState,
    Instance,
    Job,
    JobState,
    Study,
    StudyState,
)
from cem_node.synthetic.study import SynthOptions, generate_study
from tests.analysis_double import DoubleAnalyser
from tests.peers import LOOPBACK, OrthancServer, echoscu, storescu

pytestmark = pytest.mark.tools

MODALITY_AE = "MODALITY"
NODE_AE = "CEM_NODE"


def wait_until(predicate: Callable[[], Any], timeout_s: float = 20.0, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s:g} s waiting for {what or predicate}")


@pytest.fixture(scope="session")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small synthetic CEM studies: explicit VR, JPEG 2000, one without RC images."""
    root = tmp_path_factory.mktemp("studies")
    return {
        "explicit": generate_study(root / "explicit", 11, 0, SynthOptions(size="small")),
        "jpeg2000": generate_study(
            root / "j2k", 11, 1, SynthOptions(size="small", transfer_syntax="jpeg2000")
        ),
    }


def dicom_files(study: Path) -> list[Path]:
    return sorted((study / "dicom").glob("*.dcm"))


def make_settings(root: Path, **node: Any) -> Settings:
    settings = Settings.defaults()
    settings.storage.root = root
    settings.storage.min_free_mb = 0
    settings.storage.disk_high_watermark_percent = 99.99
    settings.node.host = LOOPBACK
    settings.node.port = 0
    settings.http.port = 0  # /healthz and /metrics on any free port
    # long enough that a loaded machine does not complete a study mid-transfer
    settings.assembly.quiet_period_s = 1.5
    settings.assembly.max_wait_s = 60
    settings.assembly.check_interval_s = 0.2
    settings.export.initial_backoff_s = 0.3
    settings.export.max_backoff_s = 1.0
    for key, value in node.items():
        setattr(settings.node, key, value)
    settings.peers = [
        Peer(name="modality", ae_title=MODALITY_AE, host="127.0.0.1", port=104, role="source"),
        Peer(name="faraway", ae_title="FARAWAY", host="192.0.2.7", port=104, role="source"),
    ]
    return settings


def add_destination(settings: Settings, pacs: OrthancServer) -> None:
    settings.peers = [
        *settings.peers,
        Peer(
            name="pacs", ae_title=pacs.aet, host=LOOPBACK, port=pacs.dicom_port, role="destination"
        ),
    ]


@pytest.fixture
def running_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def start(settings: Settings, analyser: Any = None) -> Node:
        node = Node(settings, analyser=analyser or DoubleAnalyser(), node_id="test-node")
        node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


def send(node: Node, files: list[Path], calling: str = MODALITY_AE, called: str = NODE_AE):
    return storescu(files, port=node.port, called_ae=called, calling_ae=calling)


def study_uid(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def study_state(node: Node, uid: str) -> Study | None:
    assert node.sessions is not None
    with node.sessions.begin() as session:
        return session.scalar(select(Study).where(Study.study_instance_uid == uid))


def state_is(node: Node, uid: str, *states: StudyState) -> Callable[[], bool]:
    def check() -> bool:
        study = study_state(node, uid)
        return study is not None and study.state in states

    return check


# --------------------------------------------------------------------------- receive


def test_studies_in_every_syntax_reach_orthanc(
    tmp_path: Path, studies: dict[str, Path], orthanc: Callable[..., OrthancServer], running_node
) -> None:
    pacs = orthanc()
    settings = make_settings(tmp_path / "node")
    add_destination(settings, pacs)
    node = running_node(settings)

    echo = echoscu(port=node.port, called_ae=NODE_AE, calling_ae=MODALITY_AE)
    assert echo.returncode == 0, echo.stderr
    sent = {name: dicom_files(path) for name, path in studies.items()}
    for files in sent.values():
        result = send(node, files)
        assert result.returncode == 0, result.stderr

    uids = {name: study_uid(files) for name, files in sent.items()}
    for uid in uids.values():
        wait_until(state_is(node, uid, StudyState.DONE), what=f"study {uid} done")

    assert node.sessions is not None and node.files is not None

    def hashed() -> bool:
        with node.sessions.begin() as session:  # type: ignore[union-attr]
            return all(session.scalars(select(Instance.sha256)))

    wait_until(hashed, what="the instance hashes, computed after each answer")
    with node.sessions.begin() as session:
        instances = session.scalars(select(Instance)).all()
        exports = session.scalars(select(Export)).all()
        analyses = session.scalars(select(Analysis)).all()
    assert len(instances) == sum(len(f) for f in sent.values())
    # stored as received: JPEG 2000 stays JPEG 2000, pixel bytes identical
    by_uid = {i.sop_instance_uid: i for i in instances}
    for path in sent["jpeg2000"]:
        original = pydicom.dcmread(path)
        row = by_uid[str(original.SOPInstanceUID)]
        assert row.transfer_syntax_uid == str(original.file_meta.TransferSyntaxUID)
        stored = pydicom.dcmread(node.files.absolute(row.file_path))
        assert stored.PixelData == original.PixelData
        assert (
            row.sha256
            == hashlib.sha256(node.files.absolute(row.file_path).read_bytes()).hexdigest()
        )
    assert {a.model_name for a in analyses} == {"test-double"}
    assert len(exports) == 2 and all(e.state is ExportState.DONE for e in exports)
    assert pacs.sop_instance_uids() == {e.sop_instance_uid for e in exports}

    detail = show_study(node.sessions, uids["explicit"])
    roles = {i["role"] for i in detail["instances"]}
    assert roles == {"low_energy", "recombined"}
    assert all(i["role_reason"] for i in detail["instances"])
    assert sum(p["paired"] for p in detail["pairings"]) == 4
    assert [j["state"] for j in detail["jobs"]] == ["done"]


def test_strangers_are_rejected_and_audited(tmp_path: Path, running_node) -> None:
    node = running_node(make_settings(tmp_path / "node"))

    assert echoscu(port=node.port, called_ae=NODE_AE, calling_ae=MODALITY_AE).returncode == 0
    stranger = echoscu(port=node.port, called_ae=NODE_AE, calling_ae="STRANGER")
    assert stranger.returncode != 0
    assert "Calling AE Title Not Recognized" in stranger.stderr + stranger.stdout
    # a known AE title from the wrong address (FARAWAY may only call from 192.0.2.7)
    wrong_host = echoscu(port=node.port, called_ae=NODE_AE, calling_ae="FARAWAY")
    assert wrong_host.returncode != 0
    wrong_called = echoscu(port=node.port, called_ae="SOMEONE_ELSE", calling_ae=MODALITY_AE)
    assert wrong_called.returncode != 0
    assert "Called AE Title Not Recognized" in wrong_called.stderr + wrong_called.stdout
    # and the node keeps serving
    assert echoscu(port=node.port, called_ae=NODE_AE, calling_ae=MODALITY_AE).returncode == 0

    assert node.sessions is not None
    with node.sessions.begin() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.event_type == "association")
        ).all()
    decisions = [(e.calling_ae_title, e.decision) for e in events]
    assert decisions == [
        (MODALITY_AE, "accepted"),
        ("STRANGER", "rejected"),
        ("FARAWAY", "rejected"),
        (MODALITY_AE, "rejected"),
        (MODALITY_AE, "accepted"),
    ]
    assert "192.0.2.7" in events[2].message and "127.0.0.1" in events[2].message


def _pynetdicom_store(port: int, paths: list[Path], sop_class: str) -> list[int]:
    """Send files' bytes as they are (even broken ones) and return the statuses.

    pynetdicom sends a file path without decoding it only in its chunked-send
    mode, a process-wide switch: set here, not left to whichever test ran before.
    """
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    assoc = ae.associate(LOOPBACK, port, ae_title=NODE_AE)
    assert assoc.is_established
    statuses = []
    try:
        for item in paths:
            status = assoc.send_c_store(item)
            statuses.append(int(status.Status) if status else -1)
    finally:
        assoc.release()
    return statuses


def test_bad_input_gets_a_failure_status_and_the_node_keeps_serving(
    tmp_path: Path, studies: dict[str, Path], running_node
) -> None:
    node = running_node(make_settings(tmp_path / "node"))
    good = dicom_files(studies["explicit"])[0]
    raw = good.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(raw[: len(raw) - 5000])
    # valid file meta, garbage dataset
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
    corrupt = tmp_path / "corrupt.dcm"
    corrupt.write_bytes(raw[:meta_end] + b"\x08\x00\x16\x00UI\xff\xff" + b"\x00garbage" * 50)
    # a secondary capture sent on a mammography presentation context (pynetdicom
    # sends a file on the context of its meta's MediaStorageSOPClassUID)
    other_ds = pydicom.dcmread(good)
    other_ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    other = tmp_path / "other.dcm"
    other_ds.save_as(other)
    mg = "1.2.840.10008.5.1.4.1.1.1.2"

    statuses = _pynetdicom_store(node.port, [truncated, corrupt, other, good], mg)
    assert statuses[0] == 0xC001  # truncated pixel data
    assert 0xC000 <= statuses[1] <= 0xCFFF  # cannot understand
    assert statuses[2] == 0xA900  # does not match the SOP class
    assert statuses[3] == 0x0000  # and the node keeps serving

    assert node.sessions is not None
    with node.sessions.begin() as session:
        stored = session.scalars(select(Instance.sop_instance_uid)).all()
        refused = session.scalar(select(func.count()).where(AuditEvent.decision == "refused"))
    assert stored == [str(pydicom.dcmread(good, stop_before_pixels=True).SOPInstanceUID)]
    assert refused == 3


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_bad_identifiers_and_unknown_vrs_are_refused_naming_the_attribute(
    tmp_path: Path, studies: dict[str, Path], running_node
) -> None:
    """Once answered 0x0110 by the SCP's catch-all (unknown VR) or stored and indexed as
    the text "['/etc/x', 'x']" (a multi-valued Study Instance UID)."""
    node = running_node(make_settings(tmp_path / "node"))
    good, other = dicom_files(studies["explicit"])[:2]
    raw = other.read_bytes()
    name = raw.index(b"\x10\x00\x10\x00PN")
    unknown_vr = tmp_path / "unknown-vr.dcm"
    unknown_vr.write_bytes(raw[: name + 4] + b"ZZ" + raw[name + 6 :])
    two_uids = pydicom.dcmread(other)
    two_uids.StudyInstanceUID = ["/etc/x", "x"]
    multi = tmp_path / "multi.dcm"
    two_uids.save_as(multi)

    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True  # the files' bytes as they are
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(two_uids.SOPClassUID, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate(LOOPBACK, node.port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        answers = [assoc.send_c_store(path) for path in (unknown_vr, multi, good)]
    finally:
        assoc.release()
    assert [(int(a.Status), a.get("ErrorComment")) for a in answers] == [
        (0xC000, "Cannot parse (0010,0010) PatientName: unknown VR 'ZZ'"),
        (0xC000, "Invalid StudyInstanceUID: not a single UID"),
        (0x0000, None),
    ]
    assert node.sessions is not None
    with node.sessions.begin() as session:
        assert session.scalars(select(Study.study_instance_uid)).all() == [study_uid([good])]


def test_other_sop_classes_ignored_or_refused_by_config(
    tmp_path: Path, studies: dict[str, Path], running_node
) -> None:
    sc = pydicom.dcmread(dicom_files(studies["explicit"])[0])
    sc.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    sc.file_meta.MediaStorageSOPClassUID = sc.SOPClassUID
    path = tmp_path / "sc.dcm"
    sc.save_as(path)

    ignoring = running_node(make_settings(tmp_path / "a", accept_unknown_sop_classes="ignore"))
    assert _pynetdicom_store(ignoring.port, [path], sc.SOPClassUID) == [0x0000]
    assert ignoring.sessions is not None
    with ignoring.sessions.begin() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 0
        assert (
            session.scalar(select(func.count()).where(AuditEvent.event_type == "instance_ignored"))
            == 1
        )

    refusing = running_node(make_settings(tmp_path / "b", accept_unknown_sop_classes="refuse"))
    result = send(refusing, [path])
    assert result.returncode != 0  # no presentation context for a secondary capture
    assert echoscu(port=refusing.port, called_ae=NODE_AE, calling_ae=MODALITY_AE).returncode == 0


def test_resent_instances_are_idempotent_and_changes_kept(
    tmp_path: Path, studies: dict[str, Path], running_node
) -> None:
    node = running_node(make_settings(tmp_path / "node"))
    file = dicom_files(studies["explicit"])[0]
    assert send(node, [file]).returncode == 0
    assert send(node, [file]).returncode == 0  # same bytes: nothing changes
    changed = pydicom.dcmread(file)
    changed.InstitutionName = "Changed by the modality"
    changed_path = tmp_path / "changed.dcm"
    changed.save_as(changed_path)
    assert send(node, [changed_path]).returncode == 0

    assert node.sessions is not None and node.files is not None
    with node.sessions.begin() as session:
        rows = session.scalars(select(Instance)).all()
        events = session.scalars(
            select(AuditEvent.event_type)
            .where(AuditEvent.event_type.like("instance_%"))
            .order_by(AuditEvent.id)
        ).all()
    assert len(rows) == 1 and rows[0].version == 2
    stored = pydicom.dcmread(node.files.absolute(rows[0].file_path), stop_before_pixels=True)
    assert stored.InstitutionName == "Changed by the modality"
    assert events == ["instance_stored", "instance_resent", "instance_replaced"]
    files_on_disk = list((node.files.root / "incoming").rglob("*.dcm"))
    assert files_on_disk == [node.files.absolute(rows[0].file_path)]  # the old version is gone


def test_disk_above_watermark_refuses_with_a700(
    tmp_path: Path, studies: dict[str, Path], running_node
) -> None:
    settings = make_settings(tmp_path / "node")
    settings.storage.disk_high_watermark_percent = 0.01
    node = running_node(settings)
    result = storescu(
        dicom_files(studies["explicit"])[:2],
        port=node.port,
        called_ae=NODE_AE,
        calling_ae=MODALITY_AE,
        extra=["-v"],
    )
    assert (result.stdout + result.stderr).count("Refused: OutOfResources") == 2
    assert node.sessions is not None
    with node.sessions.begin() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 0
        alerts = session.scalars(select(AuditEvent).where(AuditEvent.decision == "alert")).all()
    assert len(alerts) == 1 and "watermark" in (alerts[0].message or "")


# --------------------------------------------------------------------------- assemble, pair


def test_late_instance_triggers_a_new_round(
    tmp_path: Path, studies: dict[str, Path], orthanc, running_node
) -> None:
    pacs = orthanc()
    settings = make_settings(tmp_path / "node")
    add_destination(settings, pacs)
    node = running_node(settings)
    files = dicom_files(studies["explicit"])
    uid = study_uid(files)
    # a low-energy image late (a view without its recombined image would wait for max_wait_s)
    late = [f for f in files if f.name == "LE_RMLO.dcm"]
    assert send(node, [f for f in files if f not in late]).returncode == 0
    wait_until(state_is(node, uid, StudyState.DONE), what="round 1 done")
    assert send(node, late).returncode == 0
    wait_until(
        lambda: (
            (s := study_state(node, uid)) and s.analysis_round == 2 and s.state is StudyState.DONE
        ),
        what="round 2 done",
    )
    assert node.sessions is not None
    with node.sessions.begin() as session:
        analyses = session.scalars(select(Analysis).order_by(Analysis.id)).all()
        jobs = session.scalars(select(Job).order_by(Job.id)).all()
    assert [a.analysis_round for a in analyses] == [1, 2]
    assert analyses[0].superseded_by_id == analyses[1].id and analyses[1].superseded_by_id is None
    assert [j.state for j in jobs] == [JobState.DONE, JobState.DONE]
    assert len(pacs.sop_instance_uids()) == 2  # a new result series; the old one not lost


def test_study_without_pairs_is_reported_not_analysable(
    tmp_path: Path, studies: dict[str, Path], orthanc, running_node
) -> None:
    pacs = orthanc()
    settings = make_settings(tmp_path / "node")
    settings.assembly.max_wait_s = 3  # how long a study waits for its recombined images
    add_destination(settings, pacs)
    analyser = DoubleAnalyser()
    node = running_node(settings, analyser)
    low_energy_only = [f for f in dicom_files(studies["explicit"]) if f.name.startswith("LE_")]
    uid = study_uid(low_energy_only)
    assert send(node, low_energy_only).returncode == 0
    wait_until(state_is(node, uid, StudyState.NOT_ANALYSABLE), what="not analysable")
    study = study_state(node, uid)
    assert study is not None and study.completion_reason == "max_wait"
    wait_until(lambda: len(pacs.sop_instance_uids()) == 1, what="the not-analysable SR at the PACS")
    assert analyser.calls == []
    assert node.sessions is not None
    detail = show_study(node.sessions, uid)
    # said once: the state is "not analysable", its reason does not repeat it
    assert detail["state_reason"].startswith("no low-energy/recombined pair")
    assert "no recombined image" in detail["state_reason"]
    assert {p["paired"] for p in detail["pairings"]} == {False}
    (sr_id,) = pacs.instances()
    tags = pacs.instance_tags(sr_id)
    assert tags["Modality"] == "SR" and tags["StudyInstanceUID"] == uid


def test_pacs_down_then_up_delivers_exactly_once(
    tmp_path: Path, studies: dict[str, Path], orthanc, running_node
) -> None:
    pacs = orthanc()
    settings = make_settings(tmp_path / "node")
    add_destination(settings, pacs)
    pacs.stop()
    node = running_node(settings)
    files = dicom_files(studies["explicit"])
    uid = study_uid(files)
    assert send(node, files).returncode == 0
    assert node.sessions is not None

    def retried() -> bool:
        with node.sessions.begin() as session:  # type: ignore[union-attr]
            export = session.scalar(select(Export))
            return export is not None and export.attempts >= 2

    wait_until(retried, what="two failed attempts while the PACS is down")
    pacs.start()
    wait_until(state_is(node, uid, StudyState.DONE), what="delivered after the PACS came back")
    with node.sessions.begin() as session:
        (export,) = session.scalars(select(Export)).all()
        sent = session.scalars(
            select(AuditEvent).where(
                AuditEvent.event_type == "export", AuditEvent.decision == "sent"
            )
        ).all()
        retries = session.scalar(
            select(func.count()).where(
                AuditEvent.event_type == "export", AuditEvent.decision == "retry"
            )
        )
    assert export.state is ExportState.DONE and export.attempts >= 3
    assert len(sent) == 1 and retries >= 2
    assert pacs.sop_instance_uids() == {export.sop_instance_uid}
    assert pacs.count_instances() == 1


def test_permanent_rejection_fails_without_endless_retries(
    tmp_path: Path, studies: dict[str, Path], orthanc, running_node
) -> None:
    pacs = orthanc(modalities={})  # the PACS does not know our AE title
    settings = make_settings(tmp_path / "node")
    add_destination(settings, pacs)
    node = running_node(settings)
    files = dicom_files(studies["explicit"])
    uid = study_uid(files)
    assert send(node, files).returncode == 0
    wait_until(state_is(node, uid, StudyState.FAILED), what="study failed")
    time.sleep(1.5)  # longer than the backoff: no further attempt may happen
    assert node.sessions is not None
    with node.sessions.begin() as session:
        (export,) = session.scalars(select(Export)).all()
        alerts = session.scalars(select(AuditEvent).where(AuditEvent.decision == "alert")).all()
    assert export.state is ExportState.FAILED and export.attempts == 1
    assert "rejected" in (export.last_error or "").lower()
    assert any("studies retry" in (a.message or "") for a in alerts)

    from cem_node.jobs.admin import retry_study

    pacs.set_modalities({"cem-node": (NODE_AE, LOOPBACK, 104)})
    assert "1 export(s)" in retry_study(node.sessions, uid, actor="admin:test")
    wait_until(state_is(node, uid, StudyState.DONE), what="done after the retry")
    assert pacs.count_instances() == 1


def test_association_limit_rejects_transiently(tmp_path: Path, running_node) -> None:
    node = running_node(make_settings(tmp_path / "node", max_associations=1))
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context("1.2.840.10008.1.1")
    held = ae.associate(LOOPBACK, node.port, ae_title=NODE_AE)
    assert held.is_established
    try:
        second = echoscu(port=node.port, called_ae=NODE_AE, calling_ae=MODALITY_AE)
        assert second.returncode != 0
        assert "Local Limit Exceeded" in second.stderr + second.stdout
    finally:
        held.release()
    wait_until(
        lambda: echoscu(port=node.port, called_ae=NODE_AE, calling_ae=MODALITY_AE).returncode == 0,
        what="a free association slot",
    )


def _get(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _metric(text: str, name: str, labels: str = "") -> float:
    import re

    pattern = rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$"
    found = re.search(pattern, text, flags=re.MULTILINE)
    assert found, f"{name}{labels} not in /metrics"
    return float(found.group(1))


def test_health_and_metrics_endpoint(tmp_path: Path, running_node, studies) -> None:
    settings = make_settings(tmp_path / "node")
    node = running_node(settings)
    assert node.http is not None
    base = f"http://{LOOPBACK}:{node.http.port}"
    code, body = _get(f"{base}/healthz")
    health = json.loads(body)
    assert code == 200 and health["status"] == "ok" and health["database"] == "ok"
    assert health["ae_title"] == NODE_AE and health["dicom_port"] == node.port

    files = dicom_files(studies["explicit"])
    send(node, files)
    uid = study_uid(files)
    wait_until(state_is(node, uid, StudyState.DONE, StudyState.FAILED), what="analysed")
    code, text = _get(f"{base}/metrics")
    assert code == 200
    assert _metric(text, "cem_node_instances_received_total") == len(files)
    assert _metric(text, "cem_node_instances_stored") == len(files)
    assert _metric(text, "cem_node_database_up") == 1
    assert _metric(text, "cem_node_analysis_seconds_count") == 1
    done = _metric(text, "cem_node_studies", '{state="done"}')
    failed = text.count('cem_node_studies{state="failed"}')
    assert done + failed >= 1
    assert _get(f"{base}/nothing")[0] == 404

    # a database that stops answering makes the node unhealthy (503), not silent
    assert node.engine is not None
    node.engine.dispose()
    (tmp_path / "node" / "cem-node.db").rename(tmp_path / "gone.db")
    (tmp_path / "node" / "cem-node.db").mkdir()  # not a database any more
    code, body = _get(f"{base}/healthz")
    assert code == 503 and json.loads(body)["status"].startswith("unhealthy")
    assert "cem_node_database_up 0.0" in _get(f"{base}/metrics")[1]
