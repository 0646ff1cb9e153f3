"""A node under attack: a real ``cem-node serve`` process and the tools to hurt it.

Everything stays on loopback (127.0.0.0/8: the attacker binds its sockets to
127.0.0.2, 127.0.0.3 ... to look like other hosts), every loop is bounded in
count and time, and every socket is closed by the context managers.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom.dimse_primitives import C_STORE

from tests.peers import echoscu, free_port
from tests.proc_memory import status_mib

REPO = Path(__file__).resolve().parents[2]
NODE_AE = "CEM_NODE"
#: The legitimate modality: allowed from 127.0.0.1.
MODALITY_AE = "MODALITY"
#: A second source peer, allowed from 127.0.0.2 only (the "allowed idle" host).
WARD_AE = "WARD"
WARD_HOST = "127.0.0.2"
#: An address that no source peer allows.
STRANGER_HOST = "127.0.0.3"
PDU_HEADER = struct.Struct(">BBL")


@dataclass
class NodeOptions:
    """What differs between the attacked nodes (everything else is the test default)."""

    tls: Path | None = None  # a folder with server.crt, server.key (and ca.pem)
    node: dict[str, Any] | None = None  # extra [node] keys
    storage: dict[str, Any] | None = None  # extra [storage] keys
    destinations: Sequence[tuple[str, str, int]] = ()  # (AE, host, port)
    artim_timeout_s: float | None = 2.0  # None: the default (and a config older nodes read)
    code: Path | None = None  # run the node from another checkout's src/ (bench: before/after)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    return repr(value)


class AttackedNode:
    """``cem-node --config node.toml serve`` on 127.0.0.1 with the shipped bundle.

    Its sources: ``MODALITY`` from 127.0.0.1 and ``WARD`` from 127.0.0.2; the
    allow-list is on (``accept_unknown_sources = false``).
    """

    def __init__(self, workdir: Path, options: NodeOptions | None = None) -> None:
        self.options = options or NodeOptions()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.http_port = free_port()
        self.root = workdir / "store"
        self.log = workdir / "node.log"
        self.config = workdir / "node.toml"
        node = {
            "ae_title": NODE_AE,
            "host": "127.0.0.1",
            "port": self.port,
            **(
                {"artim_timeout_s": self.options.artim_timeout_s}
                if self.options.artim_timeout_s is not None
                else {}
            ),
            **(self.options.node or {}),
        }
        storage = {"root": self.root, "min_free_mb": 0, **(self.options.storage or {})}
        lines = ["[node]", *(f"{k} = {_toml_value(v)}" for k, v in node.items())]
        lines += ["[storage]", *(f"{k} = {_toml_value(v)}" for k, v in storage.items())]
        lines += ["[assembly]", "quiet_period_s = 3600", "max_wait_s = 7200"]
        lines += ["[export]", "initial_backoff_s = 0.2", "max_backoff_s = 0.5"]
        lines += ["[http]", f"port = {self.http_port}"]
        lines += ["[logging]", "json = true", f"file = {_toml_value(self.log)}"]
        if self.options.tls is not None:
            pki = self.options.tls
            lines += ["[tls]", "enabled = true"]
            lines += [
                f'certificate = "{pki / "server.crt"}"',
                f'private_key = "{pki / "server.key"}"',
            ]
        for name, ae, host in (
            ("modality", MODALITY_AE, "127.0.0.1"),
            ("ward", WARD_AE, WARD_HOST),
        ):
            lines += ["[[peers]]", f'name = "{name}"', f'ae_title = "{ae}"', f'host = "{host}"']
            lines += ["port = 104", 'role = "source"']
        for i, (ae, host, port) in enumerate(self.options.destinations):
            lines += ["[[peers]]", f'name = "pacs{i}"', f'ae_title = "{ae}"', f'host = "{host}"']
            lines += [f"port = {port}", 'role = "destination"']
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout_s: float = 90.0, *, healthy: bool = True) -> AttackedNode:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CEM_NODE_")}
        if self.options.code is not None:
            env["PYTHONPATH"] = str(self.options.code / "src")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cem_node", "--config", str(self.config), "serve"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            return self._wait_settled(timeout_s, healthy=healthy)
        except BaseException:
            self.stop()  # never leave a node behind
            raise

    def _wait_settled(self, timeout_s: float, *, healthy: bool) -> AttackedNode:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the node exited with {self.proc.returncode}: {self.log_tail()}"
                )
            code, body = self.health()
            # settled: the bundle is loaded (its import grows the process by ~1 GB)
            answered = code == 200 or (code != 0 and not healthy)
            if answered and "not loaded yet" not in str(body.get("analysis") or ""):
                time.sleep(0.5)
                return self
            time.sleep(0.2)
        raise RuntimeError(f"the node did not become healthy: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # ------------------------------------------------------------------ observations

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mb(self) -> float:
        """Resident memory of the node process (MiB, from /proc)."""
        assert self.proc is not None
        rss = status_mib(self.proc.pid, "VmRSS")
        if rss is None:
            raise RuntimeError("no VmRSS")
        return rss

    def health(self) -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{self.http_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")
        except (OSError, ValueError):
            return 0, {}

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    def echo_seconds(self, *, calling_ae: str = MODALITY_AE, extra: Sequence[str] = ()) -> float:
        """Wall time of a C-ECHO by dcmtk's echoscu from 127.0.0.1; inf if it failed."""
        started = time.perf_counter()
        try:
            done = echoscu(port=self.port, called_ae=NODE_AE, calling_ae=calling_ae, extra=extra)
        except subprocess.TimeoutExpired:  # echoscu itself hung (a stuck TLS accept)
            return float("inf")
        elapsed = time.perf_counter() - started
        return elapsed if done.returncode == 0 else float("inf")

    def audit(self, event_type: str | None = None) -> list[dict[str, Any]]:
        """The node's audit rows (read-only), oldest first."""
        db = self.root / "cem-node.db"
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as c:
            c.row_factory = sqlite3.Row
            query = "SELECT * FROM audit_events"
            rows = c.execute(
                query + (" WHERE event_type = ?" if event_type else "") + " ORDER BY id",
                (event_type,) if event_type else (),
            ).fetchall()
        return [dict(r) for r in rows]


@contextlib.contextmanager
def attacked_node(
    workdir: Path, options: NodeOptions | None = None, *, healthy: bool = True
) -> Iterator[AttackedNode]:
    node = AttackedNode(workdir, options).start(healthy=healthy)
    try:
        yield node
    finally:
        node.stop()


# ---------------------------------------------------------------------- raw connections


@contextlib.contextmanager
def connections(
    port: int, count: int, *, source: str = "127.0.0.1", payload: bytes = b""
) -> Iterator[list[socket.socket]]:
    """``count`` TCP connections to the node from ``source``, each sending ``payload``
    (then nothing); closed on exit. Connections the node refuses at once are kept too."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(5)
            sock.bind((source, 0))
            try:
                sock.connect(("127.0.0.1", port))
                if payload:
                    sock.sendall(payload)
            except OSError:
                pass  # refused or reset: the node's right
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def closed_by_peer(sock: socket.socket, within_s: float) -> bool:
    """Whether the peer closed (EOF or reset) within ``within_s``; what it sent first is read."""
    deadline = time.monotonic() + within_s
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False


def raw_c_store(
    assoc: Any,
    context_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    dataset: bytes,
    *,
    message_id: int = 1,
) -> Any:
    """Send ``dataset`` (encoded bytes, as they are) in a C-STORE-RQ; return the
    response primitive, or None when none came (the association ended).

    pynetdicom's own ``send_c_store`` decodes what it sends (and refuses
    broken bytes, or an over-long UID); this writes the command by hand and
    hands the bytes to the DIMSE layer, pausing the requestor's reactor as
    pynetdicom's ``send_c_*`` do, so that it does not take the response.
    """
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = sop_class_uid
    request.AffectedSOPInstanceUID = "1.2.3"
    request._affected_sop_instance_uid = sop_instance_uid  # past the setter's checks
    request.Priority = 0
    request.DataSet = io.BytesIO(dataset)
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused and assoc.is_established:
        time.sleep(0.001)
    try:
        assoc.dimse.send_msg(request, context_id)
        _, response = assoc.dimse.get_msg(block=True)
        return response
    finally:
        assoc._reactor_checkpoint.set()


def pdu_header(pdu_type: int, length: int) -> bytes:
    return PDU_HEADER.pack(pdu_type, 0, length)


def reasons(rows: Sequence[dict[str, Any]]) -> list[str]:
    return [str(r.get("message") or "") for r in rows]
