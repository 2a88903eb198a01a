"""Headless Chromium driven over the Chrome DevTools Protocol: a page to script, click and screenshot.

Debian's `chromium` with `--remote-debugging-port=0` prints the browser's websocket URL on stderr; the
page target it opened is found on its `/json/list` endpoint and driven over a websocket (`websockets`'
sync client). Just what the page tests need: evaluate, wait for a condition, screenshot; no playwright.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import struct
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

# Chromium is listening within a few seconds here; the bounds only catch a browser that hangs.
start_timeout_s = 60
wait_timeout_s = 60
wait_poll_s = 0.1
command_timeout_s = 60
_listening = re.compile(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/")
png_signature = b"\x89PNG\r\n\x1a\n"


def chromium_binary() -> str:
    """Debian's chromium; under CI a missing browser fails the test, elsewhere it skips it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        reason = "needs Debian's chromium (apt-get install -y chromium)"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return found


class PageError(AssertionError):
    """The page threw, or a condition did not become true in time."""


class Browser:
    """One headless Chromium with one page, until `close()`."""

    def __init__(self, profile_dir: Path) -> None:
        """Start Chromium with its profile and log in `profile_dir` (a fresh folder)."""
        self.log_path = profile_dir / "chromium.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in close(), the process outlives a with-block
        self.process = subprocess.Popen(
            [
                chromium_binary(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--no-first-run",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile_dir / 'profile'}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
        )
        try:
            port = self._port()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=command_timeout_s) as answer:
                targets = json.load(answer)
            page = next(t for t in targets if t["type"] == "page")
            self._socket_context = connect(page["webSocketDebuggerUrl"], max_size=None)
            self.socket: ClientConnection = self._socket_context.__enter__()
        except BaseException:
            self.close()
            raise
        self._ids = itertools.count(1)
        self.exceptions: list[str] = []
        self.requested_urls: list[str] = []
        self.send("Runtime.enable")
        self.send("Page.enable")
        self.send("Network.enable")

    def _port(self) -> int:
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline:
            match = _listening.search(self.log_path.read_text(errors="replace"))
            if match:
                return int(match.group(1))
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode}; see {self.log_path}")
            time.sleep(wait_poll_s)
        raise RuntimeError(f"chromium did not listen within {start_timeout_s} s; see {self.log_path}")

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """One DevTools command; of the events read meanwhile, the page's exceptions and requests are kept."""
        message_id = next(self._ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params or {}}))
        while True:
            message = json.loads(self.socket.recv(timeout=command_timeout_s))
            if message.get("method") == "Runtime.exceptionThrown":
                details = message["params"]["exceptionDetails"]
                self.exceptions.append(details.get("exception", {}).get("description") or details.get("text", ""))
            elif message.get("method") == "Network.requestWillBeSent":
                self.requested_urls.append(message["params"]["request"]["url"])
            if message.get("id") == message_id:
                if "error" in message:
                    raise PageError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True})
        if "exceptionDetails" in result:
            raise PageError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str) -> Any:
        """Poll `expression` until it is truthy; its value. The bound only catches a page that is stuck."""
        deadline = time.monotonic() + wait_timeout_s
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(wait_poll_s)
        status = self.evaluate("document.getElementById('status')?.textContent")
        raise PageError(f"{what}: not within {wait_timeout_s} s (status: {status!r}; errors: {self.exceptions})")

    def open(self, url: str) -> None:
        """Navigate and wait until the document has loaded."""
        self.send("Page.navigate", {"url": url})
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'", f"loading {url}")

    def set_files(self, element_id: str, paths: list[Path]) -> None:
        """Choose `paths` in the file input `element_id`, as a person picking files would (fires `change`)."""
        found = self.send("Runtime.evaluate", {"expression": f"document.getElementById({json.dumps(element_id)})"})
        object_id = found["result"]["objectId"]
        self.send("DOM.setFileInputFiles", {"files": [str(p) for p in paths], "objectId": object_id})

    def screenshot(self, clip: dict[str, float] | None = None) -> bytes:
        """A PNG of the viewport, or of `clip` ({x, y, width, height} in CSS pixels)."""
        params: dict[str, Any] = {"format": "png"}
        if clip is not None:
            params["clip"] = {**clip, "scale": 1}
        return base64.b64decode(self.send("Page.captureScreenshot", params)["data"])

    def close(self) -> None:
        if getattr(self, "socket", None) is not None:
            self._socket_context.__exit__(None, None, None)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    if png[:8] != png_signature or png[12:16] != b"IHDR":
        raise AssertionError("not a PNG")
    return struct.unpack(">II", png[16:24])
