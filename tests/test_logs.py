"""The node's log keeps patient identifiers out, library warnings included (#19, observation 7).

highdicom's ``The string "Mass-Test_P_00173" is unlikely to represent the
intended person name`` went straight to standard error, the node's log.
Through a served node end to end: tests/test_corpus.py (its whole log is
checked for the names of every file it was sent).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from highdicom.valuerep import check_person_name
from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement

from cem_node.config import LoggingSection
from cem_node.logs import configure_logging, redact_quoted_values
from tests.conftest import assert_no_patient_identifiers


@pytest.fixture
def node_log(tmp_path: Path) -> Iterator[Path]:
    """The node's logging set-up writing JSON to a file; the test process's own restored."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    path = tmp_path / "node.log"
    configure_logging(LoggingSection(level="INFO", json=True, file=path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # not once per place: every test sees its own
            yield path
    finally:
        logging.captureWarnings(False)
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_library_warnings_reach_the_log_without_the_values(node_log: Path) -> None:
    check_person_name("Mass-Test_P_00173")  # highdicom warns, quoting the name
    mode = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.WARN
    try:
        DataElement(0x00100030, "DA", "DOE^JANE")  # a birth date: pydicom validates it
    finally:
        pydicom_config.settings.reading_validation_mode = mode
    records = _records(node_log)
    assert {r["logger"] for r in records} == {"py.warnings", "pydicom"}  # pydicom warns and logs
    messages = "\n".join(r["message"] for r in records)
    assert 'UserWarning: The string "<redacted>" is unlikely to represent the intended' in messages
    assert "UserWarning: Invalid value for VR DA: '<redacted>'" in messages
    assert_no_patient_identifiers(node_log.read_text().splitlines(), where="the log")


def test_exception_text_is_redacted_and_the_nodes_own_words_kept(node_log: Path) -> None:
    log = logging.getLogger("cem_node.store.ingest")
    # the node's own message, quoting an AE title: kept
    log.info("association accepted: calling AE title %r accepted", "MODALITY")
    # a reason holding a library's exception text (ingest's refusal of a dataset)
    log.warning(
        "instance %s refused with 0x%04X: %s",
        "1.2.3",
        0xC000,
        "Cannot parse (0010,0030) PatientBirthDate: ValueError: "
        "Unable to convert 'DOE^JANE' to 'DA' object",
    )
    # a library's exception as an argument (a database error repeating its row)
    log.error("database unavailable: %s", RuntimeError("[parameters: ('DOE^JANE', 'F')]"))
    name = "Mass-Test_P_00173"  # a variable: the traceback shows this source line
    try:
        raise ValueError(f"source_images name different patients: {name!r}")
    except ValueError:
        logging.getLogger("cem_node.jobs.worker").exception("job %d failed", 7)
    records = _records(node_log)
    messages = [r["message"] for r in records]
    assert messages[0] == "association accepted: calling AE title 'MODALITY' accepted"
    assert messages[1] == (
        "instance 1.2.3 refused with 0xC000: Cannot parse (0010,0030) PatientBirthDate: "
        "ValueError: Unable to convert '<redacted>' to '<redacted>' object"
    )
    assert messages[2] == "database unavailable: [parameters: ('<redacted>', '<redacted>')]"
    assert messages[3] == "job 7 failed"
    traceback = records[3]["exception"]
    assert traceback.endswith("ValueError: source_images name different patients: '<redacted>'")
    assert f'File "{__file__}"' in traceback  # where it happened stays readable
    assert_no_patient_identifiers(node_log.read_text().splitlines(), where="the log")


def test_quoted_values_are_told_from_apostrophes() -> None:
    assert redact_quoted_values("it doesn't match the file's end") == (
        "it doesn't match the file's end"
    )
    assert redact_quoted_values("""a "O'BRIEN^JANE" and b'DOE' and ('X', "Y")""") == (
        """a "<redacted>" and '<redacted>' and ('<redacted>', "<redacted>")"""
    )
