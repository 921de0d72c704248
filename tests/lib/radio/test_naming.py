"""File and group names of the instrument (``labpipe.radio.naming``)."""

from __future__ import annotations

import datetime as dt

from labpipe.radio.naming import fs_safe, parse_subband_name, subband_file_name

START = dt.datetime(2025, 10, 13, 13, 28, 3)


def test_names_round_trip():
    name = subband_file_name(START, 7)
    assert name == "2025-10-13T13:28:03_sb07.hdf5"
    assert parse_subband_name(name).subband == 7
    assert parse_subband_name("2025-10-13_13_28_03_sb15.hdf5").subband == 15
    assert parse_subband_name("2025-02-30T13:28:03_sb01.hdf5") is None
    assert parse_subband_name("notes.txt") is None
    assert fs_safe("2025-10-13T13:28:03") == "2025-10-13_13_28_03"
