"""Source instances for a worker: the local store when it has the file, else the node's WADO-RS."""

from __future__ import annotations

import os
import tempfile
from io import BytesIO
from pathlib import Path

import httpx
import pydicom

from diff3m.config import Settings
from diff3m.db.models import Instance, Study


class SourceUnavailable(RuntimeError):
    """The instance could not be read locally nor fetched from the node (retry later)."""


def _wado_url(settings: Settings, study: Study, inst: Instance) -> str:
    base = settings.web.base_url or f"http://{_client_host(settings.web.host)}:{settings.web.port}"
    return (f"{base.rstrip('/')}/dicomweb/studies/{study.study_uid}/series/{inst.series_uid}"
            f"/instances/{inst.sop_instance_uid}")


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def instance_bytes(settings: Settings, study: Study, inst: Instance) -> bytes:
    """The stored bytes of one instance (Part 10 file), fetched and cached when not local."""
    local = Path(settings.node.storage_dir) / inst.path
    if local.is_file():
        return local.read_bytes()
    headers = {"Accept": "application/dicom"}
    if settings.web.token:
        headers["Authorization"] = f"Bearer {settings.web.token}"
    try:
        r = httpx.get(_wado_url(settings, study, inst), headers=headers, timeout=60)
        r.raise_for_status()
    except httpx.HTTPError as err:
        raise SourceUnavailable(f"WADO-RS fetch of {inst.sop_instance_uid} failed: {err}") from err
    data = _single_part(r)
    _cache(local, data)
    return data


def _single_part(r: httpx.Response) -> bytes:
    ctype = r.headers.get("content-type", "")
    if not ctype.startswith("multipart/"):
        return r.content
    boundary = next(
        (p.split("=", 1)[1].strip('"') for p in ctype.split(";") if p.strip().startswith("boundary=")), ""
    )
    for part in r.content.split(b"--" + boundary.encode()):
        head, sep, body = part.partition(b"\r\n\r\n")
        if sep and b"application/dicom" in head.lower():
            return body.rstrip(b"\r\n")
    raise SourceUnavailable("WADO-RS answered a multipart response without a DICOM part")


def _cache(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def read_dataset(settings: Settings, study: Study, inst: Instance) -> pydicom.Dataset:
    """The instance as a pydicom Dataset (pixels decoded on access by the pylibjpeg plugins)."""
    return pydicom.dcmread(BytesIO(instance_bytes(settings, study, inst)))
