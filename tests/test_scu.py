"""Outgoing DICOM (cem_node.dicom.net.scu) against real peers: Orthanc and dcmtk."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)
from pynetdicom.dsutils import split_dataset

from cem_node.dicom.net.scu import (
    FailureKind,
    RemoteAE,
    SendResult,
    classify_status,
    echo,
    send_files,
)
from cem_node.synthetic import SynthOptions, generate_study
from cem_node.synthetic.dicom_writer import write_dataset
from tests.peers import (
    LOOPBACK,
    NODE_AE_TITLE,
    DcmtkStoreSCP,
    OrthancServer,
    echoscu,
    free_port,
    storescu,
)

OrthancFactory = Callable[..., OrthancServer]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Eight small Explicit VR MG images of one study, and a JPEG 2000 one (last)."""
    out = tmp_path_factory.mktemp("scu")
    folder = generate_study(out, 11, 1, SynthOptions(size="200x240")) / "dicom"
    explicit = sorted(folder.glob("*.dcm"))
    ds = pydicom.dcmread(explicit[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    write_dataset(ds, out / "j2k.dcm", "jpeg2000")
    return [*explicit, out / "j2k.dcm"]


def uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def assert_delivered(results: list[SendResult], paths: list[Path]) -> None:
    assert [r.path for r in results] == paths
    for r in results:
        assert r.delivered, r.message
        assert (r.status, r.failure) == (0x0000, None)
        assert r.sop_instance_uid == uid(r.path)


def test_files_arrive_in_their_own_transfer_syntax(
    orthanc: OrthancFactory, study: list[Path]
) -> None:
    pacs = orthanc()
    results = send_files(study, pacs.remote, calling_ae_title=NODE_AE_TITLE)
    assert_delivered(results, study)
    assert pacs.sop_instance_uids() == {uid(p) for p in study}
    syntaxes = {
        pacs.instance_tags(i)["SOPInstanceUID"]: pacs.instance_metadata(i, "TransferSyntax")
        for i in pacs.instances()
    }
    assert syntaxes[uid(study[-1])] == JPEG2000Lossless
    assert {syntaxes[uid(p)] for p in study[:-1]} == {ExplicitVRLittleEndian}


def test_resending_keeps_one_copy(orthanc: OrthancFactory, study: list[Path]) -> None:
    pacs = orthanc()
    first = send_files(study[:3], pacs.remote, calling_ae_title=NODE_AE_TITLE)
    again = send_files(study[:3], pacs.remote, calling_ae_title=NODE_AE_TITLE)
    assert_delivered(first, study[:3])
    assert_delivered(again, study[:3])
    assert pacs.count_instances() == 3
    assert pacs.sop_instance_uids() == {uid(p) for p in study[:3]}


def _send_to_a_rejecting_pacs(files: list[Path], remote: RemoteAE) -> list:
    """send_files, once more when the A-ASSOCIATE-RJ was lost to the connection closing.

    Orthanc closes the connection right after its A-ASSOCIATE-RJ; on a loaded
    machine pynetdicom's requestor now and then sees the close first, and the
    send is (rightly) a transient failure that the exporter would retry. The
    rejection itself is what these tests are about.
    """
    for _ in range(3):
        results = send_files(files, remote, calling_ae_title=NODE_AE_TITLE)
        if not any("closed the connection during association" in r.message for r in results):
            break
    return results


@pytest.mark.parametrize(
    "modalities",
    [
        {"other": ("SOMEONE_ELSE", LOOPBACK, 104)},
        # the right AE title from another host (Orthanc checks the host too)
        {"cem-node": (NODE_AE_TITLE, "192.0.2.7", 104)},
    ],
    ids=["unknown-ae-title", "known-ae-title-other-host"],
)
def test_pacs_that_does_not_know_us_is_a_permanent_failure(
    orthanc: OrthancFactory, study: list[Path], modalities: dict
) -> None:
    pacs = orthanc(modalities=modalities)
    results = _send_to_a_rejecting_pacs(study[:2], pacs.remote)
    for r in results:
        assert (r.delivered, r.status, r.failure) == (False, None, FailureKind.PERMANENT), r.message
        assert "rejected the association" in r.message
        assert f"calling AE title {NODE_AE_TITLE} not recognised" in r.message
        assert "modality list" in r.message
    assert pacs.count_instances() == 0


def test_orthanc_allowing_any_echo_aborts_the_store_instead(
    orthanc: OrthancFactory, study: list[Path]
) -> None:
    # Orthanc's default DicomAlwaysAllowEcho=true accepts any association and
    # aborts the C-STORE of an unknown AE: an abort is transient by the
    # standard, so only the message can point at the likely cause.
    pacs = orthanc(modalities={}, always_allow_echo=True)
    assert echo(pacs.remote, calling_ae_title=NODE_AE_TITLE).ok
    first, second = send_files(study[:2], pacs.remote, calling_ae_title=NODE_AE_TITLE)
    assert (first.failure, second.failure) == (FailureKind.TRANSIENT, FailureKind.TRANSIENT)
    assert "abort a C-STORE they do not allow from this AE title" in first.message
    assert pacs.count_instances() == 0


def test_wrong_called_ae_title_is_a_permanent_failure(
    orthanc: OrthancFactory, study: list[Path]
) -> None:
    pacs = orthanc()
    wrong = RemoteAE("NOT_ORTHANC", pacs.host, pacs.dicom_port)
    (result,) = _send_to_a_rejecting_pacs(study[:1], wrong)
    assert result.failure is FailureKind.PERMANENT
    assert "called AE title NOT_ORTHANC not recognised" in result.message


def test_tls_to_a_port_without_tls_is_a_permanent_failure(
    orthanc: OrthancFactory, study: list[Path]
) -> None:
    pacs = orthanc()
    remote = RemoteAE(pacs.aet, pacs.host, pacs.dicom_port, tls=True)
    (result,) = send_files(study[:1], remote, calling_ae_title=NODE_AE_TITLE)
    assert result.failure is FailureKind.PERMANENT
    assert "TLS handshake" in result.message
    assert "TLS handshake" in echo(remote, calling_ae_title=NODE_AE_TITLE).message


def test_nothing_listening_is_a_transient_failure(study: list[Path]) -> None:
    remote = RemoteAE("PACS", LOOPBACK, free_port())
    results = send_files(study[:2], remote, calling_ae_title=NODE_AE_TITLE)
    for r in results:
        assert (r.delivered, r.status, r.failure) == (False, None, FailureKind.TRANSIENT)
        assert "connection refused" in r.message
        assert "check that the PACS is running" in r.message


def test_no_answer_to_the_association_request_is_transient(study: list[Path]) -> None:
    with socket.create_server((LOOPBACK, 0)) as silent:  # accepts TCP, never speaks DICOM
        remote = RemoteAE("PACS", LOOPBACK, silent.getsockname()[1])
        (result,) = send_files(
            study[:1], remote, calling_ae_title=NODE_AE_TITLE, acse_timeout_s=0.5
        )
    assert result.failure is FailureKind.TRANSIENT
    assert "did not answer the association request within 0.5 s" in result.message


def test_an_abort_while_storing_is_transient_for_that_file_and_the_rest(
    tmp_path: Path, study: list[Path]
) -> None:
    with DcmtkStoreSCP(tmp_path / "rx", extra=("--abort-after",)) as scp:
        results = send_files(study[:3], scp.remote, calling_ae_title=NODE_AE_TITLE)
    assert [r.failure for r in results] == [FailureKind.TRANSIENT] * 3
    assert "aborted the association" in results[0].message
    assert all(r.message.startswith("not sent: the association ended") for r in results[1:])


def test_unreadable_files_are_permanent_and_the_others_are_sent(
    orthanc: OrthancFactory, study: list[Path], tmp_path: Path
) -> None:
    missing = tmp_path / "gone.dcm"
    garbage = tmp_path / "garbage.dcm"
    garbage.write_text("this is not DICOM\n" * 20)
    paths = [study[0], missing, garbage, study[-1]]
    pacs = orthanc()
    results = send_files(paths, pacs.remote, calling_ae_title=NODE_AE_TITLE)
    assert [r.path for r in results] == paths
    assert_delivered([results[0], results[3]], [study[0], study[-1]])
    for r in results[1:3]:
        assert (r.delivered, r.status, r.failure) == (False, None, FailureKind.PERMANENT)
        assert r.sop_instance_uid is None
        assert str(r.path) in r.message
    assert "no such file" in results[1].message
    assert "not DICOM" in results[2].message
    assert pacs.sop_instance_uids() == {uid(study[0]), uid(study[-1])}


def test_a_syntax_the_pacs_refuses_is_permanent_uncompressed_files_are_converted(
    orthanc: OrthancFactory, study: list[Path]
) -> None:
    pacs = orthanc(extra_config={"AcceptedTransferSyntaxes": [ImplicitVRLittleEndian]})
    explicit, j2k = study[0], study[-1]
    sent, refused = send_files([explicit, j2k], pacs.remote, calling_ae_title=NODE_AE_TITLE)
    assert sent.delivered, sent.message
    assert "sent in Implicit VR Little Endian" in sent.message
    assert (refused.delivered, refused.failure) == (False, FailureKind.PERMANENT)
    assert "does not accept Digital Mammography X-Ray Image Storage" in refused.message
    assert "JPEG 2000" in refused.message
    assert "accepts this SOP class only in Implicit VR Little Endian" in refused.message
    assert pacs.sop_instance_uids() == {uid(explicit)}


def test_the_data_set_is_sent_byte_for_byte(
    dcmtk_storescp: DcmtkStoreSCP, study: list[Path]
) -> None:
    paths = [study[0], study[-1]]
    assert_delivered(
        send_files(paths, dcmtk_storescp.remote, calling_ae_title=NODE_AE_TITLE), paths
    )
    received = {uid(p): p for p in dcmtk_storescp.files()}
    for path in paths:
        copy = received[uid(path)]
        sent_at, got_at = split_dataset(path)[1], split_dataset(copy)[1]
        assert path.read_bytes()[sent_at:] == copy.read_bytes()[got_at:]


def test_echo_orthanc(orthanc: OrthancFactory) -> None:
    pacs = orthanc()
    ok = echo(pacs.remote, calling_ae_title=NODE_AE_TITLE)
    assert (ok.ok, ok.status) == (True, 0x0000)
    assert 0 < ok.round_trip_s < 5
    stranger = echo(pacs.remote, calling_ae_title="STRANGER")
    assert not stranger.ok
    assert "calling AE title STRANGER not recognised" in stranger.message


def test_echo_dcmtk_storescp(dcmtk_storescp: DcmtkStoreSCP) -> None:
    result = echo(dcmtk_storescp.remote, calling_ae_title=NODE_AE_TITLE)
    assert (result.ok, result.status) == (True, 0x0000), result.message


def test_echo_to_a_closed_port(tmp_path: Path) -> None:
    result = echo(RemoteAE("PACS", LOOPBACK, free_port()), calling_ae_title=NODE_AE_TITLE)
    assert (result.ok, result.status) == (False, None)
    assert "nothing is listening" in result.message
    assert "connection refused" in result.message
    assert result.round_trip_s < 5


def test_dcmtk_storescu_keeps_each_files_transfer_syntax(
    orthanc: OrthancFactory, study: list[Path]
) -> None:
    pacs = orthanc()
    done = storescu(
        [study[0], study[-1]],
        port=pacs.dicom_port,
        called_ae=pacs.aet,
        calling_ae=NODE_AE_TITLE,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert pacs.sop_instance_uids() == {uid(study[0]), uid(study[-1])}
    assert (
        echoscu(port=pacs.dicom_port, called_ae=pacs.aet, calling_ae=NODE_AE_TITLE).returncode == 0
    )


@pytest.mark.parametrize(
    ("status", "delivered", "failure"),
    [
        (0x0000, True, None),
        (0xB000, True, None),
        (0xB006, True, None),
        (0xB007, True, None),
        (0x0111, True, None),
        (0xA700, False, FailureKind.TRANSIENT),
        (0xA7FF, False, FailureKind.TRANSIENT),
        (0x0110, False, FailureKind.TRANSIENT),
        (0x0122, False, FailureKind.PERMANENT),
        (0x0124, False, FailureKind.PERMANENT),
        (0xA900, False, FailureKind.PERMANENT),
        (0xC123, False, FailureKind.PERMANENT),
        (0x0999, False, FailureKind.PERMANENT),
    ],
)
def test_status_classification(status: int, delivered: bool, failure: FailureKind | None) -> None:
    got_delivered, got_failure, message = classify_status(status)
    assert (got_delivered, got_failure) == (delivered, failure)
    assert f"0x{status:04X}" in message


@pytest.mark.parametrize("title", ["", "A" * 17, "BACK\\SLASH"])
def test_an_invalid_ae_title_is_a_configuration_error(title: str) -> None:
    with pytest.raises(ValueError, match="calling_ae_title"):
        send_files([], RemoteAE("PACS", LOOPBACK, 104), calling_ae_title=title)
