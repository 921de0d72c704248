"""Measurement Set reading (``labpipe.radio.ms``)."""

from __future__ import annotations

import pytest
from labpipe.errors import InvalidInput
from labpipe.radio.ms import read_layout


def test_a_folder_that_is_not_a_measurement_set_is_named(tmp_path):
    with pytest.raises(InvalidInput, match="not a Measurement Set"):
        read_layout(tmp_path)
