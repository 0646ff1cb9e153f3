"""Benchmark: C-STORE ingest throughput of the node against dcmtk's storescp.

Target (issue): with fsync and database indexing on, the node ingests at
least as fast (MB/s, ratio 1.0) as dcmtk's ``storescp`` receiving the same
files on the same machine, from one ``storescu`` and from 4 concurrent ones.
Run: ``.venv/bin/python bench/bench_ingest.py [--repeats 3] [--json OUT]``.

What is measured
    100 full-size synthetic MG images (8.8 MB each, Explicit VR Little
    Endian, generated once into ``--work-dir``, default ``bench/.cache/``,
    which ignores itself in git) are sent by dcmtk ``storescu`` processes:
    1 process sending all of them, or 4 concurrent processes sending 25 each,
    one association per process, each file in its own transfer syntax (no
    conversion). The time is the wall time from the start of the first
    ``storescu`` to the exit of the last. Every run starts a fresh receiver
    (outside the timed window) and must end with every file stored: all
    ``storescu`` exit codes 0 and the receiver holding all images (rows of
    the node's ``instances`` table, files in storescp's folder); a run with a
    missing file is an error, not a figure. Each (receiver, senders)
    configuration is repeated ``--repeats`` times, the two receivers
    alternating, and the median is reported.

The receivers
    * the node: ``cem-node serve`` in its own process (so that this driver
      does not share its GIL), one receiver process per sender (``--receivers``,
      as ``storescp --fork`` forks one process per association), the default
      settings otherwise: every image is streamed to a temporary file in the
      store, renamed to its random name, fsynced, the folder fsynced, then indexed (study,
      instance, audit event) in one SQLite transaction with
      ``synchronous=FULL`` before the success status is sent. Assembly is
      held back (quiet period 1 h) so no analysis runs during the benchmark.
      The timing starts once the node has settled (``/healthz`` names the
      loaded bundle, every receiver listens): a node that has just started
      spends seconds of CPU importing its networks, as storescp's start-up
      is not timed either.
    * dcmtk ``storescp`` in its fastest configuration: bit-preserving
      (``+B``: the received bytes are streamed to the file as they arrive),
      no host name lookup, the largest receive PDU dcmtk allows (128 KiB,
      the node's default ``max_pdu_size`` too; storescu sends 128 KiB PDUs
      to either).
      storescp does **not** fsync the files and keeps no index, so the
      comparison is conservative for the node. One storescu is received by
      storescp in its default single-process mode; 4 concurrent storescu
      need ``--fork`` (a single process serves one association at a time).

Dirty pages are flushed (``sync``) and received files deleted between runs,
outside the timed window, so that one run's write-back does not slow the next.
MB are 10^6 bytes of DICOM files as sent (preamble, meta and dataset).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for tests.peers

from tests.dicom_validators import find_tool  # noqa: E402
from tests.peers import LOOPBACK, DcmtkStoreSCP, free_port  # noqa: E402

TARGET_RATIO = 1.0  # issue #18: at least storescp --fork's speed, caps on
NODE_AE = "CEM_NODE"
STORESCP_AE = "STORESCP"
SEED = 20_250
IMAGES_PER_STUDY = 8
NODE_STARTUP_TIMEOUT_S = 60.0
SEND_TIMEOUT_S = 900.0

console = Console(width=None if sys.stdout.isatty() else 120)


# --------------------------------------------------------------------------- images


def _generate(args: tuple[str, int]) -> str:
    """Generate one full-size study into a temporary folder, then move it in place."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    from cem_node.synthetic import SynthOptions, generate_study

    images_dir, index = Path(args[0]), args[1]
    final = images_dir / f"study-{index:04d}"
    with tempfile.TemporaryDirectory(prefix=".gen-", dir=images_dir) as tmp:
        made = generate_study(Path(tmp), SEED, index, SynthOptions(size="full"))
        shutil.rmtree(final, ignore_errors=True)
        made.rename(final)
    return final.name


def ensure_images(work_dir: Path, count: int, jobs: int) -> list[Path]:
    """Return ``count`` cached synthetic MG files, generating the missing studies."""
    work_dir.mkdir(parents=True, exist_ok=True)
    ignore = work_dir / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# benchmark cache, never committed\n*\n")
    images_dir = work_dir / "images"
    images_dir.mkdir(exist_ok=True)
    studies = math.ceil(count / IMAGES_PER_STUDY)

    def complete(index: int) -> bool:
        folder = images_dir / f"study-{index:04d}" / "dicom"
        return folder.is_dir() and len(list(folder.glob("*.dcm"))) == IMAGES_PER_STUDY

    missing = [i for i in range(studies) if not complete(i)]
    if missing:
        console.print(
            f"generating {len(missing)} full-size studies ({len(missing) * IMAGES_PER_STUDY} "
            f"images) into {images_dir} with {jobs} process(es); cached for the next run"
        )
        started = time.perf_counter()
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for name in pool.map(_generate, [(str(images_dir), i) for i in missing]):
                console.print(f"  {name} ({time.perf_counter() - started:.0f} s)")
    files = [
        path
        for i in range(studies)
        for path in sorted((images_dir / f"study-{i:04d}" / "dicom").glob("*.dcm"))
    ]
    return files[:count]


def warm_page_cache(files: Sequence[Path]) -> None:
    """Read the files once so that every run sends them from memory."""
    for path in files:
        with path.open("rb") as handle:
            while handle.read(1 << 20):
                pass


# --------------------------------------------------------------------------- receivers


def dcmtk(tool: str) -> str:
    """The path of a dcmtk tool (not pynetdicom's namesake in the virtual environment)."""
    return find_tool(tool) or tool


def _echo(port: int, called_ae: str) -> bool:
    cmd = [dcmtk("echoscu"), "-aet", "BENCH", "-aec", called_ae, "-to", "2", LOOPBACK, str(port)]
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


def _listening_sockets(port: int) -> int:
    """How many sockets listen on ``port`` (one per receiver process, SO_REUSEPORT)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def _health(port: int) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/healthz", timeout=2) as reply:
            return json.loads(reply.read())
    except (OSError, ValueError):
        return None


def serve_command(data_dir: Path, port: int, receivers: int) -> list[str]:
    """``cem-node serve`` on loopback for a benchmark: any sender, ``receivers`` processes."""
    return [
        str(Path(sys.executable).with_name("cem-node")),
        "--data-dir",
        str(data_dir),
        "serve",
        "--port",
        str(port),
        "--host",
        LOOPBACK,
        "--accept-unknown-sources",
        "--receivers",
        str(receivers),
    ]


def serve_environment(log_level: str, http_port: int) -> dict[str, str]:
    """The environment of :func:`serve_command`: no free-space minimum, assembly held
    back (no analysis during the benchmark), /healthz on ``http_port``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CEM_NODE_")}
    return env | {
        "CEM_NODE_STORAGE__MIN_FREE_MB": "0",
        "CEM_NODE_STORAGE__DISK_HIGH_WATERMARK_PERCENT": "99.9",
        "CEM_NODE_ASSEMBLY__MAX_WAIT_S": "3600",
        "CEM_NODE_ASSEMBLY__QUIET_PERIOD_S": "3600",
        "CEM_NODE_LOGGING__LEVEL": log_level,
        "CEM_NODE_HTTP__HOST": LOOPBACK,
        "CEM_NODE_HTTP__PORT": str(http_port),
    }


def _no_fsync_site(folder: Path) -> Path:
    """A folder whose ``sitecustomize`` makes ``os.fsync`` a no-op in the process
    that puts it on its path (--diagnose-without-fsync only)."""
    site = folder / "no-fsync-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import os\n\n# bench/bench_ingest.py --diagnose-without-fsync: never a deployment\n"
        "os.fsync = lambda fd: None\n"
    )
    return site


class NodeReceiver:
    """The node in its own process on a fresh data folder, until :meth:`stop`."""

    name = "cem-node"

    def __init__(
        self, folder: Path, *, log_level: str, receivers: int = 1, without_fsync: bool = False
    ) -> None:
        self.receivers = receivers
        self.without_fsync = without_fsync
        self.folder = folder
        self.data_dir = folder / "data"
        self.log_path = folder / "node.log"
        self.port = free_port()
        self.http_port = free_port()
        self.called_ae = NODE_AE
        self.log_level = log_level
        self.analysis = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NodeReceiver:
        """Start ``cem-node serve`` and wait until it has finished starting: the model
        bundle loaded (its import costs seconds of CPU) and every receiver process
        listening, as a node that has been up for a while. storescp's start-up is
        not timed either."""
        self.data_dir.mkdir(parents=True)
        cmd = serve_command(self.data_dir, self.port, self.receivers)
        env = serve_environment(self.log_level, self.http_port)
        if self.without_fsync:
            env["PYTHONPATH"] = str(_no_fsync_site(self.folder))
        with self.log_path.open("ab") as log:
            # cwd: a folder without conf/node.toml, so only the defaults apply
            self._proc = subprocess.Popen(
                cmd, cwd=self.folder, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + NODE_STARTUP_TIMEOUT_S
        while time.monotonic() < deadline and self._proc.poll() is None:
            health = _health(self.http_port)
            analysis = str((health or {}).get("analysis") or "")
            if (
                health is not None
                and "not loaded yet" not in analysis
                and _listening_sockets(self.port) >= self.receivers
                and _echo(self.port, self.called_ae)
            ):
                self.analysis = analysis
                return self
            time.sleep(0.2)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the node did not start; its log:\n{tail}")

    def stored(self) -> int:
        db = self.data_dir / "cem-node.db"
        # read while the node runs: every storescu got its responses, so every
        # acknowledged image is committed
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
            return int(connection.execute("SELECT count(*) FROM instances").fetchone()[0])

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._proc = None


class StoreSCPReceiver:
    """dcmtk storescp (tests.peers.DcmtkStoreSCP) on a fresh folder."""

    name = "storescp"

    def __init__(self, folder: Path, *, fork: bool) -> None:
        self.fork = fork
        extra = ["--max-pdu", "131072", "--fork" if fork else "--single-process"]
        self._scp = DcmtkStoreSCP(folder / "received", aet=STORESCP_AE, extra=extra)
        self.called_ae = STORESCP_AE
        self.port = 0

    def start(self) -> StoreSCPReceiver:
        self._scp.start()
        self.port = self._scp.port
        return self

    def stored(self) -> int:
        # storescp writes to the final name as it receives (+B); a file is only
        # counted here after every storescu has exited, i.e. every response came
        return len(self._scp.files())

    def stop(self) -> None:
        self._scp.stop()


Receiver = NodeReceiver | StoreSCPReceiver


# --------------------------------------------------------------------------- runs


@dataclass
class Run:
    receiver: str
    senders: int
    images: int
    megabytes: float
    seconds: float
    durable_seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.seconds

    @property
    def durable_mb_per_s(self) -> float:
        return self.megabytes / self.durable_seconds

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def send(
    files: Sequence[Path], senders: int, port: int, called_ae: str, folder: Path
) -> tuple[float, float]:
    """Send the files with ``senders`` concurrent storescu; return the wall time
    and the time until every received byte is on disk (the wall time plus a
    ``sync`` started when the last storescu exits)."""
    chunk = math.ceil(len(files) / senders)
    groups = [files[i : i + chunk] for i in range(0, len(files), chunk)]
    logs = [(folder / f"storescu-{i}.log").open("wb") for i in range(len(groups))]
    try:
        commands = [
            [
                dcmtk("storescu"),
                "-aet",
                f"BENCH{i}",
                "-aec",
                called_ae,
                "-to",
                "60",
                LOOPBACK,
                str(port),
            ]
            + [str(p) for p in group]
            for i, group in enumerate(groups)
        ]
        started = time.perf_counter()
        procs = [
            subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            for cmd, log in zip(commands, logs, strict=True)
        ]
        codes = [proc.wait(timeout=SEND_TIMEOUT_S) for proc in procs]
        elapsed = time.perf_counter() - started
        os.sync()  # the node has fsynced all it answered; storescp has not
        durable = time.perf_counter() - started
    finally:
        for log in logs:
            log.close()
    if any(codes):
        tails = "\n".join(
            f"storescu {i} exit {code}: "
            + (folder / f"storescu-{i}.log").read_text(errors="replace")[-800:]
            for i, code in enumerate(codes)
            if code
        )
        raise RuntimeError(f"storescu failed:\n{tails}")
    return elapsed, durable


def run_once(
    kind: str, files: Sequence[Path], senders: int, scratch: Path, args: argparse.Namespace
) -> tuple[Run, str]:
    """One timed run on a fresh receiver; returns the run and a note for the log."""
    folder = Path(tempfile.mkdtemp(prefix=f"{kind}-{senders}-", dir=scratch))
    receiver: Receiver
    if kind == "cem-node":
        receiver = NodeReceiver(
            folder,
            log_level=args.node_log_level,
            receivers=(args.receivers or senders) if senders > 1 else 1,
            without_fsync=args.diagnose_without_fsync,
        )
    else:
        receiver = StoreSCPReceiver(folder, fork=senders > 1)
    receiver.start()
    try:
        seconds, durable = send(files, senders, receiver.port, receiver.called_ae, folder)
        stored = receiver.stored()
    finally:
        receiver.stop()
    if stored != len(files):
        raise RuntimeError(
            f"{kind} with {senders} sender(s): {stored} of {len(files)} images stored "
            f"(logs in {folder})"
        )
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    note = ""
    if kind == "cem-node" and args.node_log_level == "DEBUG":
        note = handler_times(folder / "node.log")
    if args.keep:
        console.print(f"  kept: {folder}")
    else:
        shutil.rmtree(folder)
    os.sync()  # write-back of this run must not slow the next one
    return Run(kind, senders, len(files), megabytes, seconds, durable), note


def handler_times(log: Path) -> str:
    """Summarise the node's per-C-STORE handler times (logged at DEBUG by the SCP)."""
    times = [
        float(line.rsplit(" in ", 1)[1].split()[0])
        for line in log.read_text(errors="replace").splitlines()
        if "cem_node.dicom.net.scp: C-STORE" in line and line.endswith(" ms")
    ]
    if not times:
        return ""
    return (
        f"; C-STORE handler median {statistics.median(times):.0f} ms, "
        f"{sum(times) / 1000:.1f} s summed over {len(times)} images"
    )


def median_run(runs: Sequence[Run]) -> Run:
    first = runs[0]
    return Run(
        first.receiver,
        first.senders,
        first.images,
        first.megabytes,
        statistics.median(r.seconds for r in runs),
        statistics.median(r.durable_seconds for r in runs),
    )


# --------------------------------------------------------------------------- report


def machine() -> str:
    cpus = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    return (
        f"{platform.processor() or platform.machine()}, {cpus} CPUs ({usable} usable), "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def dcmtk_version() -> str:
    out = subprocess.run(
        [dcmtk("storescp"), "--version"], capture_output=True, text=True, check=False
    )
    line = (out.stdout or out.stderr).strip().splitlines()
    return line[0].strip("$ ").removeprefix("dcmtk: ") if line else "unknown"


def report(
    medians: dict[tuple[str, int], Run], all_runs: list[Run], args: argparse.Namespace
) -> tuple[dict[int, float], dict[int, float]]:
    """Print the table; return the ratios (ours/storescp, MB/s) as answered and
    until durable, per sender count."""
    table = Table(title=f"C-STORE ingest, median of {args.repeats} run(s)")
    for column in ("receiver", "senders", "MB", "seconds", "min-max", "MB/s"):
        table.add_column(column, justify="left" if column == "receiver" else "right", no_wrap=True)
    table.add_column("ours/storescp", justify="right", no_wrap=True)
    table.add_column("until durable s", justify="right", no_wrap=True)
    table.add_column("ours/storescp durable", justify="right", no_wrap=True)
    ratios: dict[int, float] = {}
    durable_ratios: dict[int, float] = {}

    def verdict(value: float) -> str:
        color = "green" if value >= TARGET_RATIO else "red"
        return f"[{color}]{value:.2f} {'pass' if value >= TARGET_RATIO else 'FAIL'}[/{color}]"

    for senders in args.senders:
        ours, theirs = medians[("cem-node", senders)], medians[("storescp", senders)]
        ratios[senders] = ours.mb_per_s / theirs.mb_per_s
        durable_ratios[senders] = ours.durable_mb_per_s / theirs.durable_mb_per_s
        for run in (theirs, ours):
            spread = [
                r.seconds for r in all_runs if (r.receiver, r.senders) == (run.receiver, senders)
            ]
            label = run.receiver
            if run.receiver == "storescp":
                label += " --fork" if senders > 1 else " (1 process)"
            elif args.diagnose_without_fsync:
                label += " (NO FSYNC)"
            table.add_row(
                label,
                str(senders),
                f"{run.megabytes:.0f}",
                f"{run.seconds:.2f}",
                f"{min(spread):.2f}-{max(spread):.2f}",
                f"{run.mb_per_s:.0f}",
                verdict(ratios[senders]) if run is ours else "",
                f"{run.durable_seconds:.2f}",
                verdict(durable_ratios[senders]) if run is ours else "",
            )
    console.print(table)
    console.print(
        f"target: ours/storescp >= {TARGET_RATIO} (MB/s) for every sender count; "
        "the node fsyncs each file and commits its index (SQLite synchronous=FULL) before "
        "answering, storescp (+B, max PDU 128 KiB) does not fsync and keeps no index. "
        "'until durable': the wall time plus a sync started when the last storescu exits "
        "(the files of both receivers on disk)"
    )
    if args.diagnose_without_fsync:
        console.print(
            "[red]diagnostic run: the node's fsync calls were disabled (os.fsync replaced in "
            "its process); these figures show its CPU path alone, never a deployment[/red]"
        )
    return ratios, durable_ratios


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=100, help="images sent per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration")
    parser.add_argument(
        "--senders",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 4],
        help="comma-separated numbers of concurrent storescu processes (default 1,4)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=REPO / "bench" / ".cache",
        help="cache of generated images and scratch space for the receivers",
    )
    parser.add_argument("--jobs", type=int, default=2, help="processes generating images")
    parser.add_argument(
        "--receivers",
        type=int,
        default=None,
        help="the node's receiver processes for concurrent senders (serve --receivers; "
        "default: one per sender, as storescp --fork forks one per association); "
        "1 sender: always 1",
    )
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument(
        "--node-log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING"],
        help="the node's log level (default INFO, as deployed); DEBUG logs and sums up the "
        "time of each C-STORE handler, but slows the node (pynetdicom dumps every PDU)",
    )
    parser.add_argument(
        "--diagnose-without-fsync",
        action="store_true",
        help="diagnostic only: replace os.fsync in the node's process by a no-op, to "
        "separate its CPU path from the disk's write-back (never a deployment mode)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the received files and logs of each run"
    )
    args = parser.parse_args()
    for tool in ("storescu", "storescp", "echoscu"):
        if find_tool(tool) is None:
            parser.error(f"{tool} not found: install dcmtk")

    files = ensure_images(args.work_dir, args.images, args.jobs)
    if len(files) < args.images:
        parser.error(f"only {len(files)} images available")
    warm_page_cache(files)
    scratch = args.work_dir / "runs"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()

    console.print(f"machine: {machine()}")
    console.print(
        f"dcmtk: {dcmtk_version()}; images: {len(files)} x {files[0].stat().st_size / 1e6:.1f} MB"
    )
    console.print(
        "node: "
        + "`cem-node serve`, started and settled (bundle loaded, receivers listening)"
        + f", SQLite, fsync on, log level {args.node_log_level}\n"
        "storescp: +B, --max-pdu 131072, no fsync; single process for 1 sender, --fork for more"
    )
    runs: list[Run] = []
    for repeat in range(args.repeats):
        order = ["cem-node", "storescp"] if repeat % 2 == 0 else ["storescp", "cem-node"]
        for senders in args.senders:
            for kind in order:
                run, note = run_once(kind, files, senders, scratch, args)
                runs.append(run)
                console.print(
                    f"  run {repeat + 1}/{args.repeats}: {kind:8s} {senders} sender(s): "
                    f"{run.seconds:6.2f} s, {run.mb_per_s:4.0f} MB/s, "
                    f"{run.images_per_s:4.1f} images/s{note}"
                )
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    medians = {
        key: median_run([r for r in runs if (r.receiver, r.senders) == key])
        for key in {(r.receiver, r.senders) for r in runs}
    }
    ratios, durable_ratios = report(medians, runs, args)
    if args.json:
        figures = {
            "machine": machine(),
            "cpu_count": os.cpu_count(),
            "dcmtk": dcmtk_version(),
            "node_launch": "cem-node serve --receivers N, timed once settled",
            "storescp_options": "+xa -pm +B -dhl --max-pdu 131072 (--fork for >1 sender)",
            "storescp_fsync": False,
            "node_fsync": not args.diagnose_without_fsync,
            "repeats": args.repeats,
            "target_ratio": TARGET_RATIO,
            "medians": [
                asdict(m)
                | {
                    "mb_per_s": m.mb_per_s,
                    "images_per_s": m.images_per_s,
                    "durable_mb_per_s": m.durable_mb_per_s,
                }
                for m in sorted(medians.values(), key=lambda m: (m.senders, m.receiver))
            ],
            "ratios": {str(k): v for k, v in ratios.items()},
            "durable_ratios": {str(k): v for k, v in durable_ratios.items()},
            "pass": not args.diagnose_without_fsync
            and all(v >= TARGET_RATIO for v in ratios.values()),
            "runs": [asdict(r) for r in runs],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        console.print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
