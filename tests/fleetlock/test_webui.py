"""The lock server's web view in a real headless Chromium (Debian's chromium + chromedriver):
a grant shows within a second, pause/resume buttons work, the page fits a phone's width.
Screenshots go to ``$ZINCATI_PY_TEST_ARTIFACTS`` (else the test's temporary directory)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testbed.browser import Browser, browser_available

pytestmark = pytest.mark.skipif(not browser_available(), reason="needs chromium, chromedriver")
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

HOLDERS = """
const el = document.querySelector('[data-group="default"] .holders');
return el ? el.textContent : null;
"""


ONE_HOLDER = """
const el = document.querySelector('[data-group="default"] .holders');
return el !== null && el.textContent === '1';
"""


def post(url: str, path: str, doc: dict[str, Any]) -> int:
    request = urllib.request.Request(
        url + path,
        data=json.dumps(doc).encode(),
        headers={"fleet-lock-protocol": "true"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return int(resp.status)


def lock(url: str, node: str) -> int:
    return post(url, "v1/pre-reboot", {"client_params": {"id": node, "group": "default"}})


def artefacts(tmp_path: Path) -> Path:
    return Path(os.environ.get("ZINCATI_PY_TEST_ARTIFACTS") or tmp_path / "artifacts")


@sqlite_only
def test_web_view_live_pause_resume_and_phone_width(
    subprocess_server: Callable[[str], Any], tmp_path: Path
) -> None:
    srv = subprocess_server("[groups]\ndefault = 2\n")
    shots = artefacts(tmp_path)
    with Browser() as browser:
        browser.get(srv.url + "ui")
        assert browser.wait_for(HOLDERS, 15) == "0"
        # A grant appears within a second of happening.
        assert lock(srv.url, "node-a") == 200
        granted = time.monotonic()
        browser.wait_for(ONE_HOLDER, 5)
        assert time.monotonic() - granted < 1.0
        browser.wait_for("return document.body.innerText.includes('node-a');", 2)
        browser.screenshot(shots / "fleetlock-ui-grant.png")
        # Pause from the page: the server refuses new slots; resume: granted again.
        browser.click('[data-group="default"] button.pause')
        browser.wait_for(
            "return document.querySelector('[data-group=\"default\"]').innerText"
            ".includes('paused');",
            5,
        )
        status = asyncio.run(_lock_status(srv.url, "node-b"))
        assert status == 409
        browser.screenshot(shots / "fleetlock-ui-paused.png")
        browser.click('[data-group="default"] button.resume')
        browser.wait_for(
            "return document.querySelector('[data-group=\"default\"]').innerText.includes('open');",
            5,
        )
        assert lock(srv.url, "node-b") == 200
        # Phone width: one column, nothing wider than the screen.
        browser.set_size(390, 844)
        browser.wait_for("return window.innerWidth <= 400;", 5)
        overflow = browser.run("return document.documentElement.scrollWidth - window.innerWidth;")
        assert overflow <= 0
        browser.screenshot(shots / "fleetlock-ui-phone.png")
    for name in ("grant", "paused", "phone"):
        assert (shots / f"fleetlock-ui-{name}.png").stat().st_size > 1000


async def _lock_status(url: str, node: str) -> int:
    import aiohttp

    async with (
        aiohttp.ClientSession() as s,
        s.post(
            url + "v1/pre-reboot",
            data=json.dumps({"client_params": {"id": node, "group": "default"}}),
            headers={"fleet-lock-protocol": "true"},
        ) as r,
    ):
        return r.status
