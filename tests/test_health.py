"""/healthz's export check: results that keep failing to reach the PACS make the node unhealthy."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from cem_node.monitoring import EXPORT_FAILING_ATTEMPTS, export_problem
from cem_node.store import make_engine, session_factory, upgrade
from cem_node.store.models import Export, ExportState, Study

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    upgrade(db_url)
    engine: Engine = make_engine(db_url)
    with session_factory(engine)() as opened:
        yield opened
    engine.dispose()


def _export(study: Study, n: int, **fields: object) -> Export:
    return Export(
        study=study,
        destination="pacs",
        object_type="sr",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33",
        sop_instance_uid=f"1.2.3.{n}",
        file_path=f"results/{n}.dcm",
        **fields,
    )


def test_export_health(session: Session) -> None:
    study = Study(study_instance_uid="1.2.826.0.1.3680043.10.1.7", patient_id="P")
    session.add(study)
    session.add(_export(study, 1, state=ExportState.DONE, attempts=5))
    session.add(_export(study, 2, state=ExportState.PENDING, attempts=1, last_error="refused"))
    session.commit()
    assert export_problem(session, NOW) is None  # one failed attempt is not "keeps failing"

    retrying = _export(
        study,
        3,
        state=ExportState.PENDING,
        attempts=EXPORT_FAILING_ATTEMPTS,
        last_error="association rejected by PACS",
        claimed_at=NOW,
    )
    session.add(retrying)
    session.commit()
    problem = export_problem(session, NOW)
    assert problem is not None and "1 result object(s) still retrying" in problem
    assert "association rejected by PACS" in problem

    retrying.state = ExportState.DONE
    old = _export(study, 4, state=ExportState.FAILED, attempts=8, last_error="x", claimed_at=NOW)
    session.add(old)
    session.commit()
    assert "1 given up in the last hour" in (export_problem(session, NOW) or "")
    old.claimed_at = NOW - dt.timedelta(hours=2)
    session.commit()
    assert export_problem(session, NOW) is None  # an old give-up is the alert's business
