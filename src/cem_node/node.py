"""The running node: the DICOM service, the scheduler, the worker and the exporter.

Embedded default: one process, an SQLite database and the file store under
``storage.root``. Every stage reads its work from the database, so a node
killed at any moment resumes at start-up (see :mod:`cem_node.jobs.recovery`).

A node runs the roles of ``node.roles`` (all by default): ``receiver`` (the
DICOM service, its extra receiver processes and the hasher), ``worker`` (the
analysis), ``exporter`` (sending the results), ``scheduler`` (assembly, lease
recovery, retention). Nodes with different roles share one PostgreSQL
database and one store; there, whoever queues work sends ``NOTIFY`` and idle
workers and exporters ``LISTEN`` (:mod:`cem_node.store.notify`).
"""

from __future__ import annotations

import ctypes
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from pydicom.dataset import Dataset
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from cem_node import __version__
from cem_node.config import Settings, settings_to_dict
from cem_node.contracts.analysis import Analyser, UnavailableAnalyser
from cem_node.dicom.net import tls as dicom_tls
from cem_node.dicom.net.scp import StorageSCP
from cem_node.jobs.assembler import RecombinedAwaited, complete_due_studies
from cem_node.jobs.exporter import Exporter
from cem_node.jobs.recovery import recover
from cem_node.jobs.retention import purge_expired_studies
from cem_node.jobs.rounds import open_round
from cem_node.jobs.worker import Worker
from cem_node.monitoring import HealthEndpoint, NodeMetrics, export_problem
from cem_node.peers import PeerEntry, list_peers
from cem_node.store import (
    InstanceFileStore,
    check_schema_current,
    make_engine,
    session_factory,
    upgrade,
)
from cem_node.store.audit import ALERT
from cem_node.store.hasher import InstanceHasher
from cem_node.store.identity import NodeIdentity, hold_identity
from cem_node.store.ingest import DiskGuard, InstanceIngestor
from cem_node.store.notify import EXPORTS_CHANNEL, JOBS_CHANNEL, WakeListener, install_notify

__all__ = ["Node"]

_LOG = logging.getLogger(__name__)

#: How often the worker and the exporter look for work when nobody woke them
#: (the default of ``node.poll_interval_s``).
POLL_INTERVAL_S = 1.0
#: How long the peer list read from the database is reused.
PEERS_TTL_S = 2.0
#: Retention interval (lease recovery: node.recovery_interval_s).
RETENTION_INTERVAL_S = 3600.0
#: A streamed dataset untouched this long belongs to an aborted association.
ABANDONED_RECEPTION_S = 3600.0

NO_ANALYSIS = (
    "this node has no analysis installed (the lesion analysis and its model bundle come "
    "with cem-node's analysis release); the study was received and paired"
)


class _PeerCache:
    """Peers from the config and the database, re-read at most every few seconds."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self._settings = settings
        self._sessions = sessions
        self._lock = threading.Lock()
        self._peers: list[PeerEntry] = []
        self._read_at = float("-inf")

    def all(self) -> list[PeerEntry]:
        with self._lock:
            if time.monotonic() - self._read_at > PEERS_TTL_S:
                with self._sessions.begin() as session:
                    self._peers = list_peers(self._settings, session)
                self._read_at = time.monotonic()
            return list(self._peers)

    def sources(self) -> list[PeerEntry]:
        return [p for p in self.all() if p.role == "source"]

    def destinations(self) -> list[PeerEntry]:
        return [p for p in self.all() if p.role == "destination"]


class _Loop:
    """A thread that runs ``step`` while it finds work, then sleeps until woken or polled."""

    def __init__(
        self,
        name: str,
        step: Callable[[], bool],
        stopped: threading.Event,
        poll_s: float = POLL_INTERVAL_S,
    ) -> None:
        self._step = step
        self._poll_s = poll_s
        self._stopped = stopped
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cem-node-{name}", daemon=True)
        self._name = name

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def join(self) -> None:
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.clear()
            try:
                while not self._stopped.is_set() and self._step():
                    pass
            except Exception:  # keep the loop alive: the next poll tries again
                _LOG.exception("%s step failed", self._name)
            self._wake.wait(self._poll_s)


def _die_with_parent() -> None:
    """In a child process: get SIGTERM when the parent dies (Linux), even by kill -9."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the parent's stop() still terminates it
        pass


def _not_analysable_report(
    settings: Settings,
) -> Callable[[Sequence[Dataset], str, int], Dataset]:
    """The "not analysed" SR of a study round: UIDs derived from the study and the round,
    the round's SR series number, so that a later round's report can name it."""

    def build(headers: Sequence[Dataset], reason: str, analysis_round: int) -> Dataset:
        from cem_node.dicom.objects.common import ReportingDevice
        from cem_node.dicom.objects.results import encode_not_analysable

        device = ReportingDevice(
            software_version=__version__, device_serial_number=settings.node.ae_title
        )
        (report,) = encode_not_analysable(
            headers, reason, analysis_round=analysis_round, device=device
        )
        return report.dataset

    return build


class Node:
    """A cem-node process: receive, assemble, analyse, export.

    Parameters
    ----------
    settings
        The effective settings.
    analyser
        The analysis; default: none installed (jobs fail saying so).
    node_id
        Identity in claims, the audit trail and the store; held while the node
        runs (a second node with it is refused). Default: a unique identity
        persisted in the store, see :mod:`cem_node.store.identity`.
    receiver_only
        Only receive (an extra receiver process, see :mod:`cem_node.receiver`);
        the main process recovers, schedules, analyses and exports.

    Attributes
    ----------
    roles
        What this node runs: ``settings.node.roles``; ``("receiver",)`` for an
        extra receiver process.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        analyser: Analyser | None = None,
        node_id: str | None = None,
        receiver_only: bool = False,
    ) -> None:
        self.settings = settings
        self.receiver_only = receiver_only
        self.roles: tuple[str, ...] = ("receiver",) if receiver_only else tuple(settings.node.roles)
        self._listener: WakeListener | None = None
        self._receivers: list[subprocess.Popen[bytes]] = []
        self._asked_id = node_id
        self._identity: NodeIdentity | None = None
        self.node_id = node_id or ""  # chosen and held at start
        self.analyser: Analyser = analyser or UnavailableAnalyser(NO_ANALYSIS)
        self.engine: Engine | None = None
        self.sessions: sessionmaker[Session] | None = None
        self.files: InstanceFileStore | None = None
        self.scp: StorageSCP | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._loops: dict[str, _Loop] = {}
        self._hasher: InstanceHasher | None = None
        self._stopped = threading.Event()
        self.metrics: NodeMetrics | None = None
        self.http: HealthEndpoint | None = None
        self._disk: DiskGuard | None = None

    # ------------------------------------------------------------------ lifecycle

    def open_store(self) -> None:
        """Open (and on SQLite, create or upgrade) the database and the file store."""
        settings = self.settings
        self.engine = make_engine(
            settings.database_url(),
            echo=settings.database.echo,
            pool_size=settings.database.pool_size,
        )
        if self.engine.dialect.name == "sqlite":
            upgrade(self.engine)  # the embedded default just works
        else:
            check_schema_current(self.engine)  # a shared database is upgraded by an admin
        self.sessions = session_factory(self.engine)
        self.files = InstanceFileStore(
            settings.storage.root,
            instances_dir=settings.storage.incoming_subdir,
            results_dir=settings.storage.results_subdir,
        )

    def start(self) -> None:
        """Open the store, recover, then start what the node's roles run."""
        settings = self.settings
        receiving = "receiver" in self.roles
        share_port = receiving and settings.node.receiver_processes > 1
        if share_port and settings.node.port == 0:
            raise ValueError("node.receiver_processes > 1 needs a fixed node.port, not 0")
        self.open_store()
        assert self.engine is not None and self.sessions is not None and self.files is not None
        peers = _PeerCache(settings, self.sessions)
        if self.receiver_only:  # "<identity>/r<n>": its parent holds the identity
            self.files = self.files.owned_by(self.node_id.rpartition("/")[0] or self.node_id)
            self._start_receiving(peers, share_port=True)
            return
        asked = self._asked_id or settings.node.id
        self._identity = hold_identity(self.engine, self.files.root, asked)
        self.node_id = self._identity.node_id
        self.files = self.files.owned_by(self.node_id)  # cleans its own temporary files only
        # whoever queues a job or an export wakes the other nodes' loops (PostgreSQL)
        install_notify(self.sessions, self.engine)
        report = recover(
            self.sessions,
            node_id=self.node_id,
            files=self.files,
            at_start=True,
            max_export_attempts=settings.export.max_attempts,
        )
        _LOG.info(
            "start-up recovery: %d job(s), %d export(s) re-queued, %d temporary file(s) removed",
            report.jobs_requeued,
            report.exports_requeued,
            report.temporary_files_removed,
        )
        self.metrics = NodeMetrics(self.sessions)
        self.metrics.watch_health(self.health_checks)
        self.analyser = self.metrics.timed(self.analyser)
        if receiving:
            self._start_receiving(peers, share_port=share_port)
            assert self._hasher is not None
            self._hasher.submit_missing()
            # its own receiving folder: whatever other roles this node has
            self._loops["sweeper"] = _Loop(
                "sweeper", self._sweep_receptions, self._stopped, RETENTION_INTERVAL_S
            )
        self._start_http()  # every role: /healthz tells an orchestrator the node is alive
        if "worker" in self.roles:
            self._loops["worker"] = self._worker_loop(peers)
        if "exporter" in self.roles:
            self._loops["exporter"] = self._exporter_loop(peers)
        if "scheduler" in self.roles:
            self._start_scheduler()
        self._listen()
        for loop in self._loops.values():
            loop.start()  # queued work from before a restart goes at once
        self.wake("assembler")
        self.wake("retention")

    def _worker_loop(self, peers: _PeerCache) -> _Loop:
        """The analysis loop: claims queued jobs, wakes the exporter when it made exports."""
        settings = self.settings
        assert self.sessions is not None and self.files is not None
        worker = Worker(
            settings,
            self.sessions,
            self.files,
            self.analyser,
            destinations=peers.destinations,
            node_id=self.node_id,
            not_analysable_report=_not_analysable_report(settings),
            lease_s=settings.node.analysis_lease_s,
        )

        def work() -> bool:
            did = worker.run_once()
            if did:
                self.wake("exporter")
            return did

        return _Loop("worker", work, self._stopped, settings.node.poll_interval_s)

    def _exporter_loop(self, peers: _PeerCache) -> _Loop:
        """The export loop: sends pending result objects to their destinations."""
        settings = self.settings
        assert self.sessions is not None and self.files is not None
        exporter = Exporter(
            settings,
            self.sessions,
            self.files,
            destinations=peers.destinations,
            node_id=self.node_id,
            ssl_context=lambda: dicom_tls.client_context(settings.tls),
            lease_s=settings.node.export_lease_s,
        )
        poll_s = settings.node.poll_interval_s
        return _Loop("exporter", lambda: exporter.run_once() > 0, self._stopped, poll_s)

    def _start_scheduler(self) -> None:
        """Assembly, lease recovery and retention at their intervals (APScheduler)."""
        settings = self.settings
        assert self.sessions is not None and self.files is not None
        scheduler = BackgroundScheduler(timezone="UTC")
        sessions, files = self.sessions, self.files
        # a study missing only its recombined images waits for them until max_wait_s
        awaiting = RecombinedAwaited(sessions, files, settings.selection)

        def assemble() -> None:
            done = complete_due_studies(
                sessions,
                quiet_period_s=settings.assembly.quiet_period_s,
                max_wait_s=settings.assembly.max_wait_s,
                actor=self.node_id,
                awaiting=awaiting,
            )
            for study in done:
                _LOG.info(
                    "study complete (%s), round %d queued",
                    study.reason,
                    study.analysis_round,
                    extra={"study_instance_uid": study.study_instance_uid},
                )
            if done:
                self.wake("worker")

        def recover_leases() -> None:
            recover(
                sessions, node_id=self.node_id, max_export_attempts=settings.export.max_attempts
            )

        def retention() -> None:
            purge_expired_studies(
                sessions,
                files,
                retention_days=settings.storage.retention_days,
                actor=self.node_id,
            )

        common: dict[str, Any] = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        scheduler.add_job(
            assemble,
            "interval",
            seconds=settings.assembly.check_interval_s,
            id="assembler",
            **common,
        )
        scheduler.add_job(
            recover_leases,
            "interval",
            seconds=settings.node.recovery_interval_s,
            id="recovery",
            **common,
        )
        scheduler.add_job(
            retention, "interval", seconds=RETENTION_INTERVAL_S, id="retention", **common
        )
        self._scheduler = scheduler
        scheduler.start()

    def _listen(self) -> None:
        """On PostgreSQL, wake the worker and the exporter when any node queues their work."""
        assert self.engine is not None
        wake = {
            channel: (lambda name=name: self.wake(name))
            for channel, name in ((JOBS_CHANNEL, "worker"), (EXPORTS_CHANNEL, "exporter"))
            if name in self._loops
        }
        if wake and self.engine.dialect.name == "postgresql":
            self._listener = WakeListener(self.engine, wake)
            self._listener.start()

    def _sweep_receptions(self) -> bool:
        """Remove this node's datasets of aborted associations; never more to do at once."""
        assert self.files is not None
        if removed := self.files.remove_abandoned_receptions(ABANDONED_RECEPTION_S):
            _LOG.info("%d dataset(s) of aborted associations removed", removed)
        return False

    def _stored(self, instance_id: int, relative_path: str) -> None:
        """An instance was acknowledged: hash it later, count it."""
        assert self._hasher is not None
        self._hasher.submit(instance_id, relative_path)
        if self.metrics is not None:
            self.metrics.instances_received.inc()

    def _connection_refused(self, stage: str) -> None:
        if self.metrics is not None:
            self.metrics.connections_refused.labels(stage).inc()

    def _start_http(self) -> None:
        """Serve /healthz and /metrics; a port in use is logged, not fatal (DICOM comes first)."""
        http = self.settings.http
        if not http.enabled or self.metrics is None or self.sessions is None:
            return
        try:
            self.http = HealthEndpoint(
                http.host, http.port, self.metrics, self.sessions, self._health_status
            )
        except OSError as exc:
            _LOG.error(
                "%s: cannot serve /healthz and /metrics on %s:%d: %s",
                ALERT,
                http.host,
                http.port,
                exc,
            )
            return
        self.http.start()
        _LOG.info("health and metrics on http://%s:%d/healthz", http.host, self.http.port)

    def _health_status(self) -> dict[str, Any]:
        analysis = getattr(self.analyser, "status_line", None)
        checks = self.health_checks()
        return {
            "node_id": self.node_id,
            "roles": list(self.roles),
            "ae_title": self.settings.node.ae_title,
            "dicom_port": self.port if self.scp is not None else None,
            "dicom_listening": self.scp is not None and not self._stopped.is_set(),
            "analysis": analysis() if callable(analysis) else None,
            "checks": {name: problem or "ok" for name, problem in checks.items()},
            "problems": [problem for problem in checks.values() if problem],
        }

    def health_checks(self) -> dict[str, str | None]:
        """What keeps the node from doing its work now, per check (None: fine).

        ``storage``: images are refused at the disk watermark; ``listener``:
        the DICOM listener cannot take new connections; ``exports``: result
        objects keep failing to reach their destinations.
        """
        checks: dict[str, str | None] = {"storage": None, "listener": None, "exports": None}
        if self._disk is not None:
            refusal = self._disk.refusal(0)
            checks["storage"] = f"refusing storage: {refusal}" if refusal else None
        if self.scp is not None:
            checks["listener"] = self.scp.listener_problem()
        if self.sessions is not None:
            try:
                with self.sessions() as session:
                    checks["exports"] = export_problem(session, datetime.now(UTC))
            except Exception as exc:  # the database check reports it
                _LOG.debug("export health check failed: %s", exc)
        return checks

    def _start_receiving(self, peers: _PeerCache, *, share_port: bool) -> None:
        """Start the hasher and the DICOM service (and the extra receiver processes)."""
        settings = self.settings
        assert self.sessions is not None and self.files is not None
        self._hasher = InstanceHasher(self.sessions, self.files, activity=self.files.receiving_dir)
        self._hasher.start()
        self._disk = DiskGuard(
            str(self.files.root),
            high_watermark_percent=settings.storage.disk_high_watermark_percent,
            min_free_mb=settings.storage.min_free_mb,
        )
        ingestor = InstanceIngestor(
            self.sessions,
            self.files,
            self._disk,
            open_round=open_round,
            unknown_sop_classes=settings.node.accept_unknown_sop_classes,
            actor=self.node_id,
            on_stored=self._stored,
        )
        server_tls = dicom_tls.server_context(settings.tls) if settings.tls.enabled else None
        self.scp = StorageSCP(
            settings,
            ingestor,
            sources=peers.sources,
            audit_sessions=self.sessions,
            ssl_context=server_tls,
            share_port=share_port,
            actor=self.node_id,
            receiving_dir=self.files.receiving_dir,
            on_refusal=self._connection_refused,
        )
        self.scp.start()
        if not self.receiver_only:
            self._spawn_receivers(settings.node.receiver_processes - 1)

    def _spawn_receivers(self, count: int) -> None:
        """Start ``count`` extra receiver processes on the same port (SO_REUSEPORT)."""
        if count <= 0:
            return
        payload = json.dumps(settings_to_dict(self.settings, mask_secrets=False)).encode()
        for index in range(1, count + 1):
            proc = subprocess.Popen(
                [sys.executable, "-m", "cem_node.receiver", f"{self.node_id}/r{index}"[:128]],
                stdin=subprocess.PIPE,
                preexec_fn=_die_with_parent,
            )
            assert proc.stdin is not None
            proc.stdin.write(payload)
            proc.stdin.close()
            self._receivers.append(proc)
        _LOG.info("%d extra receiver process(es) started", count)

    def wake(self, job_id: str) -> None:
        """Run a task now instead of at its next interval."""
        if job_id in self._loops:
            self._loops[job_id].wake()
            return
        if self._scheduler is None or self._stopped.is_set():
            return
        try:
            self._scheduler.modify_job(job_id, next_run_time=datetime.now(UTC))
        except Exception:  # the scheduler is shutting down
            _LOG.debug("cannot wake %s", job_id, exc_info=True)

    @property
    def port(self) -> int:
        """The DICOM port actually listened on (a node with the receiver role)."""
        assert self.scp is not None, "this node has no receiver role: no DICOM port"
        return self.scp.port

    def stop(self) -> None:
        """Stop accepting associations, let running tasks finish, close the database."""
        self._stopped.set()
        for proc in self._receivers:
            proc.terminate()
        for proc in self._receivers:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._receivers.clear()
        if self.scp is not None:
            self.scp.stop()
        if self.http is not None:
            self.http.stop()
            self.http = None
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        for loop in self._loops.values():
            loop.join()
        close_analyser = getattr(self.analyser, "close", None)  # its radiomics workers
        if close_analyser is not None:
            close_analyser()
        if self._hasher is not None:
            self._hasher.stop()
        if self._identity is not None:
            self._identity.release()
            self._identity = None
        if self.engine is not None:
            self.engine.dispose()
        _LOG.info("cem-node stopped")

    def run_until_signalled(self, on_signal: Callable[[int], None] | None = None) -> None:
        """Block until SIGTERM or SIGINT, then :meth:`stop` (main thread only).

        The handlers only record the signal: stopping from inside a handler
        could deadlock on a lock the interrupted main thread holds.
        """
        received: list[int] = []

        def handler(signum: int, _frame: object) -> None:
            received.append(signum)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        while not received and not self._stopped.is_set():
            time.sleep(0.2)
        if received and on_signal is not None:
            on_signal(received[0])
        self.stop()
