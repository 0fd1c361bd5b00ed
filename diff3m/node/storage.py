"""Durable file store: safe paths from UIDs, atomic fsynced writes under ``storage_dir``."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs_durable(path: Path) -> None:
    """Create ``path`` and parents; fsync the parent of each directory created."""
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


def write_durable(storage_dir: Path, relpath: str, data: bytes) -> Path:
    """Write ``data`` to a temp file, fsync, rename to ``relpath``, fsync the folder; returns the path."""
    final = resolve(storage_dir, relpath)
    tmp_dir = Path(storage_dir) / "tmp"
    _makedirs_durable(tmp_dir)
    _makedirs_durable(final.parent)
    fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix="in-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, final)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(final.parent)
    return final


def remove_quietly(path: Path) -> None:
    """Delete a file if present (used to undo a write whose DB commit failed)."""
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
