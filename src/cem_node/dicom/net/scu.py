"""Outgoing DICOM: C-STORE of files to a remote AE, and C-ECHO.

:func:`send_files` sends a batch of DICOM files over one association and
returns one :class:`SendResult` per file; :func:`echo` checks that a remote
AE answers. Neither raises for network problems: every outcome comes back as
a result whose ``message`` says what happened and what to do about it.

Files are sent as they are: each file's own transfer syntax is proposed for
its SOP class, and the encoded data set is read from the file and sent
byte for byte (no decoding, no re-encoding). Uncompressed files may also go
in Explicit or Implicit VR Little Endian when the peer accepts only one of
them (that one conversion re-encodes the data set; the values are unchanged).

Classification of failures
--------------------------
The exporter retries :attr:`FailureKind.TRANSIENT` failures with backoff and
stops at :attr:`FailureKind.PERMANENT` ones (an administrator fixes the
configuration and restarts the job). Meanings are those of the standard
(PS3.8 9.3.4 for A-ASSOCIATE-RJ, PS3.7 Annex C and PS3.4 B.2.3 for the
C-STORE statuses).

TRANSIENT (the same request may succeed later):

* the TCP connection fails: refused (nothing listening), timed out, host
  unreachable or its name not resolvable;
* no A-ASSOCIATE response within the ACSE timeout, or the peer aborts
  (A-ABORT) or drops the connection at any point;
* A-ASSOCIATE-RJ with result *rejected-transient* (e.g. "temporary
  congestion", "local limit exceeded");
* no C-STORE response within the DIMSE timeout;
* status ``0xA7xx`` (refused: out of resources), ``0x0213`` (resource
  limitation), ``0x0110`` (processing failure) and ``0xFE00`` (cancelled).

PERMANENT (sending again will fail the same way until someone changes a
configuration):

* A-ASSOCIATE-RJ with result *rejected-permanent*: calling AE title not
  recognised (the PACS does not know this node), called AE title not
  recognised, application context or protocol version not supported;
* the peer accepts the association but no presentation context for the
  file's SOP class and transfer syntax;
* a TLS handshake that fails (certificate not trusted, peer not speaking TLS);
* status ``0x0122`` (SOP class not supported), ``0x0124`` (not authorised),
  ``0x0117`` (invalid SOP instance), ``0x0210``-``0x0212``, ``0xA9xx`` (data
  set does not match SOP class), ``0xCxxx`` (cannot understand) and any
  other failure status;
* a file that cannot be read as DICOM (missing, unreadable, no File Meta
  Information); the other files of the batch are still sent.

Delivered: status ``0x0000`` (success) and the warnings ``0xB000``
(coercion of data elements), ``0xB006`` (elements discarded) and ``0xB007``
(data set does not match SOP class). ``0x0111`` (duplicate SOP instance) is
also counted as delivered: the peer already holds an instance with that SOP
Instance UID, which is what resending after a lost response looks like.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import _config, build_context
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification

from cem_node.dicom.net.scu_association import (
    FailureKind,
    RemoteAE,
    associate,
    association_failure,
    new_ae,
    open_association,
    tls_context,
)

__all__ = [
    "MAX_PRESENTATION_CONTEXTS",
    "EchoResult",
    "FailureKind",
    "RemoteAE",
    "SendResult",
    "classify_status",
    "echo",
    "send_files",
]

#: The most presentation contexts one association can propose (PS3.8 9.3.2.2:
#: odd context IDs 1..255).
MAX_PRESENTATION_CONTEXTS = 128

_UNCOMPRESSED_LE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_WARNINGS = {
    0xB000: "coercion of data elements",
    0xB006: "elements discarded",
    0xB007: "data set does not match SOP class",
}
_PERMANENT_STATUSES = {
    0x0117: "invalid SOP instance",
    0x0122: "SOP class not supported",
    0x0124: "not authorised",
    0x0210: "duplicate invocation",
    0x0211: "unrecognised operation",
    0x0212: "mistyped argument",
}
# PS3.8 9.3.3.2 presentation context results
_CONTEXT_RESULTS = {
    1: "user rejection",
    2: "no reason given",
    3: "abstract syntax (SOP class) not supported",
    4: "transfer syntax not supported",
}


@dataclass(frozen=True, slots=True)
class SendResult:
    """What happened to one file.

    Parameters
    ----------
    path
        The file.
    sop_instance_uid
        Its SOP Instance UID (from the File Meta Information), ``None`` when
        the file could not be read.
    status
        The DIMSE status of the C-STORE response, ``None`` when the file was
        never sent or no response came.
    delivered
        Whether the peer confirmed the file (success or a warning status).
    failure
        Why it was not delivered, ``None`` when it was.
    message
        What happened, and for a failure what to do about it.
    """

    path: Path
    sop_instance_uid: str | None
    status: int | None
    delivered: bool
    failure: FailureKind | None
    message: str


@dataclass(frozen=True, slots=True)
class EchoResult:
    """The outcome of a C-ECHO.

    Parameters
    ----------
    ok
        Whether the remote answered the C-ECHO with success (``0x0000``).
    status
        The C-ECHO response status, ``None`` without a response.
    message
        What happened, and for a failure what to do about it.
    round_trip_s
        Seconds from opening the connection to the C-ECHO response (or to
        the failure): association set-up included, release not.
    """

    ok: bool
    status: int | None
    message: str
    round_trip_s: float


@dataclass(frozen=True, slots=True)
class _File:
    index: int
    path: Path
    sop_class: UID
    sop_instance: UID
    transfer_syntax: UID


class _ReadError(Exception):
    pass


def classify_status(status: int) -> tuple[bool, FailureKind | None, str]:
    """Classify a C-STORE response status.

    Parameters
    ----------
    status
        The (0000,0900) *Status* of the response.

    Returns
    -------
    delivered : bool
        Whether the peer holds the instance (success, warning, duplicate).
    failure : FailureKind or None
        ``None`` when delivered.
    message : str
        The status in words, with what to do for a failure.
    """
    code = f"0x{status:04X}"
    if status == 0x0000:
        return True, None, "stored (status 0x0000)"
    if status in _WARNINGS:
        return True, None, f"stored with a warning (status {code}: {_WARNINGS[status]})"
    if status == 0x0111:
        return (
            True,
            None,
            "the PACS already holds an instance with this SOP Instance UID "
            "(status 0x0111: duplicate SOP instance); counted as delivered",
        )
    if 0xA700 <= status <= 0xA7FF or status == 0x0213:
        return (
            False,
            FailureKind.TRANSIENT,
            f"the PACS is out of resources (status {code}); will retry; "
            "if this persists, check the PACS's free disk space and its log",
        )
    if status == 0x0110:
        return (
            False,
            FailureKind.TRANSIENT,
            "the PACS failed to process the instance (status 0x0110: processing failure); "
            "will retry; if this persists, check the PACS's log",
        )
    if status == 0xFE00:
        return False, FailureKind.TRANSIENT, "the PACS cancelled the store (status 0xFE00)"
    if status in _PERMANENT_STATUSES:
        what = _PERMANENT_STATUSES[status]
        if status == 0x0122:
            advice = "enable this SOP class on the PACS"
        elif status == 0x0124:
            advice = "allow this node to store on the PACS"
        else:
            advice = "check the file and the PACS's log"
        return (
            False,
            FailureKind.PERMANENT,
            f"the PACS refused the instance ({code}: {what}); " + (advice),
        )
    if 0xA900 <= status <= 0xA9FF:
        what = "data set does not match SOP class"
    elif 0xC000 <= status <= 0xCFFF:
        what = "cannot understand"
    else:
        what = "unknown status"
    return (
        False,
        FailureKind.PERMANENT,
        f"the PACS refused the instance (status {code}: {what}); check the file against "
        "the PACS's conformance statement and the PACS's log",
    )


def _check_ae_title(name: str, value: str) -> None:
    if not isinstance(value, str) or not value.strip() or len(value) > 16:
        raise ValueError(f"{name} must be 1 to 16 characters, got {value!r}")
    if "\\" in value or any(ord(c) < 32 or ord(c) > 126 for c in value):
        raise ValueError(f"{name} {value!r} must be printable ASCII without backslashes")


def _check_remote(remote: RemoteAE) -> None:
    _check_ae_title("remote.ae_title", remote.ae_title)
    if not remote.host:
        raise ValueError("remote.host must not be empty")
    if not 1 <= remote.port <= 65535:
        raise ValueError(f"remote.port must be between 1 and 65535, got {remote.port}")


def _read_file(index: int, path: Path) -> _File:
    """Read a file's File Meta Information (not its data set)."""
    try:
        meta = read_file_meta_info(path)
    except FileNotFoundError:
        raise _ReadError(f"cannot read {path}: no such file; regenerate or restore it") from None
    except IsADirectoryError:
        raise _ReadError(f"cannot read {path}: it is a directory, not a DICOM file") from None
    except PermissionError:
        raise _ReadError(
            f"cannot read {path}: permission denied; give this node read access"
        ) from None
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise _ReadError(
            f"cannot read {path} as a DICOM file ({exc}); the file is damaged or not DICOM "
            "(DICOM Part 10 with File Meta Information); regenerate it"
        ) from None
    values = {
        kw: meta.get(kw)
        for kw in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
    }
    missing = [kw for kw, value in values.items() if not value]
    if missing:
        raise _ReadError(
            f"cannot send {path}: its File Meta Information lacks {', '.join(missing)}; "
            "the file is damaged or not DICOM Part 10; regenerate it"
        )
    return _File(
        index,
        path,
        UID(str(values["MediaStorageSOPClassUID"])),
        UID(str(values["MediaStorageSOPInstanceUID"])),
        UID(str(values["TransferSyntaxUID"])),
    )


def _plan_contexts(files: Sequence[_File]) -> tuple[list[PresentationContext], set[int]]:
    """Presentation contexts for the files, and the indices of files left out.

    Each (SOP class, transfer syntax) pair of the files gets a context with
    that one transfer syntax; a SOP class with uncompressed files gets one
    more with the Little Endian syntaxes not proposed on their own, as a
    fallback. Exact contexts come first; beyond 128 contexts, files whose
    exact context did not fit are left out.
    """
    by_class: dict[UID, list[UID]] = {}
    for f in files:
        syntaxes = by_class.setdefault(f.sop_class, [])
        if f.transfer_syntax not in syntaxes:
            syntaxes.append(f.transfer_syntax)
    exact = [(sop, ts) for sop, syntaxes in by_class.items() for ts in syntaxes]
    kept = set(exact[:MAX_PRESENTATION_CONTEXTS])
    contexts = [build_context(sop, [ts]) for sop, ts in exact[:MAX_PRESENTATION_CONTEXTS]]
    for sop, syntaxes in by_class.items():
        fallback = [ts for ts in _UNCOMPRESSED_LE if ts not in syntaxes]
        uncompressed = any(not ts.is_encapsulated for ts in syntaxes)
        if uncompressed and fallback and len(contexts) < MAX_PRESENTATION_CONTEXTS:
            contexts.append(build_context(sop, fallback))
    left_out = {f.index for f in files if (f.sop_class, f.transfer_syntax) not in kept}
    return contexts, left_out


def _find_context(assoc: Association, f: _File) -> tuple[PresentationContext | None, bool]:
    """An accepted context for the file, and whether it needs a conversion."""
    candidates = [
        cx for cx in assoc.accepted_contexts if cx.abstract_syntax == f.sop_class and cx.as_scu
    ]
    for cx in candidates:
        if cx.transfer_syntax[0] == f.transfer_syntax:
            return cx, False
    if f.transfer_syntax in _UNCOMPRESSED_LE:
        for cx in candidates:
            if cx.transfer_syntax[0] in _UNCOMPRESSED_LE:
                return cx, True
    return None, False


def _no_context_message(assoc: Association, f: _File, remote: RemoteAE) -> str:
    accepted = sorted(
        {
            cx.transfer_syntax[0].name
            for cx in assoc.accepted_contexts
            if cx.abstract_syntax == f.sop_class
        }
    )
    what = f"{f.sop_class.name} in {f.transfer_syntax.name}"
    if accepted:
        # the peer's reason code is not reliable here: Orthanc (dcmtk) reports
        # "abstract syntax not supported" for a refused transfer syntax
        return (
            f"PACS {remote} does not accept {what} (it accepts this SOP class only in "
            f"{', '.join(accepted)}); enable this transfer syntax on the PACS"
        )
    reasons = sorted(
        {
            _CONTEXT_RESULTS.get(cx.result, f"result {cx.result}")
            for cx in assoc.rejected_contexts
            if cx.abstract_syntax == f.sop_class
        }
    )
    why = f" ({'; '.join(reasons)})" if reasons else ""
    return (
        f"PACS {remote} does not accept {what}{why}; "
        "enable this SOP class and transfer syntax on the PACS"
    )


def _no_response(
    assoc: Association, remote: RemoteAE, dimse_timeout_s: float, elapsed_s: float
) -> str:
    if elapsed_s >= 0.9 * dimse_timeout_s:
        return (
            f"no C-STORE response from PACS {remote} within {dimse_timeout_s:g} s; will retry; "
            "if this persists, check the PACS's load or raise the DIMSE timeout"
        )
    return (
        f"PACS {remote} aborted the association or closed the connection while storing "
        "this file; will retry; if this persists, check the PACS's log (some PACS accept "
        "the association but abort a C-STORE they do not allow from this AE title)"
    )


def _store(
    assoc: Association, f: _File, remote: RemoteAE, msg_id: int, dimse_timeout_s: float
) -> SendResult:
    """Send one file on an established association."""

    def result(
        status: int | None, delivered: bool, failure: FailureKind | None, message: str
    ) -> SendResult:
        return SendResult(f.path, str(f.sop_instance), status, delivered, failure, message)

    context, convert = _find_context(assoc, f)
    if context is None:
        return result(None, False, FailureKind.PERMANENT, _no_context_message(assoc, f, remote))
    started = time.monotonic()
    if convert:
        try:
            dataset: Dataset | Path = dcmread(f.path)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            return result(
                None,
                False,
                FailureKind.PERMANENT,
                f"cannot read {f.path} ({exc}); the file is damaged; regenerate it",
            )
    else:
        # Sending a path reads the encoded data set from the file in PDU-sized
        # chunks and sends it unchanged; without this pynetdicom would decode
        # and re-encode it. pynetdicom only offers this as a module-level
        # switch (no per-association or per-call option), hence the one write
        # to its global configuration; it changes nothing for data sets
        # passed as pydicom Datasets.
        _config.STORE_SEND_CHUNKED_DATASET = True
        dataset = f.path
    try:
        response = assoc.send_c_store(dataset, msg_id=msg_id)
    except (OSError, InvalidDicomError, ValueError, AttributeError) as exc:
        # the file changed under us (split_dataset / reading chunks); whatever
        # was sent of it is not a valid message, so end the association
        assoc.abort()
        return result(
            None,
            False,
            FailureKind.PERMANENT,
            f"cannot send {f.path} ({exc}); the file is damaged or changed while being "
            "sent; regenerate it",
        )
    status = response.get("Status")
    if status is None:
        elapsed = time.monotonic() - started
        # the association's state is unknown (pynetdicom may not have seen
        # the peer's A-ABORT yet): end it rather than wait on it again
        if assoc.is_established:
            assoc.abort()
        return result(
            None,
            False,
            FailureKind.TRANSIENT,
            _no_response(assoc, remote, dimse_timeout_s, elapsed),
        )
    delivered, failure, message = classify_status(int(status))
    comment = response.get("ErrorComment")
    if comment:
        message += f" (PACS says: {comment})"
    if delivered and convert:
        message += (
            f"; sent in {context.transfer_syntax[0].name} as the PACS did not accept "
            f"{f.transfer_syntax.name}"
        )
    return result(int(status), delivered, failure, message)


def send_files(
    paths: Sequence[Path],
    remote: RemoteAE,
    *,
    calling_ae_title: str,
    ssl_context: ssl.SSLContext | None = None,
    acse_timeout_s: float = 30.0,
    dimse_timeout_s: float = 60.0,
    network_timeout_s: float = 60.0,
    max_pdu_size: int = 0,
) -> list[SendResult]:
    """Send DICOM files to a remote AE with C-STORE, over one association.

    Each file's SOP class is proposed with the file's own transfer syntax
    (read from its File Meta Information, without the pixel data), plus
    Explicit/Implicit VR Little Endian for uncompressed files; the encoded
    data set is sent as it is in the file. Files are sent in order; after
    the association ends (an abort, a dropped connection) the remaining
    files are reported as transient failures. See the module docstring for
    how failures are classified.

    Parameters
    ----------
    paths
        DICOM Part 10 files.
    remote
        Where to send them.
    calling_ae_title
        This node's AE title (the *Calling AE Title*).
    ssl_context
        Client TLS context, used when ``remote.tls`` is true (ignored
        otherwise); ``None`` then means :func:`ssl.create_default_context`,
        which verifies the PACS's certificate against the system's CAs.
    acse_timeout_s
        Seconds to wait for the TCP connection and for the association
        (and release) responses.
    dimse_timeout_s
        Seconds to wait for each C-STORE response.
    network_timeout_s
        Seconds without any network activity after which the association
        is aborted.
    max_pdu_size
        The largest PDU this node accepts, in bytes; ``0`` means no limit.

    Returns
    -------
    list of SendResult
        One result per path, in the order of ``paths``.

    Raises
    ------
    ValueError
        If an AE title, the host or the port is invalid (a configuration
        error, not a network problem).
    """
    _check_ae_title("calling_ae_title", calling_ae_title)
    _check_remote(remote)
    paths = [Path(p) for p in paths]
    results: list[SendResult | None] = [None] * len(paths)
    files = _readable_files(paths, results)
    if not files:
        return [r for r in results if r is not None]
    contexts, files = _files_with_contexts(files, results)
    opened = open_association(
        remote,
        contexts,
        calling_ae_title,
        ssl_context,
        acse_timeout_s=acse_timeout_s,
        dimse_timeout_s=dimse_timeout_s,
        network_timeout_s=network_timeout_s,
        max_pdu_size=max_pdu_size,
    )
    if not isinstance(opened, Association):
        kind, message = opened
        for f in files:
            results[f.index] = SendResult(f.path, str(f.sop_instance), None, False, kind, message)
        return [r for r in results if r is not None]
    _store_all(opened, files, remote, dimse_timeout_s, results)
    return [r for r in results if r is not None]


def _readable_files(paths: Sequence[Path], results: list[SendResult | None]) -> list[_File]:
    """The files whose File Meta Information can be read; the others' results
    are set in ``results``."""
    files: list[_File] = []
    for index, path in enumerate(paths):
        try:
            files.append(_read_file(index, path))
        except _ReadError as exc:
            results[index] = SendResult(path, None, None, False, FailureKind.PERMANENT, str(exc))
    return files


def _files_with_contexts(
    files: list[_File], results: list[SendResult | None]
) -> tuple[list[PresentationContext], list[_File]]:
    """The presentation contexts to propose and the files they can carry; the
    results of the files left out (too many contexts) are set in ``results``."""
    contexts, left_out = _plan_contexts(files)
    for f in files:
        if f.index in left_out:
            results[f.index] = SendResult(
                f.path,
                str(f.sop_instance),
                None,
                False,
                FailureKind.PERMANENT,
                f"not sent: the batch needs more than {MAX_PRESENTATION_CONTEXTS} presentation "
                "contexts (SOP class and transfer syntax pairs); send this file in another batch",
            )
    return contexts, [f for f in files if f.index not in left_out]


def _store_all(
    assoc: Association,
    files: list[_File],
    remote: RemoteAE,
    dimse_timeout_s: float,
    results: list[SendResult | None],
) -> None:
    """Send the files in order on ``assoc``, setting their results, then release it.

    Once the association has ended, the remaining files are not sent.
    """
    ended: str | None = None
    try:
        for msg_id, f in enumerate(files, start=1):
            if ended is None and not assoc.is_established:
                ended = "the association ended before this file"
            if ended is not None:
                results[f.index] = SendResult(
                    f.path,
                    str(f.sop_instance),
                    None,
                    False,
                    FailureKind.TRANSIENT,
                    f"not sent: {ended}; will retry",
                )
                continue
            result = _store(assoc, f, remote, msg_id % 65536, dimse_timeout_s)
            results[f.index] = result
            if not assoc.is_established:
                ended = f"the association ended when sending {f.path.name} failed"
    finally:
        if assoc.is_established:
            assoc.release()


def echo(
    remote: RemoteAE,
    *,
    calling_ae_title: str,
    ssl_context: ssl.SSLContext | None = None,
    timeout_s: float = 10.0,
) -> EchoResult:
    """Check that a remote AE answers a C-ECHO (verification).

    Parameters
    ----------
    remote
        The AE to check.
    calling_ae_title
        This node's AE title.
    ssl_context
        Client TLS context when ``remote.tls`` is true (see :func:`send_files`).
    timeout_s
        Seconds to wait for the connection, the association and the response.

    Returns
    -------
    EchoResult
        ``ok`` with status ``0x0000``; otherwise a message saying what failed
        and what to do.

    Raises
    ------
    ValueError
        If an AE title, the host or the port is invalid.
    """
    _check_ae_title("calling_ae_title", calling_ae_title)
    _check_remote(remote)
    tls = tls_context(remote, ssl_context)
    ae = new_ae(calling_ae_title, timeout_s, timeout_s, timeout_s)
    started = time.monotonic()
    contexts = [build_context(Verification)]
    assoc, connected, error = associate(ae, remote, contexts, tls, 0)
    if assoc is None or not assoc.is_established:
        elapsed = time.monotonic() - started
        _kind, message = association_failure(
            assoc,
            remote,
            calling_ae_title,
            connected=connected,
            error=error,
            tls=tls,
            timeout_s=timeout_s,
            elapsed_s=elapsed,
        )
        if assoc is not None and assoc.acceptor.primitive is not None and not assoc.is_rejected:
            message = (
                f"PACS {remote} does not accept verification (C-ECHO); "
                "enable the Verification SOP class on the PACS"
            )
        # the failure texts are shared with the exporter, which retries; an echo does not
        return EchoResult(False, None, message.replace("; will retry", ""), elapsed)
    try:
        response = assoc.send_c_echo()
        elapsed = time.monotonic() - started
    finally:
        if assoc.is_established:
            assoc.release()
    status = response.get("Status")
    if status is None:
        return EchoResult(
            False,
            None,
            f"no C-ECHO response from {remote} within {timeout_s:g} s (or the association was "
            "aborted); check the PACS's log",
            elapsed,
        )
    if int(status) == 0x0000:
        return EchoResult(True, 0, f"{remote} answered in {elapsed * 1000:.0f} ms", elapsed)
    return EchoResult(
        False,
        int(status),
        f"{remote} answered the C-ECHO with status 0x{int(status):04X}; check the PACS's log",
        elapsed,
    )
