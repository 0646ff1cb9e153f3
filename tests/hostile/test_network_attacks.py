"""Attacks on the node's DICOM port before anyone is authenticated.

Each test sends what a hostile or broken host would (announced lengths of
4 GB, garbage, idle sockets, half-open TLS) to a real ``cem-node serve``
process on loopback, and measures what a hospital would notice: the node's
resident memory, a legitimate source's C-ECHO latency meanwhile, the
connection being closed, and the audit rows naming the address and the reason.
dcmtk's ``storescp`` is the bar: it refuses such PDUs, stays small and keeps
answering.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import DigitalMammographyXRayImageStorageForPresentation, Verification

from cem_node.synthetic.study import SynthOptions, generate_study
from tests.hostile.attacker import (
    MODALITY_AE,
    NODE_AE,
    STRANGER_HOST,
    WARD_HOST,
    AttackedNode,
    NodeOptions,
    attacked_node,
    closed_by_peer,
    connections,
    pdu_header,
    raw_c_store,
    reasons,
)

pytestmark = [pytest.mark.tools, pytest.mark.hostile]

MAMMOGRAPHY = DigitalMammographyXRayImageStorageForPresentation

#: The [node] limits of the attacked node (small so that the tests are quick).
MAX_ASSOCIATIONS = 4
MAX_PDU = 65536


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AttackedNode]:
    options = NodeOptions(
        node={
            "max_associations": MAX_ASSOCIATIONS,
            "max_pdu_size": MAX_PDU,
            "max_pending_connections": 24,
            "max_pending_per_address": 12,
        }
    )
    with attacked_node(tmp_path_factory.mktemp("attacked"), options) as attacked:
        yield attacked


def _refusals(node: AttackedNode, address: str, since_id: int = 0) -> list[dict]:
    return [
        r
        for r in node.audit("connection")
        if r["remote_address"] == address and r["id"] > since_id and r["decision"] == "refused"
    ]


def _count(rows: list[dict]) -> int:
    """Refusals the rows stand for (a flood of identical ones is one row with a count)."""
    return sum(json.loads(r["details"] or "{}").get("count", 1) for r in rows)


def _last_audit_id(node: AttackedNode) -> int:
    time.sleep(1.0)  # the previous test's refusals are written every 0.5 s
    rows = node.audit()
    return rows[-1]["id"] if rows else 0


def _wait_for(predicate, timeout_s: float = 5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    return predicate()


@contextlib.contextmanager
def _association(port: int, calling_ae: str = MODALITY_AE) -> Iterator:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def test_announced_4gb_association_pdus_allocate_nothing(node: AttackedNode) -> None:
    """Five connections announce a 4 GB A-ASSOCIATE-RQ and send nothing more."""
    since = _last_audit_id(node)
    before = node.rss_mb()
    header = pdu_header(0x01, 0xFFFFFFF0)
    with connections(node.port, 5, payload=header) as socks:
        echo = max(node.echo_seconds() for _ in range(3))
        grown = node.rss_mb() - before
        closed = [closed_by_peer(s, within_s=3) for s in socks]
    assert grown < 64, f"RSS grew by {grown:.0f} MiB"
    assert echo < 1.0, f"a legitimate C-ECHO took {echo:.2f} s"
    assert all(closed), "connections announcing 4 GB PDUs must be closed at once"
    rows = _wait_for(lambda: _count(_refusals(node, "127.0.0.1", since)) >= 5)
    rows = _refusals(node, "127.0.0.1", since)
    assert _count(rows) == 5, reasons(rows)
    assert all("4294967280 bytes" in m and "larger than" in m for m in reasons(rows)), reasons(rows)


def test_pdata_pdu_larger_than_negotiated_is_aborted(node: AttackedNode) -> None:
    """After a real association, a P-DATA-TF PDU announcing 4 GB ends it: never allocated."""
    since = _last_audit_id(node)
    before = node.rss_mb()
    with _association(node.port) as assoc:
        assert assoc.is_established
        # the requestor's own reactor would read the answer first: stop it
        assoc.dul.kill_dul()
        assoc.dul.join(5)
        raw = assoc.dul.socket.socket
        raw.sendall(pdu_header(0x04, 0xFFFFFFF0) + b"\x00" * 1024)
        abort = raw.recv(16)
        closed = closed_by_peer(raw, within_s=3)
        grown = node.rss_mb() - before
        assoc.is_established = False  # the node ended it: nothing to release
    assert abort[:1] == b"\x07", f"expected an A-ABORT PDU, got {abort!r}"
    assert closed
    assert grown < 64, f"RSS grew by {grown:.0f} MiB"
    rows = _wait_for(lambda: _refusals(node, "127.0.0.1", since))
    assert any(f"larger than the maximum of {MAX_PDU}" in m for m in reasons(rows)), reasons(rows)
    assert node.echo_seconds() < 1.0


def test_invalid_pdu_ends_the_connection_without_reading_on(node: AttackedNode) -> None:
    """An unknown PDU type is refused once; what follows it is never parsed as PDUs."""
    since = _last_audit_id(node)
    log_before = node.log.read_text(errors="replace").count("unknown PDU")
    body = pdu_header(0x01, 0xFFFFFFF0) * 50  # headers hidden in the body of a bad PDU
    garbage = pdu_header(0x09, len(body)) + body
    with connections(node.port, 1, payload=garbage) as socks:
        assert closed_by_peer(socks[0], within_s=2)
    rows = _wait_for(lambda: _refusals(node, "127.0.0.1", since))
    assert _count(rows) == 1, reasons(rows)
    assert "PDU type 0x09" in rows[0]["message"]
    time.sleep(0.5)
    assert node.log.read_text(errors="replace").count("unknown PDU") - log_before <= 1


def test_idle_sockets_do_not_starve_sources(node: AttackedNode) -> None:
    """50 idle sockets from a stranger, 10 from an allowed host: the modality still gets in."""
    since = _last_audit_id(node)
    with (
        connections(node.port, 50, source=STRANGER_HOST) as strangers,
        connections(node.port, 10, source=WARD_HOST) as idle,
    ):
        echoes = [node.echo_seconds() for _ in range(3)]
        strangers_closed = [closed_by_peer(s, within_s=1) for s in strangers]
        started = time.monotonic()
        idle_closed = [closed_by_peer(s, within_s=6) for s in idle]
        idle_after = time.monotonic() - started
    assert max(echoes) < 1.0, f"C-ECHO latencies {echoes}"
    assert all(strangers_closed), "a disallowed address must be closed at accept"
    assert all(idle_closed) and idle_after < 6, "idle sockets must be closed by the ARTIM timer"
    stranger_rows = _wait_for(lambda: _refusals(node, STRANGER_HOST, since))
    assert stranger_rows
    assert _count(stranger_rows) >= 50, reasons(stranger_rows)
    assert all("no source peer allows" in m for m in reasons(stranger_rows)), reasons(stranger_rows)
    idle_rows = _wait_for(lambda: _refusals(node, WARD_HOST, since))
    assert idle_rows and all("no A-ASSOCIATE-RQ within" in m for m in reasons(idle_rows))


def test_association_limit_refusals_are_audited_as_rejected(node: AttackedNode) -> None:
    since = _last_audit_id(node)
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(_association(node.port)) for _ in range(MAX_ASSOCIATIONS)]
        assert all(a.is_established for a in held)
        assert node.echo_seconds() == float("inf")  # one too many: refused
    rows = [r for r in node.audit("association") if r["id"] > since]
    accepted = [r for r in rows if r["decision"] == "accepted"]
    rejected = [r for r in rows if r["decision"] == "rejected"]
    assert len(accepted) == MAX_ASSOCIATIONS, reasons(rows)
    assert len(rejected) == 1 and "limit" in rejected[0]["message"], reasons(rows)
    assert node.echo_seconds() < 1.0  # the slots are free again


def test_overlong_uid_in_the_command_gets_a_status(node: AttackedNode, tmp_path: Path) -> None:
    """An 88-character Affected SOP Instance UID: a failure status, the association lives on."""
    uid = "1.2." + "3" * 84
    ds = Dataset()
    ds.SOPClassUID = MAMMOGRAPHY
    ds.SOPInstanceUID = uid
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(MAMMOGRAPHY)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    try:
        assert assoc.is_established
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, True
        write_dataset(buffer, ds)
        context_id = next(
            cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == MAMMOGRAPHY
        )
        response = raw_c_store(assoc, context_id, MAMMOGRAPHY, uid, buffer.getvalue(), message_id=7)
        assert response is not None, "no answer: the association was aborted"
        assert response.Status == 0x0117
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def test_node_survives_and_stays_small(node: AttackedNode) -> None:
    """After the module's attacks: alive, healthy, answering."""
    assert node.alive()
    code, body = node.health()
    assert code == 200, body
    assert node.echo_seconds() < 1.0


# ---------------------------------------------------------------------- identifiers


@pytest.fixture(scope="module")
def mammogram(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """A real header of the phantom's, with 64 x 64 pixels."""
    study = generate_study(tmp_path_factory.mktemp("bad-ids"), 18, 1, SynthOptions(size="small"))
    ds = pydicom.dcmread(sorted(study.rglob("*.dcm"))[0])
    ds.Rows = ds.Columns = 64
    ds.PixelData = np.full((64, 64), 100, dtype=np.uint16).tobytes()
    return ds


def _encoded(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _store(node: AttackedNode, dataset: bytes, uid: str) -> tuple[int, str, bool]:
    """Send ``dataset`` (Explicit VR Little Endian bytes); return the status, its
    comment and whether the association lives on."""
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(MAMMOGRAPHY, "1.2.840.10008.1.2.1")
    ae.dimse_timeout = 10
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    try:
        assert assoc.is_established
        context_id = assoc.accepted_contexts[0].context_id
        response = raw_c_store(assoc, context_id, MAMMOGRAPHY, uid, dataset)
        assert response is not None and response.Status is not None, "no status"
        alive = assoc.is_established
        return int(response.Status), str(response.ErrorComment or ""), alive
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("StudyInstanceUID", "1.2.3\\1.2.4"),  # two values: was indexed as "['1.2.3', '1.2.4']"
        ("SeriesInstanceUID", "1.2.abc"),
        ("StudyInstanceUID", "1.02.3"),  # a component with a leading zero
        ("SOPInstanceUID", "1." + "2" * 70),
    ],
)
def test_bad_identifiers_are_refused_naming_the_attribute(
    node: AttackedNode, mammogram: Dataset, attribute: str, value: str
) -> None:
    ds = copy.deepcopy(mammogram)
    uid = generate_uid() if attribute != "SOPInstanceUID" else value
    ds.SOPInstanceUID = uid
    setattr(ds, attribute, value)
    status, comment, alive = _store(node, _encoded(ds), uid)
    assert 0xC000 <= status <= 0xCFFF or status == 0x0117, hex(status)
    assert attribute in comment or status == 0x0117, comment
    assert alive
    rows = [r for r in node.audit() if r["sop_instance_uid"] == uid]
    assert all(r["decision"] != "stored" for r in rows)


def test_unknown_vr_is_cannot_understand(node: AttackedNode, mammogram: Dataset) -> None:
    """Was 0x0110 (processing failure) from the SCP's catch-all."""
    ds = copy.deepcopy(mammogram)
    ds.SOPInstanceUID = uid = generate_uid()
    ds.ReferringPhysicianName = "Nobody"
    data = bytearray(_encoded(ds))
    at = data.index(b"\x08\x00\x90\x00PN")  # (0008,0090) with its VR
    data[at + 4 : at + 6] = b"ZZ"
    status, comment, alive = _store(node, bytes(data), uid)
    assert 0xC000 <= status <= 0xCFFF, (hex(status), comment)
    assert alive
