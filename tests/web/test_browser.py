"""The worklist driven in headless Chromium (Debian's /usr/bin/chromium via Playwright): list, open, heatmap.

Set DIFF3M_UPDATE_SCREENSHOT=1 to refresh docs/screenshot-worklist.png from this run.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from diff3m.config import Settings
from diff3m.web.app import create_app
from tests.services import free_port, require_tool, wait_port
from tests.web.factory import WORKLIST, Seeded, make_settings, seed

TOKEN = "browser-test-token"
DOCS = Path(__file__).resolve().parents[2] / "docs"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def server(sqlite_url: str, tmp_path: Path) -> Iterator[tuple[str, Settings, dict[int, Seeded]]]:
    """The app served by uvicorn on a free port, with a token, over the seeded worklist."""
    settings = make_settings(sqlite_url, tmp_path, token=TOKEN)
    seeded = {s.n: seed(settings, dataclasses.replace(s, px=320)) for s in WORKLIST}
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None,
                                        access_log=False))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_port("127.0.0.1", port, 30)
    try:
        yield f"http://127.0.0.1:{port}", settings, seeded
    finally:
        srv.should_exit = True
        thread.join(10)


def _img_loaded(page, selector: str) -> bool:  # type: ignore[no-untyped-def]
    return bool(page.eval_on_selector(selector, "el => el.complete && el.naturalWidth > 0"))


def test_worklist_in_chromium(server: tuple[str, Settings, dict[int, Seeded]], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    base, _settings, seeded = server
    chromium = require_tool("chromium")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1440, "height": 900}, color_scheme="dark")
        try:
            page = ctx.new_page()
            assert page.goto(f"{base}/").url.startswith(f"{base}/login")  # no token: the login form
            page.goto(f"{base}/?token={TOKEN}")
            page.wait_for_load_state("networkidle")
            rows = page.locator("#worklist tbody tr.row")
            assert rows.count() == len(WORKLIST)
            uids = [rows.nth(i).get_attribute("data-study-uid") for i in range(4)]
            assert uids == [seeded[n].study_uid for n in (2, 4, 3, 6)]  # priority, then score
            assert page.locator("text=AI result, not a diagnosis").first.is_visible()
            for i in range(rows.count()):
                assert _img_loaded(page, f"#worklist tbody tr.row:nth-child({i + 1}) td.thumb img"), i
            page.screenshot(path=str(tmp_path / "worklist.png"))

            page.click(f"tr[data-study-uid='{seeded[2].study_uid}'] a.open")
            page.wait_for_url(f"{base}/studies/{seeded[2].study_uid}")
            page.wait_for_load_state("networkidle")
            assert _img_loaded(page, "#heatmap") and _img_loaded(page, "#original")
            assert page.eval_on_selector("#heatmap", "el => el.naturalWidth") == 320
            body = page.inner_text("main")
            assert "0.2310" in body and "0.0500" in body  # score vs threshold
            assert "Observation/o-bp" in body and "association rejected" in body
            page.screenshot(path=str(tmp_path / "study.png"), full_page=True)
            page.click("text=Retry now")
            page.wait_for_load_state("networkidle")
            assert "is due now" in page.inner_text("main")
        finally:
            ctx.close()
    if os.environ.get("DIFF3M_UPDATE_SCREENSHOT") == "1":
        shutil.copy(tmp_path / "worklist.png", DOCS / "screenshot-worklist.png")
