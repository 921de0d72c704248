"""Headless Chromium driven over the DevTools protocol: the web pages' tests and the pictures in docs/img.

Debian's ``chromium`` (infra/apt-packages.txt, role ``dev``) is started with a fresh profile and a
DevTools port of its own choosing; each ``Tab`` is one page, driven by protocol commands over its
websocket (the ``websockets`` package of the ``dev`` extra). Nothing here is used at run time by a
lifecycle.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# what a lab machine or CI needs: no sandbox as root, no GPU, and no background calls to a network it lacks
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-port=0",
]  # fmt: skip


def chromium_path() -> str | None:
    """Debian's ``chromium`` (or Ubuntu's ``chromium-browser``), if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Tab:
    """One Chromium page, driven by DevTools protocol commands over its websocket."""

    def __init__(self, ws_url: str, timeout: float = 60.0) -> None:
        from websockets.sync.client import connect

        self.timeout = timeout
        self.ws = connect(ws_url, max_size=None, open_timeout=timeout)
        self.ids = itertools.count(1)

    def send(self, method: str, **params) -> dict:
        message_id = next(self.ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=self.timeout))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def js(self, expression: str):
        """The value of a JavaScript expression (promises awaited); a thrown exception raises here."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def until(self, expression: str, what: str, timeout: float = 30.0):
        """Poll ``expression`` until it is truthy; TimeoutError naming ``what`` the page never showed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := self.js(expression):
                return value
            time.sleep(0.25)
        raise TimeoutError(f"the page never showed {what} ({expression})")

    def screenshot(self, path: Path, height: int | None = None) -> Path:
        """A PNG of the page; with ``height``, its top ``height`` CSS pixels only."""
        self.send("Page.bringToFront")  # a background tab is not painted: its screenshot would never come
        params: dict = {"format": "png"}
        if height is not None:
            width = self.send("Page.getLayoutMetrics")["cssLayoutViewport"]["clientWidth"]
            params["clip"] = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", **params)["data"]))
        return path

    def close(self) -> None:
        self.ws.close()


@contextlib.contextmanager
def chromium(profile: Path, window: str = "1200,800", log: Path | None = None) -> Iterator[Callable[..., Tab]]:
    """Start headless Chromium with a fresh ``profile`` folder; yields ``new_tab(tab_class=Tab)``.

    Every tab is closed and the browser stopped on leaving, whatever happened inside.
    """
    browser = chromium_path()
    if browser is None:
        raise FileNotFoundError("chromium is not installed: Debian package chromium (infra/apt-packages.txt, dev)")
    import httpx

    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [browser, *FLAGS, f"--window-size={window}", f"--user-data-dir={profile}", "about:blank"],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    tabs: list[Tab] = []
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if not port_file.exists():
            tail = log.read_text(errors="replace")[-2000:] if log else ""
            raise RuntimeError(f"chromium did not open its DevTools port within 60 s (exit {process.poll()}) {tail}")
        port = int(port_file.read_text().split()[0])

        def new_tab(tab_class: type[Tab] = Tab) -> Tab:
            target = httpx.put(f"http://127.0.0.1:{port}/json/new?about:blank", timeout=30).json()
            tab = tab_class(target["webSocketDebuggerUrl"])
            tabs.append(tab)
            return tab

        yield new_tab
    finally:
        for tab in tabs:
            with contextlib.suppress(Exception):
                tab.close()
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if log:
            out.close()
