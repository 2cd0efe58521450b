"""A real headless Chromium driven through chromedriver's W3C WebDriver HTTP API (loopback
only, a fresh profile per session), for tests of web pages. No Selenium: the handful of
calls a test needs, over urllib. Torn down by PID."""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from testbed.etcd import free_port
from testbed.proc import Harness, stop_process, wait_ready

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def browser_available() -> bool:
    return Path(CHROMIUM).exists() and shutil.which(CHROMEDRIVER) is not None


class Browser(Harness):
    """``start()`` runs chromedriver and opens one session; ``stop()`` ends both."""

    def __init__(self, width: int = 1280, height: int = 900) -> None:
        self.width, self.height = width, height
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.session: str | None = None
        self.profile = Path(tempfile.mkdtemp(prefix="zpy-chromium-"))

    def _call(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return json.loads(resp.read())["value"]
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"webdriver {method} {path}: {exc.read()[:500]!r}") from None

    def _ready(self) -> bool:
        try:
            return bool(self._call("GET", "/status", timeout=1).get("ready"))
        except (OSError, RuntimeError, ValueError):
            return False

    def start(self, timeout: float = 30.0) -> Browser:
        self.port = free_port()
        self.process = subprocess.Popen(
            [CHROMEDRIVER, f"--port={self.port}", "--allowed-ips=127.0.0.1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_ready(self.process, self._ready, what="chromedriver", timeout=timeout)
            caps = {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        *ARGS,
                        f"--user-data-dir={self.profile}",
                        f"--window-size={self.width},{self.height}",
                    ],
                },
            }
            doc = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}}, 60)
            self.session = doc["sessionId"]
        except BaseException:
            self.stop()
            raise
        return self

    def _s(self, path: str) -> str:
        assert self.session is not None
        return f"/session/{self.session}{path}"

    def get(self, url: str) -> None:
        self._call("POST", self._s("/url"), {"url": url})

    def run(self, script: str, *args: Any) -> Any:
        """Run ``script`` (a function body; ``arguments`` holds ``args``) in the page."""
        return self._call("POST", self._s("/execute/sync"), {"script": script, "args": list(args)})

    def click(self, css: str) -> None:
        found = self._call("POST", self._s("/element"), {"using": "css selector", "value": css})
        element = next(iter(found.values()))
        self._call("POST", self._s(f"/element/{element}/click"), {})

    def set_size(self, width: int, height: int) -> None:
        self._call("POST", self._s("/window/rect"), {"width": width, "height": height})

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self._call("GET", self._s("/screenshot"))))
        return path

    def wait_for(self, script: str, timeout: float, interval: float = 0.05) -> Any:
        """Poll ``script`` until it returns something truthy; that value, or TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.run(script)
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"page never satisfied: {script}")
            time.sleep(interval)

    def stop(self) -> None:
        if self.session is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self._call("DELETE", self._s(""), timeout=10)
            self.session = None
        stop_process(self.process, 10)
        self.process = None
        shutil.rmtree(self.profile, ignore_errors=True)
