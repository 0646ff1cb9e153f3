"""Several hosts over one PostgreSQL, each in its own network namespace (#20).

The topology is a small screening centre: a database host, a PACS host
(Orthanc), two node hosts sharing one store directory (as an NFS mount would
be shared), and a modality host (dcmtk's storescu). The nodes run the
test-double analysis (one SR per study round, with a fresh SOP Instance UID:
an analysis or an export done twice shows up at the PACS as a second SR).
Traffic stays inside the lab's namespaces; the lab is removed at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pydicom
import pytest
from sqlalchemy import func, select

from cem_node.store import Instance, Study, StudyState, make_engine, session_factory
from cem_node.synthetic.study import SynthOptions, generate_study
from tests.multihost.lab import Host, Lab, LabOrthanc, LabPostgres, netns_problem
from tests.peers import require_tool

pytestmark = [pytest.mark.tools, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
NODE_PORT = 11112
MODALITY_AE = "MODALITY"
T = TypeVar("T")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    problem = netns_problem()
    if problem is not None:
        if os.environ.get("CEM_NODE_REQUIRE_NETNS") == "1":
            pytest.fail(f"CEM_NODE_REQUIRE_NETNS=1 but {problem}")
        pytest.skip(problem)
    with Lab(["db", "pacs", "node-a", "node-b", "modality", "worker-a", "worker-b"]) as made:
        yield made


def _node_config(
    path: Path,
    host: Host,
    ae_title: str,
    *,
    store: Path,
    db_url: str,
    pacs: LabOrthanc,
    node: str = "",
) -> Path:
    modality = host.lab["modality"].address
    path.write_text(
        f"""
[node]
ae_title = "{ae_title}"
host = "{host.address}"
port = {NODE_PORT}
{node}

[storage]
root = "{store}"
min_free_mb = 0
disk_high_watermark_percent = 99.9

[database]
url = "{db_url}"

[assembly]
quiet_period_s = 2
max_wait_s = 30
check_interval_s = 0.2

[export]
initial_backoff_s = 0.3
max_backoff_s = 1.0

[http]
host = "127.0.0.1"
port = 8765

[logging]
file = "{path.with_suffix(".log")}"

[[peers]]
name = "modality"
ae_title = "{MODALITY_AE}"
host = "{modality}"
port = 104
role = "source"

[[peers]]
name = "pacs"
ae_title = "{pacs.aet}"
host = "{pacs.host}"
port = {pacs.dicom_port}
role = "destination"
"""
    )
    return path


def _echo(modality: Host, node: Host, ae_title: str) -> bool:
    done = modality.run(
        [require_tool("echoscu"), "-aet", MODALITY_AE, "-aec", ae_title, "-to", "2",
         node.address, str(NODE_PORT)],
        timeout_s=15,
    )  # fmt: skip
    return done.returncode == 0


def _send(modality: Host, node: Host, ae_title: str, files: list[Path]) -> subprocess.Popen[str]:
    return modality.popen(
        [require_tool("storescu"), "-nh", "-aet", MODALITY_AE, "-aec", ae_title, "-to", "10",
         node.address, str(NODE_PORT), *map(str, files)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _wait(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")


def _studies(folder: Path, seed: int, count: int) -> tuple[list[list[Path]], list[str]]:
    """``count`` small synthetic studies: their files and Study Instance UIDs."""
    studies = [generate_study(folder, seed, i, SynthOptions(size="small")) for i in range(count)]
    files = [sorted((s / "dicom").glob("*.dcm")) for s in studies]
    uids = [str(pydicom.dcmread(f[0], stop_before_pixels=True).StudyInstanceUID) for f in files]
    return files, uids


def _stop(lab: Lab, processes: dict[str, subprocess.Popen[Any]]) -> None:
    """SIGTERM every node process on its host, SIGKILL those still there after 20 s."""
    for name, proc in processes.items():
        lab[name].kill(proc, signal.SIGTERM)
    for name, proc in processes.items():
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            lab[name].kill(proc)


class Centre:
    """The shared parts of a test: PostgreSQL on host db, Orthanc on host pacs
    (knowing the two receivers), an upgraded database, a shared store, and
    readers of what reached them (from node-a's host)."""

    def __init__(self, lab: Lab, tmp_path: Path) -> None:
        self.lab = lab
        self.postgres = LabPostgres(lab["db"], tmp_path / "db").start()
        self.pacs = LabOrthanc(
            lab["pacs"],
            tmp_path / "pacs",
            modalities={
                "node-a": ("NODE_A", lab["node-a"].address, NODE_PORT),
                "node-b": ("NODE_B", lab["node-b"].address, NODE_PORT),
            },
        ).start()
        self.store = tmp_path / "shared-store"
        self.store.mkdir()
        upgraded = lab["node-a"].run(
            [sys.executable, "-m", "cem_node", "db", "upgrade", "--url", self.postgres.url],
            cwd=REPO,
        )
        assert upgraded.returncode == 0, upgraded.stderr
        # the pool's connections are opened in node-a's namespace, and so are node-a's
        self.engine = lab["node-a"].call(make_engine, self.postgres.url)
        self.sessions = session_factory(self.engine)

    def _read(self, query: Callable[[Any], T]) -> T:
        def read() -> T:
            with self.sessions.begin() as session:
                return query(session)

        return self.lab["node-a"].call(read)

    def stored(self, uid: str) -> int:
        """Instances of study ``uid`` in the database (acknowledged by some receiver)."""
        query = (
            select(func.count())
            .select_from(Instance)
            .join(Study)
            .where(Study.study_instance_uid == uid)
        )
        return int(self._read(lambda session: session.scalar(query)) or 0)

    def states(self) -> dict[str, StudyState]:
        rows = self._read(
            lambda session: session.execute(select(Study.study_instance_uid, Study.state)).all()
        )
        return {uid: state for uid, state in rows}

    def srs_at_pacs(self, uid: str) -> int:
        """SR instances of study ``uid`` at the PACS."""
        series = self.pacs.series_of_study(uid)
        return sum(len(s["Instances"]) for s in series if s["MainDicomTags"]["Modality"] == "SR")

    def close(self) -> None:
        self.engine.dispose()
        self.pacs.stop()
        self.postgres.stop()


def test_two_receiver_hosts_one_database_results_at_the_pacs_exactly_once(
    lab: Lab, tmp_path: Path
) -> None:
    """storescu sends studies to both node hosts; a node host is killed (SIGKILL)
    while a study is on its way to it, and the modality sends the study again to
    the other host: every study is analysed once, its one SR reaches the PACS
    once, and every instance either node acknowledged is in the database."""
    centre = Centre(lab, tmp_path)
    postgres, pacs, store = centre.postgres, centre.pacs, centre.store
    stored, srs_at_pacs = centre.stored, centre.srs_at_pacs

    nodes: dict[str, subprocess.Popen[Any]] = {}
    for name, ae_title in (("node-a", "NODE_A"), ("node-b", "NODE_B")):
        config = _node_config(
            tmp_path / f"{name}.toml",
            lab[name],
            ae_title,
            store=store,
            db_url=postgres.url,
            pacs=pacs,
        )
        # one at a time: a starting node clears the store's temporary files
        nodes[name] = lab[name].popen(
            [sys.executable, "-m", "tests.node_process", str(config), "--pause", "1"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"{name}.err").open("wb"),
        )
        _wait(lambda n=name, a=ae_title: _echo(lab["modality"], lab[n], a), 60, f"{name} up")

    files, uids = _studies(tmp_path / "studies", 20, 3)

    try:
        # one study to each host
        for (name, ae_title), study_files in zip(
            (("node-a", "NODE_A"), ("node-b", "NODE_B")), files[:2], strict=True
        ):
            sent = _send(lab["modality"], lab[name], ae_title, study_files)
            assert sent.wait(60) == 0, sent.stdout.read() if sent.stdout else ""
        for uid in uids[:2]:
            _wait(lambda u=uid: srs_at_pacs(u) >= 1, 90, "the first two studies' SRs")

        # the third: node-a dies (SIGKILL) while the study is on its way to it ...
        sending = _send(lab["modality"], lab["node-a"], "NODE_A", files[2])
        _wait(lambda: stored(uids[2]) >= 2, 60, "node-a acknowledging some of study 3")
        lab["node-a"].kill(nodes["node-a"], signal.SIGKILL)
        acknowledged_by_a = stored(uids[2])
        sending.wait(60)
        # ... and the modality sends it again, to the other host
        retry = _send(lab["modality"], lab["node-b"], "NODE_B", files[2])
        assert retry.wait(60) == 0, retry.stdout.read() if retry.stdout else ""
        _wait(lambda: srs_at_pacs(uids[2]) >= 1, 90, "study 3's SR")
        time.sleep(3)  # time for a duplicate, were there one, to arrive

        assert acknowledged_by_a >= 2
        for uid, study_files in zip(uids, files, strict=True):
            assert stored(uid) == len(study_files)  # nothing acknowledged was lost
            assert srs_at_pacs(uid) == 1, uid  # analysed and exported exactly once
        assert {centre.states()[u] for u in uids} == {StudyState.DONE}
    finally:
        _stop(lab, nodes)
        centre.close()


def test_receivers_and_workers_on_their_own_hosts_a_worker_killed_mid_analysis(
    lab: Lab, tmp_path: Path
) -> None:
    """The scale-out layout: two receiver hosts (receiver, scheduler, exporter) and two
    worker hosts (worker only, no DICOM port), one database, one store. A worker is
    killed (SIGKILL) in the middle of an analysis: its lease (3 s, renewed while it
    lives) runs out, a scheduler hands the study back, and the other worker, woken by
    NOTIFY, analyses it. A receiver is killed mid-burst and the modality sends the
    study again to the other. Every study's SR reaches the PACS exactly once, and
    every acknowledged instance is in the database."""
    centre = Centre(lab, tmp_path)
    postgres, pacs, store = centre.postgres, centre.pacs, centre.store
    stored, srs_at_pacs = centre.stored, centre.srs_at_pacs

    receiving = 'roles = ["receiver", "scheduler", "exporter"]\nrecovery_interval_s = 0.5'
    working = 'roles = ["worker"]\nanalysis_lease_s = 3'
    layout = {
        "node-a": ("NODE_A", receiving),
        "node-b": ("NODE_B", receiving),
        "worker-a": ("WORKER_A", working),
        "worker-b": ("WORKER_B", working),
    }
    processes: dict[str, subprocess.Popen[Any]] = {}
    markers = {name: tmp_path / f"{name}.started" for name in layout}
    for name, (ae_title, roles) in layout.items():
        config = _node_config(
            tmp_path / f"{name}.toml",
            lab[name],
            ae_title,
            store=store,
            db_url=postgres.url,
            pacs=pacs,
            node=roles,
        )
        processes[name] = lab[name].popen(
            [sys.executable, "-m", "tests.node_process", str(config), "--pause", "4",
             "--marker", str(markers[name])],
            cwd=REPO, stdout=subprocess.PIPE, stderr=(tmp_path / f"{name}.err").open("wb"),
            text=True,
        )  # fmt: skip
        ready = processes[name].stdout.readline() if processes[name].stdout else ""
        assert ready.startswith("READY"), (name, (tmp_path / f"{name}.err").read_text()[-3000:])
    for name in ("node-a", "node-b"):
        assert _echo(lab["modality"], lab[name], layout[name][0])
    # a worker host listens for no DICOM
    assert not lab["worker-a"].run(["ss", "-Htln", f"sport = :{NODE_PORT}"]).stdout.strip()

    files, uids = _studies(tmp_path / "studies", 30, 2)

    try:
        sent = _send(lab["modality"], lab["node-a"], "NODE_A", files[0])
        assert sent.wait(60) == 0, sent.stdout.read() if sent.stdout else ""
        # the worker that starts the analysis dies in its middle
        started = _wait(
            lambda: next((n for n in ("worker-a", "worker-b") if markers[n].exists()), None),
            60,
            "an analysis to start",
        )
        lab[started].kill(processes[started], signal.SIGKILL)
        survivor = "worker-b" if started == "worker-a" else "worker-a"
        _wait(lambda: srs_at_pacs(uids[0]) >= 1, 90, "study 1's SR, from the other worker")
        assert markers[survivor].exists()  # the other worker did the analysis again

        # the second study: receiver node-b dies (SIGKILL) mid-burst; the modality sends
        # the study again to node-a, and the surviving worker analyses it
        sending = _send(lab["modality"], lab["node-b"], "NODE_B", files[1])
        _wait(lambda: stored(uids[1]) >= 2, 60, "node-b acknowledging some of study 2")
        lab["node-b"].kill(processes["node-b"], signal.SIGKILL)
        sending.wait(60)
        retry = _send(lab["modality"], lab["node-a"], "NODE_A", files[1])
        assert retry.wait(60) == 0, retry.stdout.read() if retry.stdout else ""
        _wait(lambda: srs_at_pacs(uids[1]) >= 1, 90, "study 2's SR")
        time.sleep(5)  # a lease's worth: a duplicate, were there one, would arrive
        for uid, study_files in zip(uids, files, strict=True):
            assert stored(uid) == len(study_files)  # nothing acknowledged was lost
            assert srs_at_pacs(uid) == 1, uid  # analysed and exported exactly once
    finally:
        _stop(lab, processes)
        centre.close()
