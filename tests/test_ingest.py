"""The C-STORE handler's work (cem_node.store.ingest): checks, statuses, the hasher."""

from __future__ import annotations

import hashlib
import io
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from cem_node.jobs.rounds import open_round
from cem_node.store import (
    AuditEvent,
    Instance,
    InstanceFileStore,
    make_engine,
    session_factory,
    upgrade,
)
from cem_node.store.hasher import InstanceHasher
from cem_node.store.ingest import (
    DiskGuard,
    IngestOutcome,
    IngestResult,
    InstanceIngestor,
    ReceivedFrom,
    Status,
)
from cem_node.synthetic.study import SynthOptions, generate_study

SENDER = ReceivedFrom("MODALITY", "CEM_NODE", "127.0.0.1")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("ingest")
    out = {}
    for name, syntax in (("explicit", "explicit"), ("j2k", "jpeg2000"), ("rle", "rle")):
        study = generate_study(
            root / name, 8, 0, SynthOptions(size="small", transfer_syntax=syntax)
        )
        out[name] = sorted((study / "dicom").glob("*.dcm"))
    # Deflated Explicit VR Little Endian: the synthetic writer does not write it
    out["deflated"] = []
    for path in out["explicit"][:2]:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        out["deflated"].append(root / f"deflated-{path.name}")
        ds.save_as(out["deflated"][-1], enforce_file_format=True)
    return out


@pytest.mark.parametrize("kind", ["explicit", "j2k", "rle", "deflated"])
def test_complete_images_parse_and_truncated_ones_are_refused(
    files: dict[str, list[Path]], kind: str
) -> None:
    data = files[kind][0].read_bytes()
    header = InstanceIngestor.parse(data)
    assert not hasattr(header, "status"), header
    for cut in (len(data) - 7, len(data) // 2):
        result = InstanceIngestor.parse(data[:cut])
        assert getattr(result, "status", None) == Status.INCOMPLETE_DATASET, (cut, result)


def test_garbage_and_mismatches_get_precise_statuses(files: dict[str, list[Path]]) -> None:
    data = files["explicit"][0].read_bytes()
    assert InstanceIngestor.parse(b"not dicom at all" * 10).status == Status.CANNOT_UNDERSTAND
    wrong_class = InstanceIngestor.parse(data, sop_class_uid="1.2.840.10008.5.1.4.1.1.7")
    assert wrong_class.status == Status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    wrong_uid = InstanceIngestor.parse(data, sop_instance_uid="1.2.3")
    assert wrong_uid.status == Status.DATASET_DOES_NOT_MATCH_SOP_CLASS


def test_disk_guard_watermark_and_minimum_free_space() -> None:
    def usage(used_percent: float, free_mb: int):
        total = 1000 * 1024 * 1024
        return lambda _root: (total, int(total * used_percent / 100), free_mb * 1024 * 1024)

    ok = DiskGuard("/", high_watermark_percent=90, min_free_mb=100, usage=usage(50, 500))
    assert ok.refusal(10 * 1024 * 1024) is None
    full = DiskGuard("/", high_watermark_percent=90, min_free_mb=100, usage=usage(95, 50))
    assert "above the 90% watermark" in (full.refusal(1) or "")
    low = DiskGuard("/", high_watermark_percent=99, min_free_mb=100, usage=usage(50, 105))
    assert "below the 100 MiB minimum" in (low.refusal(10 * 1024 * 1024) or "")


def test_hashes_are_filled_after_the_answer(tmp_path: Path, files: dict[str, list[Path]]) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    sessions = session_factory(engine)
    store = InstanceFileStore(tmp_path / "store")
    hasher = InstanceHasher(sessions, store)
    ingestor = InstanceIngestor(
        sessions,
        store,
        DiskGuard(str(tmp_path), high_watermark_percent=99.99, min_free_mb=0),
        on_stored=hasher.submit,
        open_round=open_round,
    )
    for path in files["explicit"][:3]:
        assert ingestor.ingest(path.read_bytes(), sender=SENDER).outcome is IngestOutcome.STORED
    # answered before hashing: the rows exist, their hashes not yet
    with sessions.begin() as session:
        assert list(session.scalars(select(Instance.sha256))) == [None] * 3
    hasher.start()
    hasher.stop()  # hashes what was queued
    with sessions.begin() as session:
        rows = session.scalars(select(Instance)).all()
    for row in rows:
        data = store.absolute(row.file_path).read_bytes()
        assert row.sha256 == hashlib.sha256(data).hexdigest()
    # a crash before hashing: the next start queues the missing hashes again
    with sessions.begin() as session:
        for row in session.scalars(select(Instance)):
            row.sha256 = None
    restarted = InstanceHasher(sessions, store)
    assert restarted.submit_missing() == 3
    restarted.start()
    restarted.stop()
    with sessions.begin() as session:
        assert all(session.scalars(select(Instance.sha256)))
    engine.dispose()


def test_a_lost_index_race_keeps_the_moved_file(
    tmp_path: Path, files: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another association creating the same study first (IntegrityError) must not cost
    the file already moved into the store: only the index transaction is retried."""
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    sessions = session_factory(engine)
    store = InstanceFileStore(tmp_path / "store")
    ingestor = InstanceIngestor(
        sessions,
        store,
        DiskGuard(str(tmp_path), high_watermark_percent=99.99, min_free_mb=0),
        open_round=open_round,
    )
    index = ingestor._index
    calls = []

    def lose_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise IntegrityError("INSERT INTO studies", {}, Exception("UNIQUE constraint"))
        return index(*args, **kwargs)

    monkeypatch.setattr(ingestor, "_index", lose_once)
    received = tmp_path / "received.dcm"  # pynetdicom's streamed temporary file
    received.write_bytes(files["explicit"][0].read_bytes())
    result = ingestor.ingest(received, sender=SENDER)
    assert result.outcome is IngestOutcome.STORED and len(calls) == 2
    with sessions.begin() as session:
        (row,) = session.scalars(select(Instance)).all()
    assert store.absolute(row.file_path).read_bytes() == files["explicit"][0].read_bytes()
    engine.dispose()


def _hash_of_the_only_row(sessions) -> str | None:
    with sessions.begin() as session:
        return session.scalar(select(Instance.sha256))


@pytest.mark.parametrize("max_defer_s", [30.0, 0.8])
def test_hashing_waits_for_a_pause_in_the_whole_nodes_receiving(
    tmp_path: Path, files: dict[str, list[Path]], max_defer_s: float
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    sessions = session_factory(engine)
    store = InstanceFileStore(tmp_path / "store")
    receiving = store.receiving_dir
    hasher = InstanceHasher(
        sessions, store, idle_s=0.3, activity=receiving, max_defer_s=max_defer_s
    )
    ingestor = InstanceIngestor(
        sessions,
        store,
        DiskGuard(str(tmp_path), high_watermark_percent=99.99, min_free_mb=0),
        on_stored=hasher.submit,
        open_round=open_round,
    )
    assert ingestor.ingest(files["explicit"][0].read_bytes(), sender=SENDER).outcome is (
        IngestOutcome.STORED
    )
    hasher.start()
    # another receiver process of the node streams datasets for 2 s
    hashed_while_receiving = []
    for index in range(20):
        (receiving / f".tmp-{index}").touch()
        (receiving / f".tmp-{index}").unlink()
        time.sleep(0.1)
        hashed_while_receiving.append(_hash_of_the_only_row(sessions) is not None)
    if max_defer_s > 2:
        assert not any(hashed_while_receiving)
    else:  # waited at most max_defer_s, receiving or not
        assert hashed_while_receiving[-1]
    deadline = time.monotonic() + 10
    while _hash_of_the_only_row(sessions) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    hasher.stop()
    with sessions.begin() as session:
        path = store.absolute(session.scalar(select(Instance.file_path)))
    assert _hash_of_the_only_row(sessions) == hashlib.sha256(path.read_bytes()).hexdigest()
    engine.dispose()


def test_datasets_of_aborted_associations_are_removed_later(tmp_path: Path) -> None:
    store = InstanceFileStore(tmp_path / "store")
    abandoned = store.receiving_dir / ".tmp-abandoned.dcm"
    streaming = store.receiving_dir / ".tmp-streaming.dcm"
    unrelated = store.receiving_dir / "notes.txt"
    for path in (abandoned, streaming, unrelated):
        path.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(abandoned, (two_hours_ago, two_hours_ago))
    os.utime(unrelated, (two_hours_ago, two_hours_ago))
    assert store.remove_abandoned_receptions(3600) == 1
    assert not abandoned.exists()
    assert streaming.exists() and unrelated.exists()


@pytest.fixture
def ingestor(tmp_path: Path) -> Iterator[InstanceIngestor]:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    yield InstanceIngestor(
        session_factory(engine),
        InstanceFileStore(tmp_path / "store"),
        DiskGuard(str(tmp_path), high_watermark_percent=99.99, min_free_mb=0),
        open_round=open_round,
    )
    engine.dispose()


def _with(data: bytes, **values: object) -> bytes:
    """``data`` with some attributes set (a list: several values) or deleted (None)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UIDs we want
        for keyword, value in values.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _vr_replaced(data: bytes, element: bytes, vr: bytes = b"ZZ") -> bytes:
    """``data`` with the VR of its first ``element`` (tag bytes + VR) replaced."""
    at = data.index(element)
    return data[: at + 4] + vr + data[at + 6 :]


def _refusals_and_rows(ingestor: InstanceIngestor) -> tuple[list[str], int, int]:
    sessions = ingestor._sessions
    with sessions.begin() as session:
        refusals = session.scalars(
            select(AuditEvent.message).where(AuditEvent.decision == "refused")
        ).all()
        rows = len(session.scalars(select(Instance.id)).all())
    files = [p for p in ingestor._files.root.rglob("*.dcm") if p.is_file()]
    return [m or "" for m in refusals], rows, len(files)


BAD_IDENTIFIERS = [
    ({"StudyInstanceUID": ["/etc/x", "x"]}, "Invalid StudyInstanceUID: not a single UID"),
    (
        {"SeriesInstanceUID": "1.2.840.abc"},
        "Invalid SeriesInstanceUID: characters other than 0-9 and .",
    ),
    ({"SeriesInstanceUID": None}, "Missing SeriesInstanceUID"),
    ({"SOPInstanceUID": "1.2.03.4"}, "Invalid SOPInstanceUID: component with a leading zero"),
    ({"StudyInstanceUID": "1.2..4"}, "Invalid StudyInstanceUID: empty component"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.2\\1.2"}, "Invalid SOPClassUID: not a single UID"),
    ({"StudyInstanceUID": "1." + "2" * 70}, "Invalid StudyInstanceUID: longer than 64 characters"),
]


@pytest.mark.parametrize(("values", "comment"), BAD_IDENTIFIERS)
def test_malformed_identifiers_are_refused_naming_the_attribute(
    ingestor: InstanceIngestor, files: dict[str, list[Path]], values: dict, comment: str
) -> None:
    good = files["explicit"][0].read_bytes()
    result = ingestor.ingest(_with(good, **values), sender=SENDER)
    assert (result.status, result.outcome) == (Status.CANNOT_UNDERSTAND, IngestOutcome.REFUSED)
    assert result.error_comment == comment
    refusals, rows, stored = _refusals_and_rows(ingestor)
    assert refusals == [f"0xC000: {comment}"] and rows == 0 and stored == 0
    # the node keeps serving
    assert ingestor.ingest(good, sender=SENDER).outcome is IngestOutcome.STORED


def _garbage_sequence_item(data: bytes) -> bytes:
    """The ViewCodeSequence's item filled with bytes that are no elements."""
    sq = data.index(b"\x54\x00\x20\x02SQ\x00\x00")
    item = sq + 12  # after tag, VR, reserved, length: the item tag and its length
    length = int.from_bytes(data[item + 4 : item + 8], "little")
    noise = bytes(range(0x41, 0x41 + 26)) * (length // 26 + 1)
    return data[: item + 8] + noise[:length] + data[item + 8 + length :]


UNPARSEABLE = [
    (
        lambda d: _vr_replaced(d, b"\x10\x00\x10\x00PN"),
        "Cannot parse (0010,0010) PatientName: unknown VR 'ZZ'",
    ),
    (
        lambda d: _vr_replaced(d, b"\x08\x00\x20\x00DA"),
        "Cannot parse (0008,0020) StudyDate: unknown VR 'ZZ'",
    ),
    (
        lambda d: _vr_replaced(d, b"\x20\x00\x0d\x00UI"),
        "Cannot parse (0020,000D) StudyInstanceUID: unknown VR 'ZZ'",
    ),
    (_garbage_sequence_item, "Cannot parse (4241,4443): unknown VR 'EF'"),
]


@pytest.mark.parametrize(("corrupt", "comment"), UNPARSEABLE)
def test_unparseable_values_are_refused_as_cannot_understand(
    ingestor: InstanceIngestor, files: dict[str, list[Path]], corrupt, comment: str
) -> None:
    """Values pydicom reads lazily used to raise later, in the index (the SCP's catch-all
    then answered 0x0110); they are refused at parse time, saying where."""
    good = files["explicit"][1].read_bytes()
    result = ingestor.ingest(corrupt(good), sender=SENDER)
    assert (result.status, result.error_comment) == (Status.CANNOT_UNDERSTAND, comment)
    refusals, rows, stored = _refusals_and_rows(ingestor)
    assert refusals == [f"0xC000: {comment}"] and rows == 0 and stored == 0
    assert ingestor.ingest(good, sender=SENDER).outcome is IngestOutcome.STORED


def test_error_comments_keep_to_the_default_repertoire() -> None:
    result = IngestResult(
        int(Status.CANNOT_UNDERSTAND), IngestOutcome.REFUSED, "Bad\\value é\n" + "x" * 80
    )
    assert result.error_comment == "Bad/value ??" + "x" * 52
