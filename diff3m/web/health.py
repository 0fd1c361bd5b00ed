"""Liveness (/healthz: the process answers) and readiness (/readyz: database, broker, model, disk)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from diff3m import __version__
from diff3m.config import Settings
from diff3m.db.session import get_engine, session_scope
from diff3m.web.readiness import model_readiness

router = APIRouter(tags=["operations"])


class Check(BaseModel):
    """One readiness check."""

    ok: bool
    detail: str


class Readiness(BaseModel):
    """All readiness checks; ``ready`` only when every one passes."""

    ready: bool
    checks: dict[str, Check]


def _short(err: BaseException) -> str:
    msg = re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:********@", str(err)).splitlines()
    return f"{type(err).__name__}: {msg[0][:200] if msg else ''}"


def check_database(settings: Settings) -> Check:
    """The database answers a trivial query."""
    try:
        with get_engine(settings.database.url).connect() as conn:
            conn.execute(text("SELECT 1"))
        return Check(ok=True, detail="reachable")
    except Exception as err:  # noqa: BLE001 - any failure means not ready
        return Check(ok=False, detail=_short(err))


def check_broker(settings: Settings, timeout: float = 3.0) -> Check:
    """A kombu connection to ``queue.broker_url`` can be established."""
    from kombu import Connection

    try:
        with Connection(settings.queue.broker_url, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
        return Check(ok=True, detail="reachable")
    except Exception as err:  # noqa: BLE001
        return Check(ok=False, detail=_short(err))


def check_model(settings: Settings) -> Check:
    """A worker (or this process) reports the model loaded; see diff3m.web.readiness."""
    try:
        with session_scope(settings.database.url) as s:
            r = model_readiness(s)
        return Check(ok=r.ready, detail=r.detail)
    except Exception as err:  # noqa: BLE001
        return Check(ok=False, detail=_short(err))


def check_disk(settings: Settings) -> Check:
    """Free space where instances are stored is at least ``node.min_free_disk_mb``."""
    path = Path(settings.node.storage_dir).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    free_mb = shutil.disk_usage(path).free // (1024 * 1024)
    need = settings.node.min_free_disk_mb
    return Check(ok=free_mb >= need, detail=f"{free_mb} MB free, {need} MB required")


CHECKS: dict[str, Callable[[Settings], Check]] = {
    "database": check_database,
    "broker": check_broker,
    "model": check_model,
    "disk": check_disk,
}


def readiness(settings: Settings, skip: frozenset[str] = frozenset()) -> Readiness:
    """Run every readiness check not in ``skip``."""
    checks = {name: check(settings) for name, check in CHECKS.items() if name not in skip}
    return Readiness(ready=all(c.ok for c in checks.values()), checks=checks)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok", "version": __version__}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(request: Request, skip: str = "") -> JSONResponse:
    """200 when the database, the broker, the model and the disk are all fine, else 503.

    ``?skip=model`` (comma-separated names) leaves checks out, e.g. for the web pods' probe, so
    the worklist stays reachable while no GPU worker runs.
    """
    names = frozenset(n.strip() for n in skip.split(",") if n.strip())
    unknown = names - set(CHECKS)
    if unknown:
        return JSONResponse({"detail": f"unknown checks: {sorted(unknown)}; known: {sorted(CHECKS)}"},
                            status_code=422)
    r = readiness(request.app.state.settings, names)
    return JSONResponse(r.model_dump(), status_code=200 if r.ready else 503)
