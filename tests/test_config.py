"""Settings: defaults, TOML round trip, environment overrides, errors and the CLI."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError
from typer.testing import CliRunner

from cem_node.cli import app
from cem_node.config import (
    ConfigError,
    NodeSection,
    Peer,
    Settings,
    load_settings,
    load_settings_with_origin,
    mask_url,
    render_default_toml,
    render_settings_toml,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # no developer CEM_NODE_* variable and no ./conf/node.toml may leak into a test
    for var in [v for v in os.environ if v.upper().startswith("CEM_NODE_")]:
        monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env=env or {})


# --------------------------------------------------------------------------- loading


def test_defaults_load_without_file_or_environment() -> None:
    settings = load_settings(environ={})
    assert settings == Settings.defaults()
    assert settings.node.ae_title == "CEM_NODE"
    assert settings.node.port == 11112
    assert settings.node.accept_unknown_sop_classes == "ignore"
    assert settings.export.objects == ["seg", "sr", "gsps"]
    assert settings.logging.json is False
    assert settings.peers == []
    assert settings.database_url() == "sqlite:///var/cem-node/cem-node.db"


def test_config_file_resolution(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    _write(tmp_path / "conf" / "node.toml", "[node]\nport = 11120\n")
    other = _write(tmp_path / "other.toml", "[node]\nport = 11121\n")

    assert load_settings(environ={}).node.port == 11120  # ./conf/node.toml
    assert load_settings(environ={"CEM_NODE_CONFIG": str(other)}).node.port == 11121
    assert (
        load_settings(
            tmp_path / "conf" / "node.toml", environ={"CEM_NODE_CONFIG": str(other)}
        ).node.port
        == 11120
    )
    with pytest.raises(ConfigError, match=r"missing\.toml: config file not found"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_relative_paths_in_a_file_are_relative_to_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # observation: models_dir = "models" was read against the working directory, so
    # `cem-node analyse` run from elsewhere could not find the bundles the file named
    config = _write(
        tmp_path / "site" / "conf" / "node.toml",
        '[storage]\nroot = "../data"\n[analysis]\nmodels_dir = "models"\n'
        '[tls]\ncertificate = "tls/node.crt"\nprivate_key = "/etc/ssl/node.key"\n'
        '[logging]\nfile = "~/cem.log"\n',
    )
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    folder = config.resolve().parent
    settings = load_settings(config, environ={"CEM_NODE_HTTP__PORT": "8766"})
    assert settings.storage.root == folder / "../data"
    assert settings.analysis.models_dir == folder / "models"
    assert settings.analysis.bundles_dir == folder / "models"
    assert settings.tls.certificate == folder / "tls" / "node.crt"
    assert settings.tls.private_key == Path("/etc/ssl/node.key")  # absolute: as written
    assert settings.logging.file == Path.home() / "cem.log"
    assert settings.database_url() == f"sqlite:///{folder / '../data'}/cem-node.db"
    # the environment and the command line stay relative to the working directory
    env = {"CEM_NODE_ANALYSIS__MODELS_DIR": "bundles"}
    assert load_settings(config, environ=env).analysis.models_dir == Path("bundles")


def test_the_default_template_names_no_path_that_a_file_would_move(tmp_path: Path) -> None:
    # a path written in the template would be read against the file's folder and so
    # would no longer mean the default: paths are commented out there
    config = _write(tmp_path / "conf" / "node.toml", render_default_toml())
    assert load_settings(config, environ={}) == Settings.defaults()
    assert '# root = "var/cem-node"' in render_default_toml()
    assert Settings.defaults().analysis.bundles_dir == REPO / "models"


def test_environment_wins_over_file(tmp_path: Path) -> None:
    config = _write(tmp_path / "node.toml", '[node]\nae_title = "FROM_FILE"\nport = 11113\n')
    environ = {
        "CEM_NODE_NODE__PORT": "11114",
        "CEM_NODE_EXPORT__OBJECTS": '["sr"]',
        "CEM_NODE_REQUIRE_TOOLS": "1",  # not a setting: ignored
    }
    loaded = load_settings_with_origin(config, environ=environ)
    assert loaded.settings.node.port == 11114
    assert loaded.settings.node.ae_title == "FROM_FILE"  # the rest of the section is kept
    assert loaded.settings.export.objects == ["sr"]
    assert loaded.file == config
    assert sorted(loaded.env_overrides) == ["CEM_NODE_EXPORT__OBJECTS", "CEM_NODE_NODE__PORT"]
    assert load_settings(config, environ={}).node.port == 11113


def test_database_url_defaults_to_sqlite_under_storage_root() -> None:
    settings = Settings.from_mapping({"storage": {"root": "/srv/cem"}})
    assert settings.database_url() == "sqlite:////srv/cem/cem-node.db"
    url = "postgresql+psycopg://cem:pw@db/cem"
    assert Settings.from_mapping({"database": {"url": url}}).database_url() == url


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            "[node]\nport = 70000\n",
            "node.port: Input should be less than or equal to 65535 (got 70000)",
        ),
        ("[node]\nportt = 1\n", "node.portt: unknown key; did you mean 'port'?"),
        ("[nodes]\nport = 1\n", "nodes: unknown key; did you mean 'node'?"),
        ('[node]\nae_title = "A\\\\B"\n', "node.ae_title: AE title must not contain a backslash"),
        ('[node]\nae_title = "ABCDEFGHIJKLMNOPQ"\n', "node.ae_title: AE title must be 1 to 16"),
        ('[node]\nae_title = "   "\n', "node.ae_title: AE title must not be all spaces"),
        ("[tls]\nenabled = true\n", "tls: certificate and private_key must be set"),
        (
            '[export]\nobjects = ["seg", "pdf"]\n',
            "export.objects[1]: Input should be 'seg', 'sr' or 'gsps'",
        ),
        (
            '[selection]\nlow_energy_series_description_patterns = ["(unclosed"]\n',
            "not a valid regular expression",
        ),
        (
            '[[peers]]\nname = "pacs"\nae_title = "A"\nhost = "h"\nport = 104\nrole = "source"\n'
            '[[peers]]\nname = "pacs"\nae_title = "B"\nhost = "h"\nport = 104\nrole = "source"\n',
            "peers: peer names must be unique; duplicated: pacs",
        ),
        (
            '[[peers]]\nname = "p"\nae_title = "P"\nhost = "h"\nport = 104\nrole = "sink"\n',
            "peers[0].role:",
        ),
    ],
)
def test_validation_errors_name_the_key_and_file(tmp_path: Path, toml: str, expected: str) -> None:
    config = _write(tmp_path / "bad.toml", toml)
    with pytest.raises(ConfigError) as info:
        load_settings(config, environ={})
    message = str(info.value)
    assert expected in message
    assert str(config) in message
    assert isinstance(info.value, ValueError)


def test_several_errors_are_all_listed(tmp_path: Path) -> None:
    config = _write(
        tmp_path / "bad.toml", "[node]\nport = 70000\nmax_associations = 0\n[http]\nport = -1\n"
    )
    with pytest.raises(ConfigError) as info:
        load_settings(config, environ={})
    assert [p.split(":")[0] for p in info.value.problems] == [
        "node.port",
        "node.max_associations",
        "http.port",
    ]


def test_toml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    config = _write(tmp_path / "bad.toml", "[node]\nport = = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML: .*line 2, column"):
        load_settings(config, environ={})


def test_environment_errors_name_the_variable() -> None:
    with pytest.raises(
        ConfigError, match=r"node\.port: .*\[from environment variable CEM_NODE_NODE__PORT\]"
    ):
        load_settings(environ={"CEM_NODE_NODE__PORT": "abc"})
    with pytest.raises(ConfigError, match="CEM_NODE_NOD__PORT: unknown section 'nod'"):
        load_settings(environ={"CEM_NODE_NOD__PORT": "1"})


def test_errors_never_echo_secrets(tmp_path: Path) -> None:
    config = _write(tmp_path / "bad.toml", '[database]\nurl = "postgres:/cem:hunter2@db/cem"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config, environ={})
    assert "database.url" in str(info.value)
    assert "hunter2" not in str(info.value)


# --------------------------------------------------------------------------- TOML output


def test_rendered_default_parses_back_to_the_defaults() -> None:
    text = render_default_toml()
    assert Settings.from_mapping(tomllib.loads(text)) == Settings.defaults()


def test_every_key_is_documented_in_the_template() -> None:
    lines = render_default_toml().splitlines()
    for section, field in Settings.model_fields.items():
        if section == "peers":
            continue
        start = lines.index(f"[{section}]")
        for key in field.annotation.model_fields:  # type: ignore[union-attr]
            index = next(
                i
                for i, line in enumerate(lines[start:], start)
                if line.split(" = ")[0].lstrip("# ") == key
            )
            assert lines[index - 1].startswith("# "), f"{section}.{key} has no comment"
    for key in Peer.model_fields:
        assert any(line.startswith(f"# {key}: ") for line in lines)


def test_peer_examples_in_the_template_are_valid() -> None:
    text = render_default_toml()
    block = text[text.index("# [[peers]]") :]
    uncommented = "\n".join(line[2:] for line in block.splitlines() if line.startswith("# "))
    settings = Settings.from_mapping(tomllib.loads(uncommented))
    assert [(p.name, p.role) for p in settings.peers] == [
        ("senographe", "source"),
        ("pacs", "destination"),
    ]


def test_conf_node_toml_is_the_rendered_default() -> None:
    # regenerate with: cem-node config init --out conf/node.toml --force
    assert (REPO / "conf" / "node.toml").read_text(encoding="utf-8") == render_default_toml()


def test_non_default_settings_round_trip_through_toml() -> None:
    settings = Settings.from_mapping(
        {
            "node": {"ae_title": 'Q"UOTE', "port": 104},
            "tls": {"private_key_password": "pw", "certificate": "/etc/c.pem"},
            "database": {"url": "postgresql+psycopg://u:p@h/db"},
            "selection": {
                "low_energy_series_description_patterns": [r"it's \d", "tab\there", r"\bLE\b"]
            },
            "logging": {"json": True, "file": "log/x.log", "level": "debug"},
            "peers": [
                {
                    "name": "pacs",
                    "ae_title": "PACS",
                    "host": "h",
                    "port": 1,
                    "role": "destination",
                    "objects": ["sr"],
                }
            ],
        }
    )
    text = render_settings_toml(settings, mask_secrets=False)
    assert Settings.from_mapping(tomllib.loads(text)) == settings
    assert settings.tls.private_key_password == SecretStr("pw")
    assert settings.logging.level == "DEBUG"


def test_mask_url() -> None:
    assert (
        mask_url("postgresql+psycopg://cem:s3cret@db:5432/cem")
        == "postgresql+psycopg://cem:***@db:5432/cem"
    )
    assert mask_url("postgresql://cem:a:b/c@db/cem") == "postgresql://cem:***@db/cem"
    assert mask_url("postgresql://db/cem?user=u&password=s3cret&sslmode=require") == (
        "postgresql://db/cem?user=u&password=***&sslmode=require"
    )
    for plain in (
        "sqlite:///var/cem-node/cem-node.db",
        "postgresql://cem@db/cem",
        "postgresql://db:5432/x",
    ):
        assert mask_url(plain) == plain


# --------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[node]\nport = 70000\n", "node.port"),
        ("[node]\nport = 11112\nmax_assocations = 3\n", "node.max_assocations"),
        ('[node]\nae_title = "BAD\\\\AE"\n', "node.ae_title"),
        ("[node]\nport = 11112\nae_title = CEM\n", "line 3, column"),
    ],
    ids=["bad-port", "unknown-key", "bad-ae-title", "toml-syntax"],
)
def test_cli_validate_rejects_bad_files(tmp_path: Path, toml: str, key: str) -> None:
    config = _write(tmp_path / "bad.toml", toml)
    result = _invoke("config", "validate", str(config))
    assert result.exit_code == 2, result.output
    assert key in result.stderr
    assert "bad.toml" in result.stderr
    assert "Traceback" not in result.output


def test_cli_validate_accepts_a_good_file(tmp_path: Path) -> None:
    config = _write(tmp_path / "node.toml", render_default_toml())
    # validate checks the file alone: a bad environment must not matter
    result = _invoke("config", "validate", str(config), env={"CEM_NODE_NODE__PORT": "0"})
    assert result.exit_code == 0, result.output
    assert f"{config} is valid" in result.stdout


def test_cli_show_masks_secrets_and_reports_sources(tmp_path: Path) -> None:
    config = _write(tmp_path / "node.toml", '[node]\nae_title = "SHOWN"\n')
    env = {
        "CEM_NODE_CONFIG": str(config),
        "CEM_NODE_DATABASE__URL": "postgresql+psycopg://cem:dbsecret@db/cem",
        "CEM_NODE_TLS__PRIVATE_KEY_PASSWORD": "keysecret",
    }
    result = _invoke("config", "show", env=env)
    assert result.exit_code == 0, result.output
    assert "dbsecret" not in result.output and "keysecret" not in result.output
    assert 'url = "postgresql+psycopg://cem:***@db/cem"' in result.stdout
    assert 'private_key_password = "***"' in result.stdout
    assert 'ae_title = "SHOWN"' in result.stdout
    assert f"# File: {config}" in result.stdout
    assert "CEM_NODE_DATABASE__URL" in result.stdout
    # the output is itself a valid config (with masked values)
    shown = Settings.from_mapping(tomllib.loads(result.stdout))
    assert shown.node.ae_title == "SHOWN"

    result = _invoke("config", "show", "--json", env=env)
    assert result.exit_code == 0, result.output
    assert "dbsecret" not in result.output and "keysecret" not in result.output
    document = json.loads(result.stdout)
    assert document["file"] == str(config)
    assert document["settings"]["tls"]["private_key_password"] == "***"
    assert document["settings"]["database"]["url"] == "postgresql+psycopg://cem:***@db/cem"
    assert document["database_url"] == "postgresql+psycopg://cem:***@db/cem"
    assert sorted(document["environment_overrides"]) == [
        "CEM_NODE_DATABASE__URL",
        "CEM_NODE_TLS__PRIVATE_KEY_PASSWORD",
    ]


def test_cli_show_on_a_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    config = _write(tmp_path / "node.toml", "[node]\nport = 70000\n")
    result = _invoke("--config", str(config), "config", "show")
    assert result.exit_code == 2, result.output
    assert "node.port" in result.stderr
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_cli_init_writes_the_default_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "node.toml"
    result = _invoke("config", "init", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8") == render_default_toml()

    _write(out, "# mine\n")
    result = _invoke("config", "init", "--out", str(out))
    assert result.exit_code == 2
    assert "--force" in result.stderr
    assert out.read_text(encoding="utf-8") == "# mine\n"

    result = _invoke("config", "init", "--out", str(out), "--force")
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8") == render_default_toml()


def test_unlimited_pdu_size_of_earlier_versions_is_refused_with_the_fix() -> None:
    """Earlier `config init` wrote max_pdu_size = 0 (unlimited): refused, saying what to set."""
    with pytest.raises(ValidationError, match=r"0 \(unlimited\) is no longer allowed.*131072"):
        NodeSection(max_pdu_size=0)
    with pytest.raises(ValidationError, match="below the smallest useful PDU length"):
        NodeSection(max_pdu_size=1024)
    assert NodeSection().max_pdu_size == 131072
