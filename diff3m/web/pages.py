"""Server-rendered pages: the worklist (/) and one study (/studies/{uid}), plus their form actions."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from diff3m import __version__
from diff3m.db.models import Priority, StudyStatus
from diff3m.db.session import session_scope
from diff3m.web import queries
from diff3m.web.api import build_filter, extra_field_names, settings_of
from diff3m.web.auth import request_authenticated

TEMPLATES = Path(__file__).parent / "templates"
REFRESH_SECONDS = 30
PAGE_SIZE = 50

router = APIRouter(include_in_schema=False)


def make_templates() -> Jinja2Templates:
    """The Jinja environment for every page (autoescaped)."""
    return Jinja2Templates(directory=str(TEMPLATES))


def _base(request: Request, **ctx: Any) -> dict[str, Any]:
    token = settings_of(request).web.token
    return {"version": __version__, "authenticated": bool(token) and request_authenticated(request, token),
            "refresh": 0, "message": request.query_params.get("msg", ""),
            "error": request.query_params.get("err") == "1", **ctx}


def _enum_or_none(cls: Any, value: str) -> Any:
    try:
        return cls(value) if value else None
    except ValueError:
        return None


@router.get("/", response_class=HTMLResponse)
def worklist(request: Request, status: str = "", priority: str = "", abnormal: str = "", date_from: str = "",
             date_to: str = "", q: str = "", offset: int = 0, refresh: int = REFRESH_SECONDS) -> Response:
    """The worklist: studies by priority then score, with heatmap thumbnails, auto-refreshing."""
    st = _enum_or_none(StudyStatus, status)
    pr = _enum_or_none(Priority, priority)
    ab = {"true": True, "false": False}.get(abnormal)
    try:
        flt = build_filter([st] if st else None, [pr] if pr else None, date_from or None, date_to or None,
                           ab, q, PAGE_SIZE, max(0, offset))
        message = ""
    except HTTPException as err:
        flt = build_filter(None, None, None, None, None, None, PAGE_SIZE, 0)
        message = str(err.detail)
    with session_scope(settings_of(request).database.url) as s:
        page = queries.list_studies(s, flt)
    form = {"status": status, "priority": priority, "abnormal": abnormal, "date_from": date_from,
            "date_to": date_to, "q": q}

    def pager(new_offset: int) -> str:
        params = {k: v for k, v in form.items() if v}
        params["offset"] = str(max(0, new_offset))
        return "/?" + urlencode(params)

    ctx = _base(request, page=page, f=form, statuses=list(StudyStatus), priorities=list(Priority),
                pager=pager, refresh=max(0, refresh))
    if message:
        ctx.update(message=message, error=True)
    return request.app.state.templates.TemplateResponse(request, "worklist.html", ctx)


@router.get("/studies/{study_uid}", response_class=HTMLResponse)
def study_page(request: Request, study_uid: str) -> Response:
    """One study: original and heatmap side by side, score vs threshold, EHR used, outputs, deliveries."""
    settings = settings_of(request)
    with session_scope(settings.database.url) as s:
        try:
            detail = queries.study_detail(s, study_uid, extra_field_names(settings))
        except queries.NotFound:
            ctx = _base(request, message=f"No study {study_uid}", error=True)
            return request.app.state.templates.TemplateResponse(request, "base.html", ctx, status_code=404)
    busy = detail.status not in (StudyStatus.DONE, StudyStatus.FAILED, StudyStatus.SKIPPED)
    ctx = _base(request, s=detail, refresh=REFRESH_SECONDS if busy else 0)
    return request.app.state.templates.TemplateResponse(request, "study.html", ctx)


def _back(study_uid: str, msg: str, error: bool = False) -> RedirectResponse:
    url = f"/studies/{quote(study_uid)}?" + urlencode({"msg": msg, **({"err": "1"} if error else {})})
    return RedirectResponse(url, status_code=303)


@router.post("/studies/{study_uid}/rerun")
def rerun_form(request: Request, study_uid: str) -> Response:
    """The Re-run button."""
    with session_scope(settings_of(request).database.url) as s:
        try:
            queries.rerun_study(s, study_uid)
        except queries.Conflict as err:
            return _back(study_uid, str(err), error=True)
    return _back(study_uid, "Queued again; the pipeline picks it up on its next sweep.")


@router.post("/deliveries/{delivery_id}/retry")
def retry_form(request: Request, delivery_id: int, study_uid: str = Form("")) -> Response:
    """The Retry button of a dead or pending delivery."""
    with session_scope(settings_of(request).database.url) as s:
        try:
            queries.retry_delivery(s, delivery_id)
            msg, err = f"Delivery {delivery_id} is due now.", False
        except queries.Conflict as e:
            msg, err = str(e), True
    if not study_uid:
        return RedirectResponse("/", status_code=303)
    return _back(study_uid, msg, error=err)
