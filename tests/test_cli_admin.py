"""Administration commands: ``peers``, ``echo``, ``studies``, and ``--data-dir``.

Every test runs the real CLI on its own embedded SQLite database under
``--data-dir``; studies are stored through the real ingest path, queued by
the assembler and failed by the worker (no model).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner, Result

from cem_node.cli import app
from cem_node.cli.context import CliContext
from cem_node.jobs.rounds import open_round
from cem_node.store import AuditEvent, Instance, InstanceFileStore, head_revision
from cem_node.store import upgrade as upgrade_schema
from cem_node.store.ingest import DiskGuard, IngestOutcome, InstanceIngestor, ReceivedFrom
from cem_node.synthetic import SynthOptions
from cem_node.synthetic.study import generate_study
from tests.peers import DcmtkStoreSCP, free_port

runner = CliRunner()


@pytest.fixture(autouse=True)
def _hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ./conf/node.toml and no CEM_NODE_* overrides from the developer's shell."""
    monkeypatch.chdir(tmp_path)
    for var in list(os.environ):
        if var.upper().startswith("CEM_NODE_") and var.upper() != "CEM_NODE_REQUIRE_TOOLS":
            monkeypatch.delenv(var)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def cli(data_dir: Path, *args: str, config: Path | None = None) -> Result:
    argv = ["--data-dir", str(data_dir)]
    if config is not None:
        argv += ["--config", str(config)]
    return runner.invoke(app, [*argv, *args])


def add_peer(data_dir: Path, name: str, *extra: str, **options: object) -> Result:
    values = {"ae_title": "PACS", "host": "127.0.0.1", "port": 11112, "role": "destination"}
    values.update(options)
    argv = [f"--{key.replace('_', '-')}={value}" for key, value in values.items()]
    return cli(data_dir, "peers", "add", name, *argv, *extra)


def peers_json(data_dir: Path, config: Path | None = None) -> list[dict[str, object]]:
    result = cli(data_dir, "peers", "list", "--json", config=config)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def config_with_peer(tmp_path: Path) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        '[[peers]]\nname = "seno"\nae_title = "SENO_PRISTINA"\nhost = "192.0.2.10"\n'
        'port = 104\nrole = "source"\n'
    )
    return path


# --------------------------------------------------------------------------- --data-dir, schema


def test_data_dir_holds_the_embedded_database(data_dir: Path) -> None:
    result = cli(data_dir, "peers", "list")
    assert result.exit_code == 0, result.output
    assert "No peers yet" in result.output
    assert (data_dir / "cem-node.db").is_file()
    # db commands see the same database
    result = cli(data_dir, "db", "current", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["up_to_date"] is True


def test_an_older_sqlite_schema_is_upgraded_on_the_spot(data_dir: Path) -> None:
    url = f"sqlite:///{data_dir / 'cem-node.db'}"
    data_dir.mkdir()
    upgrade_schema(url, "0001")
    assert cli(data_dir, "peers", "list").exit_code == 0
    result = cli(data_dir, "db", "current", "--json")
    assert json.loads(result.stdout)["current"] == head_revision()


def test_a_schema_from_a_newer_version_is_refused(data_dir: Path) -> None:
    context = CliContext(data_dir=data_dir)
    with context.sessions().begin() as session:
        session.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    context.close()
    result = cli(data_dir, "peers", "list")
    assert result.exit_code == 2, result.output
    assert "newer cem-node" in result.output


# --------------------------------------------------------------------------- peers


def test_peers_add_list_remove_round_trip(data_dir: Path) -> None:
    result = add_peer(data_dir, "pacs", description="main PACS")
    assert result.exit_code == 0, result.output
    assert "Added destination pacs: PACS@127.0.0.1:11112" in result.output
    result = add_peer(
        data_dir, "seno", ae_title="SENO_PRISTINA", host="10.1.2.0/24", port=104, role="source"
    )
    assert result.exit_code == 0, result.output

    peers = peers_json(data_dir)
    assert [p["name"] for p in peers] == ["pacs", "seno"]
    pacs = peers[0]
    assert pacs == {
        "name": "pacs",
        "ae_title": "PACS",
        "host": "127.0.0.1",
        "port": 11112,
        "role": "destination",
        "tls": False,
        "objects": None,
        "origin": "database",
        "description": "main PACS",
    }
    assert peers[1]["role"] == "source"

    result = cli(data_dir, "peers", "list")
    assert result.exit_code == 0, result.output
    for expected in ("pacs", "seno", "SENO_PRISTINA", "destination", "database"):
        assert expected in result.output

    result = cli(data_dir, "peers", "remove", "pacs")
    assert result.exit_code == 0, result.output
    assert [p["name"] for p in peers_json(data_dir)] == ["seno"]

    # both changes are audited with the administrator's name
    context = CliContext(data_dir=data_dir)
    with context.sessions().begin() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.event_type.in_(["peer_added", "peer_removed"]))
        ).all()
    context.close()
    assert [e.event_type for e in events] == ["peer_added", "peer_added", "peer_removed"]
    assert all((e.actor or "").startswith("admin:") for e in events)


def test_peers_add_duplicate_name(data_dir: Path) -> None:
    assert add_peer(data_dir, "pacs").exit_code == 0
    result = add_peer(data_dir, "pacs", ae_title="OTHER")
    assert result.exit_code == 2
    assert "a peer named 'pacs' already exists (in the database)" in result.output
    assert len(peers_json(data_dir)) == 1


def test_peers_add_invalid_values_name_the_field(data_dir: Path) -> None:
    for options, field in (
        ({"ae_title": "BAD\\TITLE"}, "ae_title"),
        ({"ae_title": "A" * 17}, "ae_title"),
        ({"port": 70000}, "port"),
        ({"name": "has space"}, "name"),
    ):
        name = str(options.pop("name", "pacs"))
        result = add_peer(data_dir, name, **options)
        assert result.exit_code == 2, (options, result.output)
        assert f"Error: {field}:" in result.output, result.output
    assert peers_json(data_dir) == []


def test_peers_add_tls_source_needs_the_tls_listener(data_dir: Path) -> None:
    result = add_peer(data_dir, "seno", "--tls", role="source")
    assert result.exit_code == 2
    assert "needs the node's TLS listener" in result.output
    # an outgoing TLS association needs no certificate of the node's own
    assert add_peer(data_dir, "pacs", "--tls").exit_code == 0


def test_invalid_config_exits_2(data_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[node]\nbogus_key = 1\n")
    for argv in (["peers", "list"], ["studies", "list"], ["echo", "pacs"]):
        result = cli(data_dir, *argv, config=config)
        assert result.exit_code == 2, (argv, result.output)
        assert "node.bogus_key" in result.output


def test_peers_add_bad_role_is_a_usage_error(data_dir: Path) -> None:
    result = add_peer(data_dir, "pacs", role="sink")
    assert result.exit_code == 2
    assert "--role" in result.output


def test_config_file_peers_are_listed_and_read_only(data_dir: Path, config_with_peer: Path) -> None:
    peers = peers_json(data_dir, config_with_peer)
    assert [(p["name"], p["origin"]) for p in peers] == [("seno", "config")]

    result = cli(data_dir, "peers", "remove", "seno", config=config_with_peer)
    assert result.exit_code == 2
    assert "defined in the config file" in result.output
    assert "[[peers]]" in result.output

    result = cli(
        data_dir, "peers", "add", "seno", "--ae-title", "X", "--host", "h", "--port", "1",
        "--role", "source", config=config_with_peer,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "already exists (in the config file)" in result.output


def test_unknown_peer_lists_the_known_names(data_dir: Path, config_with_peer: Path) -> None:
    config = config_with_peer
    assert cli(data_dir, "peers", "add", "pacs", "--ae-title", "PACS", "--host", "h",
               "--port", "104", "--role", "destination", config=config).exit_code == 0  # fmt: skip
    for argv in (["peers", "remove", "nope"], ["echo", "nope"]):
        result = cli(data_dir, *argv, config=config)
        assert result.exit_code == 2, (argv, result.output)
        assert "no peer named 'nope' (known: seno, pacs)" in result.output

    result = cli(data_dir, "echo", "nope")  # no config: the database peer only
    assert result.exit_code == 2
    assert "(known: pacs)" in result.output


# --------------------------------------------------------------------------- echo


def test_echo_closed_port_fails(data_dir: Path) -> None:
    port = free_port()  # nothing listens there
    assert add_peer(data_dir, "pacs", port=port).exit_code == 0
    result = cli(data_dir, "echo", "pacs", "--timeout", "3")
    assert result.exit_code == 1, result.output
    assert f"pacs (PACS@127.0.0.1:{port}): C-ECHO failed:" in result.output
    assert "refused" in result.output

    result = cli(data_dir, "echo", "pacs", "--timeout", "3", "--json")
    assert result.exit_code == 1
    answer = json.loads(result.stdout)
    assert answer["ok"] is False
    assert answer["message"]


@pytest.mark.tools
def test_echo_answered_by_storescp(data_dir: Path, dcmtk_storescp: DcmtkStoreSCP) -> None:
    scp = dcmtk_storescp
    assert add_peer(data_dir, "scp", ae_title=scp.aet, port=scp.port).exit_code == 0
    result = cli(data_dir, "echo", "scp")
    assert result.exit_code == 0, result.output
    assert "C-ECHO ok, round trip" in result.output
    assert " ms" in result.output

    result = cli(data_dir, "echo", "scp", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["ok"] is True
    assert answer["status"] == 0
    assert answer["calling_ae_title"] == "CEM_NODE"
    assert answer["round_trip_ms"] > 0


# --------------------------------------------------------------------------- studies


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The eight images (LE and RC, both breasts, CC and MLO) of a small synthetic study."""
    out = tmp_path_factory.mktemp("synthetic")
    study_dir = generate_study(out, 11, 0, SynthOptions(size="small"))
    files = sorted((study_dir / "dicom").glob("*.dcm"))
    assert len(files) == 8
    return files


class Node:
    """The database and the store of a data dir, as the running node uses them."""

    def __init__(self, root: Path) -> None:
        self.context = CliContext(data_dir=root)
        self.sessions: sessionmaker[Session] = self.context.sessions()
        self.files = InstanceFileStore(root)

    def ingest(self, paths: list[Path]) -> str:
        ingestor = InstanceIngestor(
            self.sessions,
            self.files,
            DiskGuard(str(self.files.root), high_watermark_percent=99.9, min_free_mb=0),
            open_round=open_round,
        )
        uids = set()
        for path in paths:
            result = ingestor.ingest(
                path.read_bytes(), sender=ReceivedFrom("MODALITY", "CEM_NODE", "127.0.0.1")
            )
            assert result.outcome is IngestOutcome.STORED, result.message
            uids.add(result.study_instance_uid)
        (uid,) = uids
        assert uid is not None
        return uid

    def fail_analysis(self) -> None:
        """Complete the study and let a worker without a model fail its job."""
        from cem_node.contracts.analysis import UnavailableAnalyser
        from cem_node.jobs.assembler import complete_due_studies
        from cem_node.jobs.worker import Worker

        assert complete_due_studies(self.sessions, quiet_period_s=0, max_wait_s=0, actor="t")
        worker = Worker(
            self.context.settings(),
            self.sessions,
            self.files,
            UnavailableAnalyser("no model"),
            destinations=lambda: [],
            node_id="t",
        )
        assert worker.run_once()

    def analyse(self) -> None:
        """Complete the study and let a worker analyse it with the test double."""
        from cem_node.jobs.assembler import complete_due_studies
        from cem_node.jobs.worker import Worker
        from tests.analysis_double import DoubleAnalyser

        assert complete_due_studies(self.sessions, quiet_period_s=0, max_wait_s=0, actor="t")
        worker = Worker(
            self.context.settings(),
            self.sessions,
            self.files,
            DoubleAnalyser(),
            destinations=lambda: [],
            node_id="t",
        )
        assert worker.run_once()

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def node(data_dir: Path) -> Iterator[Node]:
    node = Node(data_dir)
    yield node
    node.close()


def show_json(data_dir: Path, uid: str) -> dict:
    result = cli(data_dir, "studies", "show", uid, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_studies_list_and_show_a_received_study(
    data_dir: Path, node: Node, study_files: list[Path]
) -> None:
    result = cli(data_dir, "studies", "list")
    assert result.exit_code == 0
    assert "No studies." in result.output

    uid = node.ingest(study_files)

    result = cli(data_dir, "studies", "list", "--json")
    assert result.exit_code == 0, result.output
    (study,) = json.loads(result.stdout)
    assert study["study_instance_uid"] == uid
    assert study["instances"] == 8
    assert study["state"] == "receiving"
    assert "patient_name" not in study

    result = cli(data_dir, "studies", "list", "--state", "done", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == []
    assert cli(data_dir, "studies", "list", "--state", "bogus").exit_code == 2

    result = cli(data_dir, "studies", "list")
    assert result.exit_code == 0, result.output
    assert "receiving" in result.output
    assert study["patient_id"] in result.output

    shown = show_json(data_dir, uid)
    expected = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in study_files
    }
    assert {i["sop_instance_uid"] for i in shown["instances"]} == expected
    assert shown["state"] == "receiving"
    assert shown["jobs"][0]["state"] == "received"

    result = cli(data_dir, "studies", "show", uid)
    assert result.exit_code == 0, result.output
    for expected_text in ("Instances", "receiving", "not classified yet", "Audit trail"):
        assert expected_text in result.output


def test_studies_list_shows_the_objects_accepted_and_ignored(
    data_dir: Path, node: Node, study_files: list[Path]
) -> None:
    # observation (#19): accepted-and-ignored objects were invisible in `studies list`
    ds = pydicom.dcmread(study_files[0])
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # a mammogram stored as Secondary Capture
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ingestor = InstanceIngestor(
        node.sessions,
        node.files,
        DiskGuard(str(node.files.root), high_watermark_percent=99.9, min_free_mb=0),
        open_round=open_round,
    )
    buffer = io.BytesIO()
    ds.save_as(buffer)
    result = ingestor.ingest(
        buffer.getvalue(), sender=ReceivedFrom("MODALITY", "CEM_NODE", "127.0.0.1")
    )
    assert result.outcome is IngestOutcome.IGNORED

    listed = cli(data_dir, "studies", "list", "--json")
    assert json.loads(listed.stdout) == []  # no study: nothing of it was kept
    ignored = cli(data_dir, "studies", "list", "--ignored", "--json")
    assert ignored.exit_code == 0, ignored.output
    (entry,) = json.loads(ignored.stdout)
    assert entry["sop_instance_uid"] == ds.SOPInstanceUID
    assert entry["study_instance_uid"] == ds.StudyInstanceUID
    assert entry["calling_ae_title"] == "MODALITY"
    assert entry["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.7"
    assert "not a mammography image" in entry["reason"]
    text = cli(data_dir, "studies", "list", "--ignored")
    assert "not a mammography image" in text.output and "MODALITY" in text.output
    refused = cli(data_dir, "studies", "list", "--ignored", "--state", "done")
    assert refused.exit_code == 2 and "--ignored" in refused.output


def test_studies_unknown_uid(data_dir: Path) -> None:
    for command in ("show", "retry", "reprocess"):
        result = cli(data_dir, "studies", command, "1.2.3.4")
        assert result.exit_code == 1, (command, result.output)
        assert "no study with Study Instance UID 1.2.3.4" in result.output


def test_studies_retry_and_reprocess_refuse_a_receiving_study(
    data_dir: Path, node: Node, study_files: list[Path]
) -> None:
    uid = node.ingest(study_files[:2])
    result = cli(data_dir, "studies", "retry", uid)
    assert result.exit_code == 1
    assert "nothing failed to retry" in result.output
    assert "studies reprocess" in result.output

    result = cli(data_dir, "studies", "reprocess", uid)
    assert result.exit_code == 1
    assert "still receiving" in result.output


def test_studies_retry_and_reprocess_a_failed_study(
    data_dir: Path, node: Node, study_files: list[Path]
) -> None:
    uid = node.ingest(study_files)
    node.fail_analysis()

    result = cli(data_dir, "studies", "list", "--state", "failed", "--json")
    assert [s["study_instance_uid"] for s in json.loads(result.stdout)] == [uid]

    shown = show_json(data_dir, uid)
    assert shown["state"] == "failed"
    assert "no model" in shown["state_reason"]
    (job,) = shown["jobs"]
    assert job["state"] == "failed"
    assert "no model" in job["last_error"]
    roles = sorted(i["role"] for i in shown["instances"])
    assert roles == ["low_energy"] * 4 + ["recombined"] * 4
    assert all(i["role_reason"] for i in shown["instances"])
    assert len(shown["pairings"]) == 4
    assert all(p["paired"] for p in shown["pairings"])

    result = cli(data_dir, "studies", "show", uid)
    assert result.exit_code == 0, result.output
    for expected in ("failed", "no model", "low_energy", "recombined", "Pairing", "Jobs"):
        assert expected in result.output

    result = cli(data_dir, "studies", "retry", uid)
    assert result.exit_code == 0, result.output
    assert "0 export(s) and 1 job(s) re-queued" in result.output
    shown = show_json(data_dir, uid)
    assert shown["jobs"][0]["state"] == "queued"
    assert shown["state"] == "processing"
    by_admin = [
        (a["event"], a["decision"]) for a in shown["audit"] if a["actor"].startswith("admin:")
    ]
    # the job's own transition is in the study's audit trail too
    assert by_admin == [("job_state", "queued"), ("study_retry", "requeued")]

    # nothing failed any more
    assert cli(data_dir, "studies", "retry", uid).exit_code == 1

    result = cli(data_dir, "studies", "reprocess", uid)
    assert result.exit_code == 0, result.output
    assert "round 2 queued" in result.output
    shown = show_json(data_dir, uid)
    assert shown["analysis_round"] == 2
    assert [(j["round"], j["state"]) for j in shown["jobs"]] == [(1, "superseded"), (2, "queued")]
    assert ("job_state", "superseded") in [(a["event"], a["decision"]) for a in shown["audit"]]

    result = cli(data_dir, "studies", "reprocess", uid, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"study_instance_uid": uid, "analysis_round": 3}


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    "argv",
    [["peers", "add"], ["peers", "remove"], ["echo"], ["studies", "list"], ["studies", "show"]],
)
def test_each_admin_command_has_help(argv: list[str]) -> None:
    result = runner.invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_studies_show_lists_an_excluded_image_and_why(
    data_dir: Path, node: Node, study_files: list[Path]
) -> None:
    uid = node.ingest(study_files)
    bad = next(p for p in study_files if p.name == "RC_RCC.dcm")
    bad_uid = str(pydicom.dcmread(bad, stop_before_pixels=True).SOPInstanceUID)
    with node.sessions.begin() as session:
        relative = session.scalar(
            select(Instance.file_path).where(Instance.sop_instance_uid == bad_uid)
        )
    node.files.absolute(relative).write_bytes(b"overwritten: not DICOM\n" * 50)
    node.analyse()

    shown = show_json(data_dir, uid)
    assert shown["state"] == "done"  # analysed without it (nothing to export here)
    (excluded,) = [i for i in shown["instances"] if i["role"] == "excluded"]
    assert excluded["sop_instance_uid"] == bad_uid
    assert excluded["role_reason"].startswith("cannot read the header: InvalidDicomError")
    assert sum(p["paired"] for p in shown["pairings"]) == 3

    result = cli(data_dir, "studies", "show", uid)
    assert result.exit_code == 0, result.output
    assert "excluded" in result.output and "InvalidDicomError" in result.output
