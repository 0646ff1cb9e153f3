"""The command line: help, version, and the partial demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from cem_node import __version__
from cem_node.cli import app
from cem_node.store import Instance, Pairing, make_engine, session_factory

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"cem-node {__version__}"


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "synth", "config", "db"):
        assert command in result.output


@pytest.mark.parametrize(
    "argv",
    [
        ["synth"],
        ["demo"],
        ["config"],
        ["config", "show"],
        ["config", "validate"],
        ["config", "init"],
        ["db"],
        ["db", "upgrade"],
    ],
)
def test_each_command_has_help(argv: list[str]) -> None:
    result = runner.invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    # a one-line summary at least, not an empty help
    assert len(result.output.splitlines()) > 5


def test_partial_demo_runs_and_says_what_is_missing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--size", "small"])
    assert result.exit_code == 0, result.output
    assert "not implemented yet" in result.output
    truth = json.loads((tmp_path / "demo" / "study-0001" / "ground_truth.json").read_text())
    assert len(truth["images"]) == 8
    assert (tmp_path / "demo" / "cem-node.db").is_file()
    # received by C-STORE on loopback, classified and paired, with the reasons shown
    assert "Received by C-STORE" in result.output
    assert "no analysis installed" in " ".join(result.output.split())
    engine = make_engine(f"sqlite:///{tmp_path / 'demo' / 'cem-node.db'}")
    with session_factory(engine).begin() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 8
        assert session.scalar(select(func.count()).where(Pairing.paired)) == 4
    engine.dispose()
