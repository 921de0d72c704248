"""PyBDSF source finding on simulated images: sources above the threshold found where they are, with fluxes
within their errors after the primary-beam correction; its catalogue kept as FITS beside the image."""

from __future__ import annotations

import numpy as np
import pytest
from labpipe.errors import InvalidInput
from labpipe.radio import simulate, sourcefind
from labpipe.radio.sourcefind import SourceFindSettings

RA0, DEC0 = 150.0, 55.0


def _sky(n: int, seed: int) -> list[simulate.Source]:
    """Sources on a grid (no two within 4 beams), 8 to 300 mJy."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    offsets = (np.arange(side) - (side - 1) / 2) * 0.35
    grid = [(x, y) for x in offsets for y in offsets][:n]
    return [
        simulate.Source(f"s{k}", RA0 + x / np.cos(np.radians(DEC0 + y)), DEC0 + y, float(10 ** rng.uniform(-2.1, -0.5)))
        for k, (x, y) in enumerate(grid)
    ]


def test_sources_are_found_with_positions_and_fluxes_within_their_errors(tmp_path):
    sky = _sky(16, seed=1)
    image = simulate.simulate_image(tmp_path / "epoch", sky, ra0_deg=RA0, dec0_deg=DEC0, mjd=60000.0, seed=2)
    found = sourcefind.find_sources(image.paths["image"], image.paths["pb"], tmp_path / "epoch.srl.fits",
                                    SourceFindSettings())  # fmt: skip
    assert found.catalogue.is_file() and not list(tmp_path.glob("*.log"))
    assert found.rms_jy == pytest.approx(image.noise_jy, rel=0.2)
    expected = [s for s in sky if s.name in image.fluxes and image.fluxes[s.name] * image.pb[s.name] > 6e-3]
    assert len(found.detections) == len(expected)
    from astropy.coordinates import SkyCoord

    truth = SkyCoord([s.ra_deg for s in expected], [s.dec_deg for s in expected], unit="deg")
    detected = SkyCoord([d.ra_deg for d in found.detections], [d.dec_deg for d in found.detections], unit="deg")
    index, separation, _ = detected.match_to_catalog_sky(truth)
    assert len(set(index.tolist())) == len(expected)  # one detection per source
    pulls = []
    for d, i, sep in zip(found.detections, index, separation.arcsec, strict=True):
        true_flux = image.fluxes[expected[i].name]
        assert sep < 5 * max(d.position_err_deg * 3600, 1.0), (d, sep)
        assert d.pb == pytest.approx(image.pb[expected[i].name], abs=0.01)
        pulls.append((d.peak_jy - true_flux) / np.hypot(d.peak_err_jy, d.local_rms_jy))
    assert np.max(np.abs(pulls)) < 4, pulls


def test_an_empty_sky_gives_an_empty_catalogue_and_a_missing_image_is_named(tmp_path):
    image = simulate.simulate_image(tmp_path / "empty", [], ra0_deg=RA0, dec0_deg=DEC0, mjd=60000.0, npix=128)
    found = sourcefind.find_sources(image.paths["image"], image.paths["pb"], tmp_path / "empty.srl.fits",
                                    SourceFindSettings(thresh_pix=6.0))  # fmt: skip
    assert found.detections == [] and found.catalogue.is_file()
    with pytest.raises(InvalidInput, match="image not found"):
        sourcefind.find_sources(tmp_path / "nothing.image.fits", None, tmp_path / "x.srl.fits", SourceFindSettings())


def test_one_core_runs_in_this_process_without_forking(tmp_path, monkeypatch):
    """With ncores=1 PyBDSF's rms map must not fork: in the full suite its forked children died (exit code 1,
    CI run of stop 19), failing every image; one core gains nothing from a fork and a manager process."""
    from bdsf import multi_proc

    def no_fork(*args, **kwargs):
        raise AssertionError("PyBDSF forked a process with ncores=1")

    monkeypatch.setattr(multi_proc.fork_context, "Process", no_fork)
    monkeypatch.setattr(multi_proc.fork_context, "Manager", no_fork)
    image = simulate.simulate_image(tmp_path / "one", _sky(4, seed=3), ra0_deg=RA0, dec0_deg=DEC0, mjd=60000.0)
    found = sourcefind.find_sources(image.paths["image"], image.paths["pb"], tmp_path / "one.srl.fits",
                                    SourceFindSettings(ncores=1))  # fmt: skip
    assert found.catalogue.is_file() and found.detections
