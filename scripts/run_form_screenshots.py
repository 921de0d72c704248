"""Screenshots of deployments' run forms in the Prefect UI, in headless Chromium (the pictures in docs/img/).

Against a running platform (`labpipe up`; LABPIPE_HOME and LABPIPE_PREFECT_PORT as it was started with):

    .venv/bin/python scripts/run_form_screenshots.py docs/img ingest/share segment/tomogram backup/nightly

Each form is opened with the drop-down of its first block picker unfolded into a list (a native <select>
does not paint its open list in a screenshot), then the page is captured whole. Needs the `dev` extra
(websockets) and Debian's chromium.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import httpx
from labpipe.browser import chromium
from labpipe.config import get_settings

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


def run_form(api_url: str, deployment: str) -> str:
    found = httpx.get(f"{api_url}/deployments/name/{deployment}", timeout=60)
    found.raise_for_status()
    return f"{api_url.removesuffix('/api')}/deployments/deployment/{found.json()['id']}/run"


def main(folder: str, *deployments: str) -> None:
    api_url = get_settings().api_url
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile, chromium(Path(profile), window="1300,2400") as new_tab:
        for deployment in deployments:
            tab = new_tab()
            tab.send("Page.navigate", url=run_form(api_url, deployment))
            tab.until("document.body && document.body.innerText.includes('_block')", f"{deployment}'s form", 90)
            tab.until("document.querySelectorAll('select').length > 0", "a block picker", 90)
            choices = tab.js(UNFOLD_PICKER)
            path = out / f"run-form-{deployment.replace('/', '-')}.png"
            tab.screenshot(path, height=tab.js(FORM_BOTTOM))
            print(f"{path}: {deployment}, first picker with {choices} choices")


if __name__ == "__main__":
    main(*sys.argv[1:])
