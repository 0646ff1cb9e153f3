"""A bounded mutation fuzzer against a real node: random PDUs, then mutated datasets.

Fixed seed, loopback only, a fixed number of cases, each with a time limit:
it stops by itself. What must hold afterwards: the node answers, /healthz is
200, its memory did not grow with what was announced, every C-STORE got a
status (never the catch-all "processing failure"), and every instance it
stored reads back as DICOM with the UIDs it was indexed under.
"""

from __future__ import annotations

import contextlib
import random
import socket
import sqlite3
import struct
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import DigitalMammographyXRayImageStorageForPresentation

from cem_node.synthetic.study import SynthOptions, generate_study
from tests.hostile.attacker import (
    MODALITY_AE,
    NODE_AE,
    WARD_HOST,
    AttackedNode,
    NodeOptions,
    attacked_node,
    closed_by_peer,
    raw_c_store,
)

pytestmark = [pytest.mark.tools, pytest.mark.hostile]

SEED = 18
RANDOM_PDUS = 100
MUTATED_DATASETS = 300
MAMMOGRAPHY = DigitalMammographyXRayImageStorageForPresentation
#: 128 bytes of preamble, "DICM" and the file meta group: never mutated (the sender reads it).
PROCESSING_FAILURE = 0x0110


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AttackedNode]:
    options = NodeOptions(node={"max_pending_connections": 48, "max_pending_per_address": 24})
    with attacked_node(tmp_path_factory.mktemp("fuzzed"), options) as attacked:
        yield attacked


def _random_pdu(rng: random.Random) -> bytes:
    """A PDU header of a random type and announced length, and a random body that
    is as long as announced, or shorter, or carries more headers."""
    announced = rng.choice([rng.randrange(0, 65536), rng.randrange(0, 1 << 32)])
    kind = rng.randrange(3)
    if kind == 0:
        body = rng.randbytes(min(announced, 65536))
    elif kind == 1:
        body = rng.randbytes(rng.randrange(0, 4096))
    else:  # headers hidden in the body
        body = b"".join(
            struct.pack(">BBL", rng.randrange(1, 8), 0, rng.randrange(1 << 32)) for _ in range(64)
        )
    return struct.pack(">BBL", rng.randrange(256), rng.randrange(256), announced) + body


def _send_batch(port: int, payloads: list[bytes], source: str) -> list[bool]:
    socks = []
    try:
        for payload in payloads:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(2)
            sock.bind((source, 0))
            socks.append(sock)
            with contextlib.suppress(OSError):
                sock.connect(("127.0.0.1", port))
                sock.sendall(payload)
        # a bad PDU ends the connection at once; an incomplete one by the ARTIM timer (2 s)
        return [closed_by_peer(s, within_s=5) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def test_random_pdus(node: AttackedNode) -> None:
    rng = random.Random(SEED)
    before = node.rss_mb()
    closed: list[bool] = []
    echoes: list[float] = []
    for batch in range(RANDOM_PDUS // 10):
        source = "127.0.0.1" if batch % 2 == 0 else WARD_HOST
        closed += _send_batch(node.port, [_random_pdu(rng) for _ in range(10)], source)
        echoes.append(node.echo_seconds())
    grown = node.rss_mb() - before
    assert all(closed), f"{closed.count(False)} connections were left open"
    assert grown < 64, f"RSS grew by {grown:.0f} MiB over {RANDOM_PDUS} random PDUs"
    assert max(echoes) < 1.0, echoes
    assert node.health()[0] == 200


# ---------------------------------------------------------------------- datasets


@pytest.fixture(scope="module")
def base_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real mammography header (the phantom's) with 64 x 64 pixels, to mutate."""
    folder = tmp_path_factory.mktemp("base")
    study = generate_study(folder, 18, 0, SynthOptions(size="small"))
    ds = pydicom.dcmread(sorted(study.rglob("*.dcm"))[0])
    ds.Rows = ds.Columns = 64
    ds.PixelData = np.full((64, 64), 100, dtype=np.uint16).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / "base.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _element_offsets(data: bytes, start: int) -> list[int]:
    """Offsets of the top-level elements of an Explicit VR Little Endian dataset."""
    offsets, at = [], start
    while at + 8 <= len(data):
        offsets.append(at)
        vr = data[at + 4 : at + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"OD", b"OL", b"OV", b"UC", b"UR"):
            (length,) = struct.unpack_from("<L", data, at + 8)
            at += 12 + (0 if length == 0xFFFFFFFF else length)
            if length == 0xFFFFFFFF:
                break
        else:
            (length,) = struct.unpack_from("<H", data, at + 6)
            at += 8 + length
    return offsets


def _mutate(base: bytes, meta_end: int, rng: random.Random) -> tuple[str, bytes]:
    data = bytearray(base)
    elements = _element_offsets(base, meta_end)
    kind = rng.choice(["flip", "vr", "length", "truncate", "insert", "splice", "value"])
    if kind == "flip":
        for _ in range(rng.randrange(1, 17)):
            data[rng.randrange(meta_end, len(data))] = rng.randrange(256)
    elif kind == "vr":
        at = rng.choice(elements)
        data[at + 4 : at + 6] = bytes(rng.choice(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(2))
    elif kind == "length":
        at = rng.choice(elements)
        data[at + 6 : at + 8] = struct.pack("<H", rng.choice([0, 1, 0xFFFF, rng.randrange(65536)]))
    elif kind == "truncate":
        del data[rng.randrange(meta_end, len(data)) :]
    elif kind == "insert":
        at = rng.randrange(meta_end, len(data))
        data[at:at] = rng.randbytes(rng.randrange(1, 64))
    elif kind == "splice":
        a, b = sorted(rng.sample(elements, 2))
        data[a:a] = base[a:b]
    else:  # a value replaced by junk: multi-valued, letters, too long
        at = rng.choice(elements)
        (length,) = struct.unpack_from("<H", data, at + 6)
        junk = rng.choice([b"1.2\\3.4", b"1.2.abc", b"9" * 70, b"..", b"\xff\xfe"])
        junk += b"\0" * (len(junk) % 2)
        data[at + 8 : at + 8 + length] = junk
        data[at + 6 : at + 8] = struct.pack("<H", len(junk))
    return kind, bytes(data)


def context_id(assoc: object) -> int:
    return next(cx.context_id for cx in assoc.accepted_contexts)  # type: ignore[attr-defined]


def test_mutated_datasets(node: AttackedNode, base_file: Path, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    template = pydicom.dcmread(base_file)
    statuses: Counter[int] = Counter()
    kinds: Counter[str] = Counter()
    unanswered: list[str] = []
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(MAMMOGRAPHY, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = None
    started = time.monotonic()
    try:
        for case in range(MUTATED_DATASETS):
            uid = generate_uid()
            template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = uid
            path = tmp_path / "case.dcm"
            template.save_as(path, enforce_file_format=True)
            base = path.read_bytes()
            meta_end = 132 + 12 + struct.unpack_from("<L", base, 140)[0]
            kind, mutated = _mutate(base, meta_end, rng)
            kinds[kind] += 1
            path.write_bytes(mutated)
            if assoc is None or not assoc.is_established:
                assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
                assert assoc.is_established, f"case {case}: the node refused a new association"
            response = raw_c_store(
                assoc, context_id(assoc), MAMMOGRAPHY, uid, mutated[meta_end:], message_id=case + 1
            )
            if response is None or response.Status is None:
                unanswered.append(f"case {case} ({kind})")
                continue
            statuses[int(response.Status)] += 1
    finally:
        if assoc is not None and assoc.is_established:
            assoc.release()
        ae.shutdown()
    elapsed = time.monotonic() - started
    summary = f"statuses {dict(statuses)}, mutations {dict(kinds)}, {elapsed:.0f} s"
    print(summary)
    assert not unanswered, f"C-STOREs without a status: {unanswered[:10]}; {summary}"
    assert statuses[PROCESSING_FAILURE] == 0, summary
    assert statuses[0x0000] > 0 and sum(statuses.values()) - statuses[0x0000] > 0, summary
    # the node is well, and everything it acknowledged reads back
    assert node.echo_seconds() < 1.0
    assert node.health()[0] == 200
    db = node.root / "cem-node.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        rows = c.execute("SELECT sop_instance_uid, file_path FROM instances").fetchall()
    assert len(rows) >= statuses[0x0000] > 0
    for uid, file_path in rows:
        ds = pydicom.dcmread(node.root / file_path, stop_before_pixels=True)
        assert ds.SOPInstanceUID == uid
