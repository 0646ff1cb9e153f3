"""The file store: received instances and result objects, written durably.

A file is written to a temporary name in its final folder, fsync'ed,
renamed into place and its folder fsync'ed; only then may the caller commit
the database row and answer the C-STORE with success. A crash before the
rename leaves a temporary file (``.tmp-*``) that :meth:`InstanceFileStore.
temporary_files` finds; a crash after it leaves a file without a row, which
is harmless: the sender got no success status and will send it again.
A streamed dataset (:meth:`InstanceFileStore.adopt`) is renamed to its new
name first and fsync'ed after, for the same reason: one journal commit.

Several nodes may share one store (docs/STORE.md): a store opened for an
owner (:meth:`InstanceFileStore.owned_by`, a node identity) names its
temporary files ``.tmp-<tag>-*`` and receives into ``.receiving/<tag>/``,
so that its clean-ups touch its own files only, never another node's
transfers in flight.

File names are derived from hashes of the UIDs, never from the received
strings themselves, so nothing a peer sends can choose a path.

Replacing an instance by different bytes: write the new version to its own
path (``version + 1``), commit the row pointing at it, then delete the old
file, so that the row always names a complete file.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cem_node.store.identity import identity_tag

__all__ = [
    "TEMPORARY_FILE_PREFIX",
    "DiskGuard",
    "InstanceFileStore",
    "StoredFile",
    "UnsafePathError",
    "start_writeback",
]

_CHUNK = 1 << 20
#: Every temporary file of the store starts so (crash leftovers are found by it).
TEMPORARY_FILE_PREFIX = ".tmp-"


class UnsafePathError(ValueError):
    """A relative path would leave the store's root folder."""


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A file safely written into the store.

    Attributes
    ----------
    relative_path
        Path relative to the store root, with ``/`` separators (what the
        database keeps).
    size_bytes
        Its size.
    sha256
        The hex SHA-256 of its bytes (``None`` when not computed).
    """

    relative_path: str
    size_bytes: int
    sha256: str | None


def _uid_hash(uid: str) -> str:
    return hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int) -> None:
    """Start writing a file's dirty pages to disk, without waiting (Linux
    ``sync_file_range``; elsewhere nothing). Not a durability guarantee: a file
    is durable after ``fsync`` only, which then has less left to wait for."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def fsync_directory(path: Path) -> None:
    """Make a rename or creation in folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class InstanceFileStore:
    """Durable files under one root folder.

    Parameters
    ----------
    root
        The store's root folder; created when missing. In a scale-out
        deployment every process must see the same root (a shared mount).
    owner
        The node identity whose temporary files this store writes and
        cleans (see :meth:`owned_by`); ``None``: every temporary file is
        its own (one node, or a tool run while no node runs).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        instances_dir: str = "instances",
        results_dir: str = "results",
        owner: str | None = None,
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.instances_dir = instances_dir.strip("/")
        self.results_dir = results_dir.strip("/")
        self.owner = owner
        self._tag = identity_tag(owner) if owner is not None else None

    def __repr__(self) -> str:
        return f"InstanceFileStore({str(self.root)!r}, owner={self.owner!r})"

    def owned_by(self, owner: str) -> InstanceFileStore:
        """The same store, writing and cleaning the temporary files of node ``owner``."""
        return InstanceFileStore(
            self.root,
            instances_dir=self.instances_dir,
            results_dir=self.results_dir,
            owner=owner,
        )

    @property
    def temporary_prefix(self) -> str:
        """How this store's temporary files are named: ``.tmp-<owner tag>-`` (or ``.tmp-``)."""
        if self._tag is None:
            return TEMPORARY_FILE_PREFIX
        return f"{TEMPORARY_FILE_PREFIX}{self._tag}-"

    @property
    def receiving_dir(self) -> Path:
        """Folder for datasets being received (created when missing).

        The SCP streams each incoming dataset to a temporary file (named like
        every temporary file of the store, so a crash's leftovers are found
        by :meth:`temporary_files`) here, on the store's file system, so that
        adopting it is a rename. Its modification time marks the last
        reception of any process of the node. With an owner:
        ``.receiving/<owner tag>``, the node's own.
        """
        folder = self.root / ".receiving"
        if self._tag is not None:
            folder = folder / self._tag
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def instance_path(
        self, study_instance_uid: str, sop_instance_uid: str, *, version: int = 1
    ) -> str:
        """Return the relative path of a received instance's file.

        ``<instances_dir>/<2 hex>/<study hash>/<instance hash>.v<version>.dcm``;
        the two-character level keeps folders small.
        """
        if version < 1:
            raise ValueError(f"version must be >= 1, not {version}")
        study = _uid_hash(study_instance_uid)[:32]
        sop = _uid_hash(sop_instance_uid)[:32]
        return f"{self.instances_dir}/{study[:2]}/{study}/{sop}.v{version}.dcm"

    def result_path(self, study_instance_uid: str, sop_instance_uid: str) -> str:
        """Return the relative path of a result object (SEG, SR, GSPS) to export."""
        study = _uid_hash(study_instance_uid)[:32]
        sop = _uid_hash(sop_instance_uid)[:32]
        return f"{self.results_dir}/{study[:2]}/{study}/{sop}.dcm"

    def absolute(self, relative_path: str) -> Path:
        """Return the absolute path of ``relative_path``.

        Raises
        ------
        UnsafePathError
            If the path is absolute or leaves the root (``..``).
        """
        pure = PurePosixPath(relative_path)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts:
            raise UnsafePathError(f"not a path inside the store: {relative_path!r}")
        return self.root.joinpath(*pure.parts)

    def write_bytes(
        self, relative_path: str, data: bytes | Iterable[bytes], *, digest: bool = True
    ) -> StoredFile:
        """Write ``data`` durably at ``relative_path``, replacing any file there.

        Parameters
        ----------
        relative_path
            Where, relative to the root (see :meth:`instance_path`).
        data
            The bytes, or an iterable of chunks.
        digest
            Compute the SHA-256 while writing. The C-STORE path passes
            ``False``: without SHA instructions it costs more than the write
            and the fsync together, and is computed after the answer instead.

        Returns
        -------
        StoredFile
            The path, size and SHA-256 (``None`` without ``digest``) of what was written.
        """
        chunks: Iterable[bytes] = (data,) if isinstance(data, bytes | bytearray) else data
        target = self.absolute(relative_path)
        folder = target.parent
        folder.mkdir(parents=True, exist_ok=True)
        hasher = hashlib.sha256() if digest else None
        size = 0
        fd, temp_name = tempfile.mkstemp(prefix=self.temporary_prefix, dir=folder)
        temp = Path(temp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                    if hasher is not None:
                        hasher.update(chunk)
                    size += len(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            temp.replace(target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        fsync_directory(folder)
        return StoredFile(relative_path, size, hasher.hexdigest() if hasher else None)

    def adopt(self, source: str | os.PathLike[str], relative_path: str) -> StoredFile:
        """Move a complete file (e.g. pynetdicom's streamed dataset) durably into the store.

        The file is renamed into place and fsync'ed when it is on the store's
        file system (no copy), copied otherwise. ``source`` is gone afterwards.
        ``relative_path`` must be a new name, one that no row names (the ingest
        path adds a random part to each): :class:`FileExistsError` otherwise.
        """
        source_path = Path(source)
        target = self.absolute(relative_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if source_path.stat().st_dev != target.parent.stat().st_dev:
            stored = self.copy_in(source_path, relative_path, digest=False)
            source_path.unlink(missing_ok=True)
            return stored
        if target.exists():
            raise FileExistsError(f"the store already holds {relative_path!r}")
        fd = os.open(source_path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            # Renamed first, fsync'ed after: the target is a new name that no row
            # names yet, so a crash in between leaves an orphan file, never a named
            # incomplete one. On a journalling file system (ext4, xfs) the file's
            # fsync then commits the rename in the same journal transaction, and
            # the folder's fsync, still needed elsewhere, finds nothing left to wait for.
            source_path.replace(target)
            os.fsync(fd)  # written by someone else, not yet durable
        finally:
            os.close(fd)
        fsync_directory(target.parent)
        return StoredFile(relative_path, size, None)

    def copy_in(
        self, source: str | os.PathLike[str], relative_path: str, *, digest: bool = True
    ) -> StoredFile:
        """Copy a file (e.g. pynetdicom's streamed dataset) durably into the store."""
        with Path(source).open("rb") as handle:
            return self.write_bytes(
                relative_path, iter(lambda: handle.read(_CHUNK), b""), digest=digest
            )

    def sha256(self, relative_path: str) -> str:
        """Return the SHA-256 of a stored file, read back from disk."""
        digest = hashlib.sha256()
        with self.absolute(relative_path).open("rb") as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def remove(self, relative_path: str) -> None:
        """Delete a stored file if present (after its row no longer names it)."""
        self.absolute(relative_path).unlink(missing_ok=True)

    def remove_abandoned_receptions(self, older_than_s: float) -> int:
        """Delete datasets of aborted associations (streamed, never adopted) untouched
        for ``older_than_s`` seconds; return how many. A transfer in progress
        writes to its file all the time, so its modification time is recent.

        With an owner, only its own receiving folder is cleaned (and the
        shared folder of versions without per-node folders)."""
        cutoff = time.time() - older_than_s
        removed = 0
        folders = {self.receiving_dir, self.root / ".receiving"}
        for path in (p for f in folders for p in f.glob(f"{TEMPORARY_FILE_PREFIX}*")):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # adopted or removed meanwhile
                continue
        return removed

    def temporary_files(self) -> Iterator[Path]:
        """Yield leftovers of writes interrupted by a crash (safe to delete once
        the owner, or with no owner every node of the store, has stopped).

        With an owner: its receiving folder's files and the ``.tmp-<tag>-*``
        files it writes, never another node's."""
        if self._tag is None:
            yield from self.root.rglob(f"{TEMPORARY_FILE_PREFIX}*")
            return
        yield from self.receiving_dir.glob(f"{TEMPORARY_FILE_PREFIX}*")
        for path in self.root.rglob(f"{self.temporary_prefix}*"):
            if path.parent != self.receiving_dir:
                yield path


class DiskGuard:
    """The disk watermark of the store's file system, checked per instance.

    Parameters
    ----------
    root
        A folder on the file system to watch.
    high_watermark_percent
        Usage above which instances are refused.
    min_free_mb
        Free space (MiB) below which instances are refused.
    usage
        ``shutil.disk_usage``-like function (injected by tests).
    """

    def __init__(
        self,
        root: str,
        *,
        high_watermark_percent: float,
        min_free_mb: int,
        usage: Callable[[str], tuple[int, int, int]] = shutil.disk_usage,
    ) -> None:
        self.root = root
        self.high_watermark_percent = high_watermark_percent
        self.min_free_bytes = min_free_mb * 1024 * 1024
        self._usage = usage

    def refusal(self, incoming_bytes: int) -> str | None:
        """Return why ``incoming_bytes`` more cannot be stored, or ``None`` if they can."""
        total, used, free = self._usage(self.root)
        percent = 100.0 * used / total if total else 100.0
        if percent > self.high_watermark_percent:
            return (
                f"store disk {percent:.1f}% full, above the "
                f"{self.high_watermark_percent:g}% watermark"
            )
        if free - incoming_bytes < self.min_free_bytes:
            return (
                f"store disk has {free // (1024 * 1024)} MiB free, below the "
                f"{self.min_free_bytes // (1024 * 1024)} MiB minimum"
            )
        return None
