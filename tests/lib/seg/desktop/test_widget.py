"""The napari dock widget in a real napari window (pytest-qt), against the real service on loopback.

The display is the Xvfb that pytest-xvfb starts (Debian's xvfb, dev role); without one these tests are
skipped, saying so (Qt's xcb platform would abort the test process instead). Jobs run the real ``segment``
flow with the session's tiny model. Set ``LABPIPE_SCREENSHOT=docs/img/seg-napari.png`` to refresh the
documentation's picture from the happy path.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from labpipe.seg.mrc import open_volume, read_header
from labpipe.seg.simulate import simulate_tomogram, write_simulated

from tests.lib.seg.cutting_proxy import CuttingProxy
from tests.lib.seg.service.conftest import PART

if not os.environ.get("DISPLAY"):
    pytest.skip(
        "no X display for napari: install xvfb (infra/apt-packages.txt, dev role) so pytest-xvfb can start one",
        allow_module_level=True,
    )
pytest.importorskip("napari", reason="the napari extra is not installed (pip install -e '.[napari]')")

JOB_TIMEOUT_MS = 600_000  # a flow run of the tiny model on a shared 2-core machine


@pytest.fixture
def widget(qtbot):
    """The dock widget in a shown napari window (closed after). napari's own pytest plugin is off for the
    suite (``-p no:napari``: its autouse fixtures would import napari and Qt in every test)."""
    import napari
    from labpipe.seg.desktop.widget import SegmentationWidget

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    panel = SegmentationWidget(viewer)
    viewer.window.add_dock_widget(panel, name="Segmentation service", area="right")
    yield panel
    panel.shutdown()
    viewer.close()


def _connect(panel, url: str, token: str, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(token)
    panel.server_edit.setText(url)
    panel.token_edit.setText(str(token_file))


def _click(qtbot, button) -> None:
    from qtpy.QtCore import Qt

    assert button.isEnabled(), button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def _wait_for(qtbot, widget, ready, timeout=JOB_TIMEOUT_MS) -> None:
    """Wait until ``ready()``; a job that fails meanwhile fails the test at once, with the panel's message."""
    qtbot.waitUntil(lambda: ready() or widget.job_state == "failed", timeout=timeout)
    assert widget.job_state != "failed", widget.status_label.text()


def _world(layer, index) -> np.ndarray:
    return np.asarray(layer.data_to_world(index))


@pytest.mark.slow
def test_open_upload_segment_preview_and_overlay_aligned(widget, qtbot, job_service, tmp_path, monkeypatch):
    """The seed's happy path from the widget, with the preview stream cut once mid-job (it reconnects)."""
    from labpipe.seg import client as seg_client

    reads, real_read = [], seg_client._read_digests
    monkeypatch.setattr(seg_client, "_read_digests", lambda path, *args: reads.append(path) or real_read(path, *args))
    path, _ = write_simulated(
        tmp_path / "TS_01.mrc", simulate_tomogram((48, 64, 64), seed=11), origin_xyz=(40, 80, 120)
    )
    proxy = CuttingProxy("127.0.0.1", int(job_service.url.rsplit(":", 1)[1]))
    _connect(widget, proxy.url, job_service.token("alice"), tmp_path)
    viewer = widget.viewer

    info = widget.open_tomogram(path)  # what Open .mrc... does after the file dialog
    assert (
        "64 x 64 x 48 voxels" in widget.metadata_label.text()
        and "origin (40, 80, 120) A" in widget.metadata_label.text()
    )
    image = viewer.layers["TS_01"]
    assert tuple(image.scale) == info.voxel_size_zyx and tuple(image.translate) == (120.0, 80.0, 40.0)

    _click(qtbot, widget.upload_button)
    qtbot.waitUntil(lambda: widget.upload_result is not None, timeout=60_000)
    assert widget.progress.value() == 1000 and "uploaded" in widget.status_label.text()
    # the fingerprint was read once, when the file was opened; the upload used it
    assert widget.fingerprinting.done() and reads == [path]

    widget.model_combo.setCurrentText("tiny-test")
    widget.every_spin.setValue(1.0)
    _click(qtbot, widget.submit_button)
    _wait_for(qtbot, widget, lambda: "preview" in viewer.layers)
    preview = viewer.layers["preview"]
    factor = round(preview.scale[0] / info.voxel_size_zyx[0])
    assert factor == 4 and preview.data.shape == (12, 16, 16)
    for index in [(0, 0, 0), (3, 5, 7), (11, 15, 15)]:  # preview voxel i sits on tomogram voxel 4*i
        assert np.allclose(_world(preview, index), _world(image, tuple(4 * i for i in index)))
    proxy.cut_now()  # the network drops: the stream reconnects with backoff, the server sends the newest again
    _wait_for(qtbot, widget, lambda: widget.previews_shown >= 3 or "mask" in viewer.layers)
    if os.environ.get("LABPIPE_SCREENSHOT") and "mask" not in viewer.layers:
        _screenshot(viewer, Path(os.environ["LABPIPE_SCREENSHOT"]))

    _wait_for(qtbot, widget, lambda: "mask" in viewer.layers)
    assert widget.job_state == "completed" and widget.stream.connections >= 2
    assert len([layer for layer in viewer.layers if layer.name == "preview"]) == 1  # replaced, not stacked
    mask = viewer.layers["mask"]
    assert mask.data.shape == image.data.shape
    assert tuple(mask.scale) == tuple(image.scale) and tuple(mask.translate) == tuple(image.translate)
    with open_volume(widget.mask_path) as served:
        assert np.array_equal(mask.data, np.asarray(served).view(np.uint8))
    assert widget.mask_path.parent == tmp_path / f"TS_01-{widget.job_id[:8]}"

    exported = widget.export(tmp_path / "export")
    nib = pytest.importorskip("nibabel")
    nifti = nib.load(exported["mask.nii.gz"])
    assert nifti.shape == (64, 64, 48) and np.allclose(nifti.affine[:3, 3], (40, 80, 120))
    assert np.array_equal(np.asarray(nifti.dataobj).transpose(2, 1, 0), mask.data)
    assert read_header(widget.mask_path).origin_xyz == (40.0, 80.0, 120.0)
    proxy.close()


def _screenshot(viewer, path: Path) -> None:
    import time

    from PIL import Image
    from qtpy.QtWidgets import QApplication

    viewer.dims.set_point(0, viewer.dims.range[0].start + (viewer.dims.range[0].stop - viewer.dims.range[0].start) / 2)
    viewer.reset_view()
    for _ in range(20):  # let the dock widget and the canvas lay themselves out
        QApplication.processEvents()
        time.sleep(0.02)
    pixels = viewer.screenshot(canvas_only=False, flash=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _kept_after_cut(service) -> int:
    """The bytes of parts cut mid-transfer the server recorded (its own count), once no part is being received."""
    deadline = time.monotonic() + 30
    while service.service.uploads._writing:
        assert time.monotonic() < deadline, "parts still being received 30 s after the cut"
        time.sleep(0.02)
    return sum(int(p.read_text()) for p in (service.settings.data / "uploads").glob("*/parts/*.partial"))


def test_upload_cut_mid_way_resumes_from_the_widget_without_resending_parts(widget, qtbot, start_service, tmp_path):
    from labpipe.seg.client import Backoff

    service = start_service()
    path, _ = write_simulated(tmp_path / "TS_03.mrc", simulate_tomogram((32, 64, 64), seed=2))
    size = path.stat().st_size
    proxy = CuttingProxy("127.0.0.1", int(service.url.rsplit(":", 1)[1]))
    _connect(widget, proxy.url, service.token("alice"), tmp_path)
    widget.part_bytes, widget.backoff = PART, Backoff(attempts=1)  # no retries: the cut reaches the user
    widget.open_tomogram(path)

    proxy.cut_after(int(4.5 * PART))
    _click(qtbot, widget.upload_button)
    qtbot.waitUntil(lambda: "upload failed" in widget.status_label.text(), timeout=60_000)
    assert "only what the server does not hold is sent" in widget.status_label.text()
    assert widget.upload_result is None and 0 < widget.progress.value() < 1000
    kept = _kept_after_cut(service)

    before = proxy.sent
    _click(qtbot, widget.upload_button)  # the user presses Upload again
    qtbot.waitUntil(lambda: widget.upload_result is not None, timeout=60_000)
    result = widget.upload_result
    # two parts are in flight when 4.5 parts' bytes have passed: 2 to 5 parts finished before the cut, and
    # what reached the server of the parts in flight is kept: only the rest of them is sent. It may be nothing:
    # the cut resets the server's connection, and bytes the server had not read from its socket by then are
    # dropped by the kernel (seen on a loaded host); keeping a cut part's bytes exactly is
    # test_a_part_cut_mid_body_keeps_what_arrived_and_is_resumed_from_there (tests/lib/seg/service)
    assert 2 <= result.held_at_start <= 5 and 0 <= kept < 2 * PART
    assert result.sent_bytes == size - result.held_at_start * PART - kept
    # on the wire: what was missing, and a request line with headers (under 1 KB) per part, init and complete
    assert proxy.sent - before < result.sent_bytes + 1024 * (result.sent_parts + 2)
    # how many parts finished before the cut depends on the two parts in flight: the label names that count
    assert f"{result.held_at_start} of 9 parts were already there" in widget.status_label.text()
    proxy.close()


@pytest.mark.slow
def test_cancel_from_the_widget_ends_the_job_canceled_without_a_mask(widget, qtbot, job_service, tmp_path):
    path, _ = write_simulated(tmp_path / "TS_04.mrc", simulate_tomogram((48, 64, 64), seed=4))
    _connect(widget, job_service.url, job_service.token("alice"), tmp_path)
    widget.open_tomogram(path)
    _click(qtbot, widget.upload_button)
    qtbot.waitUntil(lambda: widget.upload_result is not None, timeout=60_000)
    widget.model_combo.setCurrentText("tiny-test")
    _click(qtbot, widget.submit_button)
    qtbot.waitUntil(lambda: widget.cancel_button.isEnabled(), timeout=60_000)
    _click(qtbot, widget.cancel_button)
    _wait_for(qtbot, widget, lambda: widget.job_state == "canceled")
    assert "canceled" in widget.status_label.text()
    assert "mask" not in widget.viewer.layers and widget.mask_path is None
    assert widget.client.job(widget.job_id).state == "canceled"
    assert not widget.cancel_button.isEnabled()
