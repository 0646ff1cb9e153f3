"""Benchmark: analysis throughput with 1, 2 and 4 workers over one PostgreSQL (#20).

Run: ``.venv/bin/python bench/bench_scale.py [--url URL] [--pause 2] [--per-worker 8]``.

What is measured
    Worker nodes (``Node`` with the single role ``worker``, each in its own
    process, as ``cem-node serve --role worker`` runs) share one PostgreSQL
    database and one store. The analysis is the test double with a fixed
    duration (``--pause`` seconds, a sleep): what the figures show is the
    coordination (claiming with ``SKIP LOCKED``, leases and their heartbeat,
    fencing, recording the results, NOTIFY wake-ups), not a model. Ideal
    throughput is ``workers x 60 / pause`` studies per minute.

    1. Throughput. The workers start and settle (their bundle-free start-up is
       not timed). ``per-worker x workers`` small synthetic studies, already
       received, are completed by the assembler in one transaction. The time
       runs from that commit to the last job done.
    2. Claim latency. With 4 idle workers, one study at a time is queued. Each
       study's latency runs from the commit that queued it (which sends NOTIFY)
       to the job's ``claimed_at``, which the worker takes from the database's
       clock.

The database is a fresh one (created, then dropped) on the server of
``--url`` (default: ``$CEM_NODE_TEST_POSTGRES_URL`` or the tests' loopback
server).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for tests.analysis_double

DEFAULT_URL = os.environ.get(
    "CEM_NODE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _settings(url: str, store: Path) -> object:
    from cem_node.config import Settings

    settings = Settings.defaults()
    settings.storage.root = store
    settings.storage.min_free_mb = 0
    settings.storage.disk_high_watermark_percent = 99.99
    settings.database.url = url
    settings.node.roles = ["worker"]
    settings.node.poll_interval_s = 5.0  # NOTIFY wakes the workers; the poll is a fallback
    settings.http.enabled = False
    settings.logging.level = "WARNING"
    return settings


def worker_main(url: str, store: Path, pause_s: float) -> None:
    """One worker node with the fixed-duration test double, until SIGTERM."""
    from tests.analysis_double import DoubleAnalyser

    from cem_node.logs import configure_logging
    from cem_node.node import Node

    settings = _settings(url, store)
    configure_logging(settings.logging)  # type: ignore[attr-defined]
    node = Node(settings, analyser=DoubleAnalyser(pause_s=pause_s))  # type: ignore[arg-type]
    node.start()
    print("READY", flush=True)
    node.run_until_signalled()


class Bench:
    """A fresh database and store, with received studies ready to be completed."""

    def __init__(self, server_url: str, work: Path) -> None:
        from sqlalchemy import text
        from sqlalchemy.engine import make_url

        from cem_node.store import make_engine, session_factory, upgrade

        self.name = f"cem_bench_{uuid.uuid4().hex[:12]}"
        self._admin = make_engine(server_url).execution_options(isolation_level="AUTOCOMMIT")
        with self._admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{self.name}"'))
        self.url = make_url(server_url).set(database=self.name).render_as_string(False)
        self.engine = make_engine(self.url)
        upgrade(self.engine)
        self.sessions = session_factory(self.engine)
        self.store = work / "store"
        self.store.mkdir()
        self.work = work
        self._template: list[bytes] | None = None

    def close(self) -> None:
        from sqlalchemy import text

        self.engine.dispose()
        with self._admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self._admin.dispose()

    def receive(self, count: int) -> list[str]:
        """Ingest ``count`` copies of a small synthetic study (new UIDs each)."""
        import io

        import pydicom
        from pydicom.uid import generate_uid

        from cem_node.jobs.rounds import open_round
        from cem_node.store import InstanceFileStore
        from cem_node.store.ingest import DiskGuard, InstanceIngestor, ReceivedFrom
        from cem_node.synthetic.study import SynthOptions, generate_study

        if self._template is None:
            study = generate_study(self.work / "synth", 5, 0, SynthOptions(size="small"))
            self._template = [p.read_bytes() for p in sorted((study / "dicom").glob("*.dcm"))]
        files = InstanceFileStore(self.store)
        ingestor = InstanceIngestor(
            self.sessions,
            files,
            DiskGuard(str(self.store), high_watermark_percent=99.99, min_free_mb=0),
            open_round=open_round,
        )
        uids = []
        for _ in range(count):
            study_uid, series = generate_uid(), {}
            for data in self._template:
                ds = pydicom.dcmread(io.BytesIO(data))
                ds.StudyInstanceUID = study_uid
                ds.SeriesInstanceUID = series.setdefault(ds.SeriesInstanceUID, generate_uid())
                ds.SOPInstanceUID = generate_uid()
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                out = io.BytesIO()
                ds.save_as(out)
                result = ingestor.ingest(
                    out.getvalue(), sender=ReceivedFrom("BENCH", "CEM_NODE", "127.0.0.1")
                )
                assert result.status == 0, result.message
            uids.append(study_uid)
        return uids

    def complete(self) -> float:
        """Queue every received study (one transaction, NOTIFY at its commit); return
        the time the transaction began (epoch seconds): latencies from it include the
        assembler's own transaction (a few ms), an upper bound."""
        from cem_node.jobs.assembler import complete_due_studies
        from cem_node.store.notify import install_notify

        install_notify(self.sessions, self.engine)
        began = time.time()
        done = complete_due_studies(self.sessions, quiet_period_s=0, max_wait_s=0, actor="bench")
        assert done, "nothing to complete"
        return began

    def jobs(self) -> list[tuple[str, float | None, str]]:
        """(state, claimed_at epoch, study UID) of every job."""
        from sqlalchemy import select

        from cem_node.store.models import Job, Study

        with self.sessions.begin() as session:
            rows = session.execute(
                select(Job.state, Job.claimed_at, Study.study_instance_uid).join(Study)
            ).all()
        return [
            (state.value, claimed.timestamp() if claimed else None, uid)
            for state, claimed, uid in rows
        ]


def start_workers(url: str, store: Path, count: int, pause_s: float) -> list[subprocess.Popen]:
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                "--url",
                url,
                "--store",
                str(store),
                "--pause",
                str(pause_s),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for _ in range(count)
    ]
    for proc in procs:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("READY"):
            raise RuntimeError("a worker did not start")
    return procs


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def throughput(server: str, workers: int, per_worker: int, pause_s: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="cem-bench-scale-") as tmp:
        bench = Bench(server, Path(tmp))
        procs: list[subprocess.Popen] = []
        try:
            bench.receive(workers * per_worker)
            procs = start_workers(bench.url, bench.store, workers, pause_s)
            started = bench.complete()
            while True:
                states = [s for s, _, _ in bench.jobs()]
                if all(s in ("done", "failed") for s in states):
                    break
                time.sleep(0.05)
            elapsed = time.time() - started
            assert states.count("done") == len(states), states
        finally:
            stop_workers(procs)
            bench.close()
    studies = workers * per_worker
    per_minute = studies / elapsed * 60
    ideal = workers * 60 / pause_s
    return {
        "workers": workers,
        "studies": studies,
        "seconds": elapsed,
        "per_minute": per_minute,
        "ideal_per_minute": ideal,
        "of_linear": per_minute / ideal,
    }


def claim_latency(server: str, workers: int, samples: int, pause_s: float) -> list[float]:
    latencies = []
    with tempfile.TemporaryDirectory(prefix="cem-bench-scale-") as tmp:
        bench = Bench(server, Path(tmp))
        procs: list[subprocess.Popen] = []
        try:
            procs = start_workers(bench.url, bench.store, workers, pause_s)
            for _ in range(samples):
                (uid,) = bench.receive(1)
                committed = bench.complete()
                while True:
                    claimed = next((c for _, c, u in bench.jobs() if u == uid and c), None)
                    if claimed is not None:
                        break
                    time.sleep(0.005)
                latencies.append(claimed - committed)
                time.sleep(pause_s + 0.3)  # every worker idle again, listening
        finally:
            stop_workers(procs)
            bench.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="a PostgreSQL server (any database)")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds per analysis")
    parser.add_argument("--per-worker", type=int, default=8, help="studies per worker")
    parser.add_argument("--workers", default="1,2,4", help="worker counts to measure")
    parser.add_argument("--samples", type=int, default=30, help="claim latency samples")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.url, args.store, args.pause)
        return

    from rich.console import Console
    from rich.table import Table

    console = Console()
    rows = []
    for workers in (int(n) for n in args.workers.split(",")):
        row = throughput(args.url, workers, args.per_worker, args.pause)
        rows.append(row)
        console.print(
            f"  {workers} worker(s): {row['studies']} studies in {row['seconds']:.1f} s, "
            f"{row['per_minute']:.1f}/min ({row['of_linear']:.2f} of the ideal)"
        )
    latencies = claim_latency(args.url, 4, args.samples, min(args.pause, 0.5))
    table = Table(title=f"Workers over one PostgreSQL, analysis of {args.pause:g} s (a sleep)")
    columns = ("workers", "studies", "seconds", "studies/min", "ideal/min", "of ideal")
    for column in (*columns, "of N x 1 worker"):
        table.add_column(column, justify="right")
    one = next((r["per_minute"] for r in rows if r["workers"] == 1), None)
    for row in rows:
        # scaling: N workers against N times what one worker did in the same run
        row["of_one_worker_times_n"] = row["per_minute"] / (one * row["workers"]) if one else None
        table.add_row(
            str(row["workers"]),
            str(row["studies"]),
            f"{row['seconds']:.1f}",
            f"{row['per_minute']:.1f}",
            f"{row['ideal_per_minute']:.1f}",
            f"{row['of_linear']:.2f}",
            f"{row['of_one_worker_times_n']:.2f}" if one else "-",
        )
    console.print(table)
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    console.print(
        f"claim latency (queueing transaction with NOTIFY -> claimed_at), 4 idle workers, "
        f"{len(latencies)} studies: median {statistics.median(latencies) * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms"
    )
    if args.json:
        figures = {
            "cpu_count": os.cpu_count(),
            "pause_s": args.pause,
            "throughput": rows,
            "claim_latency_s": latencies,
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
