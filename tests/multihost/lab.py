"""Several hosts on one machine: Linux network namespaces joined by a bridge.

A :class:`Lab` makes one namespace per host and one more that holds the
bridge (the "switch"), each host linked to it by a veth pair, with an
address in a small subnet of its own. Nothing touches the machine's own
network namespace: its interfaces, routes and loopback stay as they were,
and traffic between the hosts never leaves the switch. Everything is
removed when the lab closes (its processes killed first), also after a
failed test.

The test process reaches a host in two ways: :meth:`Host.popen` runs a
program inside the host's namespace (``ip netns exec``), and
:meth:`Host.call` runs a Python function in a thread that has joined the
namespace (``setns(2)``), so that the sockets it opens (an HTTP request to
Orthanc, a database connection) are that host's.

Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) and the ``ip`` tool; the
tests skip, or fail under ``CEM_NODE_REQUIRE_NETNS=1``, without them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from tests.peers import OrthancServer

T = TypeVar("T")

_CLONE_NEWNET = 0x40000000
#: a subnet for the lab's hosts only: it exists inside the lab's namespaces, nowhere else
DEFAULT_SUBNET = "10.231.0.0/24"
_COMMAND_TIMEOUT_S = 20


class LabUnavailableError(RuntimeError):
    """Network namespaces cannot be made here (not root, no ``ip``, a sandbox)."""


def _run(*args: str) -> None:
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")


def netns_problem() -> str | None:
    """Why a lab cannot be made here, or None when it can (tried, then removed)."""
    if shutil.which("ip") is None:
        return "the ip tool (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    name = f"cemprobe{os.getpid()}"
    try:
        _run("ip", "netns", "add", name)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace: {exc}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    return None


class Host:
    """One host of a :class:`Lab`: a network namespace with one address."""

    def __init__(self, lab: Lab, name: str, namespace: str, address: str) -> None:
        self.lab = lab
        self.name = name
        self.namespace = namespace
        self.address = address
        self._processes: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.address})"

    def popen(self, command: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``command`` inside this host (its own process group, killed with the lab)."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(["ip", "netns", "exec", self.namespace, *command], **kwargs)
        self._processes.append(proc)
        return proc

    def run(
        self, command: Sequence[str], *, timeout_s: float = 60, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` inside this host to its end and return its result (text)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace, *command],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            stdin=subprocess.DEVNULL,
            **kwargs,
        )

    def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``function(*args, **kwargs)`` in a thread inside this host's namespace.

        The thread joins the namespace with ``setns(2)`` (a per-thread
        property), so the sockets the function opens belong to this host.
        """
        result: Future[T] = Future()

        def inside() -> None:
            fd = os.open(f"/run/netns/{self.namespace}", os.O_RDONLY)
            try:
                if _libc().setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {self.namespace}: {os.strerror(err)}")
            finally:
                os.close(fd)
            try:
                result.set_result(function(*args, **kwargs))
            except BaseException as exc:  # handed to the caller
                result.set_exception(exc)

        thread = threading.Thread(target=inside, name=f"in-{self.name}", daemon=True)
        thread.start()
        thread.join()
        return result.result()

    def kill(self, proc: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process group of ``proc`` (started by :meth:`popen`)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def stop_all(self, timeout_s: float = 10) -> None:
        """Stop every process started here: SIGTERM, then SIGKILL after ``timeout_s``."""
        for proc in self._processes:
            if proc.poll() is None:
                self.kill(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self._processes:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(proc, signal.SIGKILL)
                proc.wait(timeout=5)
        self._processes.clear()


_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


class Lab:
    """Hosts in network namespaces on one bridge, removed on :meth:`close`.

    Parameters
    ----------
    names
        The hosts to make, in order (their addresses follow: .2, .3, ...).
    subnet
        An IPv4 /24 (or larger) used only inside the lab.

    Examples
    --------
    >>> with Lab(["db", "node1"]) as lab:  # doctest: +SKIP
    ...     lab["node1"].run(["ping", "-c1", lab["db"].address])
    """

    def __init__(self, names: Sequence[str], *, subnet: str = DEFAULT_SUBNET) -> None:
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"host names must be unique and at least one: {list(names)}")
        network = ipaddress.ip_network(subnet)
        if network.num_addresses < len(names) + 3:
            raise ValueError(f"{subnet} is too small for {len(names)} hosts")
        self.prefix = f"cl{uuid.uuid4().hex[:6]}"  # short: interface names are <= 15 bytes
        self.switch = f"{self.prefix}-sw"
        self.network = network
        self.hosts: dict[str, Host] = {}
        self._names = list(names)
        self._made: list[str] = []
        self._cleanups: list[Callable[[], None]] = []

    def on_close(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` when the lab closes (after its processes were stopped)."""
        self._cleanups.append(cleanup)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> Lab:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> Lab:
        """Make the switch and the hosts."""
        problem = netns_problem()
        if problem is not None:
            raise LabUnavailableError(problem)
        try:
            self._add_namespace(self.switch)
            _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
            _run("ip", "-n", self.switch, "link", "set", "br0", "up")
            addresses = self.network.hosts()
            next(addresses)  # .1 stays free (a gateway nobody needs)
            for index, name in enumerate(self._names):
                namespace = f"{self.prefix}-{index}"
                self._add_namespace(namespace)
                address = str(next(addresses))
                host_end, switch_end = f"{self.prefix}h{index}", f"{self.prefix}s{index}"
                _run(
                    "ip", "link", "add", host_end, "netns", namespace,
                    "type", "veth", "peer", "name", switch_end, "netns", self.switch,
                )  # fmt: skip
                _run("ip", "-n", self.switch, "link", "set", switch_end, "master", "br0")
                _run("ip", "-n", self.switch, "link", "set", switch_end, "up")
                _run("ip", "-n", namespace, "link", "set", host_end, "name", "eth0")
                _run(
                    "ip", "-n", namespace, "addr", "add",
                    f"{address}/{self.network.prefixlen}", "dev", "eth0",
                )  # fmt: skip
                _run("ip", "-n", namespace, "link", "set", "eth0", "up")
                _run("ip", "-n", namespace, "link", "set", "lo", "up")
                self.hosts[name] = Host(self, name, namespace, address)
        except BaseException:
            self.close()
            raise
        return self

    def _add_namespace(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self._made.append(name)

    def close(self) -> None:
        """Stop every host's processes and remove the namespaces (and so the links)."""
        for host in self.hosts.values():
            host.stop_all()
        for name in reversed(self._made):
            # a process that escaped its group would keep the namespace alive
            pids = subprocess.run(
                ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
            ).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        self._made.clear()
        self.hosts.clear()
        while self._cleanups:
            self._cleanups.pop()()


def run_as(user: str) -> list[str]:
    """A command prefix that runs the rest as ``user`` (PostgreSQL refuses root)."""
    return ["runuser", "-u", user, "--"]


def owned_folder(parent: Path, name: str, user: str) -> Path:
    """A fresh folder under ``parent`` (which ``user`` can traverse) owned by ``user``."""
    folder = parent / name
    folder.mkdir(exist_ok=False)
    shutil.chown(folder, user=user)
    folder.chmod(0o700)
    return folder


# --------------------------------------------------------------------------- services


class LabPostgres:
    """A PostgreSQL server of its own on a lab host (initdb in ``folder``), trusting the
    lab's subnet only, until :meth:`stop`."""

    PORT = 5432

    def __init__(self, host: Host, folder: Path) -> None:
        self.host = host
        self.folder = folder
        self.bin = _postgres_bin()
        self._proc: subprocess.Popen[Any] | None = None

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the server's ``postgres`` database, for the lab's hosts."""
        return f"postgresql+psycopg://postgres@{self.host.address}:{self.PORT}/postgres"

    def start(self, timeout_s: float = 60) -> LabPostgres:
        # outside pytest's temporary tree, whose folders pytest keeps private to root
        self._scratch = Path(tempfile.mkdtemp(prefix="cem-lab-pg-"))
        self._scratch.chmod(0o711)
        # removed with the lab too, should the test end before it stops the server
        self.host.lab.on_close(lambda folder=self._scratch: shutil.rmtree(folder, True))
        data = owned_folder(self._scratch, "pgdata", "postgres")
        sockets = owned_folder(self._scratch, "pgsocket", "postgres")
        self.folder.mkdir(parents=True, exist_ok=True)
        initdb = subprocess.run(
            [*run_as("postgres"), str(self.bin / "initdb"), "-D", str(data), "-A", "trust",
             "-U", "postgres", "--no-sync"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed: {initdb.stderr[-2000:]}")
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {self.host.lab.network} trust\n")
        self._log = (self.folder / "postgres.log").open("ab")
        self._proc = self.host.popen(
            [*run_as("postgres"), str(self.bin / "postgres"), "-D", str(data),
             "-c", f"listen_addresses={self.host.address}", "-c", f"port={self.PORT}",
             "-c", f"unix_socket_directories={sockets}", "-c", "fsync=off",
             "-c", "max_connections=200"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.folder / 'postgres.log').read_text()}")
            ready = self.host.run(
                [str(self.bin / "pg_isready"), "-h", self.host.address, "-p", str(self.PORT)]
            )
            if ready.returncode == 0:
                return self
            time.sleep(0.3)
        raise RuntimeError("postgres did not become ready")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self.host.kill(self._proc, signal.SIGINT)  # fast shutdown
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.host.kill(self._proc)
        self._proc = None
        if getattr(self, "_scratch", None) is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        raise LabUnavailableError("PostgreSQL server binaries are not installed")
    return found[-1].parent


class LabOrthanc(OrthancServer):
    """Orthanc on a lab host: its DICOM port on the host's address, its REST API
    reached from inside the host (on the host's own loopback)."""

    def __init__(self, lab_host: Host, workdir: Path, **kwargs: Any) -> None:
        super().__init__(workdir, **kwargs)
        self.lab_host = lab_host
        self.host = lab_host.address
        self.dicom_port, self.http_port = 4242, 8042  # the host's own ports

    def _spawn(self, command: list[str], log: Any) -> subprocess.Popen[bytes]:
        return self.lab_host.popen(command, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)

    def _dicom_listening(self) -> None:
        self.lab_host.call(super()._dicom_listening)  # the port is on the lab host

    def _request(self, method: str, path: str, body: Any = None, *, timeout_s: float = 10.0) -> Any:
        request = super()._request  # in the host's namespace, on its loopback
        return self.lab_host.call(request, method, path, body, timeout_s=timeout_s)
