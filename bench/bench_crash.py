"""Crash test: ``kill -9`` of the node during a 4-sender C-STORE burst, repeated.

Claim (issue #18): every instance whose sender got a success status survives a
``kill -9`` of the node in the middle of a burst, byte for byte.
Run: ``.venv/bin/python bench/bench_crash.py [--rounds 5] [--seed N] [--json OUT]``.

One round
    1. A fresh node: ``cem-node serve`` on 127.0.0.1 in its own session (process
       group), on a new data folder in a temporary folder, with
       ``--accept-unknown-sources`` (the senders' AE titles are not configured),
       ``--receivers`` processes on the port (default: one per sender), the
       default durability settings and assembly held back (quiet period 1 h)
       as in ``bench_ingest.py``. Started and settled before the burst.
    2. ``--senders`` concurrent senders, each a pynetdicom SCU in a process of
       its own (no shared GIL), each with one association sending its own
       ``--images`` distinct files (synthetic MG images, ``--size``) by path, with
       pynetdicom's ``STORE_SEND_CHUNKED_DATASET``: the file's data set bytes are
       sent as they are (not decoded and re-encoded), in its transfer syntax. A
       sender records every SOP Instance UID whose C-STORE response had status
       0x0000: *acknowledged*. A sender stops at the first
       failure (the association aborted when the node died).
    3. The kill: the whole process group (the node and its receiver processes)
       gets SIGKILL at a random moment of the burst: once the senders have
       together received a random number of acknowledgements (seeded, between
       10 % and 90 % of the images of the round), plus a random delay of up to
       ``--jitter-ms``, so that it lands anywhere in the transfer of an image.
    4. Partial files are counted in the dead node's store (``.tmp-*``: the
       receiving folder and interrupted writes); then the node is restarted on
       the same data folder (its start-up recovery deletes them), must answer
       C-ECHO (dcmtk ``echoscu``) and ``/healthz`` with 200, and the store is
       checked: every acknowledged SOP Instance UID has a row in ``instances``,
       the row's file exists, and its dataset is byte-identical to what was sent.

How the datasets are compared
    The node stores the file that pynetdicom streamed while receiving: a new
    preamble and File Meta Information (written by the receiver: its own
    implementation class UID and source AE title) followed by the data set bytes
    exactly as received. So the bytes after the File Meta Information group
    (0002,eeee) of the stored file are compared with the bytes after the File
    Meta Information of the file sent (found by walking the group 0002 elements,
    Explicit VR Little Endian, not trusting the group length), and the stored
    Transfer Syntax UID and Media Storage SOP Instance UID must equal the sent ones.

``kill -9`` kills the processes, not the machine: what the kernel accepted
survives in the page cache whether or not it was fsynced, so this checks the
protocol order (file in place and row committed before the success status),
not the durability against a power cut.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import random
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from contextlib import closing, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for bench.bench_ingest and tests.peers

from bench.bench_ingest import (  # noqa: E402
    IMAGES_PER_STUDY,
    NODE_AE,
    NODE_STARTUP_TIMEOUT_S,
    SEED,
    _echo,
    _health,
    _listening_sockets,
    console,
    dcmtk_version,
    ensure_images,
    machine,
    serve_command,
    serve_environment,
    warm_page_cache,
)
from tests.dicom_validators import find_tool  # noqa: E402
from tests.peers import LOOPBACK, free_port  # noqa: E402

TEMPORARY_PREFIX = ".tmp-"  # cem_node.store.instance_files.TEMPORARY_FILE_PREFIX
BURST_TIMEOUT_S = 600.0
#: the kill comes after this fraction of the round's images was acknowledged, at random
KILL_AFTER = (0.10, 0.90)


# --------------------------------------------------------------------------- images


def ensure_small_images(work_dir: Path, count: int) -> list[Path]:
    """``count`` cached small synthetic MG files (a quarter of the full matrix)."""
    from cem_node.synthetic import SynthOptions, generate_study

    images_dir = work_dir / "images-small"
    images_dir.mkdir(parents=True, exist_ok=True)
    ignore = work_dir / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# benchmark cache, never committed\n*\n")
    files: list[Path] = []
    index = 0
    while len(files) < count:
        folder = images_dir / f"study-{index:04d}" / "dicom"
        if not (folder.is_dir() and len(list(folder.glob("*.dcm"))) == IMAGES_PER_STUDY):
            with tempfile.TemporaryDirectory(prefix=".gen-", dir=images_dir) as tmp:
                made = generate_study(Path(tmp), SEED, index, SynthOptions(size="small"))
                shutil.rmtree(folder.parent, ignore_errors=True)
                made.rename(folder.parent)
        files += sorted(folder.glob("*.dcm"))
        index += 1
    return files[:count]


# --------------------------------------------------------------------------- DICOM files


#: VRs with a 2-byte reserved field and a 4-byte length in Explicit VR (PS3.5 7.1.2)
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT"}
_LONG_VRS |= {b"UV"}


def split_file(data: bytes) -> tuple[dict[tuple[int, int], bytes], int]:
    """The File Meta Information elements of a DICOM file (tag -> value) and the
    offset of its data set (Part 10: 128-byte preamble, ``DICM``, group 0002
    in Explicit VR Little Endian)."""
    if data[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file")
    offset, meta = 132, {}
    while offset + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            break
        vr = data[offset + 4 : offset + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<L", data, offset + 8)
            start = offset + 12
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            start = offset + 8
        meta[(group, element)] = data[start : start + length]
        offset = start + length
    return meta, offset


def _uid(value: bytes | None) -> str:
    return (value or b"").rstrip(b"\0 ").decode("ascii", "replace")


@dataclass(frozen=True)
class SentFile:
    path: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str


def describe(path: Path) -> SentFile:
    with path.open("rb") as handle:
        head = handle.read(64 * 1024)
    meta, _ = split_file(head)
    return SentFile(
        str(path),
        _uid(meta.get((0x0002, 0x0003))),
        _uid(meta.get((0x0002, 0x0002))),
        _uid(meta.get((0x0002, 0x0010))),
    )


# --------------------------------------------------------------------------- senders


def _sender(
    index: int,
    files: Sequence[SentFile],
    port: int,
    events: Any,  # multiprocessing.Queue
    go: Any,  # multiprocessing.Event
) -> None:
    """One SCU in its own process: associate, wait for ``go``, send each file by
    path; report ("ack", uid) for each 0x0000, ("fail", uid, why) and stop at
    the first failure, ("done",) at the end."""
    from pynetdicom import AE, _config

    # send each file's data set bytes as they are (read from the file in chunks),
    # not decoded and re-encoded by pydicom
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=f"CRASH{index}")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for context in sorted({(f.sop_class_uid, f.transfer_syntax_uid) for f in files}):
        ae.add_requested_context(*context)
    assoc = ae.associate(LOOPBACK, port, ae_title=NODE_AE)
    events.put((index, "ready", assoc.is_established))
    go.wait(BURST_TIMEOUT_S)
    try:
        if not assoc.is_established:
            events.put((index, "fail", "", "association not established"))
            return
        for sent in files:
            try:
                status = assoc.send_c_store(Path(sent.path))
            except Exception as exc:  # the node died under us: that is the point
                events.put((index, "fail", sent.sop_instance_uid, repr(exc)))
                return
            code = int(getattr(status, "Status", -1)) if status else -1
            if code == 0x0000:
                events.put((index, "ack", sent.sop_instance_uid, time.monotonic()))
            else:
                why = f"status 0x{code:04X}" if code >= 0 else "no response"
                events.put((index, "fail", sent.sop_instance_uid, why))
                return
            if not assoc.is_established:
                events.put((index, "fail", "", "association ended"))
                return
    finally:
        if assoc.is_established:
            assoc.release()
        events.put((index, "done", "", ""))


# --------------------------------------------------------------------------- the node


def _healthz_status(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/healthz", timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


class CrashNode:
    """``cem-node serve`` in a session of its own on ``data_dir``: killable as a group."""

    def __init__(self, folder: Path, *, receivers: int, log_level: str) -> None:
        self.folder = folder
        self.data_dir = folder / "data"
        self.log_path = folder / "node.log"
        self.receivers = receivers
        self.log_level = log_level
        self.port = 0
        self.http_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start (or restart) the node, return the seconds until it has settled:
        bundle loaded, every receiver listening, C-ECHO answered."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port, self.http_port = free_port(), free_port()
        cmd = serve_command(self.data_dir, self.port, self.receivers)
        env = serve_environment(self.log_level, self.http_port)
        started = time.perf_counter()
        with self.log_path.open("ab") as log:
            # cwd: a folder without conf/node.toml, so only the defaults apply
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group, receivers included
            )
        deadline = time.monotonic() + NODE_STARTUP_TIMEOUT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            analysis = str((_health(self.http_port) or {}).get("analysis") or "")
            if (
                analysis
                and "not loaded yet" not in analysis
                and _listening_sockets(self.port) >= self.receivers
                and _echo(self.port, NODE_AE)
            ):
                return time.perf_counter() - started
            time.sleep(0.2)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the node did not start; its log:\n{tail}")

    def kill9(self) -> int:
        """SIGKILL the whole process group; return how many of its processes were
        still alive 5 s later (0 expected)."""
        assert self.proc is not None
        pgid = self.proc.pid
        os.killpg(pgid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None
        deadline = time.monotonic() + 5
        while (alive := _living_in_group(pgid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return alive

    def stop(self) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None
        if _living_in_group(pgid):  # receivers outliving the main process
            with suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)


def _stat_fields(stat: Path) -> list[str]:
    try:
        text = stat.read_text()
    except OSError:
        return []
    return text.rsplit(")", 1)[-1].split()  # after "pid (comm)": state ppid pgrp ...


def _living_in_group(pgid: int) -> int:
    """How many processes of group ``pgid`` exist and are not zombies."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat_fields(stat)
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            count += 1
    return count


# --------------------------------------------------------------------------- one round


@dataclass
class Round:
    round: int
    senders: int
    receivers: int
    images: int
    kill_target_acks: int
    kill_jitter_ms: float
    kill_after_s: float = 0.0
    acks_seen_at_kill: int = 0
    acknowledged: int = 0
    present: int = 0
    missing: int = 0
    differing: int = 0
    stored_not_acknowledged: int = 0
    stored_not_acknowledged_differing: int = 0
    refused: int = 0
    partial_files_after_kill: int = 0
    temporary_files_after_restart: int = 0
    survivors_after_kill: int = 0
    restart_s: float = 0.0
    echo_after_restart: bool = False
    healthz_after_restart: int = 0
    sender_errors: list[str] = field(default_factory=list)
    missing_uids: list[str] = field(default_factory=list)
    differing_uids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.missing == 0
            and self.differing == 0
            and self.acknowledged < self.images  # the kill landed within the burst
            and self.echo_after_restart
            and self.healthz_after_restart == 200
            and self.survivors_after_kill == 0
            and self.temporary_files_after_restart == 0
        )


def _temporary_files(root: Path) -> int:
    return sum(1 for _ in root.rglob(f"{TEMPORARY_PREFIX}*")) if root.is_dir() else 0


def burst(
    node: CrashNode,
    groups: Sequence[Sequence[SentFile]],
    result: Round,
) -> tuple[set[str], list[str]]:
    """Run the senders, kill the node mid-burst; return the acknowledged UIDs and
    the senders' failure reasons."""
    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    go = ctx.Event()
    procs = [
        ctx.Process(target=_sender, args=(i, list(group), node.port, events, go), daemon=True)
        for i, group in enumerate(groups)
    ]
    for proc in procs:
        proc.start()
    acked: set[str] = set()
    errors: list[str] = []
    refused = 0
    done = 0
    ready = 0
    while ready < len(procs):
        _, kind, *_rest = events.get(timeout=120)
        if kind == "ready":
            ready += 1
        else:
            raise RuntimeError(f"unexpected sender event before the start: {kind}")
    go.set()
    started = time.monotonic()
    deadline = started + BURST_TIMEOUT_S
    killed = False

    def handle(event: tuple[int, str, str, object]) -> None:
        nonlocal done, refused
        index, kind, uid, detail = event
        if kind == "ack":
            acked.add(uid)
        elif kind == "fail":
            errors.append(f"sender {index}: {detail}")
            if str(detail).startswith("status"):
                refused += 1
        elif kind == "done":
            done += 1

    while done < len(procs) and time.monotonic() < deadline:
        if not killed and (len(acked) >= result.kill_target_acks or done > 0):
            if done == 0:  # a sender that ended (all sent, or failed) brings the kill forward
                time.sleep(result.kill_jitter_ms / 1000)
            result.kill_after_s = time.monotonic() - started
            result.acks_seen_at_kill = len(acked)
            result.survivors_after_kill = node.kill9()
            killed = True
        try:
            handle(events.get(timeout=0.005 if not killed else 1.0))
        except queue.Empty:
            continue
    if not killed:
        result.kill_after_s = time.monotonic() - started
        result.acks_seen_at_kill = len(acked)
        result.survivors_after_kill = node.kill9()
    for proc in procs:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
            errors.append("a sender hung after the kill")
    while True:  # events still queued
        try:
            handle(events.get_nowait())
        except queue.Empty:
            break
    result.refused = refused
    return acked, errors


def check_store(data_dir: Path, sent: dict[str, SentFile], acked: set[str], result: Round) -> None:
    """Compare every stored instance with the file sent (see the module's docstring)."""
    db = data_dir / "cem-node.db"
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        rows = dict(connection.execute("SELECT sop_instance_uid, file_path FROM instances"))
    for uid, relative in rows.items():
        source = sent.get(uid)
        stored = data_dir / relative
        same = False
        if source is not None and stored.is_file():
            stored_meta, stored_at = split_file(data := stored.read_bytes())
            sent_bytes = Path(source.path).read_bytes()
            _, sent_at = split_file(sent_bytes)
            same = (
                data[stored_at:] == sent_bytes[sent_at:]
                and _uid(stored_meta.get((0x0002, 0x0010))) == source.transfer_syntax_uid
                and _uid(stored_meta.get((0x0002, 0x0003))) == uid
            )
        if uid in acked:
            if not stored.is_file():
                result.missing_uids.append(uid)
            elif not same:
                result.differing_uids.append(uid)
        else:
            result.stored_not_acknowledged += 1
            result.stored_not_acknowledged_differing += not same
    result.missing_uids += sorted(acked - set(rows))
    result.acknowledged = len(acked)
    result.missing = len(result.missing_uids)
    result.differing = len(result.differing_uids)
    result.present = result.acknowledged - result.missing


def run_round(
    number: int,
    files: Sequence[SentFile],
    args: argparse.Namespace,
    rng: random.Random,
    scratch: Path,
) -> Round:
    total = len(files)
    groups = [files[i * args.images : (i + 1) * args.images] for i in range(args.senders)]
    low, high = (max(1, round(total * f)) for f in KILL_AFTER)
    result = Round(
        round=number,
        senders=args.senders,
        receivers=args.receivers or args.senders,
        images=total,
        kill_target_acks=rng.randint(low, max(low, high)),
        kill_jitter_ms=round(rng.uniform(0, args.jitter_ms), 1),
    )
    folder = Path(tempfile.mkdtemp(prefix=f"crash-{number}-", dir=scratch))
    node = CrashNode(folder, receivers=result.receivers, log_level=args.node_log_level)
    try:
        node.start()
        acked, errors = burst(node, groups, result)
        result.sender_errors = sorted(set(errors))
        result.partial_files_after_kill = _temporary_files(node.data_dir)
        result.restart_s = node.start()
        result.echo_after_restart = _echo(node.port, NODE_AE)
        result.healthz_after_restart = _healthz_status(node.http_port)
        result.temporary_files_after_restart = _temporary_files(node.data_dir)
        check_store(node.data_dir, {f.sop_instance_uid: f for f in files}, acked, result)
    finally:
        node.stop()
    if result.ok and not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        console.print(f"  round {number}: kept {folder}")
    return result


# --------------------------------------------------------------------------- report


COLUMNS = (
    ("round", lambda r: str(r.round)),
    ("images", lambda r: str(r.images)),
    ("kill s", lambda r: f"{r.kill_after_s:.2f}"),
    ("acked", lambda r: str(r.acknowledged)),
    ("present", lambda r: str(r.present)),
    ("missing", lambda r: str(r.missing)),
    ("differ", lambda r: str(r.differing)),
    ("unacked", lambda r: str(r.stored_not_acknowledged)),
    ("partial", lambda r: str(r.partial_files_after_kill)),
    ("tmp", lambda r: str(r.temporary_files_after_restart)),
    ("alive", lambda r: str(r.survivors_after_kill)),
    ("restart", lambda r: f"{r.restart_s:.1f} s"),
    ("echo", lambda r: "ok" if r.echo_after_restart else "FAIL"),
    ("healthz", lambda r: str(r.healthz_after_restart)),
    ("verdict", lambda r: "[green]pass[/green]" if r.ok else "[red]FAIL[/red]"),
)
LEGEND = (
    "acked: C-STORE success status received by a sender; present: acked and in the store "
    "(row and file); differ: acked, stored, data set bytes not identical; unacked: stored "
    "but the sender got no status (in flight at the kill); kill s: after the burst's start; "
    "partial: .tmp-* files in the killed node's store; tmp: after the restart (its recovery "
    "deletes them); alive: processes of the node's group 5 s after SIGKILL; restart: until "
    "settled"
)


def report(rounds: Sequence[Round], args: argparse.Namespace) -> None:
    table = Table(
        box=box.SIMPLE_HEAD,
        padding=(0, 0, 0, 1),
        title=f"kill -9 during a {args.senders}-sender burst, {len(rounds)} round(s), "
        f"seed {args.seed}",
    )
    for name, _ in COLUMNS:
        table.add_column(name, justify="left" if name == "round" else "right", no_wrap=True)
    for r in rounds:
        table.add_row(*(cell(r) for _, cell in COLUMNS))
    total = totals(rounds)
    table.add_section()
    table.add_row(
        "total",
        str(total["images"]),
        "",
        str(total["acknowledged"]),
        str(total["present"]),
        str(total["missing"]),
        str(total["differing"]),
        str(total["stored_not_acknowledged"]),
        str(total["partial_files_after_kill"]),
        str(total["temporary_files_after_restart"]),
        str(total["survivors_after_kill"]),
        "",
        f"{total['echo_ok']}/{len(rounds)}",
        f"{total['healthz_200']}/{len(rounds)}",
        "[green]pass[/green]" if total["pass"] else "[red]FAIL[/red]",
    )
    console.print(table)
    console.print(LEGEND)
    for r in rounds:
        if r.missing_uids or r.differing_uids:
            console.print(
                f"round {r.round}: missing {r.missing_uids}, differing {r.differing_uids}"
            )
        if r.stored_not_acknowledged_differing:
            console.print(
                f"round {r.round}: {r.stored_not_acknowledged_differing} stored but "
                "unacknowledged instance(s) differ from what was sent"
            )


def totals(rounds: Sequence[Round]) -> dict[str, int | bool]:
    keys = (
        "images",
        "acknowledged",
        "present",
        "missing",
        "differing",
        "stored_not_acknowledged",
        "stored_not_acknowledged_differing",
        "refused",
        "partial_files_after_kill",
        "temporary_files_after_restart",
        "survivors_after_kill",
    )
    out: dict[str, int | bool] = {k: sum(getattr(r, k) for r in rounds) for k in keys}
    out["echo_ok"] = sum(r.echo_after_restart for r in rounds)
    out["healthz_200"] = sum(r.healthz_after_restart == 200 for r in rounds)
    out["pass"] = all(r.ok for r in rounds)
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="kills (default 5)")
    parser.add_argument("--senders", type=int, default=4, help="concurrent senders (default 4)")
    parser.add_argument(
        "--images", type=int, default=25, help="distinct images per sender (default 25)"
    )
    parser.add_argument(
        "--size",
        choices=["full", "small"],
        default="full",
        help="full: 8.8 MB images (the cache of bench_ingest.py); small: a quarter of the "
        "matrix (0.6 MB)",
    )
    parser.add_argument(
        "--receivers",
        type=int,
        default=None,
        help="the node's receiver processes (serve --receivers; default: one per sender)",
    )
    parser.add_argument("--seed", type=int, default=18, help="seed of the kill moments")
    parser.add_argument(
        "--jitter-ms",
        type=float,
        default=250.0,
        help="the kill comes up to this long after the drawn number of acknowledgements",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=REPO / "bench" / ".cache",
        help="cache of generated images (shared with bench_ingest.py)",
    )
    parser.add_argument(
        "--scratch",
        type=Path,
        default=None,
        help="folder for the nodes' data folders (default: the system's temporary folder)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="processes generating images")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--node-log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    parser.add_argument(
        "--keep", action="store_true", help="keep every round's data folder and log"
    )
    args = parser.parse_args(argv)
    if args.senders < 1 or args.images < 1 or args.rounds < 1:
        parser.error("--senders, --images and --rounds must be at least 1")
    if find_tool("echoscu") is None:
        parser.error("echoscu not found: install dcmtk")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rounds; return 0 when nothing acknowledged was lost or changed."""
    args = parse_args(argv)
    count = args.senders * args.images
    if args.size == "full":
        paths = ensure_images(args.work_dir, count, args.jobs)
    else:
        paths = ensure_small_images(args.work_dir, count)
    if len(paths) < count:
        raise SystemExit(f"only {len(paths)} images available")
    warm_page_cache(paths)
    files = [describe(p) for p in paths]
    if len({f.sop_instance_uid for f in files}) != len(files):
        raise SystemExit("the images do not have distinct SOP Instance UIDs")
    megabytes = sum(p.stat().st_size for p in paths) / 1e6
    console.print(f"machine: {machine()}; dcmtk: {dcmtk_version()}")
    console.print(
        f"{args.rounds} round(s): {args.senders} pynetdicom sender(s) x {args.images} "
        f"{args.size} images ({megabytes:.0f} MB per round), node with "
        f"{args.receivers or args.senders} receiver process(es), kill -9 of its process group "
        f"after {KILL_AFTER[0]:.0%}-{KILL_AFTER[1]:.0%} of the images were acknowledged "
        f"+ 0-{args.jitter_ms:.0f} ms, seed {args.seed}"
    )
    scratch = Path(tempfile.mkdtemp(prefix="bench-crash-", dir=args.scratch))
    rng = random.Random(args.seed)
    rounds: list[Round] = []
    started = time.perf_counter()
    try:
        for number in range(1, args.rounds + 1):
            result = run_round(number, files, args, rng, scratch)
            rounds.append(result)
            console.print(
                f"  round {number}/{args.rounds}: killed at {result.kill_after_s:.2f} s "
                f"({result.acks_seen_at_kill} acks seen, target {result.kill_target_acks}); "
                f"{result.acknowledged} acknowledged, {result.missing} missing, "
                f"{result.differing} differing, {result.partial_files_after_kill} partial "
                f"file(s); {'pass' if result.ok else 'FAIL'}"
            )
    finally:
        if not any(scratch.iterdir()):
            scratch.rmdir()
    elapsed = time.perf_counter() - started
    report(rounds, args)
    total = totals(rounds)
    console.print(f"{len(rounds)} round(s) in {elapsed:.0f} s")
    if args.json:
        figures = {
            "machine": machine(),
            "cpu_count": os.cpu_count(),
            "dcmtk": dcmtk_version(),
            "command": "bench/bench_crash.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "senders": args.senders,
            "images_per_sender": args.images,
            "size": args.size,
            "megabytes_per_round": megabytes,
            "receivers": args.receivers or args.senders,
            "seed": args.seed,
            "comparison": "data set bytes after the File Meta Information, plus the stored "
            "Transfer Syntax UID and Media Storage SOP Instance UID",
            "seconds": elapsed,
            "totals": total,
            "rounds": [asdict(r) | {"ok": r.ok} for r in rounds],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        console.print(f"figures written to {args.json}")
    return 0 if total["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
