"""The node's Storage SCP: C-ECHO and C-STORE, with access control.

One thread per association (pynetdicom). Handlers do as little as possible:
the access decision at association time, and per C-STORE the durable write
and index of :class:`~cem_node.store.ingest.InstanceIngestor`. Everything
else (assembly, analysis, export) happens later, from the database.
"""

from __future__ import annotations

import functools
import logging
import queue
import select
import socket
import socketserver
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom import dimse_messages as pynetdicom_dimse_messages
from pynetdicom._handlers import standard_pdu_recv_handler
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.events import Event
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from cem_node.config import Settings
from cem_node.dicom.access import AccessDecision, AssociationRequest, decide_association
from cem_node.dicom.cem_selection import MAMMOGRAPHY_SOP_CLASSES
from cem_node.peers import PeerEntry
from cem_node.store.audit import record_event
from cem_node.store.ingest import InstanceIngestor, ReceivedFrom
from cem_node.store.instance_files import TEMPORARY_FILE_PREFIX, start_writeback

__all__ = ["ACCEPTED_TRANSFER_SYNTAXES", "StorageSCP"]

_LOG = logging.getLogger(__name__)

#: Every transfer syntax accepted for images: modalities and PACS send
#: compressed ones too, and pynetdicom's ready-made contexts only carry the
#: uncompressed ones. The bytes are stored as received, never transcoded.
ACCEPTED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEG2000Lossless,
    JPEG2000,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
)

SourcesProvider = Callable[[], Sequence[PeerEntry]]


class _WholeReadSocket(AssociationSocket):
    """pynetdicom's socket, reading a PDU into one buffer instead of 4 KiB pieces.

    pynetdicom reads ``recv(4096)`` in a Python loop and extends a bytearray:
    a 9 MB mammogram takes ~2,200 reads and copies, which made receiving the
    slowest step of the node. ``recv_into`` one preallocated buffer gives the
    same bytes with a handful of calls. Same contract as the parent: blocks
    until ``nr_bytes`` are read, returns fewer only when the peer closed.
    """

    def recv(self, nr_bytes: int) -> bytearray:
        sock = cast(socket.socket, self.socket)
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        read = 0
        while read < nr_bytes:
            count = sock.recv_into(view[read:], nr_bytes - read)
            if not count:
                view.release()
                return buffer[:read]
            read += count
        view.release()
        return buffer


_P_DATA_TF = 0x04
_PDU_HEADER = struct.Struct(">BBL")
_PDV_LENGTH = struct.Struct(">L")
_PYNETDICOM_LOG = logging.getLogger("pynetdicom")
#: How long the upper layer waits for the next PDU of a dataset streaming in
#: before it returns to pynetdicom's reactor (which then sleeps between checks).
_STREAM_WAIT_S = 0.005
#: Longest wait of an idle acceptor association for its next DIMSE message
#: before its reactor checks for a release, an abort or a timeout.
_REACTOR_WAIT_S = 0.01
#: Bytes streamed to a dataset's file between two starts of its write-back.
_WRITEBACK_EVERY_BYTES = 1 << 20


class _DirectDataDUL(DULServiceProvider):
    """pynetdicom's upper layer, writing the middle fragments of a streamed
    dataset straight to its file.

    pynetdicom handles each P-DATA-TF PDU in Python: it copies the PDU three
    times, decodes it into PDV items and a primitive, queues an event, runs
    the state machine and the DIMSE decoder, which appends the fragment to the
    temporary file of a C-STORE being streamed (``STORE_RECV_CHUNKED_DATASET``).
    For a 9 MB mammogram in 128 KiB PDUs that is ~70 rounds and most of the
    node's receiving CPU. A PDU made only of data set fragments that are not
    the last one (``xxxxxx00``) changes nothing but that file (state Sta6
    stays Sta6, DT-2 only forwards it), so it is written to the file here,
    from the receive buffer, with no copy. Everything else (the command, the
    last fragment, other PDUs, any doubt) takes pynetdicom's own path, as do
    all PDUs when something listens to them (debug logging, PDU handlers).
    Same class swap as for the socket; its one state of its own is the count
    of bytes written since the file's write-back was last started.
    """

    def _read_pdu_data(self) -> None:
        # while a dataset streams in, stay here: back in pynetdicom's reactor an
        # iteration without a queued event sleeps 1 ms, ~70 times per image
        while self._read_one_pdu() and self._more_data_within(_STREAM_WAIT_S):
            pass

    def _more_data_within(self, seconds: float) -> bool:
        sock = cast(AssociationSocket, self.socket).socket
        if sock is None:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # decrypted bytes that select() cannot see
        try:
            ready, _, _ = select.select([sock], [], [], seconds)
        except (OSError, ValueError):
            return False  # the reactor's own check reports it
        return bool(ready)

    def _read_one_pdu(self) -> bool:
        """Read one PDU: hand it to pynetdicom (return False), or write its middle
        dataset fragments to the streamed file (return True)."""
        sock = cast(AssociationSocket, self.socket)
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
        if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
            _LOG.error("unknown PDU type 0x%02X received", pdu_type)
            self.event_queue.put("Evt19")  # unrecognised or invalid PDU
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
        except Exception:
            _LOG.exception("unable to decode the received PDU")
            self.event_queue.put("Evt19")
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
        with memoryview(body) as view:
            for start, stop in spans:
                target.write(view[start:stop])
        # start writing it to disk now: the fsync before the answer then finds
        # little left to do, instead of the whole image
        unsynced = getattr(self, "_unsynced_bytes", 0) + len(body)
        if unsynced >= _WRITEBACK_EVERY_BYTES:
            start_writeback(target.fileno())
            unsynced = 0
        self._unsynced_bytes = unsynced
        return True


class _WaitingDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, whose non-blocking read waits a little.

    The acceptor's reactor loop (``Association._run_reactor``) sleeps 1 ms,
    then asks for a message without blocking: an idle association wakes its
    thread 1000 times a second, and every wake-up takes the GIL from the
    threads that are receiving. Waiting here on the queue instead (up to
    ``_REACTOR_WAIT_S``) hands a message over the moment it arrives and
    wakes an idle association ~100 times a second; release, abort and timeout
    checks between two waits come that much later. Acceptor associations only
    (the class is swapped in :class:`_RequestHandler`).
    """

    def get_msg(self, block: bool = False) -> Any:
        if block:
            return super().get_msg(block=True)
        try:
            return self.msg_queue.get(timeout=_REACTOR_WAIT_S)
        except queue.Empty:
            return None, None


class _SharedPortServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, binding with SO_REUSEPORT so that several
    receiver processes of one node listen on the same port (the kernel spreads
    the connections among them)."""

    def server_bind(self) -> None:
        cast(socket.socket, self.socket).setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class _RequestHandler(RequestHandler):
    """pynetdicom's request handler (``AE.make_server(request_handler=...)``), faster reads."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # same objects, same state: only the read methods differ
        assoc.dul.socket.__class__ = _WholeReadSocket
        assoc.dul.__class__ = _DirectDataDUL
        assoc.dimse.__class__ = _WaitingDIMSE
        return assoc


@dataclass(frozen=True, slots=True)
class _Caller:
    calling: str
    called: str
    address: str


class StorageSCP:
    """Receive CEM studies: a pynetdicom AE configured from the node settings.

    Parameters
    ----------
    settings
        The node settings ([node], [tls]).
    ingestor
        Stores and indexes each received instance.
    sources
        Returns the current source peers (config and database); called per
        association, so ``cem-node peers add`` takes effect at once.
    audit_sessions
        Session factory for the association audit events.
    ssl_context
        Server TLS context when [tls] is enabled.
    share_port
        Bind with SO_REUSEPORT (several receiver processes on one port).
    actor
        This process in the audit trail (default: the AE title).
    receiving_dir
        Where datasets are streamed while they arrive (the store's receiving
        folder); ``None``: ``TMPDIR``.
    """

    def __init__(
        self,
        settings: Settings,
        ingestor: InstanceIngestor,
        *,
        sources: SourcesProvider,
        audit_sessions: Callable[[], object],
        ssl_context: object | None = None,
        share_port: bool = False,
        actor: str | None = None,
        receiving_dir: Path | None = None,
    ) -> None:
        self._actor = actor or settings.node.ae_title
        self._receiving_dir = receiving_dir
        self._share_port = share_port
        self._settings = settings
        self._ingestor = ingestor
        self._sources = sources
        self._sessions = audit_sessions
        self._ssl_context = ssl_context
        self._server: ThreadedAssociationServer | None = None
        self.ae = self._make_ae()

    def _make_ae(self) -> AE:
        node = self._settings.node
        ae = AE(ae_title=node.ae_title)
        ae.maximum_associations = node.max_associations
        ae.maximum_pdu_size = node.max_pdu_size
        ae.acse_timeout = node.acse_timeout_s
        ae.dimse_timeout = node.dimse_timeout_s
        ae.network_timeout = node.network_timeout_s
        # the called AE title is checked in _on_requested, with an audited reason
        ae.require_called_aet = False
        ae.add_supported_context(Verification)
        for uid in MAMMOGRAPHY_SOP_CLASSES:
            ae.add_supported_context(uid, list(ACCEPTED_TRANSFER_SYNTAXES))
        if node.accept_unknown_sop_classes == "ignore":
            # accepted and discarded: a PACS forwarding a whole study sees success
            for context in AllStoragePresentationContexts:
                if context.abstract_syntax not in MAMMOGRAPHY_SOP_CLASSES:
                    ae.add_supported_context(
                        context.abstract_syntax, list(ACCEPTED_TRANSFER_SYNTAXES)
                    )
        return ae

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        """The port the server listens on (useful with port 0)."""
        if self._server is None:
            raise RuntimeError("the SCP is not running")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Listen for associations (returns at once; one thread per association).

        Received datasets are streamed to a temporary file as their PDUs
        arrive (pynetdicom's ``STORE_RECV_CHUNKED_DATASET``, a process-wide
        switch: this process is the node), so the handler moves a finished
        file into the store instead of writing megabytes after the last PDU.
        With ``receiving_dir`` (the store's receiving folder) the temporary
        files are made there, on the store's file system, so the move is a
        rename; otherwise in ``TMPDIR``, and copied when that is another file
        system. pynetdicom has no option for that folder: its module's
        ``NamedTemporaryFile`` is given one, again for the whole process.
        """
        pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
        if self._receiving_dir is not None:
            pynetdicom_dimse_messages.NamedTemporaryFile = functools.partial(  # type: ignore[attr-defined]
                tempfile.NamedTemporaryFile,
                dir=str(self._receiving_dir),
                prefix=TEMPORARY_FILE_PREFIX,
            )
        node = self._settings.node
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_STORE, self._on_c_store),
            (evt.EVT_C_ECHO, self._on_c_echo),
        ]
        server = self.ae.make_server(
            (node.host, node.port),
            evt_handlers=handlers,
            ssl_context=self._ssl_context,  # type: ignore[arg-type]
            server_class=_SharedPortServer if self._share_port else ThreadedAssociationServer,
            request_handler=_RequestHandler,
        )
        self._server = cast(ThreadedAssociationServer, server)
        self._server_thread = threading.Thread(
            target=self._server.serve_forever, name="cem-node-scp", daemon=True
        )
        self._server_thread.start()
        _LOG.info(
            "DICOM service %s listening on %s:%d%s",
            node.ae_title,
            node.host,
            self.port,
            " (TLS)" if self._ssl_context is not None else "",
        )

    def stop(self) -> None:
        """Stop listening and close the associations in progress."""
        if self._server is not None:
            # the server was made with make_server, not start_server, so the AE
            # does not list it: stop its loop and close its socket here
            socketserver.BaseServer.shutdown(self._server)
            self._server.server_close()
            self._server = None
        self.ae.shutdown()

    # ------------------------------------------------------------------ handlers

    @staticmethod
    def _caller(event: Event) -> _Caller:
        requestor = event.assoc.requestor
        primitive = requestor.primitive
        calling = str(getattr(primitive, "calling_ae_title", "") or requestor.ae_title).strip()
        called = str(getattr(primitive, "called_ae_title", "") or "").strip()
        return _Caller(calling, called, str(requestor.address))

    def _on_requested(self, event: Event) -> None:
        caller = self._caller(event)
        try:
            sources = self._sources()
        except Exception:  # the database is down: nobody can be checked, nobody gets in
            _LOG.exception("cannot read the source peers; association from %s refused", caller)
            event.assoc.acse.send_reject(2, 1, 1)  # transient: the sender will retry
            event.assoc.kill()
            return
        node = self._settings.node
        decision = decide_association(
            AssociationRequest(caller.calling, caller.called, caller.address),
            node_ae_title=node.ae_title,
            require_called_ae_title=node.require_called_ae_title,
            sources=sources,
            accept_unknown_sources=node.accept_unknown_sources,
        )
        self._audit_association(caller, decision)
        if not decision.accepted and decision.rejection is not None:
            r = decision.rejection
            event.assoc.acse.send_reject(r.result, r.source, r.diagnostic)
            event.assoc.kill()  # as pynetdicom does after its own rejections

    def _audit_association(self, caller: _Caller, decision: AccessDecision) -> None:
        log = _LOG.info if decision.accepted else _LOG.warning
        log(
            "association %s: %s",
            "accepted" if decision.accepted else "rejected",
            decision.reason,
            extra={"calling_ae_title": caller.calling, "remote_address": caller.address},
        )
        try:
            with self._sessions.begin() as session:  # type: ignore[attr-defined]
                record_event(
                    session,
                    "association",
                    decision="accepted" if decision.accepted else "rejected",
                    actor=self._actor,
                    calling_ae_title=caller.calling,
                    called_ae_title=caller.called,
                    remote_address=caller.address,
                    message=decision.reason,
                    details={"peer": decision.peer},
                )
        except Exception:  # an audit failure must not decide an association
            _LOG.exception("cannot audit the association decision")

    def _on_c_echo(self, event: Event) -> int:
        return 0x0000

    def _on_c_store(self, event: Event) -> Dataset:
        started = time.perf_counter()
        caller = self._caller(event)
        request = event.request
        try:
            # streamed to a temporary file while it arrived (see start()): moved, not copied
            data = event.dataset_path
            result = self._ingestor.ingest(
                data,
                sender=ReceivedFrom(caller.calling, caller.called, caller.address),
                sop_class_uid=str(request.AffectedSOPClassUID),
                sop_instance_uid=str(request.AffectedSOPInstanceUID),
            )
        except Exception:  # a bug must not pass for success, nor kill the association
            _LOG.exception("C-STORE of %s failed", request.AffectedSOPInstanceUID)
            status = Dataset()
            status.Status = 0x0110  # processing failure: not stored, the sender may retry
            status.ErrorComment = "Processing failure; instance not stored"
            return status
        status = Dataset()
        status.Status = result.status
        if result.status != 0x0000:
            status.ErrorComment = result.error_comment
        _LOG.debug(
            "C-STORE %s: %s in %.1f ms",
            result.sop_instance_uid,
            result.outcome.value,
            1000 * (time.perf_counter() - started),
        )
        return status
