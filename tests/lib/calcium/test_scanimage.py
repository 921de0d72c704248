"""ScanImage metadata from TIFF headers, and truncated stacks refused by name."""

import os

import numpy as np
import pytest
import tifffile
from labpipe.calcium.scanimage import read_scan_info
from labpipe.calcium.simulate import RecordingSpec, write_recording
from labpipe.errors import InvalidInput


def test_frame_rate_zoom_and_planes_come_from_scanimages_header(tmp_path):
    path = tmp_path / "imaging_00001.tif"
    write_recording(path, RecordingSpec(frames=40, height=32, width=48, cells=2, frame_rate=15.5, zoom=3.0))
    with tifffile.TiffFile(path) as tif:
        assert tif.is_scanimage and tif.pages[5].description.startswith("frameNumbers = 6")
    info = read_scan_info(path, frame_rate=99.0)  # the header wins over the setting
    assert (info.frames, info.height, info.width) == (40, 32, 48)
    assert (info.frame_rate, info.zoom, info.planes, info.channels) == (15.5, 3.0, 1, 1)
    assert (info.metadata_source, info.scanimage_version) == ("scanimage", "2022.1")


def test_a_plain_tiff_needs_a_configured_frame_rate(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((12, 16, 16), np.uint16))
    info = read_scan_info(path, frame_rate=30.0)
    assert (info.frames, info.frame_rate, info.zoom, info.metadata_source) == (12, 30.0, None, "settings")
    with pytest.raises(InvalidInput, match="plain.tif: no ScanImage header and no frame rate configured"):
        read_scan_info(path)


def test_a_truncated_tiff_is_refused_naming_the_file_and_the_page(tmp_path):
    path = tmp_path / "imaging_00001.tif"
    write_recording(path, RecordingSpec(frames=30, height=32, width=32, cells=2))
    os.truncate(path, os.path.getsize(path) - 3000)  # an interrupted copy: the last pages' data are cut
    with pytest.raises(InvalidInput, match="imaging_00001.tif: truncated TIFF: page 30 ") as caught:
        read_scan_info(path)
    assert "copy the file again" in str(caught.value)
    os.truncate(path, 20)
    with pytest.raises(InvalidInput, match="not a readable TIFF"):
        read_scan_info(path)
