"""deploy/: the systemd unit, the Dockerfile, the compose stack and their configurations.

Docker and systemd do not run here, so these tests read the files: they parse, name
what the node understands (every CEM_NODE_* variable is a real setting, both TOML files
validate), keep the security choices (non-root, hardening, loopback-only ports except
DICOM, no committed password) and agree with each other and with scripts/setup.sh.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml  # pyyaml, in the dev extra

from cem_node.config import ENV_CONFIG_VAR, ENV_PREFIX, ROLES, Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
NODE_SERVICES = ("cem-receiver", "cem-worker", "cem-exporter", "cem-node-migrate")
#: the node split by role (#20): receiver (+ scheduler), worker, exporter
SERVING = {
    "cem-receiver": ["receiver", "scheduler"],
    "cem-worker": ["worker"],
    "cem-exporter": ["exporter"],
}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # no developer CEM_NODE_* variable and no ./conf/node.toml may leak into a test
    for var in [v for v in os.environ if v.upper().startswith(ENV_PREFIX)]:
        monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)


# --------------------------------------------------------------------------- helpers


class _ComposeLoader(yaml.SafeLoader):
    """Safe YAML plus Docker Compose's merge tags (compose.cpu.yaml uses ``!reset``)."""


for _tag in ("!reset", "!override"):
    _ComposeLoader.add_constructor(_tag, lambda loader, node: None)


def _compose(path: Path = COMPOSE) -> dict[str, Any]:
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=_ComposeLoader)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), path
    return data


_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}")


def _interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``."""

    def sub(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"] or "", match["arg"]
        if variables.get(name):
            return variables[name]
        if op in (":-", "-"):
            return arg
        raise AssertionError(f"${{{name}}} is required ({arg or 'no message'})")

    return _INTERPOLATION.sub(sub, value)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _setting_exists(var: str) -> bool:
    """Whether ``CEM_NODE_<SECTION>__<KEY>`` names a real setting (the loader ignores a
    one-part name it does not know, so a typo there would go unnoticed)."""
    path = var[len(ENV_PREFIX) :].lower().split("__")
    field = Settings.model_fields.get(path[0])
    if field is None:
        return False
    if len(path) == 1:
        return True
    section = field.annotation
    return len(path) == 2 and path[1] in getattr(section, "model_fields", {})


def _unit() -> tuple[configparser.ConfigParser, str]:
    text = (DEPLOY / "cem-node.service").read_text(encoding="utf-8")
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(text)
    return parser, text


def _unit_values(text: str, section: str, key: str) -> list[str]:
    """Every value of a key that systemd allows several times (configparser keeps one)."""
    values, current = [], None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and line.startswith(f"{key}="):
            values.append(line.split("=", 1)[1])
    return values


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = (DEPLOY / "Dockerfile").read_text(encoding="utf-8").splitlines()
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in lines:
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        pending += " " + stripped
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        instruction, _, args = pending.strip().partition(" ")
        out.append((instruction.upper(), args.strip()))
        pending = ""
    return out


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM")
    return instructions[last_from:]


def _arg_defaults(instructions: list[tuple[str, str]]) -> dict[str, str]:
    defaults = {}
    for ins, args in instructions:
        if ins == "ARG" and "=" in args:
            name, value = args.split("=", 1)
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def _dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for ins, args in _final_stage(instructions):
        if ins == "ENV":
            for token in shlex.split(args):
                name, _, value = token.partition("=")
                env[name] = value
    return env


def _setup_sh_specs() -> dict[str, str]:
    text = (REPO / "scripts" / "setup.sh").read_text(encoding="utf-8")
    specs = dict(re.findall(r'^(\w+_SPEC)="([^"]+)"', text, flags=re.MULTILINE))
    assert {"TORCH_SPEC", "TORCHVISION_SPEC", "PYRADIOMICS_SPEC"} <= specs.keys(), specs
    return specs


def _published(port: Any) -> tuple[str, str, str]:
    """(host address, host port, container port) of a compose port entry."""
    if isinstance(port, dict):
        return str(port.get("host_ip", "0.0.0.0")), str(port["published"]), str(port["target"])
    parts = str(port).split("/", 1)[0].rsplit(":", 2)
    if len(parts) == 1:
        return "0.0.0.0", "", parts[0]  # a random host port on every interface
    if len(parts) == 2:
        return "0.0.0.0", parts[0], parts[1]
    return parts[0], parts[1], parts[2]


# --------------------------------------------------------------------------- systemd


def test_unit_runs_serve_as_the_service_user() -> None:
    unit, _ = _unit()
    service = unit["Service"]
    assert service["User"] == "cem-node"
    assert service["Type"] == "simple"
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/opt/cem-node/.venv/bin/cem-node"
    assert argv[argv.index("--config") + 1] == "/etc/cem-node/node.toml"
    assert argv.index("--config") < argv.index("serve")  # a global option, before the command
    assert "--log-json" in argv[argv.index("serve") :]
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) >= 60  # an analysis in progress finishes
    assert int(service["LimitNOFILE"]) >= 4096
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_unit_keeps_tmpdir_in_its_state_directory() -> None:
    unit, text = _unit()
    service = unit["Service"]
    state = service["StateDirectory"].split()
    assert "cem-node" in state
    env = dict(v.split("=", 1) for v in _unit_values(text, "Service", "Environment"))
    tmpdir = Path(env["TMPDIR"])
    # TMPDIR is created by systemd and lies on the store's file system (atomic rename)
    assert str(tmpdir.relative_to("/var/lib")) in state
    assert tmpdir.is_relative_to("/var/lib/cem-node")
    assert service["WorkingDirectory"] == "/var/lib/cem-node"


def test_unit_is_hardened() -> None:
    unit, text = _unit()
    service = unit["Service"]
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
    }
    for key, value in expected.items():
        assert service.get(key) == value, key
    assert "/var/lib/cem-node" in service["ReadWritePaths"].split()
    # no capability at all unless port 104 is chosen (then both lines, commented here)
    assert service["CapabilityBoundingSet"] == ""
    assert _unit_values(text, "Service", "AmbientCapabilities") == []
    assert "# AmbientCapabilities=CAP_NET_BIND_SERVICE" in text
    assert "PrivateDevices" not in service  # it would hide the GPU


# --------------------------------------------------------------------------- config files


@pytest.mark.parametrize("name", ["node.compose.toml", "node.docker.toml"])
def test_node_configs_validate(name: str) -> None:
    settings = load_settings(DEPLOY / name, environ={})
    assert settings.storage.root == Path("/var/lib/cem-node")
    assert settings.analysis.models_dir == Path("/opt/cem-node/models")
    assert settings.node.host == "0.0.0.0"
    assert settings.logging.json is True


def test_compose_config_peers_match_orthanc() -> None:
    settings = load_settings(DEPLOY / "node.compose.toml", environ={})
    orthanc = json.loads((DEPLOY / "orthanc.json").read_text(encoding="utf-8"))
    roles = {p.role: p for p in settings.peers}
    assert set(roles) == {"source", "destination"}
    for peer in roles.values():
        assert (peer.ae_title, peer.host, peer.port) == (
            orthanc["DicomAet"],
            "orthanc",
            orthanc["DicomPort"],
        )
    # Orthanc sends to the node (its modality "cem-node") and its forwarding script uses it
    modality = orthanc["DicomModalities"]["cem-node"]
    assert (modality["AET"], modality["Host"], modality["Port"]) == (
        settings.node.ae_title,
        "cem-receiver",  # the service that listens for DICOM
        settings.node.port,
    )
    assert orthanc["DicomWeb"]["Enable"] is True
    lua = (DEPLOY / "orthanc-forward.lua").read_text(encoding="utf-8")
    assert "/modalities/cem-node/store" in lua
    assert f"'{settings.node.ae_title}'" in lua  # the node's results are never sent back


# --------------------------------------------------------------------------- compose


def test_compose_has_the_stack_with_healthchecks() -> None:
    services = _compose()["services"]
    for name in ("postgres", *SERVING, "orthanc", "ohif"):
        check = services[name].get("healthcheck") or {}
        assert not check.get("disable"), name
        assert check.get("test"), f"{name} has no healthcheck"
    assert services["postgres"]["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    for name in SERVING:
        assert "/healthz" in " ".join(services[name]["healthcheck"]["test"]), name


def test_compose_migrates_before_serving() -> None:
    services = _compose()["services"]
    migrate = services["cem-node-migrate"]
    assert migrate["command"] == ["db", "upgrade"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, roles in SERVING.items():
        node = services[name]
        assert migrate["image"] == node["image"] and migrate["build"] == node["build"]
        assert node["depends_on"]["cem-node-migrate"]["condition"] == (
            "service_completed_successfully"
        )
        assert node["depends_on"]["postgres"]["condition"] == "service_healthy"
        command = node["command"]
        assert command[0] == "serve", name
        assert [command[i + 1] for i, a in enumerate(command) if a == "--role"] == roles, name
        assert node["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert (COMPOSE.parent / node["build"]["context"] / node["build"]["dockerfile"]).is_file()
    # every role runs somewhere, and only the receiver listens for DICOM
    assert sorted(r for roles in SERVING.values() for r in roles) == sorted(ROLES)
    assert [n for n in SERVING if "ports" in services[n]] == ["cem-receiver"]


def test_compose_reserves_a_gpu_and_the_cpu_override_removes_it() -> None:
    services = _compose()["services"]
    devices = services["cem-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in services["cem-receiver"] and "deploy" not in services["cem-exporter"]
    override = _compose(DEPLOY / "compose.cpu.yaml")["services"]["cem-worker"]
    assert "deploy" in override and override["deploy"] is None  # `deploy: !reset {}`
    assert "!reset" in (DEPLOY / "compose.cpu.yaml").read_text(encoding="utf-8")


def test_compose_publishes_only_dicom_beyond_loopback() -> None:
    services = _compose()["services"]
    node_port = str(load_settings(DEPLOY / "node.compose.toml", environ={}).node.port)
    everywhere = []
    for name, service in services.items():
        for entry in service.get("ports", []):
            address, host_port, container_port = _published(entry)
            if address != "127.0.0.1":
                everywhere.append((name, host_port, container_port))
    assert everywhere == [("cem-receiver", node_port, node_port)]
    assert "ports" not in services["postgres"]


def test_compose_http_endpoint_matches_the_node_config() -> None:
    services = _compose()["services"]
    settings = load_settings(DEPLOY / "node.compose.toml", environ={})
    published = {_published(p)[2]: _published(p) for p in services["cem-receiver"]["ports"]}
    http = published[str(settings.http.port)]
    assert http[0] == "127.0.0.1"
    # inside the container the endpoint must listen beyond loopback to be published
    assert settings.http.host == "0.0.0.0"


def test_compose_node_environment_names_real_settings() -> None:
    compose = _compose()
    variables = {"POSTGRES_PASSWORD": "not-a-secret"}
    services = compose["services"]
    override = _compose(DEPLOY / "compose.cpu.yaml")["services"]["cem-worker"]
    for name in NODE_SERVICES:
        env = {k: _interpolate(v, variables) for k, v in _environment(services[name]).items()}
        if name == "cem-worker":
            env.update(_environment(override))
        node_vars = [v for v in env if v.upper().startswith(ENV_PREFIX)]
        assert "CEM_NODE_DATABASE__URL" in node_vars
        for var in node_vars:
            assert var == ENV_CONFIG_VAR or _setting_exists(var), f"{name}: {var} is no setting"
        # the config file named is the one mounted from deploy/
        mounts = {
            target: source
            for source, target, *_ in (v.split(":") for v in services[name]["volumes"])
        }
        config_source = mounts[env[ENV_CONFIG_VAR]]
        assert (COMPOSE.parent / config_source).resolve() == DEPLOY / "node.compose.toml"
        settings = load_settings(DEPLOY / "node.compose.toml", environ=env)
        assert settings.database_url() == (
            "postgresql+psycopg://cem:not-a-secret@postgres:5432/cem"
        )
        if name == "cem-worker":
            assert settings.analysis.device == "cpu"  # with compose.cpu.yaml


def test_compose_commits_no_password() -> None:
    compose = _compose()
    postgres = _environment(compose["services"]["postgres"])
    assert postgres["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    url = _environment(compose["services"]["cem-receiver"])["CEM_NODE_DATABASE__URL"]
    assert "${POSTGRES_PASSWORD:?" in url
    with pytest.raises(AssertionError, match="POSTGRES_PASSWORD"):
        _interpolate(url, {})
    # env.example lists every required variable, without a value
    example = (DEPLOY / "env.example").read_text(encoding="utf-8")
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text(encoding="utf-8")))
    for name in required:
        assert re.search(rf"^{name}=$", example, flags=re.MULTILINE), name
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    assert "deploy/.env" in ignored


def test_compose_bind_mounts_exist() -> None:
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).is_file(), f"{name}: {source}"


def test_ohif_serves_our_config_and_proxies_orthanc() -> None:
    ohif = _compose()["services"]["ohif"]
    container_port = ohif["environment"]["PORT"]
    assert [_published(p) for p in ohif["ports"]] == [("127.0.0.1", "3000", container_port)]
    mounts = {Path(s).name: t for s, t, *_ in (v.split(":") for v in ohif["volumes"])}
    template = (DEPLOY / "ohif-nginx.conf.template").read_text(encoding="utf-8")
    assert mounts["ohif-nginx.conf.template"] == "/usr/src/default.conf.template"
    assert "listen ${PORT}" in template
    assert f"alias {mounts['ohif-app-config.js']};" in template
    assert "proxy_pass $orthanc;" in template and "http://orthanc:8042" in template
    app_config = (DEPLOY / "ohif-app-config.js").read_text(encoding="utf-8")
    for root in ("/dicom-web", "/wado"):
        assert f"location {root}" in template
        assert root + "`" in app_config
    assert "healthz" not in template  # the node's endpoint is not exposed through the viewer


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_pins_what_setup_sh_pins() -> None:
    instructions = _dockerfile()
    args = _arg_defaults(instructions)
    for name, spec in _setup_sh_specs().items():
        assert args.get(name) == spec, name
    runs = " ".join(a for i, a in instructions if i == "RUN")
    assert '--no-build-isolation "${PYRADIOMICS_SPEC}"' in runs
    assert 'pip install ".[all]" "${TORCH_SPEC}" "${TORCHVISION_SPEC}"' in runs


def test_dockerfile_runs_as_a_non_root_user_on_a_cuda_base() -> None:
    instructions = _dockerfile()
    args = _arg_defaults(instructions)
    bases = [_interpolate(a.split()[0], args) for i, a in instructions if i == "FROM"]
    assert bases and all(b.startswith("nvidia/cuda:") for b in bases), bases
    assert re.search(r"-(cudnn-)?runtime-ubuntu", bases[-1]), bases[-1]
    final = _final_stage(instructions)
    users = [a for i, a in final if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(i == "RUN" and "useradd" in a and "--uid" in a for i, a in final)
    assert ("ENTRYPOINT", '["cem-node"]') in final
    cmd = json.loads(next(a for i, a in final if i == "CMD"))
    assert cmd[0] == "serve"
    exposed = {p for i, a in final if i == "EXPOSE" for p in a.split()}
    assert {"11112", "8765"} <= exposed
    assert ("VOLUME", '["/var/lib/cem-node"]') in final


def test_dockerfile_healthcheck_and_environment_match_its_config() -> None:
    instructions = _dockerfile()
    final = _final_stage(instructions)
    env = _dockerfile_env(instructions)
    copies = {
        a.split()[-1].rstrip("/"): a.split()[-2]
        for i, a in final
        if i == "COPY" and "--from" not in a
    }
    config = env[ENV_CONFIG_VAR]
    assert copies[config] == "deploy/node.docker.toml"
    settings = load_settings(REPO / copies[config], environ={})
    health = next(a for i, a in final if i == "HEALTHCHECK")
    assert f"http://127.0.0.1:{settings.http.port}/healthz" in health
    assert settings.http.host in ("127.0.0.1", "0.0.0.0")  # reachable on the loopback
    for var in env:
        if var.upper().startswith(ENV_PREFIX):
            assert var == ENV_CONFIG_VAR or _setting_exists(var), var
    assert Path(env["TMPDIR"]).is_relative_to(settings.storage.root)
    assert str(settings.analysis.models_dir) in copies


def test_docker_build_context_keeps_what_the_image_needs() -> None:
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for entry in (".venv", ".git", ".cache", "tests/e2e/node_modules", "out", "var"):
        assert entry in ignored, entry
    for ins, args in _dockerfile():
        if ins != "COPY" or "--from" in args:
            continue
        for source in args.split()[:-1]:
            assert (REPO / source).exists(), source
            top = source.rstrip("/").split("/")[0]
            assert top not in ignored and source.rstrip("/") not in ignored, source
