"""Sky models (``labpipe.radio.skymodel``): the calibrator catalogue."""

from __future__ import annotations

import pytest
from labpipe.errors import InvalidInput
from labpipe.radio import skymodel


def test_a_catalog_without_positions_or_fluxes_is_named(tmp_path):
    bad = tmp_path / "cat.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(InvalidInput, match="lack a position or a flux"):
        skymodel.read_catalog(bad)
