"""The web application: worklist pages, JSON API, health, metrics and (when present) DICOMweb."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from diff3m import __version__
from diff3m.config import Settings
from diff3m.web import api, health, metrics, pages, queries
from diff3m.web.auth import check_bind, login_router, make_middleware

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"


def _mount_dicomweb(app: FastAPI, settings: Settings) -> bool:
    """Mount the node's STOW-RS / WADO-RS routes (``diff3m.node.dicomweb``) when that module exists."""
    try:
        from diff3m.node import dicomweb
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("diff3m.node.dicomweb"):
            return False
        raise
    factory = getattr(dicomweb, "dicomweb_router", None)
    app.include_router(factory(settings) if factory is not None else getattr(dicomweb, "router"))  # noqa: B009
    return True


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _conflict(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=409)


def create_app(settings: Settings) -> FastAPI:
    """The FastAPI app for ``settings``; ConfigError when bound off loopback without a token."""
    check_bind(settings)
    app = FastAPI(
        title="Diff3M node",
        version=__version__,
        description="Worklist and JSON API of the Diff3M chest X-ray anomaly node. "
        "Scores are AI results, not diagnoses.",
    )
    app.state.settings = settings
    app.state.templates = pages.make_templates()
    registry, http_metrics = metrics.make_registry(settings)
    app.state.metrics_registry = registry
    # Starlette runs the last-added middleware first: metrics see every request, auth included.
    app.middleware("http")(make_middleware(settings))
    app.middleware("http")(http_metrics.middleware())
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(login_router(settings))
    app.include_router(api.router)
    app.include_router(pages.router)
    # a missing study/delivery is 404 and a request that does not fit its state 409, in every handler
    # that does not answer them itself (the pages turn a Conflict into a message on the study page)
    app.add_exception_handler(queries.NotFound, _not_found)
    app.add_exception_handler(queries.Conflict, _conflict)
    app.state.dicomweb = _mount_dicomweb(app, settings)
    return app
