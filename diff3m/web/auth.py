"""Token auth for the web app: Bearer header, a session cookie from the login form, or ``?token=``."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from diff3m.config import ConfigError, Settings

COOKIE = "diff3m_session"
# Paths anyone may reach: liveness/readiness probes, the login form and its stylesheet.
OPEN_PATHS = ("/healthz", "/readyz", "/login", "/static/")


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """Refuse (ConfigError) to serve off loopback without ``[web] token``."""
    if not is_loopback(settings.web.host) and not settings.web.token:
        raise ConfigError(
            f"web.host = {settings.web.host!r} is not a loopback address: set web.token "
            "(or DIFF3M_WEB__TOKEN) so that every request must present it, or bind web.host = 127.0.0.1"
        )


def auth_required(settings: Settings) -> bool:
    """Requests must present the token whenever one is configured (always the case off loopback)."""
    return bool(settings.web.token)


def _session_value(token: str) -> str:
    # the cookie holds a digest of the token, not the token itself
    return hashlib.sha256(b"diff3m-web-session:" + token.encode()).hexdigest()


def request_authenticated(request: Request, token: str) -> bool:
    """True when the request carries the token (header, cookie or query)."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer ") and hmac.compare_digest(header[7:].strip(), token):
        return True
    cookie = request.cookies.get(COOKIE, "")
    if cookie and hmac.compare_digest(cookie, _session_value(token)):
        return True
    query = request.query_params.get("token", "")
    return bool(query) and hmac.compare_digest(query, token)


def _set_session(response: Response, token: str, secure: bool) -> None:
    response.set_cookie(COOKIE, _session_value(token), httponly=True, samesite="strict", secure=secure,
                        max_age=12 * 3600)


def make_middleware(settings: Settings) -> Callable[[Request, Callable[[Request], Awaitable[Response]]],
                                                    Awaitable[Response]]:
    """An HTTP middleware that enforces the token on every path but the open ones."""
    token = settings.web.token

    async def middleware(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        if not token or path in OPEN_PATHS or any(path.startswith(p) for p in OPEN_PATHS if p.endswith("/")):
            return await call_next(request)
        if not request_authenticated(request, token):
            wants_html = "text/html" in request.headers.get("accept", "") and request.method == "GET"
            if wants_html and not path.startswith("/api/"):
                return RedirectResponse(f"/login?next={quote(str(request.url.path))}", status_code=303)
            return JSONResponse({"detail": "missing or invalid token"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        response = await call_next(request)
        if request.query_params.get("token"):  # ?token= once, then the cookie carries the session
            _set_session(response, token, request.url.scheme == "https")
        return response

    return middleware


def login_router(settings: Settings) -> APIRouter:
    """The tiny login form that trades the token for a session cookie."""
    router = APIRouter(include_in_schema=False)

    def _safe_next(target: str) -> str:
        return target if target.startswith("/") and not target.startswith("//") else "/"

    @router.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/", error: str = "") -> Response:
        templates = request.app.state.templates
        return templates.TemplateResponse(request, "login.html",
                                          {"next": _safe_next(next), "error": error})

    @router.post("/login")
    def login(request: Request, token: str = Form(...), next: str = Form("/")) -> Response:
        if not settings.web.token or not hmac.compare_digest(token, settings.web.token):
            return RedirectResponse(f"/login?error=1&next={quote(_safe_next(next))}", status_code=303)
        response = RedirectResponse(_safe_next(next), status_code=303)
        _set_session(response, settings.web.token, request.url.scheme == "https")
        return response

    @router.post("/logout")
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    return router
