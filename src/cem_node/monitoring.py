"""Health and Prometheus metrics of a running node, on a small loopback HTTP endpoint.

``GET /healthz``: JSON, 200 when the database answers, the DICOM service
listens and can accept, the store takes images (below the disk watermark)
and exports are not failing again and again; 503 otherwise, with the reasons
(and ``cem_node_health_problem`` says which check). ``GET /metrics``: the Prometheus
text format. Counts that several processes share (studies, jobs and exports
by state, instances in the store) are read from the database at scrape
time, so they are right with extra receiver processes or several nodes on
one PostgreSQL; the analysis latency histogram and the received-instances
counter are this process's.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from sqlalchemy import and_, func, or_, select, text
from sqlalchemy.orm import Session, sessionmaker

from cem_node import __version__
from cem_node.contracts.analysis import Analyser, AnalysisRequest, AnalysisResult
from cem_node.store.models import Export, ExportState, Instance, Job, Study

__all__ = ["HealthEndpoint", "NodeMetrics", "export_problem"]

_LOG = logging.getLogger(__name__)

#: seconds: a CPU analysis takes tens of seconds, a GPU one a few
ANALYSIS_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 300, 600)


class _StoreCollector:
    """Gauges read from the database at each scrape."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def describe(self) -> list[Any]:
        return []  # collected lazily: no database query at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("cem_node_database_up", "1 when the database answered the scrape.")
        try:
            with self._sessions() as session:
                families = [
                    self._by_state(session, Study, "cem_node_studies", "Studies by state."),
                    self._by_state(session, Job, "cem_node_jobs", "Jobs by state."),
                    self._by_state(
                        session,
                        Export,
                        "cem_node_exports",
                        "Result objects per destination by state (failed: gave up).",
                    ),
                ]
                stored = GaugeMetricFamily(
                    "cem_node_instances_stored", "Instances in the store (all processes)."
                )
                stored.add_metric([], session.scalar(select(func.count(Instance.id))) or 0)
                failed_attempts = GaugeMetricFamily(
                    "cem_node_export_failed_attempts",
                    "Failed C-STORE attempts of result objects still in the outbox or given up.",
                )
                failed_attempts.add_metric(
                    [],
                    session.scalar(
                        select(func.coalesce(func.sum(Export.attempts), 0)).where(
                            Export.state != "done"
                        )
                    )
                    or 0,
                )
        except Exception as exc:  # a scrape must answer even when the database does not
            _LOG.warning("metrics: database unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families
        yield stored
        yield failed_attempts

    @staticmethod
    def _by_state(session: Session, model: Any, name: str, doc: str) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=["state"])
        rows = session.execute(select(model.state, func.count(model.id)).group_by(model.state))
        for state, count in rows:
            family.add_metric([str(getattr(state, "value", state))], count)
        return family


class _HealthCollector:
    """``cem_node_health_problem{check}``: 1 while that check makes /healthz answer 503."""

    def __init__(self, checks: Callable[[], dict[str, str | None]]) -> None:
        self._checks = checks

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "cem_node_health_problem",
            "1 while the check makes /healthz unhealthy (storage, listener, exports).",
            labels=["check"],
        )
        try:
            checks = self._checks()
        except Exception as exc:  # a scrape must answer
            _LOG.warning("metrics: health checks failed: %s", exc)
            checks = {}
        for name, problem in sorted(checks.items()):
            family.add_metric([name], 1 if problem else 0)
        yield family


#: An export retried this many times and still failing makes the node unhealthy.
EXPORT_FAILING_ATTEMPTS = 3
#: An export given up on within this time makes the node unhealthy.
EXPORT_GIVEN_UP_WITHIN = dt.timedelta(hours=1)


def export_problem(session: Session, now: dt.datetime) -> str | None:
    """Why exports keep failing, or None: results that retry after
    :data:`EXPORT_FAILING_ATTEMPTS` failures, or were given up on lately."""
    retrying_rows = and_(
        Export.state.in_([ExportState.PENDING, ExportState.SENDING]),
        Export.attempts >= EXPORT_FAILING_ATTEMPTS,
        Export.last_error.is_not(None),
    )
    given_up_rows = and_(
        Export.state == ExportState.FAILED,
        Export.claimed_at >= now - EXPORT_GIVEN_UP_WITHIN,
    )
    retrying = session.scalar(select(func.count(Export.id)).where(retrying_rows))
    given_up = session.scalar(select(func.count(Export.id)).where(given_up_rows))
    if not retrying and not given_up:
        return None
    last = session.scalar(
        select(Export.last_error)
        .where(or_(retrying_rows, given_up_rows))
        .order_by(Export.claimed_at.desc().nulls_last(), Export.id.desc())
        .limit(1)
    )
    return (
        f"exports failing: {retrying or 0} result object(s) still retrying after "
        f"{EXPORT_FAILING_ATTEMPTS}+ attempts, {given_up or 0} given up in the last hour"
        + (f" (last error: {last})" if last else "")
    )


class NodeMetrics:
    """The node's metrics in their own registry (no process-global state)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.instances_received = Counter(
            "cem_node_instances_received",
            "Instances stored (acknowledged) by this process's DICOM service.",
            registry=self.registry,
        )
        self.analysis_seconds = Histogram(
            "cem_node_analysis_seconds",
            "Wall time of the analysis of one study round (decode to result objects).",
            buckets=ANALYSIS_BUCKETS,
            registry=self.registry,
        )
        self.analyses = Counter(
            "cem_node_analyses",
            "Study rounds analysed by this process, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.connections_refused = Counter(
            "cem_node_connections_refused",
            "Connections refused before their association, by stage "
            "(accept, tls, association-request, association).",
            ["stage"],
            registry=self.registry,
        )
        self.registry.register(_StoreCollector(sessions))

    def watch_health(self, checks: Callable[[], dict[str, str | None]]) -> None:
        """Expose ``checks`` (check name -> problem or None) as ``cem_node_health_problem``."""
        self.registry.register(_HealthCollector(checks))

    def timed(self, analyser: Analyser) -> Analyser:
        """Wrap an analyser so each call is timed and counted."""
        return _TimedAnalyser(analyser, self)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _TimedAnalyser:
    def __init__(self, inner: Analyser, metrics: NodeMetrics) -> None:
        self.inner = inner
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:  # preload() and friends of the inner analyser
        return getattr(self.inner, name)

    def analyse(self, request: AnalysisRequest) -> AnalysisResult:
        started = time.perf_counter()
        try:
            result = self.inner.analyse(request)
        except Exception:
            self._metrics.analyses.labels("failed").inc()
            raise
        self._metrics.analysis_seconds.observe(time.perf_counter() - started)
        self._metrics.analyses.labels("ok").inc()
        return result


class HealthEndpoint:
    """``/healthz`` and ``/metrics`` on ``host:port`` (port 0: any free port).

    Parameters
    ----------
    metrics
        The registry served at ``/metrics``.
    sessions
        The database checked by ``/healthz``.
    status
        Extra facts for ``/healthz`` (AE title, DICOM port, model bundle ...);
        its ``"dicom_listening"`` key, when False, and each entry of its
        ``"problems"`` list (storage refused, listener stuck, exports failing)
        make the node unhealthy.
    """

    def __init__(
        self,
        host: str,
        port: int,
        metrics: NodeMetrics,
        sessions: sessionmaker[Session],
        status: Callable[[], dict[str, Any]],
    ) -> None:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            server_version = f"cem-node/{__version__}"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    code, body = endpoint.health()
                    self._send(code, json.dumps(body, indent=2).encode(), "application/json")
                elif path == "/metrics":
                    self._send(HTTPStatus.OK, metrics.exposition(), CONTENT_TYPE_LATEST)
                else:
                    body = b"not found: /healthz, /metrics\n"
                    self._send(HTTPStatus.NOT_FOUND, body, "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                _LOG.debug("http: " + format, *args)

        self._sessions = sessions
        self._status = status
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def health(self) -> tuple[int, dict[str, Any]]:
        """The health document and its HTTP status."""
        body: dict[str, Any] = {"version": __version__, **self._status()}
        problems = []
        try:
            with self._sessions() as session:
                session.execute(text("SELECT 1"))
            body["database"] = "ok"
        except Exception as exc:
            body["database"] = f"error: {type(exc).__name__}: {exc}"
            problems.append("database unavailable")
        if body.get("dicom_listening") is False:
            problems.append("DICOM service not listening")
        problems += [p for p in body.pop("problems", []) if p]
        body["status"] = "ok" if not problems else "unhealthy: " + "; ".join(problems)
        return (HTTPStatus.OK if not problems else HTTPStatus.SERVICE_UNAVAILABLE), body

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="http", kwargs={"poll_interval": 0.2}
        )
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
