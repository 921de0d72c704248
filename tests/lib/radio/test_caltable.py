"""Calibration tables (``labpipe.radio.caltable``): CASA tables that read back as written."""

from __future__ import annotations

import numpy as np
from labpipe.radio import caltable


def test_tables_are_casa_tables_and_read_back_identically(solved, tmp_path):
    from casacore import tables

    layout, solution = solved
    for sol, subtype in ((solution.k, "K Jones"), (solution.bp, "B Jones"), (solution.g, "G Jones")):
        path = caltable.write_table(sol, layout, tmp_path / f"x.{caltable.SUFFIX[sol.kind]}")
        with tables.table(str(path), ack=False) as t:
            assert t.info()["subType"] == subtype
        back = caltable.read_table(path)
        assert back.kind == sol.kind
        np.testing.assert_allclose(np.nan_to_num(back.values), np.nan_to_num(sol.values), atol=1e-6)
        np.testing.assert_array_equal(back.flags, sol.flags)
    assert not list(tmp_path.glob(".*part"))  # staged writes leave nothing behind
