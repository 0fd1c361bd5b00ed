"""The JSON API: list and inspect studies, re-run a study, retry a delivery, study images as PNG."""

from __future__ import annotations

import hashlib
import logging
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response

from diff3m.config import Settings
from diff3m.db.models import Priority, StudyStatus
from diff3m.db.session import session_scope
from diff3m.node.storage import resolve
from diff3m.web import images, queries
from diff3m.web.schemas import ActionResult, StudyDetail, StudyList

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["api"])
_PNG_CACHE = images.PngCache()


def settings_of(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings  # type: ignore[no-any-return]


def extra_field_names(settings: Settings) -> list[str]:
    """Names of the configured extra EHR fields."""
    return [f.name for f in settings.fhir.extra_fields]


def build_filter(status: list[StudyStatus] | None, priority: list[Priority] | None, date_from: str | None,
                 date_to: str | None, abnormal: bool | None, q: str | None, limit: int,
                 offset: int) -> queries.StudyFilter:
    """A StudyFilter from query parameters; HTTP 422 on a malformed date."""
    try:
        start, end = queries.parse_date(date_from), queries.parse_date(date_to)
    except ValueError as err:
        raise HTTPException(422, str(err)) from None
    return queries.StudyFilter(status=list(status or []), priority=list(priority or []), date_from=start,
                               date_to=end, abnormal=abnormal, q=(q or "").strip() or None,
                               limit=limit, offset=offset)


@router.get("/studies", response_model=StudyList)
def list_studies(
    request: Request,
    status: Annotated[list[StudyStatus] | None, Query(description="one or more statuses")] = None,
    priority: Annotated[list[Priority] | None, Query(description="one or more priorities")] = None,
    date_from: Annotated[str | None, Query(description="StudyDate from (YYYY-MM-DD or YYYYMMDD)")] = None,
    date_to: Annotated[str | None, Query(description="StudyDate to, inclusive")] = None,
    abnormal: bool | None = None,
    q: Annotated[str | None, Query(description="accession number or patient id prefix")] = None,
    limit: Annotated[int, Query(ge=1, le=queries.MAX_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> StudyList:
    """Studies, highest priority first, then highest anomaly score."""
    flt = build_filter(status, priority, date_from, date_to, abnormal, q, limit, offset)
    with session_scope(settings_of(request).database.url) as s:
        return queries.list_studies(s, flt)


@router.get("/studies/{study_uid}", response_model=StudyDetail)
def get_study(request: Request, study_uid: str) -> StudyDetail:
    """One study: status, score vs threshold, priority, EHR used with sources, outputs, deliveries."""
    settings = settings_of(request)
    with session_scope(settings.database.url) as s:
        return queries.study_detail(s, study_uid, extra_field_names(settings))


@router.post("/studies/{study_uid}/rerun", response_model=ActionResult)
def rerun(request: Request, study_uid: str) -> ActionResult:
    """Queue the study again (attempts reset); the pipeline's sweeper picks it up."""
    with session_scope(settings_of(request).database.url) as s:
        study = queries.rerun_study(s, study_uid)  # NotFound -> 404, Conflict -> 409 (web.app)
        log.info("rerun requested", extra={"study_uid": study.study_uid})
        return ActionResult(ok=True, id=study.study_uid, status=study.status.value,
                            detail="queued; the pipeline picks it up on its next sweep")


@router.post("/deliveries/{delivery_id}/retry", response_model=ActionResult)
def retry(request: Request, delivery_id: int) -> ActionResult:
    """Make a dead or pending delivery due now."""
    with session_scope(settings_of(request).database.url) as s:
        delivery = queries.retry_delivery(s, delivery_id)
        log.info("delivery retry requested", extra={"delivery_id": delivery.id})
        return ActionResult(ok=True, id=str(delivery.id), status=delivery.status.value,
                            detail="pending; the outbox sends it on its next pass")


def _png(request: Request, study_uid: str, kind: str, max_px: int) -> Response:
    """Render one study image: "original", "heatmap" or "thumbnail" (overlay, else the plain image)."""
    settings = settings_of(request)
    storage = settings.node.storage_dir
    with session_scope(settings.database.url) as s:
        study = queries.get_study(s, study_uid)
        row = queries.latest_result(s, study)
        inst = queries.evaluated_instance(s, study, row)
        if inst is None:
            raise HTTPException(404, "the study has no stored image")
        if kind == "heatmap" and row is None:
            raise HTTPException(404, "the study has no result yet")
        key = (kind, max_px, study.id, inst.id, row.id if row else None, str(row.created_at) if row else None)
        etag = '"' + hashlib.sha256(repr(key).encode()).hexdigest()[:24] + '"'
        headers = {"ETag": etag, "Cache-Control": "private, max-age=30"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        cached = _PNG_CACHE.peek(key)
        if cached is not None:  # skip loading the anomaly map
            return Response(cached, media_type="image/png", headers=headers)
        try:
            path = resolve(storage, inst.path)
            result = images.stored_result(row, storage) if row is not None and kind != "original" else None
        except (ValueError, images.ImageUnavailable) as err:
            raise HTTPException(404, str(err)) from None
    src = images.Source(path=path, result=result)
    try:
        png = _PNG_CACHE.get(key, lambda: images.render_png(src, kind, max_px))
    except images.ImageUnavailable as err:
        raise HTTPException(404, str(err)) from None
    return Response(png, media_type="image/png", headers=headers)


PNG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "PNG image"},
    404: {"description": "no image"},
}


@router.get("/studies/{study_uid}/heatmap.png", response_class=Response, responses=PNG)
def heatmap_png(request: Request, study_uid: str) -> Response:
    """The evaluated image with the anomaly map overlaid and the most anomalous region boxed."""
    return _png(request, study_uid, "heatmap", images.VIEW_PX)


@router.get("/studies/{study_uid}/original.png", response_class=Response, responses=PNG)
def original_png(request: Request, study_uid: str) -> Response:
    """The evaluated (or first frontal) image as stored, windowed for display."""
    return _png(request, study_uid, "original", images.VIEW_PX)


@router.get("/studies/{study_uid}/thumbnail.png", response_class=Response, responses=PNG)
def thumbnail_png(request: Request, study_uid: str) -> Response:
    """A small heatmap (or, before a result exists, the plain image) for the worklist."""
    return _png(request, study_uid, "thumbnail", images.THUMB_PX)
