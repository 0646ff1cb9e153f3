"""The TLS door and /healthz under attack: a real ``cem-node serve`` with TLS on loopback.

pynetdicom does the TLS handshake in its accept loop with no time limit, so
one connection that never starts the handshake blocks every TLS association;
the node does it in the connection's own thread, within the ARTIM time, and
audits each failed handshake. /healthz must say when the node cannot do its
work: the door is full, the disk is above the watermark.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile.attacker import (
    WARD_HOST,
    AttackedNode,
    NodeOptions,
    attacked_node,
    closed_by_peer,
    connections,
    pdu_header,
)

pytestmark = [pytest.mark.tools, pytest.mark.hostile]

PENDING_LIMIT = 4


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory, pki: Path) -> Iterator[AttackedNode]:
    options = NodeOptions(
        tls=pki,
        node={"max_pending_connections": PENDING_LIMIT, "max_pending_per_address": PENDING_LIMIT},
    )
    with attacked_node(tmp_path_factory.mktemp("tls"), options) as node:
        yield node


def _tls_echo(node: AttackedNode, pki: Path) -> float:
    return node.echo_seconds(extra=["+tla", "+cf", str(pki / "ca.pem")])


def _tls_refusals(node: AttackedNode) -> list[dict]:
    return [
        r
        for r in node.audit("connection")
        if json.loads(r["details"] or "{}").get("stage") == "tls"
    ]


def test_idle_socket_does_not_block_tls_associations(tls_node: AttackedNode, pki: Path) -> None:
    with connections(tls_node.port, 1) as idle:
        echoes = [_tls_echo(tls_node, pki) for _ in range(3)]
        assert max(echoes) < 1.0, f"TLS C-ECHO latencies {echoes} with one idle socket"
        assert closed_by_peer(idle[0], within_s=5), "the ARTIM timer must close it"
    rows = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not rows:
        rows = [r for r in _tls_refusals(tls_node) if "no TLS handshake within" in r["message"]]
        time.sleep(0.2)
    assert rows, [r["message"] for r in _tls_refusals(tls_node)]
    assert tls_node.health()[0] == 200


def test_failed_handshakes_are_audited(tls_node: AttackedNode, pki: Path) -> None:
    # plain DICOM to the TLS port: the bytes are not a TLS ClientHello
    with connections(tls_node.port, 1, payload=pdu_header(0x01, 200) + b"\0" * 200) as plain:
        assert closed_by_peer(plain[0], within_s=3)
    deadline = time.monotonic() + 5
    rows: list[dict] = []
    while time.monotonic() < deadline and not rows:
        rows = [r for r in _tls_refusals(tls_node) if "TLS handshake failed" in r["message"]]
        time.sleep(0.2)
    assert rows and rows[0]["remote_address"] == "127.0.0.1", rows
    assert _tls_echo(tls_node, pki) < 1.0


def test_health_degrades_while_the_door_is_full(tls_node: AttackedNode, pki: Path) -> None:
    """Idle sockets from an allowed host fill the pending limit: /healthz says so, in a
    metric too, then recovers once the ARTIM timer has closed them."""
    with connections(tls_node.port, PENDING_LIMIT, source=WARD_HOST):
        time.sleep(0.3)
        code, body = tls_node.health()
        metrics = tls_node.metrics()
    assert code == 503, body
    assert "limit of 4 is reached" in body["status"], body
    assert 'cem_node_health_problem{check="listener"} 1.0' in metrics
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and tls_node.health()[0] != 200:
        time.sleep(0.2)
    assert tls_node.health()[0] == 200
    assert _tls_echo(tls_node, pki) < 1.0


def test_health_degrades_when_storage_is_refused(tmp_path: Path) -> None:
    """Above the disk watermark every image is refused: /healthz must not say ok."""
    options = NodeOptions(storage={"disk_high_watermark_percent": 0.001})
    with attacked_node(tmp_path / "full", options, healthy=False) as node:
        code, body = node.health()
        metrics = node.metrics()
    assert code == 503, body
    assert "refusing storage" in body["status"] and "watermark" in body["status"], body
    assert 'cem_node_health_problem{check="storage"} 1.0' in metrics
