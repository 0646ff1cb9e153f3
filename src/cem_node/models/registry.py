"""Model bundles on disk: verify, write, list, activate, import.

A :class:`Bundle` is a verified, read-only view of a bundle folder: its
manifest parsed and every listed file's SHA-256 checked. The
:class:`BundleRegistry` is the folder of bundles (``[analysis] models_dir``):
one sub-folder per bundle, named as the bundle, and ``active.toml`` naming
the active bundle together with its hash at activation.

Rules a verification enforces (each failure a :class:`BundleError` that
says what is wrong and what to do):

- ``manifest.toml`` exists, is valid TOML and a valid manifest;
- every file listed in ``[files]`` exists, is a plain file (no symbolic
  link) and has the listed SHA-256;
- no other file is in the folder: a bundle is exactly what its manifest
  says. Hidden entries (names starting with ``.``, e.g. ``.DS_Store``) are
  ignored: the manifest cannot name them, so nothing ever reads them;
- inside a registry, the folder's name is the manifest's ``bundle.name``;
- the active bundle's manifest hash is the one recorded at activation
  (a bundle modified after activation must be checked and activated again).

Nothing here imports torch or xgboost.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import stat
import tomllib
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cem_node.contracts.findings import ModelIdentity
from cem_node.models.manifest import (
    MANIFEST_NAME,
    BundleError,
    BundleExistsError,
    BundleManifest,
    BundleUsageError,
    ManifestDraft,
    UnknownBundleError,
    check_bundle_name,
    check_bundle_path,
    describe_validation_error,
    draft_from,
    manifest_to_toml,
    parse_manifest,
)

__all__ = [
    "ACTIVE_FILE",
    "ActiveRecord",
    "Bundle",
    "BundleRegistry",
    "BundleSummary",
    "load_bundle",
    "read_manifest",
    "sha256_file",
    "write_bundle",
]

ACTIVE_FILE = "active.toml"
"""The file in the models folder that names the active bundle."""

_CHUNK = 1 << 20
_PREFIX = 12  # hex digits of a hash shown in messages
_RESTORE_HINT = "restore the bundle from its original copy (`cem-node models import DIR --force`)"


def sha256_file(path: Path) -> str:
    """The SHA-256 (hex) of a file's content, read in chunks."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _short(digest: str) -> str:
    return digest[:_PREFIX] + "…"


def _hidden(name: str) -> bool:
    return name.startswith(".")


# --------------------------------------------------------------------------- Bundle


@dataclass(frozen=True)
class Bundle:
    """A verified bundle folder (read-only view).

    Attributes
    ----------
    path : pathlib.Path
        The bundle folder.
    manifest : BundleManifest
        Its parsed manifest.
    sha256 : str
        SHA-256 of the manifest's bytes: the bundle's hash (it covers every
        file through ``[files]``).
    """

    path: Path
    manifest: BundleManifest
    sha256: str

    @property
    def name(self) -> str:
        return self.manifest.bundle.name

    @property
    def version(self) -> str:
        return self.manifest.bundle.version

    def file(self, name: str) -> Path:
        """The path of the bundle's file `name` (one listed in ``[files]``).

        The file was verified when the bundle was loaded; use
        :meth:`read_bytes` to verify it again as it is read.

        Raises
        ------
        BundleError
            If `name` is not a file of this bundle.
        """
        if name not in self.manifest.files:
            raise BundleError(
                f"{name!r} is not a file of bundle {self.name} "
                f"(its files: {', '.join(sorted(self.manifest.files))})",
                path=self.path,
            )
        return self.path / name

    def read_bytes(self, name: str) -> bytes:
        """The content of file `name`, checked against its SHA-256 as it is read."""
        data = self.file(name).read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        expected = self.manifest.files[name]
        if actual != expected:
            raise BundleError(
                f"bundle {self.name}: {name}: checksum mismatch: expected sha256 "
                f"{_short(expected)}, actual {_short(actual)} (the file changed after the "
                f"bundle was loaded); {_RESTORE_HINT}",
                path=self.path,
            )
        return data

    def identity(self) -> ModelIdentity:
        """What every result made with this bundle carries."""
        use = self.manifest.intended_use
        return ModelIdentity(
            name=self.name,
            version=self.version,
            sha256=self.sha256,
            intended_use=use.statement,
            for_clinical_use=use.for_clinical_use,
            disclaimer=use.disclaimer,
            score_caveat=self.manifest.score_caveat(),
            validation=(
                None if self.manifest.validation is None else self.manifest.validation.statement()
            ),
        )


def _read_manifest_bytes(path: Path) -> bytes:
    manifest = path / MANIFEST_NAME
    if not path.is_dir():
        raise UnknownBundleError(f"{path}: no such folder: not a model bundle", path=path)
    if manifest.is_symlink():
        raise BundleError(
            f"{manifest}: is a symbolic link: a bundle holds plain files; {_RESTORE_HINT}",
            path=path,
        )
    try:
        return manifest.read_bytes()
    except FileNotFoundError:
        raise BundleError(
            f"{path}: no {MANIFEST_NAME}: not a model bundle (a bundle folder holds "
            f"{MANIFEST_NAME} and the files it lists; see models/README.md)",
            path=path,
        ) from None
    except OSError as exc:
        raise BundleError(f"{manifest}: cannot read: {exc}", path=path) from None


def read_manifest(path: Path) -> BundleManifest:
    """Parse and validate a bundle folder's manifest, without checking its files."""
    path = Path(path)
    return parse_manifest(_read_manifest_bytes(path), str(path / MANIFEST_NAME))


def _walk_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative POSIX name, path) of every non-hidden entry that is not a folder."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for d in dirnames:
            if (base / d).is_symlink():
                yield (base / d).relative_to(root).as_posix(), base / d
        for f in sorted(filenames):
            if not _hidden(f):
                yield (base / f).relative_to(root).as_posix(), base / f


def _verify_files(path: Path, manifest: BundleManifest) -> list[str]:
    """Every problem of the bundle folder's files (empty: the files are as listed)."""
    problems: list[str] = []
    listed = manifest.files
    present: set[str] = set()
    for rel, entry in _walk_files(path):
        if rel == MANIFEST_NAME:
            continue
        present.add(rel)
        if entry.is_symlink():
            problems.append(
                f"{rel}: is a symbolic link: a bundle holds plain files (copy the file in)"
            )
        elif rel not in listed:
            problems.append(
                f"{rel}: is in the bundle folder but not listed in the manifest's [files]: "
                "remove it (a bundle holds exactly the files its manifest lists)"
            )
    for rel, expected in sorted(listed.items()):
        entry = path / rel
        if rel not in present:
            if entry.is_dir():
                problems.append(f"{rel}: is a folder, the manifest lists a file; {_RESTORE_HINT}")
            else:
                problems.append(
                    f"{rel}: listed in [files] but missing from the bundle folder; {_RESTORE_HINT}"
                )
            continue
        if entry.is_symlink():
            continue  # reported above
        try:
            mode = entry.stat().st_mode
            if not stat.S_ISREG(mode):
                problems.append(f"{rel}: not a regular file; {_RESTORE_HINT}")
                continue
            actual = sha256_file(entry)
        except OSError as exc:
            problems.append(f"{rel}: cannot read: {exc}")
            continue
        if actual != expected:
            problems.append(
                f"{rel}: checksum mismatch: expected sha256 {_short(expected)}, actual "
                f"{_short(actual)} (the file was modified or corrupted); {_RESTORE_HINT}"
            )
    return problems


def load_bundle(path: Path, *, check_name: bool = True) -> Bundle:
    """Verify the bundle folder `path` and return it.

    Parameters
    ----------
    path
        The bundle folder.
    check_name
        Require the folder's name to be the manifest's ``bundle.name`` (true
        for a folder in a models folder; false for a staging copy or a
        download about to be imported).

    Raises
    ------
    BundleError
        The bundle is not usable; the message lists every problem found.
    """
    path = Path(path)
    data = _read_manifest_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    manifest = parse_manifest(data, str(path / MANIFEST_NAME))
    problems: list[str] = []
    if check_name and path.name != manifest.bundle.name:
        problems.append(
            f"the folder is named {path.name!r} but the manifest's bundle.name is "
            f"{manifest.bundle.name!r}: a bundle's folder carries its name (import it with "
            f"`cem-node models import {path}` rather than renaming by hand)"
        )
    problems += _verify_files(path, manifest)
    if problems:
        head = f"bundle {manifest.bundle.name} ({path}) failed verification"
        if len(problems) == 1:
            message = f"{head}: {problems[0]}"
        else:
            message = f"{head}, {len(problems)} problems:\n  - " + "\n  - ".join(problems)
        raise BundleError(message, problems=problems, path=path)
    return Bundle(path=path, manifest=manifest, sha256=digest)


# --------------------------------------------------------------------------- writing


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file(dest: Path, source: Path | bytes) -> str:
    """Write (or copy) `source` to `dest`, fsync it and return its SHA-256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with dest.open("xb") as out:
        if isinstance(source, bytes | bytearray | memoryview):
            out.write(source)
            digest.update(source)
        else:
            src = Path(source)
            if not src.is_file():
                raise BundleUsageError(f"{src}: no such file (to write as {dest.name})")
            with src.open("rb") as fh:
                while chunk := fh.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def _temp_beside(dest: Path, tag: str) -> Path:
    return dest.parent / f".{dest.name}.{tag}-{uuid.uuid4().hex[:12]}"


def _move_into_place(tmp: Path, dest: Path, *, replace: bool) -> bool:
    """Rename the finished folder `tmp` to `dest`; returns whether a folder was replaced."""
    _fsync_dir(tmp)
    if not (dest.exists() or dest.is_symlink()):
        try:
            tmp.rename(dest)
        except OSError as exc:
            if dest.exists():  # created meanwhile by someone else
                raise BundleExistsError(f"{dest}: appeared while writing: {exc}") from None
            raise
        _fsync_dir(dest.parent)
        return False
    if not replace:
        raise BundleExistsError(f"{dest}: already exists", path=dest)
    old = _temp_beside(dest, "old")
    dest.rename(old)
    try:
        tmp.rename(dest)
    except BaseException:
        old.rename(dest)
        raise
    _fsync_dir(dest.parent)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)
    return True


def write_bundle(
    dest_dir: Path,
    manifest: ManifestDraft | Mapping[str, Any],
    files: Mapping[str, Path | bytes],
    *,
    overwrite: bool = False,
) -> Bundle:
    """Write a new bundle folder: the files, their checksums, the manifest.

    The folder is written beside `dest_dir` under a hidden temporary name,
    verified, then renamed into place, so `dest_dir` is either absent or a
    complete bundle.

    Parameters
    ----------
    dest_dir
        The bundle folder to create. Its name need not be the bundle's name
        (a staging folder); in a models folder it must be.
    manifest
        The manifest without ``[files]``: a :class:`ManifestDraft`, a
        :class:`BundleManifest` (its ``[files]`` is replaced) or a mapping
        shaped like ``manifest.toml``.
    files
        Every file of the bundle: relative name -> a file to copy or the
        bytes to write. It must include the files the manifest names
        (``detector.weights``, ``radiomics.model`` ...).
    overwrite
        Replace an existing `dest_dir` (else :class:`BundleExistsError`).

    Returns
    -------
    Bundle
        The written bundle, verified.
    """
    dest = Path(dest_dir)
    draft = draft_from(manifest)
    problems: list[str] = []
    for name in files:
        try:
            check_bundle_path(name)
        except ValueError as exc:
            problems.append(f"files: {exc}")
    if problems:
        raise BundleUsageError("cannot write the bundle:\n  " + "\n  ".join(problems))
    if (dest.exists() or dest.is_symlink()) and not overwrite:
        raise BundleExistsError(
            f"{dest}: already exists; choose another folder or pass overwrite=True", path=dest
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(dest, "tmp")
    tmp.mkdir()
    try:
        hashes = {name: _write_file(tmp / name, source) for name, source in sorted(files.items())}
        try:
            full = BundleManifest.model_validate_json(
                json.dumps({**draft.model_dump(mode="json"), "files": hashes})
            )
        except ValidationError as exc:
            lines = describe_validation_error(exc)
            raise BundleUsageError(
                "cannot write the bundle: invalid manifest:\n  " + "\n  ".join(lines),
                problems=lines,
            ) from None
        _write_file(tmp / MANIFEST_NAME, manifest_to_toml(full))
        load_bundle(tmp, check_name=False)
        _move_into_place(tmp, dest, replace=overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return load_bundle(dest, check_name=False)


# --------------------------------------------------------------------------- registry


class ActiveRecord(BaseModel):
    """``active.toml``: the active bundle and its hash when it was activated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    activated_at: dt.datetime
    activated_by: str | None = None


@dataclass(frozen=True)
class BundleSummary:
    """One line of :meth:`BundleRegistry.list`: never raises for a broken bundle."""

    name: str
    path: Path
    valid: bool
    error: str | None = None
    version: str | None = None
    description: str | None = None
    intended_use: str | None = None
    for_clinical_use: bool | None = None
    disclaimer: str | None = None
    synthetic: bool | None = None
    sha256: str | None = None
    active: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}

    @classmethod
    def of(
        cls,
        name: str,
        path: Path,
        manifest: BundleManifest,
        *,
        error: str | None = None,
        sha256: str | None = None,
        active: bool = False,
    ) -> BundleSummary:
        """The summary of a bundle whose manifest could be read (valid when no ``error``)."""
        return cls(
            name=name,
            path=path,
            valid=error is None,
            error=error,
            version=manifest.bundle.version,
            description=manifest.bundle.description,
            intended_use=manifest.intended_use.statement,
            for_clinical_use=manifest.intended_use.for_clinical_use,
            disclaimer=manifest.intended_use.disclaimer,
            synthetic=manifest.training.synthetic,
            sha256=sha256,
            active=active,
        )


class BundleRegistry:
    """The folder of model bundles (``[analysis] models_dir``).

    Parameters
    ----------
    models_dir
        One sub-folder per bundle (named as the bundle) and ``active.toml``.
        Hidden entries (``.x``) are ignored (temporary folders use them).
    """

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)

    @property
    def active_file(self) -> Path:
        return self.models_dir / ACTIVE_FILE

    def __repr__(self) -> str:
        return f"BundleRegistry({str(self.models_dir)!r})"

    # ----------------------------------------------------------------- lookup

    def names(self) -> list[str]:
        """The sub-folders of the models folder (bundles, valid or not), sorted."""
        if not self.models_dir.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.models_dir.iterdir()
            if not _hidden(entry.name) and entry.is_dir()
        )

    def _known(self) -> str:
        names = self.names()
        if names:
            return f"bundles there: {', '.join(names)}"
        return (
            f"there are none: import one with `cem-node models import DIR` (into {self.models_dir})"
        )

    def _path(self, name: str, source: str | None = None) -> Path:
        origin = f" ({source})" if source else ""
        try:
            check_bundle_name(name)
        except ValueError as exc:
            raise UnknownBundleError(f"{exc}{origin}; {self._known()}") from None
        path = self.models_dir / name
        if not path.is_dir():
            raise UnknownBundleError(
                f"no model bundle named {name!r}{origin} in {self.models_dir}; {self._known()}",
                path=path,
            )
        return path

    # ----------------------------------------------------------------- active

    def active(self) -> ActiveRecord | None:
        """The content of ``active.toml``, or None when no bundle was activated.

        Raises
        ------
        BundleError
            ``active.toml`` is unreadable or invalid.
        """
        try:
            raw = tomllib.loads(self.active_file.read_text("utf-8"))
            return ActiveRecord.model_validate(raw)
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            reason = str(exc)
        except ValidationError as exc:
            reason = "; ".join(describe_validation_error(exc))
        raise BundleError(
            f"{self.active_file}: invalid ({reason}); activate a bundle again with "
            "`cem-node models activate NAME` (it rewrites the file)",
            path=self.active_file,
        )

    def active_name(self, default: str | None = None) -> str | None:
        """The active bundle's name (``active.toml``), else `default` (the config's)."""
        record = self.active()
        return record.name if record is not None else default

    def activate(self, name: str, *, actor: str | None = None) -> ActiveRecord:
        """Verify bundle `name`, then record it (and its hash) as the active one.

        ``active.toml`` is replaced atomically. Activating again after a
        bundle was changed is how a changed bundle is accepted.
        """
        bundle = load_bundle(self._path(name), check_name=True)
        record = ActiveRecord(
            name=bundle.name,
            version=bundle.version,
            sha256=bundle.sha256,
            activated_at=dt.datetime.now(dt.UTC).replace(microsecond=0),
            activated_by=actor,
        )
        text = (
            "# The active model bundle (written by `cem-node models activate`).\n"
            "# A bundle whose manifest hash differs from sha256 is refused until activated "
            "again.\n" + tomli_w.dumps(record.model_dump(exclude_none=True))
        )
        tmp = self.models_dir / f".{ACTIVE_FILE}.{uuid.uuid4().hex[:12]}"
        try:
            with tmp.open("x", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(self.active_file)
            _fsync_dir(self.models_dir)
        finally:
            tmp.unlink(missing_ok=True)
        return record

    # ----------------------------------------------------------------- loading

    def _check_active(self, bundle: Bundle) -> None:
        record = self.active()
        if record is not None and record.name == bundle.name and record.sha256 != bundle.sha256:
            raise BundleError(
                f"bundle {bundle.name} was modified after it was activated: its manifest hash "
                f"is {_short(bundle.sha256)}, {_short(record.sha256)} when activated on "
                f"{record.activated_at:%Y-%m-%d %H:%M:%S %Z}. Check it with `cem-node models "
                f"info {bundle.name}`, then activate it again with `cem-node models activate "
                f"{bundle.name}` (or restore the original)",
                path=bundle.path,
            )

    def load(self, name: str) -> Bundle:
        """Verify and return bundle `name` (checksums are checked on every call).

        Raises
        ------
        UnknownBundleError
            No bundle of that name (the message lists those there are).
        BundleError
            The bundle fails verification, or it is the active bundle and
            its manifest changed since it was activated.
        """
        return self._load(name)

    def _load(self, name: str, source: str | None = None) -> Bundle:
        bundle = load_bundle(self._path(name, source), check_name=True)
        self._check_active(bundle)
        return bundle

    def verify(self, name: str) -> Bundle:
        """Like :meth:`load`: verify bundle `name` (raises :class:`BundleError`)."""
        return self._load(name)

    def resolve(self, name: str | None = None, default: str | None = None) -> Bundle:
        """The bundle to use: `name` if given, else the active one, else `default`.

        `default` is the config's ``[analysis] model``.
        """
        if name:
            return self._load(name, "requested")
        record = self.active()
        if record is not None:
            return self._load(record.name, f"the active bundle, from {self.active_file}")
        if default:
            return self._load(default, "the config's analysis.model")
        raise UnknownBundleError(
            f"no model bundle chosen: name one, activate one with `cem-node models activate "
            f"NAME`, or set [analysis] model in the config; {self._known()}"
        )

    def list(self) -> list[BundleSummary]:
        """A summary of every bundle folder, valid or not (never raises for one bundle)."""
        try:
            active = self.active_name()
        except BundleError:
            active = None
        out: list[BundleSummary] = []
        for name in self.names():
            path = self.models_dir / name
            try:
                bundle = self.load(name)
            except (BundleError, OSError) as exc:
                out.append(self._broken(name, path, str(exc), active == name))
                continue
            out.append(
                BundleSummary.of(
                    name, path, bundle.manifest, sha256=bundle.sha256, active=active == name
                )
            )
        return out

    @staticmethod
    def _broken(name: str, path: Path, error: str, active: bool) -> BundleSummary:
        try:
            m: BundleManifest | None = read_manifest(path)
        except (BundleError, OSError):
            m = None
        if m is None:
            return BundleSummary(name=name, path=path, valid=False, error=error, active=active)
        return BundleSummary.of(name, path, m, error=error, active=active)

    # ----------------------------------------------------------------- import

    def import_bundle(
        self, source_dir: Path, *, name: str | None = None, force: bool = False
    ) -> Bundle:
        """Verify the bundle folder `source_dir` and copy it in as ``models_dir/<name>``.

        Parameters
        ----------
        source_dir
            A bundle folder anywhere (its folder name does not matter).
        name
            Import under another name: the copy's manifest gets this
            ``bundle.name``, so its hash differs from the source's (every
            other byte is kept). Default: the manifest's name.
        force
            Replace a bundle of the same name (else :class:`BundleExistsError`).
            Replacing the active bundle by different content makes it refuse
            to load until it is activated again.

        Returns
        -------
        Bundle
            The imported bundle, verified in its new place.
        """
        src = Path(source_dir)
        if not src.is_dir():
            raise UnknownBundleError(f"{src}: no such folder (a bundle is a folder)", path=src)
        source = load_bundle(src, check_name=False)
        target = name or source.name
        try:
            check_bundle_name(target)
        except ValueError as exc:
            raise BundleUsageError(str(exc)) from None
        dest = self.models_dir / target
        if dest.exists() and dest.resolve() == src.resolve():
            raise BundleUsageError(
                f"{src} is already bundle {target} of {self.models_dir}: nothing to import "
                f"(check it with `cem-node models verify {target}`)"
            )
        if (dest.exists() or dest.is_symlink()) and not force:
            raise BundleExistsError(
                f"a bundle named {target!r} is already in {self.models_dir}: replace it with "
                "--force (force=True), or import under another name with --name",
                path=dest,
            )
        self.models_dir.mkdir(parents=True, exist_ok=True)
        tmp = _temp_beside(dest, "import")
        tmp.mkdir()
        try:
            for rel in sorted(source.manifest.files):
                _write_file(tmp / rel, src / rel)
            if target == source.name:
                _write_file(tmp / MANIFEST_NAME, (src / MANIFEST_NAME).read_bytes())
            else:
                info = source.manifest.bundle.model_copy(update={"name": target})
                renamed = source.manifest.model_copy(update={"bundle": info})
                _write_file(tmp / MANIFEST_NAME, manifest_to_toml(renamed))
            copied = load_bundle(tmp, check_name=False)
            if target == source.name and copied.sha256 != source.sha256:
                raise BundleError(
                    f"{src}: the manifest changed while it was imported; import it again",
                    path=src,
                )
            _move_into_place(tmp, dest, replace=force)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return load_bundle(dest, check_name=True)
