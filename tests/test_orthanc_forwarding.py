"""Orthanc as the forwarding PACS (issue #19): the modality stores a study at Orthanc,
Orthanc C-STOREs it to the node, and the node's results come back to the same
Orthanc study.

Nothing is mocked: dcmtk's storescu as the modality, Orthanc (its REST API
``POST /modalities/{name}/store``) forwarding to ``cem-node serve`` in its own
process, analysing with the shipped demo bundle, and Orthanc registered on the
node both as a source (it sends the images) and as the destination of the results.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select

from cem_node.store import (
    Export,
    ExportState,
    Instance,
    Study,
    StudyState,
    make_engine,
    session_factory,
)
from cem_node.synthetic.study import SynthOptions, generate_study
from tests.e2e.node_stack import ServedNode, demo_bundle_present
from tests.peers import LOOPBACK, OrthancServer, storescu
from tests.test_node import wait_until

pytestmark = [pytest.mark.tools, pytest.mark.slow, pytest.mark.timeout(300)]

#: The modality that stores at Orthanc (Orthanc knows it; the node does not).
MODALITY_AE = "SENO_FWD"
#: The node's name in Orthanc's modality list (ServedNode registers it).
NODE_AT_ORTHANC = "cem-node"


def _orthanc(pacs: OrthancServer, method: str, path: str, body: Any = None) -> Any:
    """Orthanc's REST API (the forwarding call may take a while on a loaded machine)."""
    return pacs._request(method, path, body, timeout_s=120)


def _study_ids(pacs: OrthancServer, study_instance_uid: str) -> list[str]:
    query = {"Level": "Study", "Query": {"StudyInstanceUID": study_instance_uid}}
    return list(_orthanc(pacs, "POST", "/tools/find", query))


def test_orthanc_forwards_a_study_and_gets_the_results_in_the_same_study(
    tmp_path: Path, orthanc: Callable[..., OrthancServer]
) -> None:
    assert demo_bundle_present(), "the demo bundle ships with the repository (models/cem-demo)"
    study = generate_study(tmp_path / "synth", 19, 0, SynthOptions(size="small"))
    files = sorted((study / "dicom").glob("*.dcm"))
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    pacs = orthanc(modalities={"modality": (MODALITY_AE, LOOPBACK, 104)})

    with ServedNode(tmp_path / "node", pacs, quiet_period_s=1.0, check_interval_s=0.2) as node:
        # the PACS that forwards is a source of the node, besides its destination
        node.cli(
            "peers", "add", "orthanc", "--ae-title", pacs.aet, "--host", LOOPBACK,
            "--port", str(pacs.dicom_port), "--role", "source",
        )  # fmt: skip
        sent = storescu(files, port=pacs.dicom_port, called_ae=pacs.aet, calling_ae=MODALITY_AE)
        assert sent.returncode == 0, sent.stderr
        (study_id,) = _study_ids(pacs, uid)
        received = {i["ID"] for i in _orthanc(pacs, "GET", f"/studies/{study_id}/instances")}
        assert len(received) == len(files)

        # the node reads its peers every few seconds: Orthanc's echo tells when it is one
        name = urllib.parse.quote(NODE_AT_ORTHANC)

        def echoed() -> bool:
            try:
                _orthanc(pacs, "POST", f"/modalities/{name}/echo", {})
            except OSError:  # HTTP 500: the node rejected the association (not a source yet)
                return False
            return True

        wait_until(echoed, timeout_s=30, what="the node accepting Orthanc's association")
        forwarded = _orthanc(
            pacs,
            "POST",
            f"/modalities/{name}/store",
            {"Resources": [study_id], "Synchronous": True},
        )
        assert forwarded["FailedInstancesCount"] == 0, forwarded
        assert forwarded["InstancesCount"] == len(files), forwarded

        engine = make_engine(f"sqlite:///{node.data / 'cem-node.db'}")
        sessions = session_factory(engine)
        try:

            def settled() -> bool:
                with sessions.begin() as session:
                    state = session.scalar(
                        select(Study.state).where(Study.study_instance_uid == uid)
                    )
                return state in (StudyState.DONE, StudyState.FAILED, StudyState.NOT_ANALYSABLE)

            deadline = time.monotonic() + 180  # the analysis takes ~20 s on two cores
            while not settled():
                if time.monotonic() > deadline:
                    pytest.fail(f"the node did not analyse and send in time:\n{node.log_tail()}")
                time.sleep(0.2)
            with sessions.begin() as session:
                (row,) = session.scalars(select(Study).where(Study.study_instance_uid == uid))
                assert row.state is StudyState.DONE, (row.state, row.state_reason)
                callers = set(session.scalars(select(Instance.calling_ae_title)))
                exports = session.scalars(select(Export)).all()
                assert all(e.state is ExportState.DONE for e in exports)
                exported = {e.sop_instance_uid: e.object_type for e in exports}
        finally:
            engine.dispose()
        assert callers == {pacs.aet}  # every image came through Orthanc
        # one SR, and the SEG and GSPS of the views with lesions (the demo bundle finds
        # some in this study; whichever it finds must come back)
        assert sorted(exported.values()).count("sr") == 1, exported

    # the results joined the forwarded study at Orthanc: one study, the images and the results
    assert _study_ids(pacs, uid) == [study_id]
    instances = _orthanc(pacs, "GET", f"/studies/{study_id}/instances")
    results = {
        i["MainDicomTags"]["SOPInstanceUID"]: i["ID"] for i in instances if i["ID"] not in received
    }
    assert set(results) == set(exported)
    modalities = {"seg": "SEG", "sr": "SR", "gsps": "PR"}
    for sop_uid, instance_id in results.items():
        tags = pacs.instance_tags(instance_id)
        assert tags["StudyInstanceUID"] == uid
        assert tags["Modality"] == modalities[exported[sop_uid]]
