"""Store one received instance durably and index it: the C-STORE handler's only work.

Order of operations (an acknowledged instance must survive ``kill -9``):

1. parse the header from the received bytes and check them (every value
   converts, the identifying UIDs are single valid UIDs, SOP class and
   instance match the request, the dataset is complete): a failure is
   refused with a status whose comment names the attribute, never raised;
2. check the disk watermark (``0xA700`` above it; nothing is ever deleted
   to make room);
3. if the SOP Instance UID is known with the same bytes, do nothing;
4. write the bytes to a temporary file in the store, fsync, rename;
5. index the file, its study and the audit event in one database
   transaction (SQLite ``synchronous=FULL`` or PostgreSQL: committed means
   on disk);
6. only then return ``0x0000`` to the sender.

A crash between 4 and 5 leaves a file without a row, which is harmless:
the sender got no success status and sends again.
"""

from __future__ import annotations

import enum
import errno
import filecmp
import io
import logging
import secrets
import threading
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from cem_node.dicom.identifiers import (
    image_identifiers_problem,
    uid_problem,
    unreadable_element,
)
from cem_node.dicom.selection import MAMMOGRAPHY_SOP_CLASSES
from cem_node.store.audit import ALERT, audit_values, record_event
from cem_node.store.engine import SQLITE_BEGIN_OPTION
from cem_node.store.instance_files import DiskGuard, InstanceFileStore, StoredFile
from cem_node.store.models import (
    AuditEvent,
    Instance,
    Study,
    StudyState,
    utcnow,
)

#: Statements of the C-STORE path, built once (SQLAlchemy then reuses their compiled form).
_INSERT_INSTANCE = insert(Instance.__table__)
_INSERT_AUDIT_EVENT = insert(AuditEvent.__table__)
_KNOWN_INSTANCE = select(Instance.version, Instance.file_path).where(
    Instance.sop_instance_uid == bindparam("uid")
)
_SELECT_INSTANCE = (
    select(Instance.id, Instance.file_path, Instance.version)
    .where(Instance.sop_instance_uid == bindparam("uid"))
    .with_for_update()
)
_SELECT_STUDY = (
    select(Study.id, Study.state)
    .where(Study.study_instance_uid == bindparam("uid"))
    .with_for_update()
)
_TOUCH_STUDY = (
    update(Study.__table__)
    .where(Study.__table__.c.id == bindparam("study_id"))
    .values(last_received_at=bindparam("now"))
)

__all__ = [
    "DiskGuard",
    "IngestOutcome",
    "IngestResult",
    "InstanceIngestor",
    "ReceivedFrom",
    "RoundOpener",
    "Status",
]

_LOG = logging.getLogger(__name__)

#: Values longer than this are not read when a received dataset is checked.
_DEFER_BYTES = 64 * 1024


class Status(enum.IntEnum):
    """C-STORE response statuses the node returns (PS3.4 Table B.2-1, PS3.7 C)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    INCOMPLETE_DATASET = 0xC001
    SOP_CLASS_NOT_SUPPORTED = 0x0122


class IngestOutcome(enum.StrEnum):
    """What happened to a received instance."""

    STORED = "stored"
    UNCHANGED = "unchanged"
    """Re-sent with the same bytes: nothing changed."""
    REPLACED = "replaced"
    """Re-sent with different bytes: the new version is kept, the change audited."""
    IGNORED = "ignored"
    """Not a mammography image; accepted and discarded (``accept_unknown_sop_classes``)."""
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class ReceivedFrom:
    """Who sent an instance (for the index and the audit trail)."""

    calling_ae_title: str | None = None
    called_ae_title: str | None = None
    address: str | None = None


@dataclass(frozen=True, slots=True)
class IngestResult:
    """The status to answer and what the node did."""

    status: int
    outcome: IngestOutcome
    message: str
    study_instance_uid: str | None = None
    sop_instance_uid: str | None = None

    @property
    def error_comment(self) -> str:
        """The message as an ErrorComment (LO: 64 characters of the default repertoire).

        Parts of a message may come from the received bytes: other characters
        become ``?`` and a backslash (LO's value delimiter) ``/``.
        """
        text = self.message.replace("\\", "/")
        return "".join(c if " " <= c <= "~" else "?" for c in text[:64])


@dataclass(frozen=True, slots=True)
class _Header:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    dataset: Dataset


def _text(ds: Dataset, keyword: str, length: int) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    # several values are written as DICOM writes them, not as a Python list
    text = "\\".join(map(str, value)) if isinstance(value, MultiValue) else str(value)
    return text.strip()[:length] or None


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


class RoundOpener(Protocol):
    """Opens a study's next analysis round (:func:`cem_node.jobs.rounds.open_round`)."""

    def __call__(self, session: Session, study: Study, *, now: Any, actor: str) -> object: ...


class InstanceIngestor:
    """Store and index received instances (thread-safe: one call per C-STORE).

    Parameters
    ----------
    sessions
        Session factory of the node's database.
    files
        The instance file store.
    disk
        The disk watermark guard.
    open_round
        Called in the indexing transaction when an instance starts a study round
        (a new study, or one completed before): the round and job workflow,
        :func:`cem_node.jobs.rounds.open_round` in the node.
    unknown_sop_classes
        ``"ignore"``: accept non-mammography objects with success and discard
        them; ``"refuse"``: answer ``0x0122``.
    actor
        The node's identity in the audit trail.
    on_stored
        Called with the row id and file path of each newly stored file, after
        the commit (the node hashes it there, off the C-STORE path).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        files: InstanceFileStore,
        disk: DiskGuard,
        *,
        open_round: RoundOpener,
        unknown_sop_classes: Literal["ignore", "refuse"] = "ignore",
        actor: str = "cem-node",
        on_stored: Callable[[int, str], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._files = files
        self._disk = disk
        self._open_round = open_round
        self._unknown = unknown_sop_classes
        self._actor = actor
        self._on_stored = on_stored
        self._alert_lock = threading.Lock()
        self._disk_alert_at = 0.0

    # ------------------------------------------------------------------ parsing

    @staticmethod
    def parse(
        data: bytes | Path,
        *,
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> _Header | IngestResult:
        """Parse and check a received file (bytes, or a path); return the header or the
        failure to answer."""

        def fail(status: Status, message: str) -> IngestResult:
            return IngestResult(int(status), IngestOutcome.REFUSED, message)

        truncated = False
        size = _size(data)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                # large values stay unread: no copy of the pixel data
                ds = pydicom.dcmread(_source(data), force=False, defer_size=_DEFER_BYTES)
                if _transfer_syntax(ds) == DeflatedExplicitVRLittleEndian:
                    # pydicom inflated the dataset in memory: a deferred value's
                    # position is in the inflated stream, not in the received bytes
                    # (and cannot be read back from them); read it whole instead
                    ds = pydicom.dcmread(_source(data), force=False)
                    size = 0  # not used: every value is in memory
            truncated = any("End of file" in str(w.message) for w in caught)
        except InvalidDicomError as exc:
            return fail(Status.CANNOT_UNDERSTAND, f"Not a DICOM dataset: {exc}")
        except zlib.error as exc:  # only a deflated dataset is inflated while read
            return fail(
                Status.INCOMPLETE_DATASET,
                f"Truncated or corrupt deflated dataset: {exc}",
            )
        except Exception as exc:  # any parser failure is the sender's data, not our bug
            return fail(
                Status.CANNOT_UNDERSTAND, f"Cannot parse dataset: {type(exc).__name__}: {exc}"
            )
        if truncated:
            return fail(
                Status.INCOMPLETE_DATASET,
                "Truncated dataset: end of data before the end of an element",
            )
        try:
            return _checked(ds, size, sop_class_uid, sop_instance_uid)
        except Exception as exc:  # a value no check foresaw: still the sender's data
            _LOG.warning("dataset check failed", exc_info=True)
            return fail(
                Status.CANNOT_UNDERSTAND, f"Cannot parse dataset: {type(exc).__name__}: {exc}"
            )

    # ------------------------------------------------------------------ ingest

    def ingest(
        self,
        data: bytes | Path,
        *,
        sender: ReceivedFrom,
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> IngestResult:
        """Store ``data`` (a DICOM file: preamble, meta and dataset) and index it.

        ``data`` is the file's bytes, or the path of a temporary file holding
        them (pynetdicom's streamed dataset), which is moved into the store.

        Never raises for bad input or a full disk: the returned status says
        what to answer. Raises only for programming errors.
        """
        parsed = self.parse(data, sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid)
        if isinstance(parsed, IngestResult):
            self._audit_refusal(parsed, sender, sop_instance_uid)
            return parsed
        header = parsed
        if header.sop_class_uid not in MAMMOGRAPHY_SOP_CLASSES:
            return self._not_mammography(header, sender)
        refusal = self._disk.refusal(_size(data))
        if refusal:
            return self._out_of_space(header, sender, refusal)
        try:
            return self._store(header, data, sender)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return self._out_of_space(header, sender, f"disk full while writing: {exc}")
            _LOG.exception("cannot write instance %s", header.sop_instance_uid)
            return IngestResult(
                int(Status.OUT_OF_RESOURCES),
                IngestOutcome.REFUSED,
                f"Storage error: {exc.strerror or exc}",
                header.study_instance_uid,
                header.sop_instance_uid,
            )
        except OperationalError as exc:
            _LOG.error(
                "database unavailable, instance %s refused: %s",
                header.sop_instance_uid,
                exc.orig or exc,
            )
            return IngestResult(
                int(Status.OUT_OF_RESOURCES),
                IngestOutcome.REFUSED,
                "Database unavailable; retry later",
                header.study_instance_uid,
                header.sop_instance_uid,
            )

    def _same_bytes(self, relative_path: str, data: bytes | Path) -> bool:
        try:
            path = self._files.absolute(relative_path)
            if path.stat().st_size != _size(data):
                return False
            if isinstance(data, Path):
                return filecmp.cmp(path, data, shallow=False)
            return path.read_bytes() == data
        except OSError:
            return False

    def _store(self, header: _Header, data: bytes | Path, sender: ReceivedFrom) -> IngestResult:
        with self._sessions.begin() as session:
            # a read: SQLite's write lock is for the index transaction below
            connection = session.connection(execution_options={SQLITE_BEGIN_OPTION: "DEFERRED"})
            known = connection.execute(_KNOWN_INSTANCE, {"uid": header.sop_instance_uid}).first()
        # a resend is compared byte for byte with the stored file (memcmp speed);
        # hashing on this path would cost more than the write and the fsync
        if known is not None and self._same_bytes(known.file_path, data):
            with self._sessions.begin() as session:
                self._audit(
                    session,
                    "instance_resent",
                    sender,
                    decision="unchanged",
                    study_instance_uid=header.study_instance_uid,
                    sop_instance_uid=header.sop_instance_uid,
                    message="re-sent with identical bytes: nothing changed",
                )
            return IngestResult(
                int(Status.SUCCESS),
                IngestOutcome.UNCHANGED,
                "Already stored",
                header.study_instance_uid,
                header.sop_instance_uid,
            )
        version = known.version + 1 if known is not None else 1
        # a random part in the name: two writes never share a path, even in a race
        relative = (
            self._files.instance_path(
                header.study_instance_uid, header.sop_instance_uid, version=version
            ).removesuffix(".dcm")
            + f".{secrets.token_hex(6)}.dcm"
        )
        if isinstance(data, Path):
            stored = self._files.adopt(data, relative)
        else:
            stored = self._files.write_bytes(relative, data, digest=False)
        try:
            for attempt in range(3):
                try:
                    outcome, instance_id, old_path = self._index(
                        header, stored, version=version, first=known is None, sender=sender
                    )
                    break
                except IntegrityError:
                    # another association created the same study or instance first:
                    # the file stays where it is, only the index is tried again
                    if attempt == 2:
                        raise
        except BaseException:
            self._files.remove(stored.relative_path)
            raise
        if old_path:
            self._files.remove(old_path)
        if outcome is not IngestOutcome.UNCHANGED and self._on_stored is not None:
            self._on_stored(instance_id, stored.relative_path)
        if outcome is IngestOutcome.REPLACED:
            _LOG.warning(
                "instance %s re-sent with different bytes: version %d kept",
                header.sop_instance_uid,
                version,
            )
        return IngestResult(
            int(Status.SUCCESS),
            outcome,
            "Stored",
            header.study_instance_uid,
            header.sop_instance_uid,
        )

    def _index(
        self,
        header: _Header,
        stored: StoredFile,
        *,
        version: int,
        first: bool,
        sender: ReceivedFrom,
    ) -> tuple[IngestOutcome, int, str | None]:
        """Index a stored file in one transaction; return the outcome, the row id and
        the file that no row names any more (to delete after the commit)."""
        # Core statements, not the ORM unit of work: this runs once per received
        # image and the ORM's bookkeeping cost more than the SQL itself
        old_path: str | None = None
        with self._sessions.begin() as session:
            now = utcnow()
            study_id = self._study_for_instance(
                session, header.dataset, header.study_instance_uid, now
            )
            connection = session.connection()
            row = connection.execute(_SELECT_INSTANCE, {"uid": header.sop_instance_uid}).first()
            fields = _instance_fields(header, stored, sender, study_id, now)
            if row is None:
                outcome = IngestOutcome.STORED
                inserted = connection.execute(
                    _INSERT_INSTANCE,
                    {"sop_instance_uid": header.sop_instance_uid, "version": 1, **fields},
                )
                instance_id = int(inserted.inserted_primary_key[0])
            elif first and self._same_bytes(
                row.file_path, self._files.absolute(stored.relative_path)
            ):
                # an identical copy was indexed meanwhile by another association
                outcome = IngestOutcome.UNCHANGED
                old_path = stored.relative_path  # ours is redundant
                instance_id = row.id
            else:
                outcome = IngestOutcome.REPLACED
                old_path = row.file_path
                instance_id = row.id
                session.execute(
                    update(Instance)
                    .where(Instance.id == row.id)
                    # + 1 on the locked row: also when the row appeared meanwhile
                    .values(version=row.version + 1, replaced_at=now, **fields)
                )
            if outcome is not IngestOutcome.UNCHANGED:
                replaced = outcome is IngestOutcome.REPLACED
                connection.execute(
                    _INSERT_AUDIT_EVENT,
                    audit_values(
                        "instance_replaced" if replaced else "instance_stored",
                        **self._sender_fields(sender),
                        decision="accepted",
                        study_instance_uid=header.study_instance_uid,
                        sop_instance_uid=header.sop_instance_uid,
                        message=(
                            f"different bytes re-sent: version {version} kept, "
                            "previous one replaced"
                            if replaced
                            else None
                        ),
                        details={"size_bytes": stored.size_bytes},
                    ),
                )
        return outcome, instance_id, old_path

    def _study_for_instance(self, session: Session, ds: Dataset, uid: str, now: object) -> int:
        """The id of the study an instance joins, locked for this transaction; created
        or reopened (:meth:`_upsert_study`) when needed."""
        connection = session.connection()
        found = connection.execute(_SELECT_STUDY, {"uid": uid}).first()
        if found is not None and found.state == StudyState.RECEIVING:  # the usual case
            connection.execute(_TOUCH_STUDY, {"study_id": found.id, "now": now})
            return int(found.id)
        return int(self._upsert_study(session, ds, uid, now).id)

    def _upsert_study(self, session: Session, ds: Dataset, uid: str, now: object) -> Study:
        study = session.scalar(
            select(Study).where(Study.study_instance_uid == uid).with_for_update()
        )
        if study is None:
            study = Study(
                study_instance_uid=uid,
                patient_id=_text(ds, "PatientID", 64),
                patient_name=_text(ds, "PatientName", 3 * 64 + 2),
                patient_birth_date=_text(ds, "PatientBirthDate", 8),
                patient_sex=_text(ds, "PatientSex", 16),
                accession_number=_text(ds, "AccessionNumber", 16),
                study_date=_text(ds, "StudyDate", 8),
                study_time=_text(ds, "StudyTime", 16),
                study_description=_text(ds, "StudyDescription", 64),
                last_received_at=now,
            )
            self._open_round(session, study, now=now, actor=self._actor)
            return study
        study.last_received_at = now  # type: ignore[assignment]
        if study.state is not StudyState.RECEIVING:
            self._open_round(session, study, now=now, actor=self._actor)
        return study

    def _sender_fields(self, sender: ReceivedFrom) -> dict[str, str | None]:
        """Who acted and who sent: the audit fields every ingest event shares."""
        return {
            "actor": self._actor,
            "calling_ae_title": sender.calling_ae_title,
            "called_ae_title": sender.called_ae_title,
            "remote_address": sender.address,
        }

    def _audit(
        self, session: Session, event_type: str, sender: ReceivedFrom, **fields: Any
    ) -> None:
        """Record an ingest event (``fields``: those of :func:`audit_values`)."""
        record_event(session, event_type, **self._sender_fields(sender), **fields)

    # ------------------------------------------------------------------ refusals

    def _not_mammography(self, header: _Header, sender: ReceivedFrom) -> IngestResult:
        if self._unknown == "refuse":
            result = IngestResult(
                int(Status.SOP_CLASS_NOT_SUPPORTED),
                IngestOutcome.REFUSED,
                f"SOP class {header.sop_class_uid} not accepted",
                header.study_instance_uid,
                header.sop_instance_uid,
            )
        else:
            result = IngestResult(
                int(Status.SUCCESS),
                IngestOutcome.IGNORED,
                f"SOP class {header.sop_class_uid} ignored (not a mammography image)",
                header.study_instance_uid,
                header.sop_instance_uid,
            )
        with self._sessions.begin() as session:
            self._audit(
                session,
                "instance_ignored" if result.outcome is IngestOutcome.IGNORED else "instance",
                sender,
                decision=result.outcome.value,
                study_instance_uid=header.study_instance_uid,
                sop_instance_uid=header.sop_instance_uid,
                message=result.message,
                details={"sop_class_uid": header.sop_class_uid},
            )
        return result

    def _out_of_space(self, header: _Header, sender: ReceivedFrom, why: str) -> IngestResult:
        result = IngestResult(
            int(Status.OUT_OF_RESOURCES),
            IngestOutcome.REFUSED,
            "Out of resources: storage full, retry later",
            header.study_instance_uid,
            header.sop_instance_uid,
        )
        with self._alert_lock:
            now = time.monotonic()
            alert = now - self._disk_alert_at > 60.0  # one alert a minute, not one per image
            if alert:
                self._disk_alert_at = now
        try:
            with self._sessions.begin() as session:
                self._audit(
                    session,
                    "instance",
                    sender,
                    decision=ALERT if alert else "refused",
                    study_instance_uid=header.study_instance_uid,
                    sop_instance_uid=header.sop_instance_uid,
                    message=f"instance refused with A700: {why}",
                )
        except OperationalError:  # the database may be on the same full disk
            _LOG.error("instance %s refused with A700: %s", header.sop_instance_uid, why)
        return result

    def _audit_refusal(
        self, result: IngestResult, sender: ReceivedFrom, sop_instance_uid: str | None
    ) -> None:
        _LOG.warning(
            "instance %s from %s refused with 0x%04X: %s",
            sop_instance_uid or "(unknown)",
            sender.calling_ae_title,
            result.status,
            result.message,
        )
        # the request's UID may be as malformed as the dataset's: not into a UI column
        if sop_instance_uid and uid_problem(sop_instance_uid):
            sop_instance_uid = None
        try:
            with self._sessions.begin() as session:
                self._audit(
                    session,
                    "instance",
                    sender,
                    decision="refused",
                    sop_instance_uid=sop_instance_uid,
                    message=f"0x{result.status:04X}: {result.message}",
                )
        except OperationalError:
            pass


def _instance_fields(
    header: _Header, stored: StoredFile, sender: ReceivedFrom, study_id: int, now: object
) -> dict[str, Any]:
    """The values of an instance's row (new, or replacing the row of an earlier copy)."""
    ds = header.dataset
    return {
        "study_id": study_id,
        "sop_class_uid": header.sop_class_uid,
        "series_instance_uid": _text(ds, "SeriesInstanceUID", 64),
        "series_number": _int(ds, "SeriesNumber"),
        "instance_number": _int(ds, "InstanceNumber"),
        "modality": _text(ds, "Modality", 16),
        "transfer_syntax_uid": header.transfer_syntax_uid[:64] or "unknown",
        "file_path": stored.relative_path,
        "size_bytes": stored.size_bytes,
        "sha256": None,  # InstanceHasher, just after the answer
        "calling_ae_title": (sender.calling_ae_title or "")[:16] or None,
        "called_ae_title": (sender.called_ae_title or "")[:16] or None,
        "remote_address": (sender.address or "")[:64] or None,
        "received_at": now,
        # classified by the worker, with the round's rules
        "role": None,
        "role_reason": None,
        "classified_at": None,
    }


def _size(data: bytes | Path) -> int:
    return len(data) if isinstance(data, bytes | bytearray) else data.stat().st_size


def _source(data: bytes | Path) -> io.BytesIO | Path:
    return io.BytesIO(data) if isinstance(data, bytes | bytearray) else data


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""


def _checked(
    ds: Dataset, size: int, sop_class_uid: str | None, sop_instance_uid: str | None
) -> _Header | IngestResult:
    """Check a dataset read in full (``size`` bytes); return its header or the refusal."""

    def fail(status: Status, message: str) -> IngestResult:
        return IngestResult(int(status), IngestOutcome.REFUSED, message)

    # pydicom converts values when first read: one that cannot be converted would
    # raise later (in the index, or at the worker) instead of being refused here
    meta = getattr(ds, "file_meta", None)
    unreadable = unreadable_element(ds, convert_plain=False) or (
        unreadable_element(meta, convert_plain=False) if meta is not None else None
    )
    if unreadable:
        return fail(Status.CANNOT_UNDERSTAND, unreadable)
    with warnings.catch_warnings():
        # malformed values are judged below; pydicom's warnings say nothing more
        warnings.simplefilter("ignore")
        uid_class = str(ds.get("SOPClassUID", "") or "")
        # other objects are discarded unread: their Series Instance UID may be absent
        image = uid_class in MAMMOGRAPHY_SOP_CLASSES
        bad_uid = image_identifiers_problem(ds, series_required=image)
        if bad_uid:
            return fail(Status.CANNOT_UNDERSTAND, bad_uid)
        uid_instance = str(ds.SOPInstanceUID)
        uid_study = str(ds.StudyInstanceUID)
    if sop_class_uid and uid_class != sop_class_uid:
        return fail(
            Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"SOPClassUID {uid_class} differs from the request's",
        )
    if sop_instance_uid and uid_instance != sop_instance_uid:
        return fail(
            Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "SOPInstanceUID differs from the request's",
        )
    syntax = _transfer_syntax(ds)
    if image:
        problem = _pixel_data_problem(ds, syntax, size)
        if problem:
            return fail(Status.INCOMPLETE_DATASET, problem)
    return _Header(uid_class, uid_instance, uid_study, syntax, ds)


def _pixel_data_problem(ds: Dataset, syntax: str, total: int) -> str | None:
    """Say why an image's pixel data is missing or incomplete, or return ``None``.

    Native pixel data is left unread (deferred): its declared length and
    position say whether all of it arrived, without copying megabytes.
    """
    if "PixelData" not in ds:
        return "Image without Pixel Data (truncated dataset?)"
    element = ds.get_item(0x7FE00010, keep_deferred=True)
    if isinstance(element, RawDataElement) and element.value is None:
        # deferred: declared length, and where the value starts in the data;
        # an undefined length (encapsulated) was scanned to its delimiter already
        if element.length == 0xFFFFFFFF:
            length = total - element.value_tell
        elif element.value_tell + element.length > total:
            return (
                f"Truncated Pixel Data: {max(0, total - element.value_tell)} of "
                f"{element.length} bytes"
            )
        else:
            length = element.length
    else:
        value = getattr(element, "value", None)
        if value is None:
            return "Truncated dataset: Pixel Data incomplete"
        length = len(value)
    encapsulated = syntax not in {
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.1.99",
        "",
    }
    if encapsulated:
        return None if length > 8 else "Pixel Data has no compressed frame"
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return "Image Pixel module incomplete (Rows, Columns or BitsAllocated)"
    expected_bits = rows * columns * samples * bits * frames
    expected = (expected_bits + 7) // 8
    if length < expected:
        return f"Truncated Pixel Data: {length} of {expected} bytes"
    return None
