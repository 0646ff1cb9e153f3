"""The OHIF viewer for the browser test: its prebuilt files, served next to Orthanc.

:class:`ViewerServer` serves OHIF's ``dist/`` folder on a free loopback port,
with the single-page-app fallback (``/viewer?...`` gets ``index.html``), the
deployment's ``deploy/ohif-app-config.js`` as ``app-config.js`` (OHIF's data
source = Orthanc's DICOMweb on the page's own origin), so the test proves the
configuration the compose stack ships, and a reverse proxy of ``/dicom-web``
and ``/wado`` to Orthanc, so the browser sees one origin (Orthanc 1.10 sends no
CORS headers).

It runs in a thread of the test process; :meth:`ViewerServer.stop` shuts it
down. Every proxied request that failed is remembered for the test's messages.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

__all__ = ["APP_CONFIG", "ViewerServer"]

#: OHIF's configuration, the compose stack's: it finds DICOMweb on the page's origin.
APP_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "ohif-app-config.js"

PROXIED = ("/dicom-web", "/wado")
#: Hop-by-hop headers (RFC 9110) and those the proxy sets itself.
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade"}


class _Handler(SimpleHTTPRequestHandler):
    server: _Server
    extensions_map = {  # noqa: RUF012  (extends the base class's map)
        **SimpleHTTPRequestHandler.extensions_map,
        ".wasm": "application/wasm",
        ".js": "application/javascript",
        ".mjs": "application/javascript",
    }

    def __init__(self, request: Any, client_address: Any, server: _Server) -> None:
        super().__init__(request, client_address, server, directory=str(server.dist))

    def end_headers(self) -> None:
        # cross-origin isolation: OHIF's decoders want SharedArrayBuffer
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        super().end_headers()

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _proxy(self) -> None:
        body = None
        if "Content-Length" in self.headers:
            body = self.rfile.read(int(self.headers["Content-Length"]))
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in _HOP and k.lower() not in ("host", "accept-encoding")
        }
        upstream = self.server.upstream
        conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            status, reply_headers = response.status, response.getheaders()
        except OSError as exc:
            self.server.failures.append(f"{self.command} {self.path}: {exc}")
            self._send(502, f"upstream error: {exc}".encode(), "text/plain")
            return
        finally:
            conn.close()
        if status >= 400:
            self.server.failures.append(f"{self.command} {self.path}: HTTP {status}")
        self.send_response(status)
        for key, value in reply_headers:
            if key.lower() not in _HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith(PROXIED):
            return self._proxy()
        if path == "/app-config.js":
            return self._send(200, self.server.app_config, "application/javascript")
        target = (self.server.dist / path.lstrip("/")).resolve()
        if not target.is_relative_to(self.server.dist) or not target.exists():
            self.path = "/index.html"  # SPA fallback: /viewer?..., /segmentation?...
        return super().do_GET()

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        if urllib.parse.urlsplit(self.path).path.startswith(PROXIED):
            return self._proxy()
        self.send_error(405)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, dist: Path, upstream: str, app_config: bytes) -> None:
        self.dist = dist
        self.upstream = urllib.parse.urlsplit(upstream)
        self.app_config = app_config
        self.failures: list[str] = []
        super().__init__(("127.0.0.1", 0), _Handler)


class ViewerServer:
    """OHIF (prebuilt) + a proxy to Orthanc's DICOMweb, on a free loopback port.

    Parameters
    ----------
    dist
        OHIF's ``dist/`` folder (``index.html`` and the bundles).
    orthanc_url
        Base URL of Orthanc's REST API, with the DICOMweb plugin at
        ``/dicom-web`` and WADO-URI at ``/wado``.
    """

    def __init__(self, dist: Path, orthanc_url: str) -> None:
        self.dist = Path(dist).resolve()
        self.orthanc_url = orthanc_url
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The viewer's origin, e.g. ``http://127.0.0.1:40123``."""
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def failures(self) -> list[str]:
        """Proxied requests that failed (HTTP >= 400 or no answer from Orthanc)."""
        return list(self._server.failures) if self._server else []

    def viewer_url(self, study_uid: str, series_uid: str | None = None) -> str:
        """OHIF's URL that opens a study, with one of its series first."""
        query = {"StudyInstanceUIDs": study_uid}
        if series_uid:
            query["initialSeriesInstanceUID"] = series_uid
        return f"{self.url}/viewer?{urllib.parse.urlencode(query)}"

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._server = _Server(self.dist, self.orthanc_url, APP_CONFIG.read_bytes())
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="ohif-viewer",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
