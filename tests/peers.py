"""Real DICOM peers for integration tests: Orthanc as a PACS, dcmtk's tools.

Everything runs on loopback with free ports and in temporary directories,
and is stopped by the context managers (killed if it does not stop). A
missing program skips the test, or fails it under ``CEM_NODE_REQUIRE_TOOLS=1``
(see :mod:`tests.dicom_validators`).

Orthanc 1.10 cannot bind to loopback only (it listens on all addresses);
``RemoteAccessAllowed: false`` keeps its HTTP API local, and its modality
list (with ``DicomCheckModalityHost``) limits who may store.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from cem_node.dicom.net.scu import RemoteAE
from tests.dicom_validators import missing_tool, require_tool

__all__ = [
    "LOOPBACK",
    "NODE_AE_TITLE",
    "DcmtkStoreSCP",
    "OrthancServer",
    "echoscu",
    "free_port",
    "orthanc_executable",
    "storescu",
]

LOOPBACK = "127.0.0.1"
#: The AE title tests send with; the ``orthanc`` fixture's Orthanc knows it on loopback.
NODE_AE_TITLE = "CEM_NODE"
#: (AE title, host, port) of a modality Orthanc accepts C-STORE from.
Modality = tuple[str, str, int]


def free_port() -> int:
    """Return a TCP port that is free on all addresses right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def _terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Stop a process politely (it may have had SIGTERM already), then kill it."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- Orthanc ---------------------------------------------------------------


def orthanc_executable() -> str:
    """Path of Orthanc, or skip/fail the test when it is not installed."""
    path = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")
    if path is None:
        missing_tool("Orthanc is not installed (Debian package orthanc)")
    assert path is not None
    return path


class OrthancServer:
    """An Orthanc PACS in a directory, on free ports, for one test.

    Parameters
    ----------
    workdir
        Directory for the configuration, the storage and the log.
    aet
        Orthanc's AE title (checked: ``DicomCheckCalledAet`` is on).
    modalities
        Who may store: name -> (AE title, host, port). Hosts are checked.
    always_allow_echo
        Whether any AE may C-ECHO (Orthanc's default is true; here false, so
        that an unknown AE title is rejected at association time).
    extra_config
        More configuration entries (override the generated ones).

    Examples
    --------
    >>> with OrthancServer(tmp, modalities={"node": ("CEM_NODE", LOOPBACK, 11112)}) as pacs:
    ...     pacs.sop_instance_uids()
    """

    def __init__(
        self,
        workdir: Path,
        *,
        aet: str = "ORTHANC",
        modalities: Mapping[str, Modality] | None = None,
        always_allow_echo: bool = False,
        extra_config: Mapping[str, Any] | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        self.executable = orthanc_executable()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.host = LOOPBACK
        self.dicom_port = 0
        self.http_port = 0
        self.modalities: dict[str, Modality] = dict(modalities or {})
        self.always_allow_echo = always_allow_echo
        self.extra_config = dict(extra_config or {})
        self.startup_timeout_s = startup_timeout_s
        self.config_path = self.workdir / "orthanc.json"
        self.log_path = self.workdir / "orthanc.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping: list[subprocess.Popen[bytes]] = []

    # lifecycle

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def remote(self) -> RemoteAE:
        """The server as a C-STORE destination."""
        return RemoteAE(self.aet, self.host, self.dicom_port)

    @property
    def running(self) -> bool:
        """Whether the Orthanc process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "Name": "cem-node-test",
            "StorageDirectory": str(self.workdir / "db"),
            "IndexDirectory": str(self.workdir / "db"),
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomCheckModalityHost": True,
            "DicomAlwaysAllowEcho": self.always_allow_echo,
            "DicomAlwaysAllowStore": False,
            "DicomModalities": {name: list(m) for name, m in self.modalities.items()},
            "SaveJobs": False,
            "StorageCompression": False,
            "HttpDescribeErrors": True,
            "DicomAssociationCloseDelay": 0,
        }
        config.update(self.extra_config)
        return config

    def start(self) -> Self:
        """Start Orthanc and wait until its REST API answers and its DICOM port listens.

        The first start picks free ports (trying again with new ones if a
        port was taken meanwhile); a later start reuses the ports and the
        storage, as a PACS that was down and comes back.
        """
        if self.running:
            return self
        self.wait_stopped()
        fresh = self.dicom_port == 0
        for _attempt in range(3 if fresh else 1):
            if fresh:
                self.dicom_port, self.http_port = free_port(), free_port()
            if self._launch():
                return self
        raise RuntimeError(
            f"Orthanc did not start (ports {self.dicom_port}/{self.http_port}); its log:\n"
            + _tail(self.log_path)
        )

    def _spawn(self, command: list[str], log: Any) -> subprocess.Popen[bytes]:
        """Start Orthanc's process (tests.multihost runs it on another host)."""
        return subprocess.Popen(
            command,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def _dicom_listening(self) -> None:
        """Raise OSError until the DICOM port accepts (it may open after the REST API)."""
        with socket.create_connection((self.host, self.dicom_port), timeout=1.0):
            pass

    def _launch(self) -> bool:
        self.config_path.write_text(json.dumps(self._config(), indent=2))
        with self.log_path.open("ab") as log:
            self._proc = self._spawn([self.executable, "--no-jobs", str(self.config_path)], log)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            try:
                self._get("/system", timeout_s=1.0)
                self._dicom_listening()
                return True
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        self.stop()
        return False

    def stop(self, timeout_s: float = 10.0, *, wait: bool = True) -> None:
        """Stop Orthanc (SIGTERM; SIGKILL after ``timeout_s``); the storage is kept.

        Orthanc takes about 3.5 s to shut down (its servers poll); with
        ``wait=False`` the signal is sent and :meth:`wait_stopped` (or the
        next :meth:`start`) waits for the process.
        """
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
            self._stopping.append(self._proc)
            self._proc = None
        if wait:
            self.wait_stopped(timeout_s)

    def wait_stopped(self, timeout_s: float = 10.0) -> None:
        """Wait for stopped processes to exit, killing them after ``timeout_s``."""
        while self._stopping:
            _terminate(self._stopping.pop(), timeout_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self, lines: int = 40) -> str:
        """The end of Orthanc's log."""
        return _tail(self.log_path, lines)

    # REST

    def _request(self, method: str, path: str, body: Any = None, *, timeout_s: float = 10.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload = response.read()
        return json.loads(payload) if payload else None

    def _get(self, path: str, *, timeout_s: float = 10.0) -> Any:
        return self._request("GET", path, timeout_s=timeout_s)

    def instances(self) -> list[str]:
        """Orthanc identifiers of the stored instances."""
        return list(self._get("/instances"))

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        """An instance's tags as keyword -> value (Orthanc's simplified tags)."""
        return dict(self._get(f"/instances/{urllib.parse.quote(instance_id)}/simplified-tags"))

    def instance_metadata(self, instance_id: str, name: str) -> str:
        """One of Orthanc's metadata of an instance, e.g. ``TransferSyntax``."""
        url = f"{self.url}/instances/{urllib.parse.quote(instance_id)}/metadata/{name}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    def sop_instance_uids(self) -> set[str]:
        """SOP Instance UIDs of the stored instances."""
        expanded = self._get("/instances?expand")
        return {item["MainDicomTags"]["SOPInstanceUID"] for item in expanded}

    def series_of_study(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """The study's series as Orthanc lists them (``MainDicomTags``, ``Instances`` ids)."""
        query = {"StudyInstanceUID": study_instance_uid}
        body = {"Level": "Series", "Query": query, "Expand": True}
        return list(self._request("POST", "/tools/find", body))

    def instance_file(self, instance_id: str) -> bytes:
        """The DICOM file of a stored instance, as Orthanc keeps it."""
        url = f"{self.url}/instances/{urllib.parse.quote(instance_id)}/file"
        with urllib.request.urlopen(url, timeout=30) as response:
            return bytes(response.read())

    def count_instances(self) -> int:
        """Number of stored instances."""
        return int(self._get("/statistics")["CountInstances"])

    def set_modalities(self, modalities: Mapping[str, Modality]) -> None:
        """Replace the modality list at run time (REST; kept for a restart too)."""
        for name in set(self._get("/modalities")) - set(modalities):
            self._request("DELETE", f"/modalities/{urllib.parse.quote(name)}")
        for name, (aet, host, port) in modalities.items():
            body = {"AET": aet, "Host": host, "Port": port}
            self._request("PUT", f"/modalities/{urllib.parse.quote(name)}", body)
        self.modalities = dict(modalities)


# --- dcmtk -----------------------------------------------------------------


def _storescu_config(files: Iterable[Path], folder: Path) -> Path | None:
    """An association profile proposing each file's own transfer syntax.

    storescu's ``-x?`` options propose one preferred transfer syntax for all
    files (plus uncompressed ones), so a batch mixing e.g. JPEG 2000 and
    Explicit VR files would be decompressed or refused. The profile proposes
    one context per (SOP class, transfer syntax) of the files, plus Explicit
    and Implicit VR Little Endian for each SOP class as a fallback.
    """
    pairs: dict[str, list[str]] = {}
    for path in files:
        try:
            meta = read_file_meta_info(path)
            sop_class = str(meta.MediaStorageSOPClassUID)
            syntax = str(meta.TransferSyntaxUID)
        except Exception:  # storescu reports unreadable files itself
            continue
        syntaxes = pairs.setdefault(sop_class, [])
        if syntax not in syntaxes:
            syntaxes.append(syntax)
    if not pairs:
        return None
    lines = ["[[TransferSyntaxes]]"]
    names: dict[tuple[str, ...], str] = {}

    def syntax_list(uids: tuple[str, ...]) -> str:
        if uids not in names:
            names[uids] = f"TS{len(names) + 1}"
            lines.append(f"[{names[uids]}]")
            lines.extend(f"TransferSyntax{i} = {uid}" for i, uid in enumerate(uids, 1))
        return names[uids]

    contexts: list[str] = []
    for sop_class, syntaxes in pairs.items():
        for syntax in syntaxes:
            contexts.append(f"{sop_class}\\{syntax_list((syntax,))}")
        fallback = tuple(str(s) for s in (ExplicitVRLittleEndian, ImplicitVRLittleEndian))
        contexts.append(f"{sop_class}\\{syntax_list(fallback)}")
    if len(contexts) > 128:
        raise ValueError("more than 128 presentation contexts; send fewer kinds of files")
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    lines += [f"PresentationContext{i} = {cx}" for i, cx in enumerate(contexts, 1)]
    lines += ["[[Profiles]]", "[Files]", "PresentationContexts = Contexts"]
    config = folder / "storescu.cfg"
    config.write_text("\n".join(lines) + "\n")
    return config


def storescu(
    files: Sequence[Path | str],
    *,
    host: str = LOOPBACK,
    port: int,
    called_ae: str,
    calling_ae: str = "STORESCU",
    extra: Sequence[str] = (),
    timeout_s: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Send files with dcmtk's storescu, each in its own transfer syntax.

    The files are not decompressed or converted: an association profile
    (``-xf``) proposes each file's SOP class with the file's transfer syntax
    (see :func:`_storescu_config`). ``-nh`` keeps going after a failed store.
    Returns the completed process (output in ``stdout``/``stderr``, text).
    """
    exe = require_tool("storescu")
    paths = [Path(f) for f in files]
    with tempfile.TemporaryDirectory(prefix="storescu-") as tmp:
        config = _storescu_config(paths, Path(tmp))
        profile = ["-xf", str(config), "Files"] if config is not None else []
        cmd = [
            exe,
            "-nh",
            *profile,
            "-aet",
            calling_ae,
            "-aec",
            called_ae,
            "-to",
            "10",
            *extra,
            host,
            str(port),
            *map(str, paths),
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)


def echoscu(
    *,
    host: str = LOOPBACK,
    port: int,
    called_ae: str,
    calling_ae: str = "ECHOSCU",
    extra: Sequence[str] = (),
    timeout_s: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """C-ECHO with dcmtk's echoscu (return code 0: the peer answered)."""
    exe = require_tool("echoscu")
    cmd = [exe, "-aet", calling_ae, "-aec", called_ae, "-to", "5", *extra, host, str(port)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)


class DcmtkStoreSCP:
    """dcmtk's storescp receiving into a directory, on a free port.

    Accepts every transfer syntax it knows (``+xa``) and unknown SOP classes
    (``-pm``), and writes what it receives bit for bit (``+B``), so a test
    can compare the files with what was sent.

    Parameters
    ----------
    directory
        Where received files go (created).
    aet
        Its AE title (storescp answers to any called AE title).
    extra
        More storescp options.
    """

    def __init__(
        self, directory: Path, *, aet: str = "STORESCP", extra: Sequence[str] = ()
    ) -> None:
        self.executable = require_tool("storescp")
        self.directory = Path(directory)
        self.aet = aet
        self.host = LOOPBACK
        self.port = 0
        self.extra = tuple(extra)
        self.log_path = self.directory.parent / f"{self.directory.name}-storescp.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def remote(self) -> RemoteAE:
        """The receiver as a C-STORE destination."""
        return RemoteAE(self.aet, self.host, self.port)

    def files(self) -> list[Path]:
        """The received files, sorted by name."""
        return sorted(p for p in self.directory.iterdir() if p.is_file())

    def start(self, startup_timeout_s: float = 10.0) -> Self:
        """Start storescp and wait until it answers a C-ECHO."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):
            self.port = free_port()
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    [
                        self.executable,
                        "-aet",
                        self.aet,
                        "+xa",
                        "-pm",
                        "+B",
                        "-dhl",
                        "-od",
                        str(self.directory),
                        *self.extra,
                        str(self.port),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            deadline = time.monotonic() + startup_timeout_s
            while time.monotonic() < deadline and self._proc.poll() is None:
                # a bare TCP connect would hold (single-process) storescp for
                # its ACSE timeout; a C-ECHO completes an association
                if echoscu(port=self.port, called_ae=self.aet).returncode == 0:
                    return self
                time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"storescp did not start; its log:\n{_tail(self.log_path)}")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop storescp (SIGTERM, SIGKILL after ``timeout_s``)."""
        if self._proc is not None:
            _terminate(self._proc, timeout_s)
            self._proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
