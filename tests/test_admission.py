"""The front door's pieces on their own: allow-list, pending limits, the first PDU, the audit."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from cem_node.dicom.net.admission import (
    AddressAllowList,
    Admission,
    AdmissionLimits,
    ConnectionAuditor,
    RefusedConnectionError,
    networks_of,
    read_association_request,
)
from cem_node.peers import PeerEntry
from cem_node.store import AuditEvent, make_engine, session_factory, upgrade


def _source(host: str) -> PeerEntry:
    return PeerEntry("p", "P", host, 104, "source", False, None, "config")


def test_networks_of_the_sources() -> None:
    resolve = {"modality.local": frozenset({"10.0.0.7", "::ffff:10.0.0.8"})}.get
    networks = networks_of(
        [_source("10.1.2.0/24"), _source("192.0.2.5"), _source("modality.local"), _source("?")],
        lambda host: resolve(host, frozenset()),
    )
    assert sorted(str(n) for n in networks) == [
        "10.0.0.7/32",
        "10.0.0.8/32",
        "10.1.2.0/24",
        "192.0.2.5/32",
    ]


def test_allow_list_reads_a_snapshot() -> None:
    sources = [_source("127.0.0.1")]
    allow = AddressAllowList(lambda: sources, enabled=True)
    assert allow.allows("127.0.0.3")  # no snapshot yet: the association check decides
    allow.refresh()
    assert allow.allows("127.0.0.1") and allow.allows("::ffff:127.0.0.1")
    assert not allow.allows("127.0.0.3") and not allow.allows("not an address")
    sources.append(_source("127.0.0.3"))
    assert not allow.allows("127.0.0.3")  # until the next refresh
    allow.refresh()
    assert allow.allows("127.0.0.3")
    assert AddressAllowList(lambda: [], enabled=False).allows("203.0.113.9")


class _Auditor:
    def __init__(self) -> None:
        self.refusals: list[tuple[str, str, str]] = []

    def refused(self, address: str, reason: str, stage: str, answer: str = "") -> None:
        self.refusals.append((address, reason, stage))


def test_pending_limits_per_address_and_in_total() -> None:
    auditor = _Auditor()
    allow = AddressAllowList(lambda: [], enabled=False)
    admission = Admission(
        AdmissionLimits(max_pending=3, max_pending_per_address=2),
        allow,
        auditor,  # type: ignore[arg-type]
    )
    assert admission.admit("10.0.0.1") and admission.admit("10.0.0.1")
    assert not admission.admit("10.0.0.1")  # its own limit
    assert admission.admit("10.0.0.2")
    assert not admission.admit("10.0.0.3")  # the total
    assert admission.pending == 3
    admission.release("10.0.0.1")
    assert admission.admit("10.0.0.3")
    assert [r[2] for r in auditor.refusals] == ["accept", "accept"]
    assert "limit 2" in auditor.refusals[0][1] and "limit 3" in auditor.refusals[1][1]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    yield left, right
    left.close()
    right.close()


def _read(sock: socket.socket, timeout_s: float = 0.5, max_bytes: int = 1 << 20) -> bytes:
    return read_association_request(
        sock, deadline=time.monotonic() + timeout_s, timeout_s=timeout_s, max_bytes=max_bytes
    )


def test_first_pdu_is_read_as_it_arrives(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    pdu = struct.pack(">BBL", 1, 0, 300) + bytes(range(256)) + bytes(44)

    def trickle() -> None:
        for i in range(0, len(pdu), 50):
            theirs.sendall(pdu[i : i + 50])
            time.sleep(0.01)

    threading.Thread(target=trickle).start()
    assert _read(ours) == pdu


@pytest.mark.parametrize(
    ("payload", "expected", "abort"),
    [
        (struct.pack(">BBL", 1, 0, 0xFFFFFFF0), "of 4294967280 bytes announced, larger than", 6),
        (struct.pack(">BBL", 4, 0, 10), "PDU type 0x04 where an A-ASSOCIATE-RQ", 2),
        (struct.pack(">BBL", 0x41, 0, 10), "PDU type 0x41", 1),
        (b"", "no A-ASSOCIATE-RQ within 0.5 s", 0),
        (struct.pack(">BBL", 1, 0, 100) + bytes(10), "no A-ASSOCIATE-RQ within", 0),
    ],
)
def test_first_pdu_refusals(
    pair: tuple[socket.socket, socket.socket], payload: bytes, expected: str, abort: int
) -> None:
    ours, theirs = pair
    theirs.sendall(payload)
    with pytest.raises(RefusedConnectionError) as refused:
        _read(ours)
    assert expected in refused.value.reason
    assert refused.value.abort_reason == abort and refused.value.abort is bool(abort)


def test_closed_before_the_request(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    theirs.sendall(b"\x01\x00")
    theirs.close()
    with pytest.raises(RefusedConnectionError, match="closed before a complete A-ASSOCIATE-RQ"):
        _read(ours)


def test_refusals_are_coalesced_into_audit_rows(sqlite_url: str) -> None:
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    sessions = session_factory(engine)
    seen: list[str] = []
    auditor = ConnectionAuditor(sessions, actor="test", max_keys=2, on_refusal=seen.append)
    for _ in range(50):
        auditor.refused("10.0.0.9", "no source peer allows this address", "accept")
    auditor.refused("10.0.0.8", "PDU type 0x41", "association-request")
    auditor.refused("10.0.0.7", "other", "accept")  # beyond max_keys: counted as "other"
    auditor.flush()
    with sessions() as session:
        rows = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    engine.dispose()
    assert [(r.remote_address, r.details["count"]) for r in rows] == [
        ("10.0.0.9", 50),
        ("10.0.0.8", 1),
        ("*", 1),
    ]
    assert all(r.event_type == "connection" and r.decision == "refused" for r in rows)
    assert len(seen) == 52
