"""The reports a later round replaces: the study's SRs of earlier rounds that went out.

When instances arrive after a study's results were sent, the study is analysed
again as a new round (:mod:`cem_node.jobs.assembler`). Its SR must name the
reports the PACS already holds, so that a reader of the new one knows which
it replaces (:func:`cem_node.dicom.objects.results.replacing_earlier_reports`); the
outbox (``exports``) knows which were sent.
"""

from __future__ import annotations

import logging

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cem_node.store.instance_files import InstanceFileStore
from cem_node.store.models import Analysis, Export, ExportState

__all__ = ["reports_sent_before"]

_LOG = logging.getLogger(__name__)


def reports_sent_before(
    sessions: sessionmaker[Session], files: InstanceFileStore, study_id: int, analysis_round: int
) -> list[Dataset]:
    """Headers of the study's SRs of rounds before ``analysis_round`` that went out.

    "Went out": sent to a destination, or still on its way (pending or
    sending: it reaches the PACS before a later object, the outbox being sent
    in order). A report that failed everywhere is not one the PACS has. Each
    SR is read once from the store, oldest first; one that cannot be read is
    logged and left out.
    """
    with sessions.begin() as session:
        rows = session.execute(
            select(Export.sop_instance_uid, Export.file_path)
            .join(Analysis, Analysis.id == Export.analysis_id)
            .where(
                Export.study_id == study_id,
                Export.object_type == "sr",
                Export.state.in_([ExportState.DONE, ExportState.PENDING, ExportState.SENDING]),
                Analysis.analysis_round < analysis_round,
            )
            .order_by(Export.id)
        ).all()
    paths = dict(rows)  # one file per SOP instance, whatever the number of destinations
    out: list[Dataset] = []
    for uid, path in paths.items():
        try:
            out.append(pydicom.dcmread(files.absolute(path), stop_before_pixels=True))
        except Exception as exc:  # a later report is still sent, without this predecessor
            _LOG.warning("earlier report %s cannot be read (%s): not named as replaced", uid, exc)
    return out
