"""The simulated DSA-110: files as the instrument writes them, conventions checked against pyuvdata."""

from __future__ import annotations

import datetime as dt
import warnings

import numpy as np
import pytest
from labpipe.errors import InvalidInput
from labpipe.radio import instrument as inst
from labpipe.radio.naming import parse_subband_name
from labpipe.radio.simulate import (
    Corruptions,
    GroupFaults,
    Source,
    find_truth,
    load_truth,
    nvss_like_catalog,
    read_sources,
    simulate_group,
    simulate_stream,
    transit_start,
    write_catalog,
)

START = dt.datetime(2025, 10, 13, 13, 28, 3)


def _uvdata(paths):
    from pyuvdata import UVData

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return UVData.from_file([str(p) for p in paths], file_type="uvh5")


def _meridian(mid_jd: float, dec_deg: float):
    import astropy.units as u
    from astropy.coordinates import HADec, SkyCoord
    from astropy.time import Time

    frame = HADec(obstime=Time(mid_jd, format="jd"), location=inst.site_location())
    return SkyCoord(ha=0 * u.deg, dec=dec_deg * u.deg, frame=frame).transform_to("icrs")


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    """One small group with jitter, corruptions, noise and a sky of a few sources."""
    out = tmp_path_factory.mktemp("sim")
    return simulate_group(out / "incoming", START, n_antennas=4, jitter_s=45, seed=3, truth_dir=out / "truth")


def test_files_look_like_the_instrument(group):
    assert sorted(group.files) == list(range(16))
    for sb, path in group.files.items():
        name = parse_subband_name(path.name)
        assert name.subband == sb and abs((name.timestamp - START).total_seconds()) <= 45
    uv = _uvdata([group.files[0]])
    assert uv.Nfreqs == 48 and uv.Ntimes == 24 and uv.Npols == 2 and uv.Nbls == 4 * 5 // 2
    np.testing.assert_allclose(uv.freq_array[0], 1498.75e6)
    assert np.all(np.diff(uv.freq_array) < 0), "channels descend within a subband"
    np.testing.assert_allclose(np.diff(np.unique(uv.time_array)) * 86400, inst.INTEGRATION_S, atol=1e-3)
    lat, lon, alt = uv.telescope.location_lat_lon_alt_degrees
    assert (round(lat, 4), round(lon, 4), round(alt)) == (37.2314, -118.2817, 1222)
    assert set(uv.telescope.antenna_diameters) == {4.65}
    assert uv.phase_center_catalog[0]["cat_type"] == "unprojected"
    np.testing.assert_allclose(np.degrees(uv.extra_keywords["phase_center_dec"]), 55.0)
    assert np.all(uv.get_data((1, 1)).imag == 0) and np.all(uv.get_data((1, 1)).real > 1000), "autos carry the SEFD"
    last = _uvdata([group.files[15]])
    assert last.freq_array.min() == pytest.approx(1311.494e6, abs=0.001e6)


def test_truth_round_trip_and_lookup(group):
    truth = load_truth(group.truth)
    assert truth.gains.shape == (4, 24, 2) and truth.bandpass.shape == (4, 768, 2) and truth.delays_ns.shape == (4, 2)
    assert np.all(np.diff(truth.freqs_hz) > 0) and len(truth.sources) >= 1
    assert truth.jones().shape == (4, 24, 768, 2)
    assert find_truth(group.truth.parent, float(truth.times_jd.mean())) == group.truth
    assert find_truth(group.truth.parent, float(truth.times_jd.mean()) + 1.0) is None


def test_corruptions_are_a_stable_instrument():
    times = 2460962.0 + np.array([0.0, 1 / 24])
    freqs = inst.band_frequencies()
    g1, d1, b1 = Corruptions(seed=5).evaluate(6, times, freqs)
    g2, d2, b2 = Corruptions(seed=5).evaluate(6, times[:1], freqs)
    np.testing.assert_allclose(g1[:, :1], g2)
    np.testing.assert_allclose(d1, d2)
    np.testing.assert_allclose(b1, b2)
    drift = np.degrees(np.angle(g1[:, 1] / g1[:, 0]))
    assert 0 < np.abs(drift).max() < 90, "gains drift slowly over an hour"
    g0, d0, b0 = Corruptions(enabled=False).evaluate(6, times, freqs)
    assert np.all(g0 == 1) and np.all(d0 == 0) and np.all(b0 == 1)


def test_source_at_phase_centre_has_zero_phase_after_pyuvdata_phasing(tmp_path):
    """The simulator's visibility convention is pyuvdata's: phasing to the source leaves a real positive flux."""
    from astropy.time import Time

    mid_jd = Time(START, scale="utc").jd + 2 * inst.INTEGRATION_S / 86400.0  # centre of 4 integrations
    centre = _meridian(mid_jd, 50.0)
    source = [Source("probe", centre.ra.deg, centre.dec.deg, 10.0, 0.0)]
    sim = simulate_group(
        tmp_path / "g",
        START,
        n_antennas=4,
        n_times=4,
        pointing_dec_deg=50.0,
        catalog=source,
        noise=False,
        corruptions=Corruptions(enabled=False),
        missing_subbands=tuple(range(1, 16)),
    )
    uv = _uvdata(sim.files.values())
    uv.phase(lon=centre.ra.rad, lat=centre.dec.rad, epoch="J2000", cat_name="probe")
    cross = uv.data_array[uv.ant_1_array != uv.ant_2_array]
    assert np.abs(np.angle(cross)).max() < 1e-5
    beam = inst.airy_power(0.0, 1.5e9)
    np.testing.assert_allclose(np.abs(cross), 10.0 * beam, rtol=1e-2)  # the source drifts off the beam centre


def test_faults_missing_corrupt_and_wrong_shape(tmp_path):
    from labpipe.radio.uvh5 import read_header

    g = simulate_group(
        tmp_path,
        START,
        n_antennas=3,
        n_times=2,
        catalog=[],
        missing_subbands=(4,),
        corrupt_subbands={2: "truncate", 3: "garbage", 5: "wrong_shape"},
    )
    assert 4 not in g.files and len(g.files) == 15
    for sb in (2, 3):
        with pytest.raises(InvalidInput, match="unreadable or truncated") as err:
            read_header(g.files[sb])
        assert g.files[sb].name in str(err.value)
    assert read_header(g.files[5]).n_freqs == 40
    assert read_header(g.files[6]).n_freqs == 48


def test_stream_shares_one_sky_and_centres_on_the_calibrator(tmp_path):
    groups = simulate_stream(
        tmp_path / "in",
        3,
        calibrator="3C286",
        n_antennas=3,
        n_times=2,
        faults={2: GroupFaults(missing=(7,))},
        truth_dir=tmp_path / "truth",
    )
    assert len({g.catalog for g in groups}) == 1 and groups[0].catalog.exists()
    assert [len(g.files) for g in groups] == [16, 16, 15]
    gap = (groups[1].start - groups[0].start).total_seconds()
    assert gap == pytest.approx(inst.GROUP_SECONDS, abs=1)
    assert groups[1].start == transit_start(202.78454)
    assert all(g.pointing_dec_deg == pytest.approx(30.50916) for g in groups)
    names = {s.name for s in load_truth(groups[1].truth).sources}
    assert "3C286" in names
    # the catalog a sky model is built from lists the calibrator, as NVSS does
    assert "3C286" in {s.name for s in read_sources(groups[0].catalog)}


def test_catalog_csv_round_trip_and_counts(tmp_path):
    sources = nvss_like_catalog((10.0, 30.0), (40.0, 50.0), min_flux_jy=0.1, seed=2)
    area = np.radians(20) * (np.sin(np.radians(50)) - np.sin(np.radians(40))) * np.degrees(1) ** 2  # deg^2
    expected = 53.0 * (0.1 / 2.5e-3) ** -1 * area
    assert abs(len(sources) - expected) < 5 * np.sqrt(expected)
    assert all(s.flux_jy >= 0.1 and 10 <= s.ra_deg <= 30 and 40 <= s.dec_deg <= 50 for s in sources)
    back = read_sources(write_catalog(sources, tmp_path / "cat.csv"))
    assert len(back) == len(sources)
    assert back[0].ra_deg == pytest.approx(sources[0].ra_deg, abs=1e-6)
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    with pytest.raises(InvalidInput, match="bad.csv"):
        read_sources(tmp_path / "bad.csv")


def test_injected_rfi_is_what_the_truth_says(tmp_path):
    """Same group with and without interference (no noise): the difference is the truth's emitters, and the
    faulty input's extra noise on its cross-correlations only."""
    from labpipe.radio.simulate import RfiInjection

    rfi = RfiInjection(narrowband=3, bursts=1, bad_antenna=2)
    common = dict(n_antennas=5, n_channels=4, noise=False, seed=3)
    clean = simulate_group(tmp_path / "clean", START, truth_dir=tmp_path / "t0", **common)
    dirty = simulate_group(tmp_path / "dirty", START, truth_dir=tmp_path / "t1", rfi=rfi, **common)
    truth = load_truth(dirty.truth)
    assert truth.rfi_amplitude.shape == (24, 64) and truth.bad_antenna == 2
    assert (truth.rfi_amplitude > 0).all(axis=0).sum() >= 3  # persistent emitters: every integration
    for sb in (0, 9):
        a, b = _uvdata([clean.files[sb]]), _uvdata([dirty.files[sb]])
        tidx = np.searchsorted(np.unique(a.time_array), a.time_array)
        amplitude, bad = truth.rfi_truth(a.ant_1_array, a.ant_2_array, tidx, a.freq_array)
        diff = np.abs(b.data_array - a.data_array)  # (blts, freqs, pols)
        expected = np.repeat(amplitude[:, :, None], 2, axis=2)
        good = ~bad
        np.testing.assert_allclose(diff[good], expected[good], rtol=1e-5, atol=1e-6)
        cross_bad = bad & (a.ant_1_array != a.ant_2_array)
        assert cross_bad.any() and (diff[cross_bad] > 0).all()
    assert load_truth(clean.truth).rfi_amplitude is None and load_truth(clean.truth).bad_antenna == -1


def test_light_curves_scale_a_source_and_survive_the_truth_file(tmp_path):
    from astropy.time import Time
    from labpipe.radio.simulate import ese_lightcurve, simulate_image, variable_lightcurve

    mjds = np.arange(60000.0, 60010.0)
    dip = ese_lightcurve(mjds, centre_mjd=60005.0, fwhm_days=2.0, depth=0.5)
    meridian = _meridian(Time(START, scale="utc").jd + inst.GROUP_SECONDS / 2 / 86400, 55.0)
    source = Source("ese", float(meridian.ra.deg), 55.0, 0.2, lightcurve=dip)
    assert source.flux_scale(60005.0) == pytest.approx(0.5) and source.flux_scale(59000.0) == pytest.approx(1.0)
    assert source.flux_scale(60004.5) == pytest.approx(np.interp(60004.5, mjds, [s for _, s in dip]))
    jumps = variable_lightcurve(mjds, modulation=0.3, seed=1)
    assert np.std([s for _, s in jumps]) > 0.1 and min(s for _, s in jumps) >= 0.05
    image = simulate_image(tmp_path / "e", [source], ra0_deg=source.ra_deg, dec0_deg=55.0, mjd=60005.0, npix=64)
    assert image.fluxes["ese"] == pytest.approx(0.2 * 0.5 * (1.405 / 1.4) ** -0.7)
    group = simulate_group(tmp_path / "g", START, n_antennas=3, n_channels=2, catalog=[source], noise=False,
                           truth_dir=tmp_path / "t")  # fmt: skip
    (kept,) = [s for s in load_truth(group.truth).sources if s.name == "ese"]
    assert kept == source and kept.lightcurve == dip
