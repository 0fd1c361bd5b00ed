"""DICOMweb on the web app: STOW-RS ingest (the C-STORE ingest path) and WADO-RS retrieval of instances."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from xml.sax.saxutils import escape

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from sqlalchemy import select

from diff3m.config import Settings
from diff3m.db.models import Instance, Study
from diff3m.db.session import session_scope
from diff3m.node import storage
from diff3m.node.ingest import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    IngestError,
    IngestOutcome,
    ingest_bytes,
    parse,
)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"


@dataclass(frozen=True)
class Part:
    """One body part of a multipart/related request."""

    content_type: str
    data: bytes


def _content_type(value: str) -> Message:
    msg = Message()
    msg["content-type"] = value
    return msg


def split_multipart(body: bytes, boundary: str) -> list[Part]:
    """The parts of a multipart/related body (RFC 2046), in order."""
    delimiter = b"--" + boundary.encode("latin-1")
    chunks = body.split(delimiter)
    parts: list[Part] = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # close delimiter
        if chunk.startswith(b"\r\n"):
            chunk = chunk[2:]
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            if chunk.startswith(b"\r\n"):
                head, content = b"", chunk[2:]
            else:
                continue
        if content.endswith(b"\r\n"):
            content = content[:-2]
        ctype = DICOM
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-type":
                ctype = _content_type(value.strip()).get_content_type()
        parts.append(Part(ctype, content))
    return parts


def stow_response_dataset(outcomes: list[IngestOutcome], base_url: str, study_uid: str | None) -> Dataset:
    """The STOW-RS response (PS3.18 10.5.3): referenced and failed SOP sequences."""
    ds = Dataset()
    ok = [o for o in outcomes if o.ok]
    failed = [o for o in outcomes if not o.ok]
    if study_uid:
        ds.RetrieveURL = f"{base_url}/studies/{study_uid}"
    refs = []
    for o in ok:
        item = Dataset()
        item.ReferencedSOPClassUID = o.sop_class_uid
        item.ReferencedSOPInstanceUID = o.sop_instance_uid
        item.RetrieveURL = (f"{base_url}/studies/{o.study_uid}/series/{o.series_uid}"
                            f"/instances/{o.sop_instance_uid}")
        refs.append(item)
    ds.ReferencedSOPSequence = Sequence(refs)
    if failed:
        items = []
        for o in failed:
            item = Dataset()
            item.ReferencedSOPClassUID = o.sop_class_uid or ""
            item.ReferencedSOPInstanceUID = o.sop_instance_uid or ""
            item.FailureReason = o.status
            items.append(item)
        ds.FailedSOPSequence = Sequence(items)
    return ds


def _xml_attrs(ds: Dataset) -> Iterator[str]:
    for elem in ds:
        tag = f"{elem.tag.group:04X}{elem.tag.elem:04X}"
        vr = elem.VR or dictionary_VR(elem.tag)
        yield f'<DicomAttribute tag="{tag}" vr="{vr}" keyword="{keyword_for_tag(elem.tag)}">'
        if vr == "SQ":
            for n, item in enumerate(elem.value, 1):
                yield f'<Item number="{n}">' + "".join(_xml_attrs(item)) + "</Item>"
        elif elem.value not in (None, ""):
            values = elem.value if elem.VM > 1 else [elem.value]
            for n, v in enumerate(values, 1):
                yield f'<Value number="{n}">{escape(str(v))}</Value>'
        yield "</DicomAttribute>"


def to_native_xml(ds: Dataset) -> str:
    """The PS3.19 Native DICOM Model XML of a (small, non-binary) dataset."""
    body = "".join(_xml_attrs(ds))
    head = '<?xml version="1.0" encoding="UTF-8"?>\n<NativeDicomModel xml:space="preserve">'
    return f"{head}{body}</NativeDicomModel>"


def _wants_xml(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return DICOM_XML in accept and DICOM_JSON not in accept.split(DICOM_XML)[0]


def dicomweb_router(settings: Settings, prefix: str = "/dicomweb") -> APIRouter:
    """STOW-RS and WADO-RS routes bound to ``settings``; the web app mounts this router."""
    router = APIRouter(prefix=prefix, tags=["dicomweb"])

    async def _stow(request: Request, study_uid: str | None) -> Response:
        ctype = _content_type(request.headers.get("content-type", ""))
        boundary = ctype.get_param("boundary")
        part_type = str(ctype.get_param("type") or DICOM).lower()
        if ctype.get_content_type() != "multipart/related" or not isinstance(boundary, str) \
                or part_type != DICOM:
            return JSONResponse({"error": 'expected multipart/related; type="application/dicom"'}, 415)
        body = await request.body()
        parts = split_multipart(body, boundary)
        if not parts:
            return JSONResponse({"error": "no body parts"}, 400)
        calling = f"STOW:{request.client.host if request.client else '?'}"[:16]
        outcomes: list[IngestOutcome] = []
        for part in parts:
            if part.content_type != DICOM:
                outcomes.append(IngestOutcome(status=CANNOT_UNDERSTAND, error="not application/dicom"))
                continue
            if study_uid:  # check before storing anything
                try:
                    info = parse(part.data)
                except IngestError as err:
                    outcomes.append(IngestOutcome(status=err.status, error=err.comment))
                    continue
                if info.study_uid != study_uid:
                    outcomes.append(IngestOutcome(
                        status=DATASET_MISMATCH, sop_instance_uid=info.sop_instance_uid,
                        sop_class_uid=info.sop_class_uid, error="instance of another study"))
                    continue
            outcomes.append(await run_in_threadpool(ingest_bytes, settings, None, part.data, calling))
        base = str(request.base_url).rstrip("/") + prefix
        first_study = next((o.study_uid for o in outcomes if o.ok), None)
        ds = stow_response_dataset(outcomes, base, study_uid or first_study)
        n_ok = sum(o.ok for o in outcomes)
        status = 200 if n_ok == len(outcomes) else 202 if n_ok else 409
        if _wants_xml(request):
            return Response(to_native_xml(ds), status, media_type=DICOM_XML)
        return JSONResponse(ds.to_json_dict(), status, media_type=DICOM_JSON)

    @router.post("/studies", summary="STOW-RS: store instances")
    async def stow(request: Request) -> Response:
        """Store the application/dicom parts of a multipart/related body."""
        return await _stow(request, None)

    @router.post("/studies/{study_uid}", summary="STOW-RS: store instances into one study")
    async def stow_study(study_uid: str, request: Request) -> Response:
        """Store instances that must belong to ``study_uid``."""
        return await _stow(request, study_uid)

    @router.get("/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}",
                summary="WADO-RS: retrieve one stored instance")
    def wado_instance(study_uid: str, series_uid: str, sop_uid: str, request: Request) -> Response:
        """The stored file as application/dicom (or one-part multipart/related when asked for)."""
        with session_scope(settings.database.url) as session:
            row = session.execute(
                select(Instance.path, Instance.series_uid, Study.study_uid).join(Study)
                .where(Instance.sop_instance_uid == sop_uid)
            ).first()
        if row is None or row.series_uid != series_uid or row.study_uid != study_uid:
            return JSONResponse({"error": "instance not found"}, 404)
        path = storage.resolve(Path(settings.node.storage_dir), row.path)
        if not path.is_file():
            return JSONResponse({"error": "instance file missing"}, 410)
        if "multipart/related" in request.headers.get("accept", ""):
            boundary = uuid.uuid4().hex

            def chunks() -> Iterator[bytes]:
                yield f"--{boundary}\r\nContent-Type: {DICOM}\r\n\r\n".encode()
                with path.open("rb") as fh:
                    while block := fh.read(1 << 20):
                        yield block
                yield f"\r\n--{boundary}--\r\n".encode()

            media = f'multipart/related; type="{DICOM}"; boundary={boundary}'
            return StreamingResponse(chunks(), media_type=media)
        return FileResponse(path, media_type=DICOM)

    return router
