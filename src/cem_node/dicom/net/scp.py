"""The node's Storage SCP: C-ECHO and C-STORE, with access control.

One thread per association (pynetdicom). Handlers do as little as possible:
the access decision at association time, and per C-STORE the durable write
and index of :class:`~cem_node.store.ingest.InstanceIngestor`. Everything
else (assembly, analysis, export) happens later, from the database.
"""

from __future__ import annotations

import logging
import socketserver
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import cast

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
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification

from cem_node.config import Settings
from cem_node.dicom.net import pynetdicom_internals as internals
from cem_node.dicom.net.access import (
    TOO_MANY_ASSOCIATIONS,
    AccessDecision,
    AssociationRequest,
    Rejection,
    decide_association,
)
from cem_node.dicom.net.admission import (
    AddressAllowList,
    Admission,
    AdmissionLimits,
    ConnectionAuditor,
)
from cem_node.dicom.selection import MAMMOGRAPHY_SOP_CLASSES
from cem_node.peers import PeerEntry
from cem_node.store.audit import record_event
from cem_node.store.ingest import InstanceIngestor, ReceivedFrom
from cem_node.store.instance_files import TEMPORARY_FILE_PREFIX

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
        ssl_context: ssl.SSLContext | None = None,
        share_port: bool = False,
        actor: str | None = None,
        receiving_dir: Path | None = None,
        on_refusal: Callable[[str], None] | None = None,
    ) -> None:
        self._actor = actor or settings.node.ae_title
        self._receiving_dir = receiving_dir
        self._share_port = share_port
        self._settings = settings
        self._ingestor = ingestor
        self._sources = sources
        self._sessions = audit_sessions
        self._ssl_context = ssl_context
        self._server: internals.NodeAssociationServer | None = None
        self._server_thread: threading.Thread | None = None
        # decisions of associations being negotiated: audited once accepted or rejected
        self._decisions: weakref.WeakKeyDictionary[Association, tuple[_Caller, AccessDecision]]
        self._decisions = weakref.WeakKeyDictionary()
        self._decisions_lock = threading.Lock()
        node = settings.node
        self.auditor = ConnectionAuditor(audit_sessions, actor=self._actor, on_refusal=on_refusal)
        self.admission = Admission(
            AdmissionLimits(
                artim_timeout_s=node.artim_timeout_s,
                max_pending=node.max_pending_connections,
                max_pending_per_address=node.max_pending_per_address,
                max_association_pdu=node.max_association_pdu_size,
            ),
            AddressAllowList(sources, enabled=not node.accept_unknown_sources),
            self.auditor,
        )
        self.ae = self._make_ae()

    def _make_ae(self) -> AE:
        node = self._settings.node
        ae = AE(ae_title=node.ae_title)
        # the limit is applied (and audited) in _on_requested; pynetdicom's own
        # check, one association later, is only a backstop
        ae.maximum_associations = node.max_associations + 1
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
        """Listen for associations (returns at once; one thread per connection).

        Received datasets are streamed to a temporary file as their PDUs
        arrive (see :func:`~cem_node.dicom.net.pynetdicom_internals.stream_datasets_to`),
        in the store's receiving folder when ``receiving_dir`` is given, so the
        handler moves a finished file into the store instead of writing
        megabytes after the last PDU.
        """
        internals.stream_datasets_to(self._receiving_dir, prefix=TEMPORARY_FILE_PREFIX)
        node = self._settings.node
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_C_STORE, self._on_c_store),
            (evt.EVT_C_ECHO, self._on_c_echo),
        ]
        server_class = (
            internals.SharedPortNodeServer if self._share_port else internals.NodeAssociationServer
        )
        server = self.ae.make_server(
            (node.host, node.port),
            evt_handlers=handlers,
            server_class=server_class,
            request_handler=internals.NodeRequestHandler,
        )
        server = cast(internals.NodeAssociationServer, server)
        server.admission = self.admission
        server.tls_context = self._ssl_context  # handshakes happen off the accept loop
        self._server = server
        self.auditor.start()
        self.admission.allow_list.start()
        self._server_thread = threading.Thread(
            target=server.serve_forever, name="cem-node-scp", daemon=True
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
        self.admission.allow_list.stop()
        self.auditor.stop()

    def listener_problem(self, *, within_s: float = 10.0) -> str | None:
        """Why the listener cannot take new connections now, or None.

        The accept loop has died, accept() failed in the last ``within_s``
        seconds (out of file descriptors ...), or connections were refused at
        accept because the limit on connections not yet associated was reached
        (a flood holds the door).
        """
        thread = self._server_thread
        if self._server is None or thread is None or not thread.is_alive():
            return "the DICOM listener is not running"
        since = time.monotonic() - within_s
        failures = [e for at, e in list(self.admission.accept_failures) if at >= since]
        if failures:
            return f"accepting connections failed {len(failures)} time(s): {failures[-1]}"
        limits = self.admission.limits
        if self.admission.pending >= limits.max_pending:
            return (
                f"{self.admission.pending} connections have not sent an A-ASSOCIATE-RQ: "
                f"the limit of {limits.max_pending} is reached, new ones are refused"
            )
        return None

    # ------------------------------------------------------------------ handlers

    @staticmethod
    def _caller(event: Event) -> _Caller:
        requestor = event.assoc.requestor
        primitive = requestor.primitive
        calling = str(getattr(primitive, "calling_ae_title", "") or requestor.ae_title).strip()
        called = str(getattr(primitive, "called_ae_title", "") or "").strip()
        return _Caller(calling, called, str(requestor.address))

    def _active_associations(self) -> int:
        server = self._server
        if server is None:
            return 0
        established = sum(1 for a in server.active_associations if a.is_established)
        return established + len(self._decisions)  # and those being negotiated

    def _on_requested(self, event: Event) -> None:
        caller = self._caller(event)
        try:
            sources = self._sources()
        except Exception:  # the database is down: nobody can be checked, nobody gets in
            _LOG.exception("cannot read the source peers; association from %s refused", caller)
            unavailable = AccessDecision(
                False,
                "the source peers cannot be read (database unavailable)",
                rejection=Rejection(2, 1, 1),  # transient: the sender will retry
            )
            self._audit_association(caller, unavailable)
            event.assoc.acse.send_reject(2, 1, 1)
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
        if decision.accepted:
            with self._decisions_lock:
                active = self._active_associations()
                if active >= node.max_associations:
                    decision = AccessDecision(
                        False,
                        f"{active} associations in progress, the maximum is "
                        f"{node.max_associations} (local limit exceeded)",
                        peer=decision.peer,
                        rejection=TOO_MANY_ASSOCIATIONS,
                    )
                else:
                    # counted from here on, so that racing requests see it
                    self._decisions[event.assoc] = (caller, decision)
                    return
        self._audit_association(caller, decision)
        if decision.rejection is not None:
            r = decision.rejection
            event.assoc.acse.send_reject(r.result, r.source, r.diagnostic)
            event.assoc.kill()  # as pynetdicom does after its own rejections

    def _on_accepted(self, event: Event) -> None:
        with self._decisions_lock:
            remembered = self._decisions.pop(event.assoc, None)
        if remembered is not None:
            self._audit_association(*remembered)

    def _on_rejected(self, event: Event) -> None:
        """pynetdicom itself rejected an association that the node's checks let through."""
        with self._decisions_lock:
            remembered = self._decisions.pop(event.assoc, None)
        if remembered is not None:
            caller, decision = remembered
            self._audit_association(
                caller,
                AccessDecision(
                    False,
                    f"rejected during negotiation by the DICOM stack ({decision.reason})",
                    peer=decision.peer,
                ),
            )

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
                    details={
                        "peer": decision.peer,
                        # what the requestor was told (PS3.8 Table 9-21)
                        "answer": "A-ASSOCIATE-AC"
                        if decision.accepted
                        else (
                            "A-ASSOCIATE-RJ (result {}, source {}, reason {})".format(
                                *astuple(decision.rejection)
                            )
                            if decision.rejection is not None
                            else "A-ASSOCIATE-RJ"
                        ),
                    },
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
