"""``cem-node serve`` as an administrator runs it: embedded defaults, no config file."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from cem_node.store import AuditEvent, make_engine, session_factory
from cem_node.synthetic.study import SynthOptions, generate_study
from tests.conftest import assert_no_patient_identifiers
from tests.peers import echoscu, free_port, storescu
from tests.test_node import wait_until

pytestmark = pytest.mark.tools


def cem_node(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cem_node", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def start_serve(
    tmp_path: Path, data: Path, port: int, *options: str, stderr: int | None = subprocess.DEVNULL
) -> subprocess.Popen[str]:
    """``cem-node serve`` on loopback in a folder without a config file (embedded
    defaults), with a fast assembly and no free-space minimum."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CEM_NODE_")}
    env["CEM_NODE_ASSEMBLY__QUIET_PERIOD_S"] = "1"
    # how long a study without its recombined images waits for them
    env["CEM_NODE_ASSEMBLY__MAX_WAIT_S"] = "3"
    env["CEM_NODE_ASSEMBLY__CHECK_INTERVAL_S"] = "0.2"
    env["CEM_NODE_STORAGE__MIN_FREE_MB"] = "0"
    command = [sys.executable, "-m", "cem_node", "serve", "--data-dir", str(data)]
    command += ["--port", str(port), "--host", "127.0.0.1", *options]
    return subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True
    )


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_serve_with_embedded_defaults(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    proc = start_serve(
        tmp_path, data, port, "--ae-title", "MY_NODE", "--log-json", stderr=subprocess.PIPE
    )
    try:
        # listening, not merely started: a refused C-ECHO also fails before the node
        # listens, and then no refusal would be logged (a race seen under load)
        wait_until(lambda: _listening(port) and (data / "cem-node.db").exists(), what="listening")
        # nobody is a source yet: rejected; an administrator adds the modality
        assert echoscu(port=port, called_ae="MY_NODE", calling_ae="SENO").returncode != 0
        added = cem_node(
            "--data-dir",
            str(data),
            "peers",
            "add",
            "seno",
            "--ae-title",
            "SENO",
            "--host",
            "127.0.0.1",
            "--port",
            "104",
            "--role",
            "source",
            cwd=tmp_path,
        )
        assert added.returncode == 0, added.stderr
        wait_until(
            lambda: echoscu(port=port, called_ae="MY_NODE", calling_ae="SENO").returncode == 0,
            what="the new source accepted without a restart",
        )
        study = generate_study(tmp_path / "s", 3, 0, SynthOptions(size="small"))
        low_energy = sorted((study / "dicom").glob("LE_*.dcm"))
        assert (
            storescu(low_energy, port=port, called_ae="MY_NODE", calling_ae="SENO").returncode == 0
        )

        def listed() -> list[dict[str, object]]:
            out = cem_node("--data-dir", str(data), "studies", "list", "--json", cwd=tmp_path)
            rows = json.loads(out.stdout) if out.returncode == 0 else []
            return [r for r in rows if r["state"] == "not_analysable"]

        (row,) = wait_until(listed, what="the study reported not analysable")
        assert row["instances"] == len(low_energy)
        shown = cem_node(
            "--data-dir", str(data), "studies", "show", str(row["study_instance_uid"]), cwd=tmp_path
        )
        assert shown.returncode == 0
        assert "no recombined image" in shown.stdout and "low_energy" in shown.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr[-2000:]
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    messages = [r["message"] for r in records]
    # every line the served node logged, its libraries' warnings included (#19)
    assert_no_patient_identifiers(stderr.splitlines(), where="the served node's log")
    assert any("serving AE MY_NODE" in m for m in messages)
    # before the source was added, its address was closed at accept, and said why
    assert any("refused (accept)" in m and "no source peer allows" in m for m in messages)
    assert messages[-1] == "cem-node stopped"


def test_extra_receiver_processes_share_the_port_and_die_with_the_node(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    log = (tmp_path / "node.log").open("w")
    proc = start_serve(
        tmp_path, data, port, "--accept-unknown-sources", "--receivers", "2", stderr=log.fileno()
    )
    try:
        study = generate_study(tmp_path / "s", 4, 0, SynthOptions(size="small"))
        files = sorted((study / "dicom").glob("*.dcm"))
        wait_until(
            lambda: echoscu(port=port, called_ae="CEM_NODE", calling_ae="X").returncode == 0,
            what="the node listening",
        )
        time.sleep(2)  # the extra receiver binds the port a moment after the main process
        for round_ in range(3):  # 12 associations: the kernel spreads them over both
            for f in files[:4]:
                sent = storescu([f], port=port, called_ae="CEM_NODE", calling_ae=f"MOD{round_}")
                assert sent.returncode == 0, sent.stderr
        engine = make_engine(f"sqlite:///{data / 'cem-node.db'}")
        with session_factory(engine).begin() as session:
            actors = set(
                session.scalars(
                    select(AuditEvent.actor).where(AuditEvent.event_type == "association")
                )
            )
        engine.dispose()
        assert len(actors) == 2 and any(a.endswith("/r1") for a in actors), actors
        children = subprocess.run(
            ["pgrep", "-f", "cem_node.receiver"], capture_output=True, text=True, check=False
        ).stdout.split()
        assert children
    finally:
        proc.kill()  # like kill -9: the receiver must not outlive the node
        proc.wait(10)
        log.close()
    lines = (tmp_path / "node.log").read_text(errors="replace").splitlines()
    assert_no_patient_identifiers(lines, where="the served node's log")
    wait_until(
        lambda: all(not Path(f"/proc/{pid}").exists() for pid in children),
        what="the extra receiver to exit with its parent",
    )
