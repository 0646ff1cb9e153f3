"""Every pynetdicom internal the node's SCP relies on, in one module, version-checked.

pynetdicom's public API (``AE.make_server`` with ``server_class`` and
``request_handler``) lets the node own the front door: the accept-time
checks, the TLS handshake and the A-ASSOCIATE-RQ read of
:mod:`cem_node.dicom.net.admission` happen in :class:`NodeRequestHandler` before
pynetdicom sees a byte. What follows reaches into pynetdicom's internals,
written for pynetdicom 3.0 (:data:`WRITTEN_FOR`):

* :class:`BoundedSocket` reads a PDU with a few ``recv_into`` calls
  (pynetdicom reads 4 KiB pieces in a Python loop, which made receiving the
  node's slowest step): at most 256 KiB are allocated at once, which covers
  a PDU within the negotiated maximum, and beyond that the buffer grows only
  as bytes arrive. The lengths were checked before (:class:`GuardedDUL`). It
  also replays the A-ASSOCIATE-RQ that the front door already read;
* :class:`GuardedDUL` refuses a PDU whose announced length breaks the limits
  (a P-DATA-TF larger than the node's maximum receive length, an
  association PDU larger than the front door's limit, a release or abort PDU
  of the wrong size) or whose type is unknown, with an A-ABORT and the end of
  the connection, never reading on; and writes the middle fragments of a
  streamed dataset straight to its file;
* :class:`ResponsiveDIMSE` answers a C-STORE whose command cannot be read
  (an 88-character UID) with a failure status instead of aborting, and lets
  an idle association wait on its queue instead of waking every millisecond.

On another pynetdicom version :data:`FAST_PATH` is False, a warning is
logged at import, and the node uses pynetdicom's own reading path (the
front door still applies; the per-PDU limits of an established association
are then pynetdicom's, that is none).
"""

from __future__ import annotations

import functools
import logging
import queue
import select
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any, cast

import pynetdicom
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from cem_node.dicom.net.admission import (
    A_ASSOCIATE_RQ,
    Admission,
    RefusedConnectionError,
    abort_pdu,
    read_association_request,
    tls_handshake,
)
from cem_node.store.instance_files import start_writeback

__all__ = [
    "FAST_PATH",
    "PYNETDICOM_VERSION",
    "WRITTEN_FOR",
    "NodeAssociationServer",
    "NodeRequestHandler",
    "SharedPortNodeServer",
    "fast_path_supported",
    "stream_datasets_to",
]

_LOG = logging.getLogger(__name__)

#: The pynetdicom release series this module was written and tested for.
WRITTEN_FOR = (3, 0)
PYNETDICOM_VERSION: str = pynetdicom.__version__


def fast_path_supported(version: str) -> bool:
    """Whether ``version`` is of the series :data:`WRITTEN_FOR` (e.g. ``"3.0.4"``)."""
    parts = version.split(".")
    try:
        return (int(parts[0]), int(parts[1])) == WRITTEN_FOR
    except (IndexError, ValueError):
        return False


FAST_PATH = fast_path_supported(PYNETDICOM_VERSION)
if not FAST_PATH:
    _LOG.warning(
        "pynetdicom %s is not the %d.%d series cem-node's fast receive path was written for: "
        "using pynetdicom's own path (slower; no per-PDU size limits once associated)",
        PYNETDICOM_VERSION,
        *WRITTEN_FOR,
    )

if FAST_PATH:
    from pynetdicom._handlers import standard_pdu_recv_handler
    from pynetdicom.dimse import DIMSEServiceProvider
    from pynetdicom.dimse_messages import DIMSEMessage
    from pynetdicom.dimse_primitives import C_CANCEL, C_STORE, N_EVENT_REPORT
    from pynetdicom.dul import DULServiceProvider
    from pynetdicom.transport import AssociationSocket
    from pynetdicom.utils import make_target
else:  # pragma: no cover - only on an unsupported pynetdicom
    AssociationSocket = DULServiceProvider = DIMSEServiceProvider = object  # type: ignore[assignment,misc]


_PDU_HEADER = struct.Struct(">BBL")
_PDV_LENGTH = struct.Struct(">L")
_P_DATA_TF = 0x04
_PYNETDICOM_LOG = logging.getLogger("pynetdicom")
#: First buffer of a PDU read; it grows (doubling) only as bytes arrive.
_INITIAL_READ = 256 * 1024
#: How long the upper layer waits for the next PDU of a dataset streaming in
#: before it returns to pynetdicom's reactor (which then sleeps between checks).
_STREAM_WAIT_S = 0.005
#: Longest wait of an idle acceptor association for its next DIMSE message
#: before its reactor checks for a release, an abort or a timeout.
_REACTOR_WAIT_S = 0.01
#: Bytes streamed to a dataset's file between two starts of its write-back.
_WRITEBACK_EVERY_BYTES = 1 << 20
#: A-RELEASE-RQ, A-RELEASE-RP and A-ABORT have a 4-byte variable field (PS3.8 9.3.6-8).
_FIXED_LENGTH_PDUS = {0x05: "A-RELEASE-RQ", 0x06: "A-RELEASE-RP", 0x07: "A-ABORT"}
_ASSOCIATION_PDUS = {0x01: "A-ASSOCIATE-RQ", 0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ"}
#: C-STORE failure statuses for a command the node cannot read (PS3.7 C.4, PS3.4 B.2.3).
_INVALID_SOP_INSTANCE = 0x0117
_CANNOT_UNDERSTAND = 0xC000


class BoundedSocket(AssociationSocket):  # type: ignore[misc,valid-type]
    """pynetdicom's socket, reading into a buffer that grows with the bytes received.

    Same contract as the parent's ``recv``: blocks until ``nr_bytes`` are
    read and returns fewer only when the peer closed. Bytes given to
    :meth:`replay` are returned first (the A-ASSOCIATE-RQ the front door read).
    """

    _replay: bytes = b""

    def replay(self, data: bytes) -> None:
        self._replay = data

    @property
    def ready(self) -> bool:  # a property in pynetdicom
        return bool(self._replay) or cast(bool, AssociationSocket.ready.fget(self))

    def recv(self, nr_bytes: int) -> bytearray:
        replayed = self._replay[:nr_bytes]
        if replayed:
            self._replay = self._replay[nr_bytes:]
            if len(replayed) == nr_bytes:
                return bytearray(replayed)
        # up to _INITIAL_READ (a PDU within the negotiated maximum) in one allocation;
        # beyond it, the buffer doubles only as bytes arrive
        buffer = bytearray(max(len(replayed), min(nr_bytes, _INITIAL_READ)))
        buffer[: len(replayed)] = replayed
        read = len(replayed)
        sock = cast(socket.socket, self.socket)
        while read < nr_bytes:
            if read == len(buffer):
                buffer.extend(bytes(min(len(buffer), nr_bytes - read)))
            with memoryview(buffer) as view:
                count = sock.recv_into(view[read:], len(buffer) - read)
            if not count:
                break
            read += count
        del buffer[read:]
        return buffer


class GuardedDUL(DULServiceProvider):  # type: ignore[misc,valid-type]
    """pynetdicom's upper layer with PDU limits and a direct path for dataset fragments.

    Limits: see the module docstring. A PDU that breaks one is never read:
    the node sends an A-ABORT (source: service provider), closes the
    connection, audits the reason (``on_violation``) and the state machine
    sees the transport closed.

    Direct path: pynetdicom handles each P-DATA-TF PDU in Python (three
    copies, PDV decoding, an event, the state machine, the DIMSE decoder that
    appends the fragment to the file of a C-STORE being streamed). A PDU made
    only of dataset fragments that are not the last one (``xxxxxx00``)
    changes nothing but that file (Sta6 stays Sta6, DT-2 only forwards it),
    so it is written to the file here, from the receive buffer. Everything
    else (the command, the last fragment, any doubt) and all PDUs when
    something listens to them (debug logging, PDU handlers) take pynetdicom's
    own path.
    """

    #: Set by :class:`NodeRequestHandler` after the class swap.
    max_association_pdu: int = 1 << 20
    on_violation: Callable[[str, int], None] | None = None
    _unsynced_bytes: int = 0

    def _read_pdu_data(self) -> None:
        # while a dataset streams in, stay here: back in pynetdicom's reactor an
        # iteration without a queued event sleeps 1 ms, ~70 times per image
        while self._read_one_pdu() and self._more_data_within(_STREAM_WAIT_S):
            pass

    def _more_data_within(self, seconds: float) -> bool:
        wrapper = cast(BoundedSocket, self.socket)
        sock = wrapper.socket
        if sock is None:
            return False
        if wrapper._replay or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            return True  # bytes that select() cannot see
        try:
            ready, _, _ = select.select([sock], [], [], seconds)
        except (OSError, ValueError):
            return False  # the reactor's own check reports it
        return bool(ready)

    def _limit_problem(self, pdu_type: int, length: int) -> tuple[str, int] | None:
        """Why a PDU announced with this type and length is refused (and the
        A-ABORT reason), or None."""
        if pdu_type == _P_DATA_TF:
            maximum = int(self.assoc.acceptor.maximum_length or 0)
            if maximum and length > maximum:
                return (
                    f"P-DATA-TF PDU of {length} bytes announced, larger than the maximum of "
                    f"{maximum} bytes this node negotiated",
                    6,
                )
            return None
        if pdu_type in _ASSOCIATION_PDUS:
            if length > self.max_association_pdu:
                return (
                    f"{_ASSOCIATION_PDUS[pdu_type]} PDU of {length} bytes announced, larger "
                    f"than the limit of {self.max_association_pdu} bytes",
                    6,
                )
            return None
        if pdu_type in _FIXED_LENGTH_PDUS:
            if length != 4:
                return (f"{_FIXED_LENGTH_PDUS[pdu_type]} PDU of {length} bytes, not 4", 6)
            return None
        return (f"unknown PDU type 0x{pdu_type:02X}", 1)

    def _refuse(self, reason: str, abort_reason: int) -> None:
        """Abort and close the connection without reading what follows."""
        sock = cast(BoundedSocket, self.socket).socket
        _LOG.warning("association aborted: %s", reason)
        if self.on_violation is not None:
            self.on_violation(reason, abort_reason)
        if sock is not None:
            _shut_down(sock, abort_pdu(abort_reason))  # pynetdicom closes it
        self.event_queue.put("Evt17")  # transport connection closed: the FSM ends it

    def _read_one_pdu(self) -> bool:
        """Read one PDU: hand it to pynetdicom (return False), or write its middle
        dataset fragments to the streamed file (return True)."""
        sock = cast(BoundedSocket, self.socket)
        try:
            header = sock.recv(6)
        except (OSError, TimeoutError):
            _LOG.error("connection closed before the entire PDU was received")
            self.event_queue.put("Evt17")  # transport connection closed
            return False
        if len(header) != 6:
            self.event_queue.put("Evt17")
            return False
        pdu_type, _, length = _PDU_HEADER.unpack(header)
        problem = self._limit_problem(pdu_type, length)
        if problem is not None:
            self._refuse(*problem)
            return False
        try:
            body = sock.recv(length)
        except (OSError, TimeoutError):
            _LOG.error("connection closed before the entire PDU was received")
            self.event_queue.put("Evt17")
            return False
        if len(body) != length:
            _LOG.error("the received PDU is shorter than announced (%d of %d)", len(body), length)
            self.event_queue.put("Evt17")
            return False
        if pdu_type == _P_DATA_TF and self._write_middle_fragments(body):
            return True
        try:
            pdu, event = self._decode_pdu(header + body)
        except Exception as exc:
            self._refuse(f"invalid {_ASSOCIATION_PDUS.get(pdu_type, 'PDU')}: {exc}", 6)
            return False
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)
        return False

    def _write_middle_fragments(self, body: bytearray) -> bool:
        """Write the PDU's fragments to the streamed dataset's file if they are all
        middle data set fragments of it; return whether they were written."""
        message = self.assoc.dimse.message
        target = getattr(message, "_data_set_file", None)
        if (
            target is None
            or self.state_machine.current_state != "Sta6"
            or not self.event_queue.empty()  # earlier PDUs not yet through the FSM
            or not self._recv_pdu.empty()
            or _PYNETDICOM_LOG.isEnabledFor(logging.DEBUG)
            or self.assoc.get_handlers(evt.EVT_DATA_RECV)
            or any(
                handler is not standard_pdu_recv_handler
                for handler, _ in self.assoc.get_handlers(evt.EVT_PDU_RECV)
            )
        ):
            return False
        spans = []
        offset, end = 0, len(body)
        while offset < end:
            if end - offset < 6:
                return False
            (item_length,) = _PDV_LENGTH.unpack_from(body, offset)
            stop = offset + 4 + item_length
            # a PDV is context ID, control header and at least one byte of data
            if item_length < 3 or stop > end or body[offset + 5] & 0b11:
                return False  # malformed, a command or the last fragment: pynetdicom's way
            spans.append((offset + 6, stop))
            offset = stop
        raw = getattr(target, "file", target)  # past NamedTemporaryFile's Python wrapper
        with memoryview(body) as view:
            for start, stop in spans:
                raw.write(view[start:stop])
        # start writing it to disk now: the fsync before the answer then finds
        # little left to do, instead of the whole image
        unsynced = self._unsynced_bytes + len(body)
        if unsynced >= _WRITEBACK_EVERY_BYTES:
            start_writeback(target.fileno())
            unsynced = 0
        self._unsynced_bytes = unsynced
        return True


def _last_dataset_fragment(primitive: Any) -> bool:
    return any((pdv[0] & 0b11) == 0b10 for _, pdv in primitive.presentation_data_value_list)


class ResponsiveDIMSE(DIMSEServiceProvider):  # type: ignore[misc,valid-type]
    """pynetdicom's DIMSE provider: a status for an unreadable C-STORE command, and
    a non-blocking read that waits a little.

    pynetdicom aborts the association when a received message cannot be
    turned into a primitive (an Affected SOP Instance UID of 88 characters):
    the sender gets no status and cannot tell a bad instance from a broken
    network. Here a C-STORE-RQ whose command was read far enough to know its
    Message ID is answered with 0x0117 (invalid SOP instance) or 0xC000
    (cannot understand), its dataset fragments are discarded, and the
    association goes on. Other messages keep pynetdicom's behaviour.

    The acceptor's reactor sleeps 1 ms, then asks for a message without
    blocking: an idle association wakes its thread 1000 times a second, and
    every wake-up takes the GIL from the threads that are receiving. Waiting
    on the queue instead (up to ``_REACTOR_WAIT_S``) hands a message over the
    moment it arrives.
    """

    _discarding: tuple[int, int, int, str, str | None] | None = None

    def get_msg(self, block: bool = False) -> Any:
        if block:
            return super().get_msg(block=True)
        try:
            return self.msg_queue.get(timeout=_REACTOR_WAIT_S)
        except queue.Empty:
            return None, None

    def receive_primitive(self, primitive: Any) -> None:
        if self._discarding is not None:
            if _last_dataset_fragment(primitive):
                self._answer_unreadable(*self._discarding)
                self._discarding = None
            return
        if self.message is None:
            self.message = DIMSEMessage()
        message = self.message
        try:
            complete = message.decode_msg(primitive, self.assoc)
        except Exception as exc:
            self._unreadable(message, exc, primitive, complete=False)
            return
        if not complete:
            return
        evt.trigger(self.assoc, evt.EVT_DIMSE_RECV, {"message": message})
        context_id = cast(int, message.context_id)
        try:
            d_primitive = message.message_to_primitive()
        except Exception as exc:
            self._unreadable(message, exc, primitive, complete=True)
            return
        # as pynetdicom 3.0's receive_primitive from here on
        if isinstance(d_primitive, C_CANCEL) and len(self.cancel_req) < 10:
            self.cancel_req[cast(int, d_primitive.MessageIDBeingRespondedTo)] = d_primitive
        elif isinstance(d_primitive, N_EVENT_REPORT) and d_primitive.is_valid_request:
            threading.Thread(
                target=make_target(self.assoc._serve_request), args=(d_primitive, context_id)
            ).start()
        else:
            self.msg_queue.put((context_id, d_primitive))
        self._reset()

    def _reset(self) -> None:
        message = self.message
        if message is not None:
            message.encoded_command_set = BytesIO()
            message.data_set = BytesIO()
            message._data_set_file = None
            message._data_set_path = None
        self.message = None

    def _unreadable(self, message: Any, exc: Exception, primitive: Any, *, complete: bool) -> None:
        command = getattr(message, "command_set", None)
        message_id = getattr(command, "MessageID", None) if command is not None else None
        is_store = command is not None and getattr(command, "CommandField", None) == 0x0001
        context_id = getattr(message, "context_id", None)
        if not is_store or message_id is None or context_id is None:
            _LOG.error("received an invalid DIMSE message, aborting: %s", exc)
            self.dul.event_queue.put("Evt19")  # as pynetdicom does
            return
        self._drop_dataset_file(message)
        uid = str(getattr(command, "AffectedSOPInstanceUID", "") or "")
        sop_class = str(getattr(command, "AffectedSOPClassUID", "") or "")
        if not UID(uid).is_valid:
            status, comment = _INVALID_SOP_INSTANCE, "Invalid Affected SOP Instance UID"
        else:
            status, comment = _CANNOT_UNDERSTAND, "Cannot read the C-STORE command"
        _LOG.warning("C-STORE %s refused (0x%04X): %s", uid[:80], status, exc)
        answer = (int(context_id), int(message_id), status, comment, sop_class or None)
        self.message = None
        no_dataset = getattr(command, "CommandDataSetType", 0x0101) == 0x0101
        if complete or no_dataset or _last_dataset_fragment(primitive):
            self._answer_unreadable(*answer)
        else:
            self._discarding = answer  # the fragments still to come are dropped

    @staticmethod
    def _drop_dataset_file(message: Any) -> None:
        target = getattr(message, "_data_set_file", None)
        path = getattr(message, "_data_set_path", None)
        try:
            if target is not None:
                target.close()
            if path is not None:
                path.unlink(missing_ok=True)
        except OSError:
            pass

    def _answer_unreadable(
        self, context_id: int, message_id: int, status: int, comment: str, sop_class: str | None
    ) -> None:
        response = C_STORE()
        response.MessageIDBeingRespondedTo = message_id
        if sop_class and UID(sop_class).is_valid:
            response.AffectedSOPClassUID = sop_class
        response.Status = status
        response.ErrorComment = comment
        self.send_msg(response, context_id)


# ---------------------------------------------------------------------- the server


class NodeAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the node's front door.

    At accept (:meth:`verify_request`): :meth:`Admission.admit`. The TLS
    handshake is not done here (pynetdicom does it in the accept loop, where
    one silent connection blocks every other): :class:`NodeRequestHandler`
    does it in the connection's thread. Attributes set by the SCP before
    serving: ``admission``, ``tls_context``.
    """

    daemon_threads = True
    block_on_close = False
    admission: Admission
    tls_context: ssl.SSLContext | None = None

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self.admission.admit(str(client_address[0]))

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        try:
            return cast(socket.socket, self.socket).accept()
        except OSError as exc:
            if self.socket.fileno() != -1:  # not the server closing
                self.admission.accept_failed(f"{type(exc).__name__}: {exc}")
                _LOG.error("cannot accept a connection: %s", exc)
                time.sleep(0.05)  # EMFILE would otherwise spin the accept loop
            raise


class SharedPortNodeServer(NodeAssociationServer):
    """Binds with SO_REUSEPORT, so that several receiver processes of one node
    listen on the same port (the kernel spreads the connections among them)."""

    def server_bind(self) -> None:
        cast(socket.socket, self.socket).setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class NodeRequestHandler(RequestHandler):
    """One connection: the front door in this thread, then pynetdicom's association."""

    server: NodeAssociationServer

    def handle(self) -> None:
        server = self.server
        admission = server.admission
        address = str(self.client_address[0])
        limits = admission.limits
        deadline = time.monotonic() + limits.artim_timeout_s
        first_pdu = b""
        try:
            sock: socket.socket = self.request
            if server.tls_context is not None:
                sock = tls_handshake(
                    sock, server.tls_context, deadline=deadline, timeout_s=limits.artim_timeout_s
                )
                self.request = sock
            if FAST_PATH:
                first_pdu = read_association_request(
                    sock,
                    deadline=deadline,
                    timeout_s=limits.artim_timeout_s,
                    max_bytes=limits.max_association_pdu,
                )
            else:
                _wait_readable(sock, deadline=deadline, timeout_s=limits.artim_timeout_s)
            sock.settimeout(None)  # pynetdicom's reactors expect a blocking socket
        except RefusedConnectionError as refused:
            answer = (
                f"A-ABORT (reason {refused.abort_reason}), connection closed"
                if refused.abort
                else "connection closed"
            )
            admission.auditor.refused(address, refused.reason, refused.stage, answer)
            _shut_down(self.request, abort_pdu(refused.abort_reason) if refused.abort else b"")
            self.request.close()
            return
        finally:
            admission.release(address)
        assoc = self._create_association()
        if FAST_PATH:
            # same objects, same state: only the read methods differ
            assoc.dul.socket.__class__ = BoundedSocket
            assoc.dul.socket.replay(first_pdu)
            assoc.dul.__class__ = GuardedDUL
            assoc.dul.max_association_pdu = limits.max_association_pdu
            assoc.dul.on_violation = lambda reason, abort: admission.auditor.refused(
                address, reason, "association", f"A-ABORT (reason {abort}), connection closed"
            )
            assoc.dimse.__class__ = ResponsiveDIMSE
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()


def _wait_readable(sock: socket.socket, *, deadline: float, timeout_s: float) -> None:
    """Fallback path: wait for the first byte within the ARTIM time."""
    while True:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise RefusedConnectionError(
                f"no A-ASSOCIATE-RQ within {timeout_s:g} s of connecting (ARTIM)",
                stage="association-request",
            )
        ready, _, _ = select.select([sock], [], [], left)
        if ready:
            if not isinstance(sock, ssl.SSLSocket):
                first = sock.recv(1, socket.MSG_PEEK)
                if not first:
                    raise RefusedConnectionError(
                        "connection closed before any byte", stage="association-request"
                    )
                if first[0] != A_ASSOCIATE_RQ:
                    raise RefusedConnectionError(
                        f"PDU type 0x{first[0]:02X} where an A-ASSOCIATE-RQ was expected",
                        stage="association-request",
                        abort=True,
                        abort_reason=1,
                    )
            return


def _shut_down(sock: socket.socket, last_words: bytes) -> None:
    """Send ``last_words`` (an A-ABORT, or nothing) and shut the connection down."""
    try:
        if last_words:
            sock.settimeout(1.0)
            sock.sendall(last_words)
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def stream_datasets_to(folder: Path | None, *, prefix: str) -> None:
    """Stream received C-STORE datasets to temporary files in ``folder`` (process-wide).

    pynetdicom's ``STORE_RECV_CHUNKED_DATASET`` writes each dataset to a
    temporary file as its PDUs arrive, so the handler moves a finished file
    instead of writing megabytes after the last PDU. pynetdicom has no option
    for that file's folder: its module's ``NamedTemporaryFile`` is given one
    (the store's receiving folder, so the move is a rename). Both are
    process-wide switches: this process is the node.
    """
    from pynetdicom import _config as pynetdicom_config

    pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
    if folder is not None and FAST_PATH:
        from pynetdicom import dimse_messages

        dimse_messages.NamedTemporaryFile = functools.partial(  # type: ignore[attr-defined]
            tempfile.NamedTemporaryFile, dir=str(folder), prefix=prefix
        )
