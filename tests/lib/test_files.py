"""labpipe.files: the one checked way from a user's name to a path component."""

from __future__ import annotations

import pytest
from labpipe.errors import InvalidInput
from labpipe.files import path_component

BAD = {
    "": "empty",
    ".": "names a folder",
    "..": "names a folder",
    "../x": "separator",
    "a/b": "separator",
    "a\\b": "separator",
    "/abs": "separator",
    "nul\x00": "control",
    "new\nline": "control",
    "tab\tx": "control",
    "esc\x1b[31m": "control",
    " lead": "blanks",
    "trail ": "blanks",
    "x" * 256: "bytes long",
    "é" * 128: "bytes long",  # 256 bytes in UTF-8
}


@pytest.mark.parametrize("name", list(BAD), ids=[repr(n[:12]) for n in BAD])
def test_names_that_are_not_one_path_component_are_refused_with_the_reason(name):
    with pytest.raises(InvalidInput, match=BAD[name]) as caught:
        path_component(name, what="run name")
    assert "run name" in str(caught.value)


HARMLESS = ["tomo-1", "a.b_c", "x" * 255, "é" * 127, "x$(touch CANARY)", "[x]{y}*.bin", ".hidden"]


@pytest.mark.parametrize("name", HARMLESS)
def test_plain_and_odd_but_harmless_names_pass_unchanged(name):
    assert path_component(name) == name
