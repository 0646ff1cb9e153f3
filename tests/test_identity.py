"""Node identity (#20, observation 3): unique by default, persisted in the store,
held while the node runs, on SQLite (a file lock) and PostgreSQL (an advisory
lock held by the process's connection, so on any host)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from cem_node.config import Settings
from cem_node.node import Node
from cem_node.store import make_engine, upgrade
from cem_node.store.identity import IdentityInUseError, hold_identity
from tests.analysis_double import DoubleAnalyser

LOOPBACK = "127.0.0.1"


def node_settings(root: Path, url: str) -> Settings:
    """One node's settings: the same host name, AE title and port for every node."""
    if url.startswith("postgresql"):  # a shared database is upgraded by an admin
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
    settings = Settings.defaults()
    settings.storage.root = root
    settings.storage.min_free_mb = 0
    settings.storage.disk_high_watermark_percent = 99.99
    settings.database.url = url
    settings.node.host = LOOPBACK
    settings.node.port = 0
    settings.http.enabled = False
    return settings


class Nodes:
    """Nodes started by a test, stopped once (at the latest at its end)."""

    def __init__(self) -> None:
        self.running: list[Node] = []

    def start(self, settings: Settings, node_id: str | None = None) -> Node:
        node = Node(settings, analyser=DoubleAnalyser(), node_id=node_id)
        self.running.append(node)
        node.start()
        return node

    def stop(self, node: Node) -> None:
        self.running.remove(node)
        node.stop()


@pytest.fixture
def nodes() -> Iterator[Nodes]:
    made = Nodes()
    yield made
    for node in list(made.running):
        made.stop(node)


def test_nodes_with_the_same_host_ae_and_port_get_different_identities(
    tmp_path: Path, db_url: str, nodes: Nodes
) -> None:
    """Two containers with one host name on one store and database: before, both
    were '<host>:CEM_NODE:<port>' and took each other's claims at start-up."""
    settings = node_settings(tmp_path / "store", db_url)
    first = nodes.start(settings)
    second = nodes.start(settings)
    host = socket.gethostname()
    assert first.node_id != second.node_id
    assert first.node_id.startswith(f"{host}-") and second.node_id.startswith(f"{host}-")
    # persisted in the store: the second, restarted, is itself again (the first still runs)
    nodes.stop(second)
    assert nodes.start(settings).node_id == second.node_id
    recorded = sorted(
        p.read_text().strip() for p in (tmp_path / "store" / "nodes").glob("*/node-id")
    )
    assert recorded == sorted([first.node_id, second.node_id])


def test_a_second_node_with_an_identity_in_use_is_refused(
    tmp_path: Path, db_url: str, nodes: Nodes
) -> None:
    first = nodes.start(node_settings(tmp_path / "store", db_url), node_id="reader-1")
    # on PostgreSQL another host (its own store folder) is refused as well
    other_root = tmp_path / ("other" if db_url.startswith("postgresql") else "store")
    second = Node(node_settings(other_root, db_url), node_id="reader-1")
    with pytest.raises(IdentityInUseError, match=r"node identity 'reader-1' is already held"):
        second.start()
    second.stop()  # nothing was started
    nodes.stop(first)
    assert nodes.start(node_settings(other_root, db_url), node_id="reader-1").node_id == "reader-1"


def test_the_configured_identity_is_used_and_refused_twice(tmp_path: Path, nodes: Nodes) -> None:
    """[node] id (and `serve --node-id`, which sets it) names the node."""
    settings = node_settings(tmp_path / "store", f"sqlite:///{tmp_path / 'node.db'}")
    settings.node.id = "site-worker-1"
    assert nodes.start(settings).node_id == "site-worker-1"
    with pytest.raises(IdentityInUseError, match="site-worker-1"):
        Node(settings, analyser=DoubleAnalyser()).start()
    with pytest.raises(ValueError, match="id"):
        settings.node.id = "../escape"  # names a folder: no path separators


def test_serve_node_id_is_refused_when_invalid(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cem_node", "--data-dir", str(tmp_path), "serve",
         "--node-id", "a/b"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "id" in done.stderr


_HOLDER = """
import sys, time
from pathlib import Path
from cem_node.store.identity import hold_identity
from cem_node.store import make_engine
identity = hold_identity(make_engine(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
print(identity.node_id, flush=True)
time.sleep(120)
"""


def test_a_killed_node_frees_its_identity(tmp_path: Path, db_url: str) -> None:
    """kill -9: the file lock or the database session dies with the process."""
    engine = make_engine(db_url)
    upgrade(engine)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, db_url, str(tmp_path), "worker-7"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "worker-7"
        with pytest.raises(IdentityInUseError, match="worker-7"):
            hold_identity(engine, tmp_path, "worker-7")
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    deadline = time.monotonic() + 10
    while True:  # PostgreSQL ends the session once it reads the closed socket
        try:
            identity = hold_identity(engine, tmp_path, "worker-7")
            break
        except IdentityInUseError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert identity.node_id == "worker-7"
    identity.release()
    engine.dispose()


@pytest.mark.postgres
def test_an_identity_whose_database_session_was_lost_is_taken_again(
    tmp_path: Path, postgres_url: str
) -> None:
    """PostgreSQL restarted or the connection was cut: the lock went with the session."""
    engine = make_engine(postgres_url)
    upgrade(engine)
    identity = hold_identity(engine, tmp_path, "exporter-2")

    def cut_the_session() -> None:
        with engine.connect() as admin:
            admin.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
                )
            )
            admin.commit()

    cut_the_session()
    assert identity.keep()  # taken again on a new session
    with pytest.raises(IdentityInUseError):
        hold_identity(engine, tmp_path, "exporter-2")
    cut_the_session()
    intruder = hold_identity(engine, tmp_path, "exporter-2")  # before this node checked
    assert not identity.keep()
    intruder.release()
    identity.release()
    engine.dispose()
