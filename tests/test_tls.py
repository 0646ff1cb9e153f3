"""DICOM TLS: the node's listening socket with a server certificate and an
optional client-certificate check, against dcmtk's echoscu/storescu over TLS
and the node's own SCU. Certificates are made by openssl in the test."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from cem_node.config import Peer, Settings
from cem_node.dicom.net import tls as dicom_tls
from cem_node.dicom.net.scu import RemoteAE, echo
from cem_node.node import Node
from tests.analysis_double import DoubleAnalyser
from tests.dicom_validators import missing_tool
from tests.peers import LOOPBACK, echoscu

pytestmark = pytest.mark.tools


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    if shutil.which("openssl") is None:
        missing_tool("openssl is not installed")
    return make_pki(tmp_path_factory.mktemp("pki"))


def make_pki(d: Path) -> Path:
    """Write ``ca.pem``, ``server.crt``/``.key`` (127.0.0.1) and ``client.crt``/``.key``
    into ``d`` with openssl (also used by bench/bench_hostile.py)."""
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=d,
    )
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=d,
        )
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            "-out",
            f"{name}.crt",
            cwd=d,
        )
    return d


def _settings(root: Path, pki: Path, *, require_client: bool) -> Settings:
    settings = Settings.defaults()
    settings.storage.root = root
    settings.storage.min_free_mb = 0
    settings.node.host = LOOPBACK
    settings.node.port = 0
    settings.peers = [
        Peer(name="mod", ae_title="MODALITY", host="127.0.0.1", port=104, role="source")
    ]
    settings.tls = settings.tls.model_validate(
        {
            "enabled": True,
            "certificate": pki / "server.crt",
            "private_key": pki / "server.key",
            "ca_certificates": pki / "ca.pem",
            "require_client_certificate": require_client,
        }
    )
    return settings


@pytest.fixture
def tls_node(tmp_path: Path, pki: Path) -> Callable[..., Node]:
    nodes: list[Node] = []

    def start(require_client: bool) -> Node:
        node = Node(
            _settings(tmp_path / f"n{len(nodes)}", pki, require_client=require_client),
            analyser=DoubleAnalyser(),
            node_id="tls-node",
        )
        node.start()
        nodes.append(node)
        return node

    yield start  # type: ignore[misc]
    for node in nodes:
        node.stop()


def test_tls_with_client_certificates(tls_node: Callable[..., Node], pki: Path) -> None:
    node = tls_node(True)
    dcmtk_tls = [
        "+tls",
        str(pki / "client.key"),
        str(pki / "client.crt"),
        "+cf",
        str(pki / "ca.pem"),
    ]
    ok = echoscu(port=node.port, called_ae="CEM_NODE", calling_ae="MODALITY", extra=dcmtk_tls)
    assert ok.returncode == 0, ok.stderr
    # no TLS at all: the handshake fails, nothing is accepted
    plain = echoscu(port=node.port, called_ae="CEM_NODE", calling_ae="MODALITY")
    assert plain.returncode != 0
    # TLS without a client certificate: refused by the server
    anonymous = echoscu(
        port=node.port,
        called_ae="CEM_NODE",
        calling_ae="MODALITY",
        extra=["+tla", "+cf", str(pki / "ca.pem")],
    )
    assert anonymous.returncode != 0

    # the node's own SCU presents its certificate (as it does to TLS destinations)
    client = _settings(Path("unused"), pki, require_client=False).tls.model_copy(
        update={"certificate": pki / "client.crt", "private_key": pki / "client.key"}
    )
    result = echo(
        RemoteAE("CEM_NODE", LOOPBACK, node.port, tls=True),
        calling_ae_title="MODALITY",
        ssl_context=dicom_tls.client_context(client),
    )
    assert result.ok, result.message


def test_tls_without_client_certificate_check(tls_node: Callable[..., Node], pki: Path) -> None:
    node = tls_node(False)
    anonymous = echoscu(
        port=node.port,
        called_ae="CEM_NODE",
        calling_ae="MODALITY",
        extra=["+tla", "+cf", str(pki / "ca.pem")],
    )
    assert anonymous.returncode == 0, anonymous.stderr


def test_unloadable_tls_files_fail_with_the_file_named(tmp_path: Path, pki: Path) -> None:
    settings = _settings(tmp_path, pki, require_client=False)
    settings.tls.certificate = tmp_path / "missing.crt"
    with pytest.raises(dicom_tls.TlsConfigError, match=r"missing\.crt"):
        dicom_tls.server_context(settings.tls)
