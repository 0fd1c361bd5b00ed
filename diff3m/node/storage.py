"""Durable file store: safe paths from UIDs, atomic fsynced writes under ``storage_dir``."""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
MAX_UID_LEN = 64


def is_valid_uid(value: str) -> bool:
    """True when ``value`` follows the DICOM UID grammar (PS3.5 9.1) and is at most 64 chars."""
    return len(value) <= MAX_UID_LEN and bool(UID_RE.match(value))


def path_component(uid: str) -> str:
    """A file-name-safe component for a UID: the UID itself when valid, else a hash of it."""
    if is_valid_uid(uid):
        return uid
    return "h-" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def instance_relpath(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """Where an instance lives, relative to storage_dir (never built from raw tag text)."""
    return "/".join(
        ("studies", path_component(study_uid), path_component(series_uid), path_component(sop_uid) + ".dcm")
    )


def resolve(storage_dir: Path, relpath: str) -> Path:
    """The absolute path of ``relpath`` inside ``storage_dir``; refuses anything escaping it."""
    root = Path(storage_dir).resolve()
    path = (root / relpath).resolve()
    if root != path and root not in path.parents:
        raise ValueError(f"path escapes storage_dir: {relpath!r}")
    return path


@functools.lru_cache(maxsize=16)
def _real_root(storage_dir: str) -> str:
    return os.path.realpath(storage_dir)


def inside(storage_dir: Path, relpath: str) -> Path:
    """``relpath`` under ``storage_dir``, checked lexically (no file-system calls but a cached one).

    For paths the node builds itself (``instance_relpath``); ``resolve`` also follows symlinks.
    """
    root = _real_root(str(storage_dir))
    path = os.path.normpath(os.path.join(root, relpath))
    if os.path.isabs(relpath) or not path.startswith(root.rstrip(os.sep) + os.sep):
        raise ValueError(f"path escapes storage_dir: {relpath!r}")
    return Path(path)


def _fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs_durable(path: Path) -> None:
    """Create ``path`` and parents; fsync the parent of each directory created."""
    if os.path.isdir(path):  # the usual case: one stat call
        return
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        _fsync_dir(d.parent)


_TEMP_SEQ = itertools.count()


def write_temp(storage_dir: Path, data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to a new file in ``storage_dir/tmp`` and fsync it; returns its path.

    The name is unique without a retry loop (process id + a process-wide counter, O_EXCL).
    """
    tmp_dir = Path(storage_dir) / "tmp"
    _makedirs_durable(tmp_dir)
    tmp_name = os.path.join(tmp_dir, f"in-{os.getpid()}-{next(_TEMP_SEQ)}.part")
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        remove_quietly(Path(tmp_name))
        raise
    os.close(fd)
    return Path(tmp_name)


def place(storage_dir: Path, tmp: Path, relpath: str) -> Path:
    """Rename the fsynced temp file ``tmp`` to ``relpath`` (folders created durably); returns the path.

    ``relpath`` is checked lexically (``inside``): pass paths built by ``instance_relpath``.
    The folder itself is not fsynced here: call ``fsync_dirs`` on the parents before relying on it.
    A ``tmp`` already moved (a retried batch) with the final file in place is accepted.
    """
    final = inside(storage_dir, relpath)
    _makedirs_durable(final.parent)
    try:
        os.replace(tmp, final)
    except FileNotFoundError:
        if not final.is_file():
            raise
    return final


def fsync_dirs(dirs: Iterable[Path]) -> None:
    """fsync each folder once (after renames into them)."""
    for d in set(dirs):
        _fsync_dir(d)


def write_durable(storage_dir: Path, relpath: str, data: bytes) -> Path:
    """Write ``data`` to a temp file, fsync, rename to ``relpath``, fsync the folder; returns the path."""
    resolve(storage_dir, relpath)  # refuse a bad path before writing anything
    tmp = write_temp(storage_dir, data)
    try:
        final = place(storage_dir, tmp, relpath)
    except BaseException:
        remove_quietly(tmp)
        raise
    _fsync_dir(final.parent)
    return final


def remove_quietly(path: Path | None) -> None:
    """Delete a file if present (used to undo a write whose DB commit failed)."""
    if path is None:
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def clean_temp(storage_dir: Path) -> int:
    """Remove leftover partial files from an interrupted write; returns how many."""
    tmp_dir = Path(storage_dir) / "tmp"
    n = 0
    if tmp_dir.is_dir():
        for p in tmp_dir.glob("in-*.part"):
            remove_quietly(p)
            n += 1
    return n


def free_mb(storage_dir: Path) -> float:
    """Free space in MiB on the file system holding ``storage_dir`` (its nearest existing parent)."""
    p = Path(storage_dir).absolute()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free / (1024 * 1024)
