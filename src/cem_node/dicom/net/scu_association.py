"""The association of the outgoing DICOM services (:mod:`.scu`) with a remote
AE: requesting it, and when it is not established, saying why and whether
trying again may help (the classification of the module docstring of
:mod:`.scu`).
"""

from __future__ import annotations

import enum
import socket
import ssl
import time
from dataclasses import dataclass

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

# PS3.8 9.3.4 A-ASSOCIATE-RJ: (source, reason/diag.)
_REJECT_REASONS = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised",
    (1, 7): "called AE title not recognised",
    (2, 1): "no reason given (ACSE)",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}


@dataclass(frozen=True, slots=True)
class RemoteAE:
    """A remote application entity to send to.

    Parameters
    ----------
    ae_title
        The remote's AE title (the *Called AE Title*), 1 to 16 characters.
    host
        Host name or IP address.
    port
        TCP port of the remote's DICOM service.
    tls
        Whether the remote expects a TLS connection.
    """

    ae_title: str
    host: str
    port: int
    tls: bool = False

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}" + (" (TLS)" if self.tls else "")


class FailureKind(enum.StrEnum):
    """Whether a failed send is worth retrying unchanged."""

    TRANSIENT = "transient"
    """The same request may succeed later: retry with backoff."""
    PERMANENT = "permanent"
    """The request fails until a configuration changes: do not retry."""


def tls_context(remote: RemoteAE, ssl_context: ssl.SSLContext | None) -> ssl.SSLContext | None:
    """The client TLS context for ``remote``: None without TLS, else the given
    one or the system's default."""
    if not remote.tls:
        return None
    return ssl_context if ssl_context is not None else ssl.create_default_context()


def new_ae(
    calling_ae_title: str, acse_timeout_s: float, dimse_timeout_s: float, network_timeout_s: float
) -> AE:
    """A pynetdicom AE with this node's AE title and timeouts."""
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = acse_timeout_s
    ae.dimse_timeout = dimse_timeout_s
    ae.network_timeout = network_timeout_s
    ae.connection_timeout = acse_timeout_s
    return ae


def associate(
    ae: AE,
    remote: RemoteAE,
    contexts: list[PresentationContext],
    tls: ssl.SSLContext | None,
    max_pdu_size: int,
) -> tuple[Association | None, bool, str | None]:
    """Request an association; return it, whether TCP connected, and an error."""
    connected: list[bool] = []

    def on_open(_event: evt.Event) -> None:
        connected.append(True)

    try:
        assoc = ae.associate(
            remote.host,
            remote.port,
            contexts=contexts,
            ae_title=remote.ae_title,
            max_pdu=max_pdu_size,
            tls_args=(tls, remote.host) if tls is not None else None,
            evt_handlers=[(evt.EVT_CONN_OPEN, on_open)],
        )
    except OSError as exc:  # name resolution happens before connecting (pynetdicom 3)
        return None, False, str(exc) or type(exc).__name__
    return assoc, bool(connected), None


def _timeout_message(where: str, timeout_s: float) -> str:
    return (
        f"no answer from {where} within {timeout_s:g} s (connection timed out); will "
        "retry; check the destination's host and port and any firewall in between"
    )


def _unresolved_message(host: str, error: object) -> str:
    return (
        f"cannot resolve the host name {host!r} ({error}); will retry; check the "
        "destination's host and this node's DNS"
    )


def _diagnose_connection(
    remote: RemoteAE, tls: ssl.SSLContext | None, timeout_s: float, elapsed_s: float
) -> tuple[FailureKind, str]:
    """Say why the TCP (and TLS) connection failed.

    pynetdicom only logs the socket error, so a failed connection is tried
    once more here to learn the reason (instantly for the usual "connection
    refused"; a timeout is recognised from the time taken instead).
    """
    where = f"{remote.host}:{remote.port}"
    if elapsed_s >= 0.9 * timeout_s:
        return FailureKind.TRANSIENT, _timeout_message(where, timeout_s)
    try:
        sock = socket.create_connection((remote.host, remote.port), timeout=timeout_s)
    except ConnectionRefusedError:
        return (
            FailureKind.TRANSIENT,
            f"nothing is listening on {where} (connection refused); will retry; check that "
            "the PACS is running and that the destination's host and port are right",
        )
    except TimeoutError:
        return FailureKind.TRANSIENT, _timeout_message(where, timeout_s)
    except socket.gaierror as exc:
        return FailureKind.TRANSIENT, _unresolved_message(remote.host, exc)
    except OSError as exc:
        return (
            FailureKind.TRANSIENT,
            f"cannot connect to {where} ({exc.strerror or exc}); will retry; check the "
            "network between this node and the PACS",
        )
    with sock:
        if tls is not None:
            try:
                tls.wrap_socket(sock, server_hostname=remote.host).close()
            except ssl.SSLCertVerificationError as exc:
                return (
                    FailureKind.PERMANENT,
                    f"the TLS certificate of {where} is not trusted ({exc.verify_message}); "
                    "add the PACS's CA certificate to this node's trusted certificates, "
                    "or check the destination's host name",
                )
            except OSError as exc:  # ssl.SSLError, or the peer hanging up
                return (
                    FailureKind.PERMANENT,
                    f"the TLS handshake with {where} failed "
                    f"({getattr(exc, 'reason', None) or exc.strerror or exc}); check that the "
                    "PACS expects TLS on this port and accepts this node's certificate",
                )
    return (
        FailureKind.TRANSIENT,
        f"connecting to {where} failed, but a second attempt succeeded; will retry",
    )


def _rejection(assoc: Association, remote: RemoteAE, calling: str) -> tuple[FailureKind, str]:
    rsp = assoc.acceptor.primitive
    result = getattr(rsp, "result", None)
    source = getattr(rsp, "result_source", None)
    diagnostic = getattr(rsp, "diagnostic", None)
    reason = _REJECT_REASONS.get((source, diagnostic), f"source {source}, reason {diagnostic}")
    if (source, diagnostic) == (1, 3):
        advice = (
            f"calling AE title {calling} not recognised; add it to the PACS's modality list "
            "(with this node's IP address if the PACS checks hosts)"
        )
    elif (source, diagnostic) == (1, 7):
        advice = (
            f"called AE title {remote.ae_title} not recognised; set the destination's AE "
            "title to the one the PACS answers to"
        )
    elif (source, diagnostic) in {(1, 2), (2, 2)}:
        advice = f"{reason}; check that {remote.host}:{remote.port} is a DICOM port"
    elif result == 2:
        advice = f"{reason}; will retry"
    else:
        advice = (
            f"{reason}; check the PACS's log, and that it knows AE title {calling} "
            "from this node's address"
        )
    if result == 2:
        return FailureKind.TRANSIENT, f"PACS {remote} rejected the association for now: {advice}"
    return FailureKind.PERMANENT, f"PACS {remote} rejected the association: {advice}"


def association_failure(
    assoc: Association | None,
    remote: RemoteAE,
    calling: str,
    *,
    connected: bool,
    error: str | None,
    tls: ssl.SSLContext | None,
    timeout_s: float,
    elapsed_s: float,
) -> tuple[FailureKind, str]:
    """Classify an association that was not established."""
    if assoc is None:
        return FailureKind.TRANSIENT, _unresolved_message(remote.host, error)
    if assoc.is_rejected:
        return _rejection(assoc, remote, calling)
    if not connected:
        return _diagnose_connection(remote, tls, timeout_s, elapsed_s)
    rsp = assoc.acceptor.primitive
    if rsp is not None and getattr(rsp, "result", None) == 0 and not assoc.accepted_contexts:
        return (
            FailureKind.PERMANENT,
            f"PACS {remote} accepted none of the proposed presentation contexts; "
            "enable the SOP classes and transfer syntaxes of these files on the PACS",
        )
    if elapsed_s >= 0.9 * timeout_s:
        return (
            FailureKind.TRANSIENT,
            f"PACS {remote} accepted the connection but did not answer the association "
            f"request within {timeout_s:g} s; will retry; check that the port is a DICOM port",
        )
    return (
        FailureKind.TRANSIENT,
        f"PACS {remote} closed the connection during association negotiation; will retry; "
        "if this persists, check that the port is a DICOM port, whether the PACS expects "
        "TLS, and the PACS's log",
    )


def open_association(
    remote: RemoteAE,
    contexts: list[PresentationContext],
    calling_ae_title: str,
    ssl_context: ssl.SSLContext | None,
    *,
    acse_timeout_s: float,
    dimse_timeout_s: float,
    network_timeout_s: float,
    max_pdu_size: int,
) -> Association | tuple[FailureKind, str]:
    """Request an association with ``remote`` for C-STORE.

    Returns the established association, or why it was not established
    (:func:`association_failure`).
    """
    tls = tls_context(remote, ssl_context)
    ae = new_ae(calling_ae_title, acse_timeout_s, dimse_timeout_s, network_timeout_s)
    started = time.monotonic()
    assoc, connected, error = associate(ae, remote, contexts, tls, max_pdu_size)
    if assoc is not None and assoc.is_established:
        return assoc
    return association_failure(
        assoc,
        remote,
        calling_ae_title,
        connected=connected,
        error=error,
        tls=tls,
        timeout_s=acse_timeout_s,
        elapsed_s=time.monotonic() - started,
    )
