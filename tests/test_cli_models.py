"""``cem-node models list|info|verify|activate|import``: the real CLI on real bundle folders.

Bundles are written with :func:`write_bundle` (small dummy files); every
command runs through typer's runner with ``--json`` parsed, and exit codes
checked: 0 success, 1 verification failed, 2 bad input or unknown name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from cem_node.cli import app
from cem_node.config import AnalysisSection
from cem_node.models import ACTIVE_FILE, MANIFEST_NAME, Bundle, write_bundle
from tests.test_bundles import FILES, draft, make_bundle, rewrite_manifest

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
#: The config's default [analysis] model (the shipped research bundle).
DEFAULT = AnalysisSection().model


@pytest.fixture(autouse=True)
def _hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ./conf/node.toml and no CEM_NODE_* overrides from the developer's shell."""
    monkeypatch.chdir(tmp_path)
    for var in list(os.environ):
        if var.upper().startswith("CEM_NODE_"):
            monkeypatch.delenv(var)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return tmp_path / "models"


def cli(models: Path | None, *args: str) -> Result:
    extra = ["--models-dir", str(models)] if models is not None else []
    return runner.invoke(app, ["models", *args, *extra])


def cli_json(models: Path | None, *args: str, code: int = 0) -> Any:
    result = cli(models, *args, "--json")
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


@pytest.fixture
def staged(tmp_path: Path) -> Bundle:
    """A bundle in a download folder, ready to import."""
    return write_bundle(tmp_path / "download" / "cem-demo-0.1.0", draft(), FILES)


# --------------------------------------------------------------------------- list


def test_list_empty_then_after_import(models: Path, staged: Bundle) -> None:
    data = cli_json(models, "list")
    assert data["bundles"] == []
    assert (data["active"], data["default"], data["selected"]) == (None, DEFAULT, DEFAULT)
    result = cli(models, "list")
    assert result.exit_code == 0
    assert "No model bundles" in result.stdout

    assert cli(models, "import", str(staged.path)).exit_code == 0
    data = cli_json(models, "list")
    [entry] = data["bundles"]
    assert entry["name"] == "cem-demo"
    assert entry["valid"] is True
    assert entry["sha256"] == staged.sha256
    assert entry["for_clinical_use"] is False
    assert entry["active"] is False
    result = cli(models, "list")
    assert result.exit_code == 0
    assert "cem-demo" in result.stdout
    assert "the config's [analysis] model" in result.stdout


def test_list_shows_a_broken_bundle_as_invalid(models: Path) -> None:
    make_bundle(models, "alpha")
    broken = make_bundle(models, "beta")
    (broken.path / "radiomics_params.json").write_bytes(b"{}")
    data = cli_json(models, "list")
    valid = {b["name"]: b["valid"] for b in data["bundles"]}
    assert valid == {"alpha": True, "beta": False}
    beta = data["bundles"][1]
    assert "radiomics_params.json: checksum mismatch" in beta["error"]
    result = cli(models, "list")
    assert result.exit_code == 0
    assert "INVALID" in result.stdout
    assert "radiomics_params.json: checksum mismatch" in result.stdout


def test_models_dir_from_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_bundle(tmp_path / "conf" / "elsewhere", "site-model")
    config = tmp_path / "conf" / "node.toml"
    config.write_text('[analysis]\nmodels_dir = "elsewhere"\nmodel = "site-model"\n')
    # a relative path in the file is relative to the file's folder, from any folder
    (tmp_path / "somewhere" / "else").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "somewhere" / "else")
    result = runner.invoke(app, ["--config", str(config), "models", "list", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["models_dir"] == str(tmp_path / "conf" / "elsewhere")
    assert data["selected"] == "site-model"
    assert [b["name"] for b in data["bundles"]] == ["site-model"]
    verify = runner.invoke(app, ["--config", str(config), "models", "verify"])
    assert verify.exit_code == 0, verify.output
    assert "OK      site-model" in verify.stdout


def test_the_shipped_bundle_is_found_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no config file, no --models-dir: the bundles shipped with cem-node, wherever we are
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    data = json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)
    assert data["models_dir"] == str(REPO / "models")
    assert {"cem-demo", "cem-cdd-research"} <= {b["name"] for b in data["bundles"]}
    assert data["selected"] == DEFAULT == "cem-cdd-research"


def test_invalid_config_is_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[analysis]\nmodels_dirr = "x"\n')
    result = runner.invoke(app, ["--config", str(config), "models", "list"])
    assert result.exit_code == 2
    assert "models_dirr" in result.stderr


# --------------------------------------------------------------------------- info


def test_info_json_and_text(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEM_NODE_ANALYSIS__MODEL", "cem-demo")
    bundle = make_bundle(models)
    data = cli_json(models, "info", "cem-demo")
    assert data["sha256"] == bundle.sha256
    assert data["identity"]["disclaimer"] == "Trained on synthetic phantoms, not for clinical use"
    assert data["manifest"]["thresholds"]["patient"] == 0.6
    assert data["manifest"]["training"]["synthetic"] is True
    assert data["in_use"] is True  # the config's analysis.model
    assert data["active"] is False
    sizes = {f["name"]: f["size"] for f in data["files"]}
    assert sizes == {name: len(content) for name, content in FILES.items()}

    result = cli(models, "info", "cem-demo")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for expected in (
        "Demonstration of the cem-node pipeline",
        "For clinical use: NO",
        "Trained on synthetic phantoms, not for clinical use",
        "decision thresholds",
        "auc_patient",
        "studies: 40",
        "mobilenet_v3_lite",
        "detector.safetensors",
        f"{len(FILES['detector.safetensors'])} B",
        bundle.sha256,
    ):
        assert expected in out, expected


def test_info_unknown_and_broken(models: Path) -> None:
    bundle = make_bundle(models)
    result = cli(models, "info", "nope")
    assert result.exit_code == 2
    assert "no model bundle named 'nope'" in result.stderr
    assert "cem-demo" in result.stderr  # says which exist
    (bundle.path / "extra.txt").write_text("x")
    result = cli(models, "info", "cem-demo")
    assert result.exit_code == 1
    assert "extra.txt: is in the bundle folder but not listed" in result.stderr


# --------------------------------------------------------------------------- verify


def test_verify_one_all_and_default(models: Path) -> None:
    make_bundle(models, "alpha")
    beta = make_bundle(models, "beta")
    data = cli_json(models, "verify", "alpha")
    assert data["ok"] is True
    assert data["results"][0]["name"] == "alpha"

    data = cli_json(models, "verify", "--all")
    assert [r["valid"] for r in data["results"]] == [True, True]

    (beta.path / "detector.safetensors").write_bytes(b"tampered")
    data = cli_json(models, "verify", "--all", code=1)
    assert data["ok"] is False
    [failed] = [r for r in data["results"] if not r["valid"]]
    assert failed["name"] == "beta"
    assert failed["problems"][0].startswith("detector.safetensors: checksum mismatch")

    result = cli(models, "verify", "beta")
    assert result.exit_code == 1
    assert "FAILED  beta" in result.stdout
    assert "1 of 1 bundle(s) failed verification: beta" in result.stderr

    # no name: the bundle in use (here the config default, which does not exist)
    result = cli(models, "verify")
    assert result.exit_code == 2
    assert f"'{DEFAULT}' (the config's analysis.model)" in result.stderr


def test_verify_bad_usage(models: Path) -> None:
    make_bundle(models, "alpha")
    assert cli(models, "verify", "alpha", "--all").exit_code == 2
    result = cli(models, "verify", "gamma")
    assert result.exit_code == 2
    assert "no model bundle named 'gamma'" in result.stderr
    assert cli(models, "verify", "Not A Name").exit_code == 2


# --------------------------------------------------------------------------- activate


def test_activate_then_modified_after_activation(models: Path) -> None:
    make_bundle(models, "alpha")
    beta = make_bundle(models, "beta")
    record = cli_json(models, "activate", "beta")
    assert record["name"] == "beta"
    assert record["sha256"] == beta.sha256
    assert record["previous"] is None
    assert record["activated_by"].startswith("admin:")
    assert (models / ACTIVE_FILE).is_file()

    data = cli_json(models, "list")
    assert data["selected"] == "beta"
    assert data["active"]["sha256"] == beta.sha256
    assert [b["active"] for b in data["bundles"]] == [False, True]
    assert cli_json(models, "verify")["results"][0]["name"] == "beta"  # default: the active

    result = cli(models, "activate", "alpha")
    assert result.exit_code == 0, result.output
    assert "Activated alpha 0.1.0" in result.stdout
    assert "replacing beta" in result.stdout
    assert "Not for clinical use" in result.stdout

    rewrite_manifest(models / "alpha", 'version = "0.1.0"', 'version = "0.1.1"')
    result = cli(models, "verify", "alpha")
    assert result.exit_code == 1
    assert "modified after it was activated" in result.stdout
    result = cli(models, "info", "alpha")
    assert result.exit_code == 1
    assert "cem-node models activate alpha" in result.stderr
    assert cli(models, "activate", "alpha").exit_code == 0
    assert cli_json(models, "verify", "alpha")["results"][0]["version"] == "0.1.1"


def test_activate_unknown_or_invalid(models: Path) -> None:
    bundle = make_bundle(models, "alpha")
    result = cli(models, "activate", "gamma")
    assert result.exit_code == 2
    assert "bundles there: alpha" in result.stderr
    (bundle.path / MANIFEST_NAME).write_text("format_version = 1\n")
    result = cli(models, "activate", "alpha")
    assert result.exit_code == 1
    assert "bundle: missing (required)" in result.stderr
    assert not (models / ACTIVE_FILE).exists()


# --------------------------------------------------------------------------- import


def test_import_force_and_rename(models: Path, staged: Bundle, tmp_path: Path) -> None:
    data = cli_json(models, "import", str(staged.path))
    assert data["name"] == "cem-demo"
    assert data["sha256"] == data["source_sha256"] == staged.sha256
    assert data["replaced"] is False
    assert Path(data["path"]) == models / "cem-demo"

    result = cli(models, "import", str(staged.path))
    assert result.exit_code == 2
    assert "--force" in result.stderr

    assert cli(models, "activate", "cem-demo").exit_code == 0
    newer = write_bundle(tmp_path / "newer", draft(metrics={"auc_patient": 0.97}), FILES)
    data = cli_json(models, "import", str(newer.path), "--force")
    assert data["replaced"] is True
    assert data["sha256"] == newer.sha256
    assert data["active_needs_reactivation"] is True
    assert cli(models, "verify", "cem-demo").exit_code == 1

    result = cli(models, "import", str(staged.path), "--name", "cem-demo-old")
    assert result.exit_code == 0, result.output
    assert "the bundle hash changed" in result.stdout
    info = cli_json(models, "info", "cem-demo-old")
    assert info["manifest"]["bundle"]["name"] == "cem-demo-old"
    assert info["sha256"] != staged.sha256

    assert cli(models, "import", str(staged.path), "--name", "Bad Name").exit_code == 2


def test_import_bad_sources(models: Path, staged: Bundle, tmp_path: Path) -> None:
    result = cli(models, "import", str(tmp_path / "nowhere"))
    assert result.exit_code == 2
    assert "no such folder" in result.stderr
    (staged.path / "radiomics_features.json").unlink()
    result = cli(models, "import", str(staged.path))
    assert result.exit_code == 1
    assert "radiomics_features.json: listed in [files] but missing" in result.stderr
    assert not models.exists() or not any(models.iterdir())


@pytest.mark.parametrize(
    "argv",
    [
        ["models"],
        ["models", "list"],
        ["models", "info"],
        ["models", "verify"],
        ["models", "activate"],
        ["models", "import"],
    ],
)
def test_each_models_command_has_help(argv: list[str]) -> None:
    result = runner.invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert "--json" in result.output or argv == ["models"]
