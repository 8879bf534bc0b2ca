"""A real browser for the tests: headless Chromium driven over the DevTools protocol.

:func:`look` opens a page as a person would (a ``file://`` URL), waits until it has loaded, and
returns what is on screen: the document's type (``text/html``, not a text view of the source),
the title, the visible text, each image's load state and size, the warning boxes, and a
screenshot (written where the caller says; never committed).

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it). Without it the browser
tests skip, unless ``CIRL_REQUIRE_BROWSER=1`` (CI sets it), where they fail. The protocol is
spoken through ``websocket-client`` (installed with kfp's kubernetes client).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

# What the page shows, read in the page after it loaded (no script of the page itself runs it).
_READ = """
(() => {
  const visible = el => {
    const box = el.getBoundingClientRect(), style = getComputedStyle(el);
    return box.width > 0 && box.height > 0 && style.visibility !== 'hidden' &&
      style.display !== 'none';
  };
  return JSON.stringify({
    contentType: document.contentType,
    title: document.title,
    text: document.body ? document.body.innerText : '',
    images: [...document.images].map(i => ({
      src: i.currentSrc.slice(0, 200), alt: i.alt, complete: i.complete,
      width: i.naturalWidth, height: i.naturalHeight, visible: visible(i)})),
    captions: [...document.querySelectorAll('figcaption')].map(c => c.innerText),
    warnings: [...document.querySelectorAll('[role=alert]')].filter(visible)
      .map(w => w.innerText),
    headings: [...document.querySelectorAll('h1,h2')].map(h => h.innerText),
  });
})()
"""


def chromium() -> str:
    """The Chromium binary, or skip (fail under ``CIRL_REQUIRE_BROWSER=1``)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    message = "no Chromium here: apt-get install chromium (Debian) to run the browser tests"
    if os.environ.get("CIRL_REQUIRE_BROWSER") == "1":
        pytest.fail(message)
    pytest.skip(message)


class _Tab:
    def __init__(self, url: str) -> None:
        import websocket

        self.socket = websocket.create_connection(url, timeout=60)
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def wait_event(self, name: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            message = json.loads(self.socket.recv())
            if message.get("method") == name:
                return
        raise TimeoutError(f"no {name} before the deadline")


def look(page: Path, screenshot: Path | None = None, width: int = 1280) -> dict:
    """Open ``page`` in headless Chromium; what a person sees there (see the module doc)."""
    binary = chromium()
    with tempfile.TemporaryDirectory(prefix="cirl-chromium-") as profile:
        proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--allow-file-access-from-files",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                f"--window-size={width},900",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            port = _port(Path(profile), proc)
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
            target = next(t for t in targets if t.get("type") == "page")
            tab = _Tab(target["webSocketDebuggerUrl"])
            tab.call("Page.enable")
            tab.call("Page.navigate", url=page.resolve().as_uri())
            tab.wait_event("Page.loadEventFired", time.monotonic() + 60)
            seen = json.loads(
                tab.call("Runtime.evaluate", expression=_READ, returnByValue=True)["result"][
                    "value"
                ]
            )
            if screenshot is not None:
                shot = tab.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
            tab.socket.close()
            return seen
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _port(profile: Path, proc: subprocess.Popen) -> int:
    """The DevTools port Chromium chose (it writes it to the profile folder)."""
    deadline = time.monotonic() + 60
    marker = profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if marker.is_file():
            lines = marker.read_text().split()
            if lines:
                return int(lines[0])
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode} before it listened")
        time.sleep(0.1)
    raise TimeoutError("chromium did not open its DevTools port within 60 s")
