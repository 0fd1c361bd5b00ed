"""Token auth: required off loopback (refuses to start without one), Bearer / cookie / ?token= accepted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from diff3m.config import ConfigError, Settings
from diff3m.web.app import create_app
from diff3m.web.auth import COOKIE, is_loopback
from tests.services import free_port, stop, wait_port
from tests.web.factory import make_settings

TOKEN = "s3cret-token-for-tests"


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("node.example")


def test_refuses_off_loopback_without_token(sqlite_url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="web.token"):
        create_app(make_settings(sqlite_url, tmp_path, host="0.0.0.0"))
    create_app(make_settings(sqlite_url, tmp_path, host="0.0.0.0", token=TOKEN))  # fine with one


def test_cli_refuses_off_loopback_without_token(sqlite_url: str, tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[database]\nurl = "{sqlite_url}"\n[web]\nhost = "0.0.0.0"\nport = {free_port()}\n')
    proc = subprocess.run([sys.executable, "-m", "diff3m", "web", "--config", str(cfg)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "web.token" in proc.stderr and "loopback" in proc.stderr


@pytest.fixture
def guarded(sqlite_url: str, tmp_path: Path) -> TestClient:
    return TestClient(create_app(make_settings(sqlite_url, tmp_path, host="0.0.0.0", token=TOKEN)))


def test_every_request_needs_the_token(guarded: TestClient) -> None:
    for path in ("/api/studies", "/metrics", "/api/studies/1.2.3/heatmap.png", "/openapi.json", "/docs"):
        r = guarded.get(path)
        assert r.status_code == 401, path
    assert guarded.post("/api/studies/1.2.3/rerun").status_code == 401
    assert guarded.get("/api/studies", headers={"Authorization": "Bearer wrong"}).status_code == 401
    page = guarded.get("/", headers={"Accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    assert guarded.get("/healthz").status_code == 200  # probes stay open


def test_bearer_query_and_cookie(guarded: TestClient) -> None:
    assert guarded.get("/api/studies", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    r = guarded.get(f"/?token={TOKEN}")
    assert r.status_code == 200 and COOKIE in r.cookies
    assert TOKEN not in r.cookies[COOKIE]  # the cookie holds a digest, not the token
    assert guarded.get("/api/studies").status_code == 200  # the cookie now carries the session


def test_login_form(guarded: TestClient) -> None:
    form = guarded.get("/login")
    assert form.status_code == 200 and 'name="token"' in form.text
    bad = guarded.post("/login", data={"token": "nope", "next": "/"}, follow_redirects=False)
    assert bad.status_code == 303 and "error=1" in bad.headers["location"]
    assert COOKIE not in guarded.cookies
    ok = guarded.post("/login", data={"token": TOKEN, "next": "//evil.example/"}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/"  # no open redirect
    assert guarded.get("/api/studies").status_code == 200
    assert guarded.post("/logout", follow_redirects=False).status_code == 303
    guarded.cookies.clear()
    assert guarded.get("/api/studies").status_code == 401


def test_served_off_loopback_with_uvicorn(settings: Settings, sqlite_url: str, tmp_path: Path) -> None:
    """`diff3m web` bound to 0.0.0.0: the real server refuses requests without the token."""
    port = free_port()
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[database]\nurl = "{sqlite_url}"\n[node]\nstorage_dir = "{tmp_path / "st"}"\n'
                   f'[web]\nhost = "0.0.0.0"\nport = {port}\ntoken = "{TOKEN}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "diff3m", "web", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_port("127.0.0.1", port, 90, proc)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/api/studies").status_code == 401
        authed = httpx.get(f"{base}/api/studies", headers={"Authorization": f"Bearer {TOKEN}"})
        assert authed.json()["total"] == 0
        assert httpx.get(f"{base}/healthz").json()["status"] == "ok"
        httpx.get(f"{base}/api/studies?token={TOKEN}")
    finally:
        stop(proc)
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert TOKEN not in out, "the token leaked into the logs"
    assert '"route": "/api/studies"' in out  # JSON request log by route template


def test_dicomweb_mounted_behind_the_token(sqlite_url: str, tmp_path: Path) -> None:
    """Workers fetch instances through the web app's WADO-RS, with the same token."""
    from sqlalchemy import select

    from diff3m.db.models import Instance
    from diff3m.db.session import session_scope
    from tests.web.factory import WORKLIST, seed

    settings = make_settings(sqlite_url, tmp_path, host="0.0.0.0", token=TOKEN)
    study_uid = seed(settings, WORKLIST[0]).study_uid
    with session_scope(settings.database.url) as s:
        inst = s.scalar(select(Instance))
        url = f"/dicomweb/studies/{study_uid}/series/{inst.series_uid}/instances/{inst.sop_instance_uid}"
        stored = (Path(settings.node.storage_dir) / inst.path).read_bytes()
    app = create_app(settings)
    assert app.state.dicomweb is True
    with TestClient(app) as c:
        assert c.get(url).status_code == 401
        r = c.get(url, headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/dicom"})
        assert r.status_code == 200 and stored[128:132] == b"DICM" and stored in r.content
