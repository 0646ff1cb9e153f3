"""Fixtures starting real DICOM peers (see tests/peers.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers import LOOPBACK, NODE_AE_TITLE, DcmtkStoreSCP, OrthancServer


@pytest.fixture
def orthanc(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., OrthancServer]]:
    """Factory of started Orthanc servers, stopped after the test.

    ``orthanc(**kwargs)`` passes ``kwargs`` to :class:`OrthancServer`; by
    default the modality list holds ``NODE_AE_TITLE`` (CEM_NODE) on 127.0.0.1. Orthanc needs
    ~3.5 s to shut down, so the test does not wait for it: the processes are
    waited for (and killed if need be) when the session ends.
    """
    servers: list[OrthancServer] = []

    def start(**kwargs: Any) -> OrthancServer:
        kwargs.setdefault("modalities", {"cem-node": (NODE_AE_TITLE, LOOPBACK, 11112)})
        server = OrthancServer(tmp_path / f"orthanc-{len(servers)}", **kwargs)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop(wait=False)
        request.config.add_cleanup(server.wait_stopped)


@pytest.fixture
def dcmtk_storescp(tmp_path: Path) -> Iterator[DcmtkStoreSCP]:
    """dcmtk's storescp receiving into ``tmp_path/storescp`` (bit-preserving)."""
    with DcmtkStoreSCP(tmp_path / "storescp") as scp:
        yield scp
