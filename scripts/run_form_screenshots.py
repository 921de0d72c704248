"""Screenshots of deployments' run forms in the Prefect UI, in headless Chromium (the pictures in docs/img/).

Against a running platform (`labpipe up`; LABPIPE_HOME and LABPIPE_PREFECT_PORT as it was started with):

    .venv/bin/python scripts/run_form_screenshots.py docs/img ingest/share segment/tomogram backup/nightly

Each form is opened with the drop-down of its first block picker unfolded into a list (a native <select>
does not paint its open list in a screenshot), then the page is captured whole. Needs the `dev` extra
(websockets) and Debian's chromium.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from labpipe.config import get_settings

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-port=0", "--window-size=1300,2400",
]  # fmt: skip

# show a block picker's choices: the <select> after the label of the first `*_block` parameter as an open list
UNFOLD_PICKER = """(() => {
  const label = [...document.querySelectorAll('*')].find(e => e.children.length === 0 && /_block/.test(e.textContent));
  let node = label; while (node && !node.querySelector('select')) node = node.parentElement;
  const select = node && node.querySelector('select');
  if (!select) return 0;
  select.size = select.options.length;
  for (let box = select, up = 0; box && up < 3; box = box.parentElement, up++) {
    box.style.setProperty('height', 'auto', 'important'); box.style.setProperty('max-height', 'none', 'important');
  }
  select.style.setProperty('height', `${select.options.length * 1.6 + 1}em`, 'important');
  select.style.setProperty('overflow', 'hidden', 'important');
  select.style.setProperty('position', 'static', 'important');
  return select.options.length;
})()"""


# where to cut the picture: just below the form's "Validate parameters" switch (the parameters end there)
FORM_BOTTOM = """(() => {
  const label = [...document.querySelectorAll('label, span, div')]
    .find(e => e.textContent.trim() === 'Validate parameters');
  return label ? Math.ceil(label.getBoundingClientRect().bottom + window.scrollY + 16) : document.body.scrollHeight;
})()"""


class Tab:
    """One Chromium page, driven by DevTools protocol commands over its websocket."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=30)
        self.ids = itertools.count(1)

    def send(self, method: str, **params) -> dict:
        message_id = next(self.ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def until(self, expression: str, what: str, timeout: float = 90.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := self.js(expression):
                return value
            time.sleep(0.3)
        raise TimeoutError(f"the page never showed {what}")

    def screenshot(self, path: Path, height: int) -> None:
        """The top ``height`` CSS pixels of the page (the form scrolls inside the window, so the window is tall)."""
        self.send("Page.bringToFront")  # a background tab is not painted
        width = self.send("Page.getLayoutMetrics")["cssLayoutViewport"]["clientWidth"]
        clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png", clip=clip)["data"]))


def chromium(profile: Path) -> tuple[subprocess.Popen, int]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium is not installed (infra/apt-packages.txt)")
    process = subprocess.Popen([browser, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while not port_file.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return process, int(port_file.read_text().split()[0])


def run_form(api_url: str, deployment: str) -> str:
    found = httpx.get(f"{api_url}/deployments/name/{deployment}", timeout=60)
    found.raise_for_status()
    return f"{api_url.removesuffix('/api')}/deployments/deployment/{found.json()['id']}/run"


def main(folder: str, *deployments: str) -> None:
    api_url = get_settings().api_url
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        process, port = chromium(Path(profile))
        try:
            for deployment in deployments:
                target = httpx.put(f"http://127.0.0.1:{port}/json/new?about:blank", timeout=30).json()
                tab = Tab(target["webSocketDebuggerUrl"])
                tab.send("Page.navigate", url=run_form(api_url, deployment))
                tab.until("document.body && document.body.innerText.includes('_block')", f"{deployment}'s form")
                tab.until("document.querySelectorAll('select').length > 0", "a block picker")
                choices = tab.js(UNFOLD_PICKER)
                path = out / f"run-form-{deployment.replace('/', '-')}.png"
                tab.screenshot(path, height=tab.js(FORM_BOTTOM))
                print(f"{path}: {deployment}, first picker with {choices} choices")
                tab.ws.close()
        finally:
            process.terminate()
            process.wait(15)


if __name__ == "__main__":
    main(*sys.argv[1:])
