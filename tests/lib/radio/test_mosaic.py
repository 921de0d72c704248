"""Declination-strip mosaics with reproject: a source in the overlap of two images keeps its flux within its
error, images are grouped into strips by declination, and a strip can cross 0h."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from labpipe.errors import InvalidInput
from labpipe.radio import mosaic, simulate
from labpipe.radio.mosaic import MosaicInput, MosaicSettings

DEC0 = 55.0


def _flux(source: simulate.Source, freq_hz: float = 1.405e9) -> float:
    return source.flux_jy * (freq_hz / source.ref_freq_hz) ** source.spectral_index


def test_a_source_in_the_overlap_keeps_its_flux_within_its_error(tmp_path):
    overlap = simulate.Source("overlap", 150.0, DEC0 + 0.05, 0.2)
    west, east = simulate.Source("west", 149.0, DEC0 - 0.3, 0.1), simulate.Source("east", 151.1, DEC0 + 0.4, 0.15)
    images = [
        simulate.simulate_image(tmp_path / f"g{k}", [overlap, west, east], ra0_deg=ra0, dec0_deg=DEC0,
                                mjd=60000.0 + k * 0.0036, seed=10 + k, cell_arcsec=25, beam_arcsec=(90, 75, 20))
        for k, ra0 in enumerate((149.4, 150.6))
    ]  # fmt: skip
    assert all(i.pb["overlap"] > 0.9 for i in images)  # truly in both
    result = mosaic.linear_mosaic([i.prefix for i in images], tmp_path / "m.fits")
    assert result.n_images == 2 and result.path.exists()
    for source in (overlap, west, east):
        flux, err = mosaic.measure(result.path, source.ra_deg, source.dec_deg)
        assert abs(flux - _flux(source)) < 3 * err, (source.name, flux, err)
    # combining two images beats either alone where they overlap
    _, noise, wcs, _ = mosaic.read_mosaic(result.path)
    x, y = (int(round(float(v))) for v in wcs.world_to_pixel_values(overlap.ra_deg, overlap.dec_deg))
    single = [1e-3 / i.pb["overlap"] for i in images]
    assert noise[y, x] < 0.85 * min(single)


def test_images_are_grouped_into_declination_strips_and_a_strip_may_cross_0h(tmp_path):
    inputs = []
    for k, (ra0, dec0) in enumerate(((359.4, 30.0), (0.6, 30.0), (10.0, 62.0))):
        image = simulate.simulate_image(tmp_path / f"g{k}", [simulate.Source("s", ra0, dec0, 0.1)], ra0_deg=ra0,
                                        dec0_deg=dec0, mjd=60000.0 + k, npix=96, cell_arcsec=60,
                                        beam_arcsec=(240, 200, 0))  # fmt: skip
        inputs.append(MosaicInput(image.prefix, f"2025-10-13T0{k}:00:00", image.mjd, dec0))
    results = mosaic.strip_mosaics(inputs, 59999.0, 60003.0, tmp_path / "mosaics", MosaicSettings())
    assert sorted(round(r.dec_deg) for r in results) == [30, 62]
    strip = next(r for r in results if round(r.dec_deg) == 30)
    assert strip.n_images == 2 and strip.path.name == "2025-10-13T000000_2025-10-13T010000_+30.0.fits"
    assert strip.npix[1] < 300  # ~3.3 degrees of sky at 60": not a grid around the whole sky (21600 px)
    for ra0 in (359.4, 0.6):
        flux, err = mosaic.measure(strip.path, ra0, 30.0)
        assert flux == pytest.approx(_flux(simulate.Source("s", ra0, 30.0, 0.1)), abs=4 * err)
    assert mosaic.strip_mosaics(inputs, 61000.0, 61001.0, tmp_path / "none") == []
    with pytest.raises(InvalidInput, match="no images"):
        mosaic.linear_mosaic([], tmp_path / "empty.fits")
    with pytest.raises(InvalidInput, match="missing"):
        mosaic.linear_mosaic([Path(tmp_path / "nope")], tmp_path / "x.fits")
    assert np.isfinite(strip.rms_jy)
