"""The command line: help, version, and the partial demo."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from cem_node import __version__
from cem_node.cli import app
from cem_node.store import Instance, PairingRecord, make_engine, session_factory

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


def test_demo_without_a_model_bundle_says_what_to_do(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(
        app, ["demo", "--out", str(tmp_path / "demo"), "--models-dir", str(tmp_path / "none")]
    )
    assert result.exit_code == 1
    assert "No usable model bundle" in result.output
    assert "cem-node models import" in " ".join(result.output.split())


def test_demo_end_to_end_with_a_bundle(tmp_path: Path, monkeypatch) -> None:
    """C-STORE in, analysis, SEG/SR/GSPS out at the demo PACS, validated (tiny bundle)."""
    from tests.bundle_factory import make_tiny_bundle

    monkeypatch.chdir(tmp_path)
    make_tiny_bundle(tmp_path / "models")
    result = runner.invoke(
        app,
        [
            "demo",
            "--out",
            str(tmp_path / "demo"),
            "--size",
            "small",
            "--models-dir",
            str(tmp_path / "models"),
            "--model",
            "tiny-test",
            "--timeout",
            "300",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "the results arrived at the PACS and validate" in result.output
    kinds = {p.name.split("-", 1)[0] for p in (tmp_path / "demo" / "pacs").iterdir()}
    assert {"sr", "seg", "gsps"} <= kinds
    assert (tmp_path / "demo" / "findings.json").is_file()
    assert list((tmp_path / "demo").glob("overlay-*.png"))
    engine = make_engine(f"sqlite:///{tmp_path / 'demo' / 'cem-node.db'}")
    with session_factory(engine).begin() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 8
        assert session.scalar(select(func.count()).where(PairingRecord.paired)) == 4
    engine.dispose()


def test_demo_on_the_embedded_defaults_uses_the_shipped_bundle(tmp_path: Path, monkeypatch) -> None:
    """What `make demo` runs: no option but --out, the shipped demo bundle found in models/."""
    import json

    repo = Path(__file__).resolve().parents[1]
    assert (repo / "models" / "cem-demo" / "manifest.toml").is_file(), "the demo bundle ships"
    monkeypatch.chdir(repo)
    monkeypatch.delenv("CEM_NODE_ANALYSIS__MODEL", raising=False)
    monkeypatch.delenv("CEM_NODE_ANALYSIS__MODELS_DIR", raising=False)
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--timeout", "300"])
    assert result.exit_code == 0, result.output
    assert "the results arrived at the PACS and validate" in result.output
    findings = json.loads((tmp_path / "demo" / "findings.json").read_text())
    assert findings["model"]["name"] == "cem-demo"
    assert findings["model"]["for_clinical_use"] is False
    assert "not for clinical use" in findings["model"]["disclaimer"].lower()
    assert findings["lesions"], "the demo study's lesion was not found"


def test_analyse_condenses_the_widened_bin_width_notes() -> None:
    from cem_node.cli.analyse_cmd import condensed_notes

    notes = [
        "R-CC-1: recombined: original: 300 grey levels at binWidth 3 exceed max_grey_levels=64; "
        "binWidth widened to 14",
        "R-CC-1: low_energy: wavelet-LL: 900 grey levels at binWidth 3 exceed "
        "max_grey_levels=64; binWidth widened to 42",
        "L-MLO-1: radiomics failed (too small); fused score = DL only",
    ]
    assert condensed_notes(notes) == [
        "R-CC-1: radiomics bin width widened on 2 filtered image(s) to stay within "
        "max_grey_levels (details in findings.json)",
        "L-MLO-1: radiomics failed (too small); fused score = DL only",
    ]


def test_analyse_is_the_one_spelling_and_analyze_still_runs_it() -> None:
    shown = runner.invoke(app, ["--help"], terminal_width=200)
    assert shown.exit_code == 0
    assert " analyse " in shown.output and "analyze" not in shown.output
    old = runner.invoke(app, ["analyze", "--help"], terminal_width=200)
    assert old.exit_code == 0 and "Analyse CEM images" in old.output
