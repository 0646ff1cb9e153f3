"""The node's Storage SCP: C-ECHO and C-STORE, with access control.

One thread per association (pynetdicom). Handlers do as little as possible:
the access decision at association time, and per C-STORE the durable write
and index of :class:`~cem_node.store.ingest.InstanceIngestor`. Everything
else (assembly, analysis, export) happens later, from the database.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
from pynetdicom.events import Event
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from cem_node.config import Settings
from cem_node.dicom.access import AccessDecision, AssociationRequest, decide_association
from cem_node.dicom.cem_selection import MAMMOGRAPHY_SOP_CLASSES
from cem_node.peers import PeerEntry
from cem_node.store.audit import record_event
from cem_node.store.ingest import InstanceIngestor, ReceivedFrom

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
    """

    def __init__(
        self,
        settings: Settings,
        ingestor: InstanceIngestor,
        *,
        sources: SourcesProvider,
        audit_sessions: Callable[[], object],
        ssl_context: object | None = None,
    ) -> None:
        self._settings = settings
        self._ingestor = ingestor
        self._sources = sources
        self._sessions = audit_sessions
        self._ssl_context = ssl_context
        self._server: ThreadedAssociationServer | None = None
        self._lock = threading.Lock()
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
        """Listen for associations (returns at once; one thread per association)."""
        node = self._settings.node
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_STORE, self._on_c_store),
            (evt.EVT_C_ECHO, self._on_c_echo),
        ]
        self._server = self.ae.start_server(
            (node.host, node.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=self._ssl_context,  # type: ignore[arg-type]
        )
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
            self._server.shutdown()
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
                    actor=self._settings.node.ae_title,
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
        data = event.encoded_dataset(include_meta=True)
        result = self._ingestor.ingest(
            data,
            sender=ReceivedFrom(caller.calling, caller.called, caller.address),
            sop_class_uid=str(request.AffectedSOPClassUID),
            sop_instance_uid=str(request.AffectedSOPInstanceUID),
        )
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
