"""Before any AE title is known: who may connect, for how long, with how many bytes.

Every byte a peer sends before its A-ASSOCIATE-RQ has been read and checked
is untrusted. This module is the node's front door, in the order a
connection meets it:

1. at TCP accept (the server's accept loop, in memory only: no database,
   no DNS): an address that no source peer allows is closed at once (when
   the allow-list is on), and so is a connection beyond the limits on
   connections that have not yet sent an A-ASSOCIATE-RQ (per address and
   in total);
2. in the connection's own thread, within the ARTIM time from accept
   (PS3.8 9.1.5): the TLS handshake, then the A-ASSOCIATE-RQ PDU, whose
   announced length must be within a limit and whose bytes are read as
   they arrive (a buffer never sized from the announced length).

Every refusal is audited with the peer's address and the reason, through
:class:`ConnectionAuditor`, which writes off the accept path and coalesces a
flood of identical refusals into one row with a count.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cem_node.dicom.net.access import Network, host_networks, normalise_address, resolve_host
from cem_node.peers import PeerEntry
from cem_node.store.audit import record_event

__all__ = [
    "A_ASSOCIATE_RQ",
    "AddressAllowList",
    "Admission",
    "AdmissionLimits",
    "ConnectionAuditor",
    "RefusedConnectionError",
    "abort_pdu",
    "read_association_request",
    "tls_handshake",
]

_LOG = logging.getLogger(__name__)

A_ASSOCIATE_RQ = 0x01
_PDU_HEADER = struct.Struct(">BBL")
#: Bytes read per call while a PDU arrives: the buffer grows with what came.
_READ_CHUNK = 64 * 1024


class RefusedConnectionError(Exception):
    """A connection refused before its association: the reason the audit records.

    Parameters
    ----------
    reason
        One sentence for the audit trail and the log.
    stage
        ``accept``, ``tls`` or ``association-request``.
    abort
        Send an A-ABORT before closing (the peer spoke DICOM and broke it).
    abort_reason
        The A-ABORT reason/diagnostic (PS3.8 9.3.8): 1 unrecognised PDU,
        2 unexpected PDU, 6 invalid PDU parameter value.
    """

    def __init__(self, reason: str, *, stage: str, abort: bool = False, abort_reason: int = 0):
        super().__init__(reason)
        self.reason = reason
        self.stage = stage
        self.abort = abort
        self.abort_reason = abort_reason


def abort_pdu(reason: int) -> bytes:
    """An A-ABORT PDU from the service provider (source 2) with ``reason``."""
    return bytes([0x07, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x02, reason & 0xFF])


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """The front door's limits (the [node] settings of the same names)."""

    artim_timeout_s: float = 10.0
    max_pending: int = 32
    max_pending_per_address: int = 4
    max_association_pdu: int = 1 << 20


def networks_of(
    sources: Sequence[PeerEntry], resolve: Callable[[str], frozenset[str]] = resolve_host
) -> tuple[Network, ...]:
    """The networks the source peers' hosts cover (names resolved; pure but for ``resolve``)."""
    return tuple(
        dict.fromkeys(n for peer in sources for n in host_networks(peer.host, resolve=resolve))
    )


class AddressAllowList:
    """The addresses that some source peer allows, refreshed in the background.

    The accept loop asks :meth:`allows`, which only reads a snapshot: reading
    the peers (a database) and resolving their names (DNS) happen in this
    object's thread every ``refresh_s`` seconds. Before the first snapshot,
    or when the node accepts unknown sources, every address passes here (the
    association check still applies).
    """

    def __init__(
        self,
        sources: Callable[[], Sequence[PeerEntry]],
        *,
        enabled: bool,
        refresh_s: float = 2.0,
        resolve: Callable[[str], frozenset[str]] = resolve_host,
    ) -> None:
        self._sources = sources
        self._enabled = enabled
        self._refresh_s = refresh_s
        self._resolve = resolve
        self._networks: tuple[Network, ...] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        """Read the peers and resolve their hosts now (keeps the last snapshot on failure)."""
        try:
            self._networks = networks_of(self._sources(), self._resolve)
        except Exception as exc:  # the database is down: the last snapshot stays
            _LOG.warning("cannot refresh the address allow-list: %s", exc)

    def start(self) -> None:
        if not self._enabled:
            return
        self.refresh()

        def run() -> None:
            while not self._stop.wait(self._refresh_s):
                self.refresh()

        self._thread = threading.Thread(target=run, name="cem-node-allow-list", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def allows(self, address: str) -> bool:
        networks = self._networks
        if not self._enabled or networks is None:
            return True
        remote = normalise_address(address)
        return remote is not None and any(remote in n for n in networks)


@dataclass
class _Coalesced:
    stage: str
    answer: str
    count: int = 0
    first: datetime = field(default_factory=lambda: datetime.now(UTC))
    last: datetime = field(default_factory=lambda: datetime.now(UTC))


class ConnectionAuditor:
    """Audit and log connection refusals without slowing the door.

    Refusals are queued in memory and written every ``flush_s`` seconds by
    this object's thread: one ``connection`` audit row (decision
    ``refused``) per address and reason in each interval, with the count in
    its details, and one log line. At most ``max_keys`` distinct (address,
    reason) pairs are held between two flushes; more are counted under one
    "other" row, so a flood from many addresses cannot grow memory.
    """

    def __init__(
        self,
        sessions: Any,
        *,
        actor: str,
        flush_s: float = 0.5,
        max_keys: int = 1024,
        on_refusal: Callable[[str], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._actor = actor
        self._flush_s = flush_s
        self._max_keys = max_keys
        self._on_refusal = on_refusal
        self._pending: dict[tuple[str, str], _Coalesced] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refused(
        self, address: str, reason: str, stage: str, answer: str = "connection closed"
    ) -> None:
        """Record one refusal (cheap: no I/O) and what the peer was answered."""
        now = datetime.now(UTC)
        with self._lock:
            key = (address, reason)
            if key not in self._pending and len(self._pending) >= self._max_keys:
                key = ("*", "other refusals (too many distinct addresses to list)")
            entry = self._pending.get(key)
            if entry is None:
                entry = self._pending[key] = _Coalesced(stage, answer)
            entry.count += 1
            entry.last = now
        if self._on_refusal is not None:
            self._on_refusal(stage)

    def start(self) -> None:
        def run() -> None:
            while not self._stop.wait(self._flush_s):
                self.flush()
            self.flush()

        self._thread = threading.Thread(target=run, name="cem-node-door-audit", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def flush(self) -> None:
        """Write what was refused since the last flush."""
        with self._lock:
            batch, self._pending = self._pending, {}
        if not batch:
            return
        for (address, reason), entry in batch.items():
            _LOG.warning(
                "connection from %s refused (%s)%s: %s",
                address,
                entry.stage,
                f" x{entry.count}" if entry.count > 1 else "",
                reason,
                extra={"remote_address": address},
            )
        try:
            with self._sessions.begin() as session:
                for (address, reason), entry in batch.items():
                    record_event(
                        session,
                        "connection",
                        decision="refused",
                        actor=self._actor,
                        remote_address=address,
                        message=reason,
                        details={
                            "stage": entry.stage,
                            "answer": entry.answer,
                            "count": entry.count,
                            "first": entry.first.isoformat(),
                            "last": entry.last.isoformat(),
                        },
                    )
        except Exception:  # the log lines above still say it
            _LOG.exception("cannot audit %d connection refusal(s)", len(batch))


class Admission:
    """The accept-time checks and the count of connections not yet associated.

    Thread-safe: :meth:`admit` runs in the accept loop, :meth:`release` in
    each connection's thread once its A-ASSOCIATE-RQ has been read (or it
    was refused).
    """

    def __init__(
        self,
        limits: AdmissionLimits,
        allow_list: AddressAllowList,
        auditor: ConnectionAuditor,
    ) -> None:
        self.limits = limits
        self.allow_list = allow_list
        self.auditor = auditor
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}
        self._total = 0
        self.accept_failures: deque[tuple[float, str]] = deque(maxlen=64)

    @property
    def pending(self) -> int:
        """Connections accepted whose A-ASSOCIATE-RQ has not been read yet."""
        return self._total

    def admit(self, address: str) -> bool:
        """Decide at accept; a refusal is audited here. Admitted connections must be
        :meth:`release`\\ d."""
        reason = None
        if not self.allow_list.allows(address):
            reason = "no source peer allows this address"
        else:
            with self._lock:
                mine = self._pending.get(address, 0)
                if mine >= self.limits.max_pending_per_address:
                    reason = (
                        f"{mine} connections from this address have not yet sent an "
                        f"A-ASSOCIATE-RQ (limit {self.limits.max_pending_per_address})"
                    )
                elif self._total >= self.limits.max_pending:
                    reason = (
                        f"{self._total} connections have not yet sent an A-ASSOCIATE-RQ "
                        f"(limit {self.limits.max_pending})"
                    )
                else:
                    self._pending[address] = mine + 1
                    self._total += 1
        if reason is not None:
            self.auditor.refused(address, reason, "accept", "connection closed at accept")
            return False
        return True

    def release(self, address: str) -> None:
        with self._lock:
            left = self._pending.get(address, 0) - 1
            if left > 0:
                self._pending[address] = left
            else:
                self._pending.pop(address, None)
            self._total = max(0, self._total - 1)

    def accept_failed(self, error: str) -> None:
        self.accept_failures.append((time.monotonic(), error))


def _remaining(deadline: float, what: str, stage: str, timeout_s: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise RefusedConnectionError(
            f"no {what} within {timeout_s:g} s of connecting (ARTIM)", stage=stage
        )
    return left


def tls_handshake(
    sock: socket.socket, context: ssl.SSLContext, *, deadline: float, timeout_s: float
) -> ssl.SSLSocket:
    """Complete the server side of a TLS handshake before ``deadline`` or refuse."""
    try:
        sock.settimeout(_remaining(deadline, "TLS handshake", "tls", timeout_s))
        tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        tls.do_handshake()
    except RefusedConnectionError:
        raise
    except TimeoutError:
        raise RefusedConnectionError(
            f"no TLS handshake within {timeout_s:g} s of connecting (ARTIM)", stage="tls"
        ) from None
    except ssl.SSLError as exc:
        detail = exc.reason or exc.strerror or str(exc)
        raise RefusedConnectionError(f"TLS handshake failed: {detail}", stage="tls") from None
    except OSError as exc:
        raise RefusedConnectionError(
            f"TLS handshake failed: {exc.strerror or exc}", stage="tls"
        ) from None
    return tls


def _recv_exactly(
    sock: socket.socket, count: int, buffer: bytearray, *, deadline: float, timeout_s: float
) -> None:
    """Append ``count`` bytes to ``buffer`` as they arrive, before ``deadline``."""
    goal = len(buffer) + count
    while len(buffer) < goal:
        left = _remaining(deadline, "A-ASSOCIATE-RQ", "association-request", timeout_s)
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending()
        if not pending:
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                continue  # the deadline check above refuses
        sock.settimeout(max(left, 0.001))
        try:
            chunk = sock.recv(min(goal - len(buffer), _READ_CHUNK))
        except TimeoutError:
            continue
        except (OSError, ssl.SSLError) as exc:
            raise RefusedConnectionError(
                f"connection failed before a complete A-ASSOCIATE-RQ: {exc}",
                stage="association-request",
            ) from None
        if not chunk:
            what = "any byte" if not buffer else f"a complete A-ASSOCIATE-RQ ({len(buffer)} bytes)"
            raise RefusedConnectionError(
                f"connection closed before {what}", stage="association-request"
            )
        buffer += chunk


def read_association_request(
    sock: socket.socket, *, deadline: float, timeout_s: float, max_bytes: int
) -> bytes:
    """Read the first PDU of a connection, which must be an A-ASSOCIATE-RQ.

    Returns
    -------
    bytes
        The whole PDU (header included), for pynetdicom to decode.

    Raises
    ------
    RefusedConnectionError
        Not an A-ASSOCIATE-RQ, announced larger than ``max_bytes``, not
        complete before ``deadline``, or the connection failed.
    """
    buffer = bytearray()
    _recv_exactly(sock, 6, buffer, deadline=deadline, timeout_s=timeout_s)
    pdu_type, _, length = _PDU_HEADER.unpack_from(buffer)
    if pdu_type != A_ASSOCIATE_RQ:
        known = pdu_type in (0x02, 0x03, 0x04, 0x05, 0x06, 0x07)
        raise RefusedConnectionError(
            f"PDU type 0x{pdu_type:02X} where an A-ASSOCIATE-RQ was expected",
            stage="association-request",
            abort=True,
            abort_reason=2 if known else 1,
        )
    if length > max_bytes:
        raise RefusedConnectionError(
            f"A-ASSOCIATE-RQ PDU of {length} bytes announced, larger than the limit of "
            f"{max_bytes} bytes",
            stage="association-request",
            abort=True,
            abort_reason=6,
        )
    _recv_exactly(sock, length, buffer, deadline=deadline, timeout_s=timeout_s)
    return bytes(buffer)
