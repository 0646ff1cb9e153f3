"""Late arrivals (issue #19, observation 6): recombined images that come after the
low-energy ones, and a later round that supersedes a report already sent.

Assembly decisions on a real SQLite store filled by the real ingest path; then a
real node (DICOM listener, scheduler, worker, exporter) with Orthanc as the PACS,
the images sent by dcmtk's storescu, short quiet period and maximum wait.
"""

from __future__ import annotations

import datetime as dt
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from cem_node.dicom.objects.predecessors import REPLACES_PREFIX
from cem_node.dicom.selection import Classification
from cem_node.jobs.assembler import (
    RecombinedAwaited,
    complete_due_studies,
    views_awaiting_recombined,
)
from cem_node.node import Node
from cem_node.store import Analysis, AuditEvent, Export, Job, StudyState
from cem_node.synthetic.study import SynthOptions, generate_study
from tests.analysis_double import DoubleAnalyser
from tests.dicom_validators import dciodvfy_messages, require_tool
from tests.peers import OrthancServer
from tests.test_jobs import Store
from tests.test_node import (
    add_destination,
    make_settings,
    send,
    state_is,
    study_state,
    study_uid,
    wait_until,
)

QUIET_S = 30.0
MAX_WAIT_S = 600.0


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    study = generate_study(tmp_path_factory.mktemp("late"), 19, 0, SynthOptions(size="small"))
    return sorted((study / "dicom").glob("*.dcm"))


def low_energy(files: list[Path]) -> list[Path]:
    return [f for f in files if f.name.startswith("LE_")]


def recombined(files: list[Path]) -> list[Path]:
    return [f for f in files if f.name.startswith("RC_")]


@pytest.fixture
def store(tmp_path: Path, sqlite_url: str) -> Iterator[Store]:
    made = Store(tmp_path, sqlite_url)
    yield made
    made.engine.dispose()


def _assemble(store: Store, at: dt.datetime) -> list[str]:
    """Run the assembler at ``at`` with the node's check of the stored headers."""
    done = complete_due_studies(
        store.sessions,
        quiet_period_s=QUIET_S,
        max_wait_s=MAX_WAIT_S,
        actor="t",
        now=at,
        awaiting=RecombinedAwaited(store.sessions, store.files, store.settings.selection),
    )
    return [d.reason for d in done]


def _c(role: str, laterality: str | None, view: str | None, uid: str) -> Classification:
    return Classification(uid, role, "test", laterality, view, None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the decision


def test_only_a_view_with_low_energy_and_no_recombined_is_awaited() -> None:
    images = [
        _c("low_energy", "R", "CC", "1"),
        _c("recombined", "R", "CC", "2"),
        _c("low_energy", "L", "MLO", "3"),
        _c("low_energy", "L", "CC", "4"),
        _c("low_energy", "L", "CC", "5"),  # a second LE of a view with its RC: not awaited
        _c("recombined", "L", "CC", "6"),
        _c("recombined", "R", "MLO", "7"),  # RC without LE: derived from an LE already sent
        _c("low_energy", None, "CC", "8"),  # no laterality: can never pair, waiting won't help
        _c("high_energy", "R", "MLO", "9"),
    ]
    assert views_awaiting_recombined(images) == ["L MLO"]
    assert views_awaiting_recombined([]) == []


def test_low_energy_without_recombined_waits_for_the_maximum_wait(
    store: Store, study_files: list[Path]
) -> None:
    uid = store.receive(low_energy(study_files))
    start = store.study(uid).receiving_since
    assert start is not None
    quiet = start + dt.timedelta(seconds=QUIET_S + 1)
    assert _assemble(store, quiet) == []  # quiet, but only missing its recombined images
    study = store.study(uid)
    assert study.state is StudyState.RECEIVING
    assert study.state_reason is not None
    assert "waiting for the recombined images of L CC, L MLO, R CC, R MLO" in study.state_reason
    assert _assemble(store, start + dt.timedelta(seconds=MAX_WAIT_S - 1)) == []

    assert _assemble(store, start + dt.timedelta(seconds=MAX_WAIT_S + 1)) == ["max_wait"]
    study = store.study(uid)
    assert study.state is StudyState.COMPLETE and study.completion_reason == "max_wait"
    with store.sessions.begin() as session:
        reasons = session.scalars(
            select(AuditEvent.message).where(AuditEvent.event_type == "job_state")
        ).all()
    assert any("maximum wait elapsed" in (m or "") and "recombined" in (m or "") for m in reasons)


def test_recombined_images_in_time_complete_one_round_at_the_quiet_period(
    store: Store, study_files: list[Path]
) -> None:
    uid = store.receive(low_energy(study_files))
    start = store.study(uid).receiving_since
    assert start is not None
    assert _assemble(store, start + dt.timedelta(seconds=QUIET_S + 1)) == []
    store.receive(recombined(study_files))  # 40 s later, within the maximum wait
    arrived = store.study(uid).last_received_at
    assert _assemble(store, arrived + dt.timedelta(seconds=QUIET_S - 1)) == []
    assert _assemble(store, arrived + dt.timedelta(seconds=QUIET_S + 1)) == ["quiet_period"]
    study = store.study(uid)
    assert study.analysis_round == 1 and study.state is StudyState.COMPLETE
    assert study.state_reason is None  # the waiting note is gone


def test_complete_pairs_and_recombined_without_low_energy_go_at_the_quiet_period(
    store: Store, study_files: list[Path]
) -> None:
    whole = store.receive(study_files[:1] + recombined(study_files))  # LE_LCC + every RC
    start = store.study(whole).receiving_since
    assert start is not None
    assert _assemble(store, start + dt.timedelta(seconds=QUIET_S - 1)) == []
    assert _assemble(store, start + dt.timedelta(seconds=QUIET_S + 1)) == ["quiet_period"]


def test_the_awaited_check_reads_the_headers_once_per_arrival(
    store: Store, study_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    uid = store.receive(low_energy(study_files))
    check = RecombinedAwaited(store.sessions, store.files, store.settings.selection)
    reads: list[object] = []
    real = pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: reads.append(a) or real(*a, **k))
    study = store.study(uid)
    first = check(study.id, study.last_received_at)
    assert first is not None and "R MLO" in first
    assert len(reads) == 4
    assert check(study.id, study.last_received_at) == first
    assert len(reads) == 4  # nothing arrived since: the answer is reused


# --------------------------------------------------------------------------- a real node


@pytest.fixture
def running_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def start(settings: object, analyser: object = None) -> Node:
        node = Node(settings, analyser=analyser or DoubleAnalyser(), node_id="test-node")  # type: ignore[arg-type]
        node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


def _late_settings(root: Path, pacs: OrthancServer, *, max_wait_s: float):
    settings = make_settings(root)
    settings.assembly.quiet_period_s = 1.0
    settings.assembly.max_wait_s = max_wait_s
    add_destination(settings, pacs)
    return settings


def _srs_at(pacs: OrthancServer, uid: str) -> list[pydicom.Dataset]:
    found = []
    for series in pacs.series_of_study(uid):
        if series["MainDicomTags"].get("Modality") == "SR":
            for instance in series["Instances"]:
                found.append(pydicom.dcmread(io.BytesIO(pacs.instance_file(instance))))
    return sorted(found, key=lambda ds: int(ds.SeriesNumber))


def _texts(ds: pydicom.Dataset) -> list[str]:
    out: list[str] = []

    def walk(items: pydicom.Sequence) -> None:
        for item in items:
            if item.ValueType == "TEXT":
                out.append(str(item.TextValue))
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(ds.ContentSequence)
    return out


@pytest.mark.tools
@pytest.mark.timeout(120)
def test_recombined_images_sent_late_give_one_report_not_two(
    tmp_path: Path, study_files: list[Path], orthanc: Callable[..., OrthancServer], running_node
) -> None:
    """Observation 6: the RC images come after the quiet period, before the maximum wait."""
    pacs = orthanc()
    node = running_node(_late_settings(tmp_path / "node", pacs, max_wait_s=20))
    uid = study_uid(study_files)
    assert send(node, low_energy(study_files)).returncode == 0
    time.sleep(4)  # four quiet periods: the not-analysed report went out here before
    study = study_state(node, uid)
    assert study is not None and study.state is StudyState.RECEIVING, study
    assert pacs.series_of_study(uid) == []
    assert send(node, recombined(study_files)).returncode == 0
    wait_until(state_is(node, uid, StudyState.DONE), what="the study analysed", timeout_s=30)

    (report,) = _srs_at(pacs, uid)
    assert any("TEST DOUBLE of the analysis, round 1" in t for t in _texts(report))
    assert "PredecessorDocumentsSequence" not in report
    assert node.sessions is not None
    with node.sessions.begin() as session:
        analyses = session.scalars(select(Analysis)).all()
    assert [(a.analysis_round, a.not_analysable_reason) for a in analyses] == [(1, None)]


@pytest.mark.tools
@pytest.mark.timeout(120)
def test_not_analysed_report_waits_for_the_maximum_wait_and_the_next_round_replaces_it(
    tmp_path: Path, study_files: list[Path], orthanc: Callable[..., OrthancServer], running_node
) -> None:
    max_wait_s = 6.0
    pacs = orthanc()
    node = running_node(_late_settings(tmp_path / "node", pacs, max_wait_s=max_wait_s))
    uid = study_uid(study_files)
    sent_at = time.monotonic()
    assert send(node, low_energy(study_files)).returncode == 0
    (first,) = wait_until(lambda: _srs_at(pacs, uid), what="the not-analysed report", timeout_s=30)
    assert time.monotonic() - sent_at >= max_wait_s
    study = study_state(node, uid)
    assert study is not None and study.completion_reason == "max_wait"
    assert study.completed_at is not None and study.receiving_since is not None
    assert (study.completed_at - study.receiving_since).total_seconds() >= max_wait_s
    assert any("no recombined image" in t for t in _texts(first))
    # the node's deterministic report, numbered per round (not a random UID in series 9901)
    assert int(first.SeriesNumber) == 9001

    assert send(node, recombined(study_files)).returncode == 0
    wait_until(
        lambda: (
            (s := study_state(node, uid)) and s.analysis_round == 2 and s.state is StudyState.DONE
        ),
        what="round 2 done",
        timeout_s=30,
    )
    reports = _srs_at(pacs, uid)
    (second,) = [r for r in reports if r.SOPInstanceUID != first.SOPInstanceUID]
    (predecessor,) = second.PredecessorDocumentsSequence
    assert predecessor.StudyInstanceUID == uid
    (series,) = predecessor.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    (sop,) = series.ReferencedSOPSequence
    assert sop.ReferencedSOPClassUID == first.SOPClassUID
    assert sop.ReferencedSOPInstanceUID == first.SOPInstanceUID
    replaces = [t for t in _texts(second) if t.startswith(REPLACES_PREFIX)]
    assert len(replaces) == 1 and first.SOPInstanceUID in replaces[0], _texts(second)
    assert node.sessions is not None
    with node.sessions.begin() as session:
        exports = session.scalars(select(Export).order_by(Export.id)).all()
        jobs = session.scalars(select(Job).order_by(Job.id)).all()
    assert [e.sop_instance_uid for e in exports] == [first.SOPInstanceUID, second.SOPInstanceUID]
    assert [j.analysis_round for j in jobs] == [1, 2]

    require_tool("dciodvfy")
    path = tmp_path / "second.dcm"
    second.save_as(path, enforce_file_format=True)
    messages = dciodvfy_messages(path)
    assert messages[0] == "ComprehensiveSR" and messages[1:] == [], messages
