"""Multi-frame mammography images through a real node (issue #19, observation 3).

A recombined image sent as 2 frames once failed its job three times with a
traceback from the pixel decoder, named the store's file path and sent no
report. It is a permanent property of the image, seen in its header: the
image is left out on the first attempt, with a reason naming the frames,
and the rest of the study is analysed; with nothing else to analyse the
radiologist gets the "not analysed" report.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from cem_node.config import Peer
from cem_node.jobs.admin import show_study
from cem_node.node import Node
from cem_node.store import AuditEvent, Job, StudyState
from cem_node.synthetic.study import SynthOptions, generate_study
from tests import test_node
from tests.analysis_double import DoubleAnalyser
from tests.peers import LOOPBACK, DcmtkStoreSCP
from tests.test_node import dicom_files, make_settings, send, state_is, study_uid, wait_until

running_node = test_node.running_node  # the in-process node fixture, shared

pytestmark = pytest.mark.tools


def _two_frames(source: Path, target: Path) -> str:
    """Write ``source`` as a 2-frame image (its frame twice); return its SOP Instance UID."""
    ds = pydicom.dcmread(source)
    frame = ds.pixel_array
    ds.NumberOfFrames = 2
    ds.PixelData = np.stack([frame, frame]).tobytes()
    ds.save_as(target, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


@pytest.fixture
def study(tmp_path: Path) -> list[Path]:
    return dicom_files(generate_study(tmp_path / "study", 21, 0, SynthOptions(size="small")))


def _node_with_destination(
    tmp_path: Path, running_node: Callable[..., Node], analyser: DoubleAnalyser
) -> tuple[Node, DcmtkStoreSCP]:
    pacs = DcmtkStoreSCP(tmp_path / "pacs").start()
    settings = make_settings(tmp_path / "node")
    settings.peers = [
        *settings.peers,
        Peer(name="pacs", ae_title=pacs.aet, host=LOOPBACK, port=pacs.port, role="destination"),
    ]
    return running_node(settings, analyser), pacs


def job_done(node: Node, uid: str) -> Callable[[], bool]:
    """Whether the study's only job is done (its results sent)."""

    def check() -> bool:
        assert node.sessions is not None
        return [j["state"] for j in show_study(node.sessions, uid)["jobs"]] == ["done"]

    return check


def _everything_said(node: Node, uid: str) -> str:
    """Every message the node recorded about the study: state, roles, jobs, audit."""
    assert node.sessions is not None
    detail = show_study(node.sessions, uid)
    with node.sessions.begin() as session:
        audit = session.scalars(select(AuditEvent.message)).all()
        errors = session.scalars(select(Job.last_error)).all()
    texts = [detail["state_reason"] or ""]
    texts += [i["role_reason"] or "" for i in detail["instances"]]
    texts += [p["reason"] or "" for p in detail["pairings"]]
    texts += [m or "" for m in (*audit, *errors)]
    return "\n".join(texts)


def test_a_two_frame_recombined_image_is_excluded_at_once_and_the_rest_analysed(
    tmp_path: Path, study: list[Path], running_node
) -> None:
    source = next(f for f in study if f.name == "RC_LCC.dcm")
    multi = tmp_path / "RC_LCC_2frames.dcm"
    multi_uid = _two_frames(source, multi)
    files = [f for f in study if f != source] + [multi]
    analyser = DoubleAnalyser(decode_pixels=True)  # decodes the pairs as the analysis does
    node, pacs = _node_with_destination(tmp_path, running_node, analyser)
    try:
        uid = study_uid(files)
        assert send(node, files).returncode == 0
        wait_until(state_is(node, uid, StudyState.DONE), what="the study analysed")
        wait_until(job_done(node, uid), what="the result sent")
        assert pacs.files()
    finally:
        pacs.stop()
    assert node.sessions is not None
    detail = show_study(node.sessions, uid)
    (job,) = detail["jobs"]
    assert job["attempts"] == 1  # not retried as if transient
    # left out before the analysis: it got the other three views only, once
    assert [sorted((p.laterality, p.view) for p in c.pairs) for c in analyser.calls] == [
        [("L", "MLO"), ("R", "CC"), ("R", "MLO")]
    ]
    excluded = {i["sop_instance_uid"]: i for i in detail["instances"] if i["role"] == "excluded"}
    assert list(excluded) == [multi_uid]
    reason = excluded[multi_uid]["role_reason"]
    assert reason.startswith("multi-frame image (2 frames)"), reason
    assert "L CC" in reason and "series" in reason, reason
    said = _everything_said(node, uid)
    assert "L CC: no recombined image" in said
    assert node.files is not None and str(node.files.root) not in said
    assert ".dcm" not in said  # no file name of the store either


def test_a_study_whose_only_recombined_images_are_multi_frame_gets_the_not_analysed_report(
    tmp_path: Path, study: list[Path], running_node
) -> None:
    files = []
    for f in study:
        if f.name.startswith("RC_"):
            files.append(tmp_path / f"{f.stem}_2frames.dcm")
            _two_frames(f, files[-1])
        else:
            files.append(f)
    analyser = DoubleAnalyser(decode_pixels=True)
    node, pacs = _node_with_destination(tmp_path, running_node, analyser)
    try:
        uid = study_uid(files)
        assert send(node, files).returncode == 0
        wait_until(state_is(node, uid, StudyState.NOT_ANALYSABLE), what="not analysable")
        wait_until(job_done(node, uid), what="the not-analysed report sent")
        (report,) = pacs.files()
    finally:
        pacs.stop()
    assert analyser.calls == []
    assert node.sessions is not None
    detail = show_study(node.sessions, uid)
    (job,) = detail["jobs"]
    assert job["attempts"] == 1
    assert "4 image(s) excluded: multi-frame image (2 frames)" in detail["state_reason"]
    sr = pydicom.dcmread(report)
    assert sr.Modality == "SR" and sr.StudyInstanceUID == uid
    texts = [str(e.value) for e in sr.iterall() if e.keyword == "TextValue"]
    assert any("multi-frame image (2 frames)" in t for t in texts), texts
    said = _everything_said(node, uid)
    assert node.files is not None and str(node.files.root) not in said and ".dcm" not in said
