"""The products page's number formatting, run in Node.js: an unknown flux is a blank cell, never "0.00"."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from labpipe.radio.page import PAGE


@pytest.mark.skipif(not shutil.which("node"), reason="Node.js is not installed")
def test_unknown_fluxes_are_blank_and_known_ones_are_in_millijansky():
    helpers = [line for line in PAGE.splitlines() if line.startswith(("const num ", "const mjy "))]
    assert len(helpers) == 2, "the page's num and mjy helpers moved: update this test"
    cases = "[mjy(null), mjy(undefined), mjy(0), mjy(0.09277), mjy(1e-3, 1), num(null), num(2.5, 1)]"
    script = "\n".join(helpers) + f"\nconsole.log(JSON.stringify({cases}));"
    out = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=60, check=True).stdout
    # a master source with no variability row yet (too few epochs) has no mean flux: blank, as it was not 0 mJy
    assert json.loads(out) == ["", "", "0.00", "92.77", "1.0", "", "2.5"]
