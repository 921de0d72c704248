"""Group conversion: the MS against pyuvdata's own path, bad files, staging and the final move."""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from labpipe.errors import ConflictError, InvalidInput
from labpipe.radio import instrument as inst
from labpipe.radio.convert import ConvertSettings, convert_group, meridian_phase_center
from labpipe.radio.simulate import Corruptions, Source, load_truth, simulate_group

START = dt.datetime(2025, 10, 13, 13, 28, 3)


def _table(path, sub: str = ""):
    from casacore.tables import table

    return table(f"{path}/{sub}" if sub else str(path), ack=False)


def _all_but(subband: int) -> tuple[int, ...]:
    return tuple(sb for sb in range(16) if sb != subband)


def _empty(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


def _pyuvdata(files):
    from pyuvdata import UVData

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return UVData.from_file([str(f) for f in sorted(files)], file_type="uvh5")


def _sky_near_meridian() -> list[Source]:
    from astropy.time import Time

    lst = Time(START, scale="utc").sidereal_time("apparent", inst.SITE_LON_DEG).deg
    return [Source("a", lst + 0.5, 55.3, 8.0), Source("b", lst + 1.5, 54.2, 3.0, -0.4), Source("c", lst, 55.0, 1.0)]


@pytest.fixture(scope="module")
def tmpfs_root():
    root = Path("/dev/shm") / f"labpipe-test-{uuid.uuid4().hex[:8]}"
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    """4 antennas, 24 integrations, subband 3 missing, per-subband jitter, gains, noise."""
    out = tmp_path_factory.mktemp("conv")
    return simulate_group(
        out / "incoming", START, n_antennas=4, jitter_s=40, missing_subbands=(3,), catalog=_sky_near_meridian(), seed=9
    )


def _settings(tmpfs_root, **kw) -> ConvertSettings:
    return ConvertSettings(tmpfs_root=tmpfs_root, fsync=False, **kw)


@pytest.fixture(scope="module")
def converted(group, tmp_path_factory, tmpfs_root):
    out = tmp_path_factory.mktemp("ms")
    result = convert_group(list(group.files.values()), out / "science" / "g.ms", settings=_settings(tmpfs_root))
    return result, out


def test_ms_matches_pyuvdata_phasing_to_float32(group, converted):
    result, _ = converted
    uv = _pyuvdata(group.files.values())
    mid = float(np.mean(np.unique(uv.time_array)))
    ra, dec = meridian_phase_center(mid, uv.extra_keywords["phase_center_dec"])
    uv.phase(lon=ra, lat=dec, epoch="J2000", cat_name="ref")
    ms = _table(result.ms_path)
    freqs = _table(result.ms_path, "SPECTRAL_WINDOW").getcol("CHAN_FREQ")[0]
    assert len(freqs) == 768 and np.all(np.diff(freqs) > 0), "the whole band, ascending"
    np.testing.assert_allclose(freqs, inst.band_frequencies())
    chans = np.searchsorted(freqs, uv.freq_array)
    data = ms.getcol("DATA")
    expected = np.conj(uv.data_array)  # the MS holds the CASA conjugation of pyuvdata's data
    error = np.abs(data[:, chans] - expected)
    assert np.all(error <= 4 * np.finfo(np.float32).eps * np.abs(expected) + 1e-6), "float32 precision, per visibility"
    assert np.abs(ms.getcol("UVW") + uv.uvw_array).max() < 1e-3, "UVW within 1 mm of pyuvdata's phasing"
    np.testing.assert_array_equal(ms.getcol("ANTENNA1"), uv.ant_1_array)
    np.testing.assert_array_equal(ms.getcol("ANTENNA2"), uv.ant_2_array)
    times = np.unique(ms.getcol("TIME")) / 86400.0 + 2400000.5
    np.testing.assert_allclose(times, np.unique(uv.time_array), atol=1e-8)
    flags = ms.getcol("FLAG")
    missing = np.setdiff1d(np.arange(768), chans)
    assert len(missing) == 48 and flags[:, missing].all() and not flags[:, chans].any()
    np.testing.assert_allclose(freqs[missing], np.sort(inst.subband_frequencies(3)))
    assert "WEIGHT_SPECTRUM" not in ms.colnames(), "uniform nsamples: WEIGHT says it all"
    np.testing.assert_array_equal(ms.getcol("WEIGHT"), np.median(uv.nsample_array, axis=1))
    antenna = _table(result.ms_path, "ANTENNA")
    names = antenna.getcol("NAME")
    assert [names[n] for n in uv.telescope.antenna_numbers] == list(uv.telescope.antenna_names)
    location = uv.telescope._location.xyz()
    positions = antenna.getcol("POSITION")[uv.telescope.antenna_numbers]
    np.testing.assert_allclose(positions, uv.telescope.antenna_positions + location, atol=1e-6)
    assert result.subbands_flagged == [3] and len(result.subbands_written) == 15


def test_phase_centre_is_the_meridian_at_mid_time_at_the_pointing_dec(converted):
    import astropy.units as u
    from astropy.coordinates import HADec, SkyCoord
    from astropy.time import Time

    result, _ = converted
    ms = _table(result.ms_path)
    times = np.unique(ms.getcol("TIME")) / 86400.0 + 2400000.5
    mid = Time((times[0] + times[-1]) / 2, format="jd")
    phase_dir = _table(result.ms_path, "FIELD").getcol("PHASE_DIR")[0, 0]
    centre = SkyCoord(ra=phase_dir[0] * u.rad, dec=phase_dir[1] * u.rad, frame="icrs")
    hadec = centre.transform_to(HADec(obstime=mid, location=inst.site_location()))
    assert abs(hadec.ha.wrap_at(180 * u.deg).deg) < 1e-6
    assert hadec.dec.deg == pytest.approx(55.0, abs=1e-6)


def test_pyuvdata_reads_the_ms_back(group, converted):
    from pyuvdata import UVData

    result, _ = converted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = UVData.from_file(result.ms_path)
    ref = _pyuvdata(group.files.values())
    mid = float(np.mean(np.unique(ref.time_array)))
    ref.phase(lon=result.phase_ra_deg * np.pi / 180, lat=result.phase_dec_deg * np.pi / 180, cat_name="x")
    assert back.Nfreqs == 768 and back.Nblts == ref.Nblts
    np.testing.assert_array_equal(back.telescope.antenna_numbers, ref.telescope.antenna_numbers)
    chans = np.searchsorted(back.freq_array, ref.freq_array)
    np.testing.assert_allclose(
        back.data_array[:, chans], ref.data_array, rtol=0, atol=2e-7 * np.abs(ref.data_array).max()
    )
    np.testing.assert_allclose(back.uvw_array, ref.uvw_array, atol=1e-3)
    assert back.flag_array[:, np.setdiff1d(np.arange(768), chans)].all()
    assert mid == pytest.approx(float(np.mean(np.unique(back.time_array))))


def test_varying_nsamples_give_a_weight_spectrum(group, tmp_path, tmpfs_root):
    """Rewritten with small HDF5 chunks, the group converts in several slabs; nsamples vary in the last rows
    only, so WEIGHT_SPECTRUM is added midway and the earlier slabs are filled in."""
    files = []
    for sb, path in group.files.items():
        copy = tmp_path / path.name
        shutil.copy(path, copy)
        with h5py.File(copy, "r+") as f:
            for name in ("visdata", "flags", "nsamples"):
                values = f[f"Data/{name}"][()]
                if name == "nsamples" and sb == 5:
                    values[-10:, 3, 0] = 0.5  # a partly integrated channel near the end
                del f[f"Data/{name}"]
                f["Data"].create_dataset(name, data=values, chunks=(24, *values.shape[1:]))
        files.append(copy)
    result = convert_group(files, tmp_path / "w.ms", settings=_settings(tmpfs_root, max_in_flight=2))
    uv = _pyuvdata(files)
    ms = _table(result.ms_path)
    freqs = _table(result.ms_path, "SPECTRAL_WINDOW").getcol("CHAN_FREQ")[0]
    chans = np.searchsorted(freqs, uv.freq_array)
    spectrum = ms.getcol("WEIGHT_SPECTRUM")
    np.testing.assert_array_equal(spectrum[:, chans], uv.nsample_array)
    assert (spectrum[:, np.setdiff1d(np.arange(768), chans)] == 0).all()


def test_zenith_when_the_files_record_no_pointing(group, tmp_path, tmpfs_root):
    files = []
    for path in group.files.values():
        copy = tmp_path / path.name
        shutil.copy(path, copy)
        with h5py.File(copy, "r+") as f:
            del f["Header/extra_keywords/phase_center_dec"]
        files.append(copy)
    result = convert_group(files, tmp_path / "out" / "z.ms", settings=_settings(tmpfs_root))
    uv = _pyuvdata(files)
    from astropy.time import Time

    uv.phase_to_time(Time(float(np.mean(np.unique(uv.time_array))), format="jd"))
    entry = next(iter(uv.phase_center_catalog.values()))
    assert result.phase_ra_deg == pytest.approx(np.degrees(entry["cat_lon"]), abs=1e-9)
    assert result.phase_dec_deg == pytest.approx(np.degrees(entry["cat_lat"]), abs=1e-9)
    assert np.abs(_table(result.ms_path).getcol("UVW") + uv.uvw_array).max() < 1e-3


def test_gain_convention_in_the_ms_matches_the_truth(tmp_path, tmpfs_root):
    """DATA(ant1, ant2) = J_ant1 MODEL conj(J_ant2): dividing the truth out recovers the uncorrupted group."""
    common = dict(n_antennas=3, n_times=2, catalog=_sky_near_meridian(), noise=False, missing_subbands=range(2, 16))
    clean = simulate_group(tmp_path / "clean", START, corruptions=Corruptions(enabled=False), **common)
    dirty = simulate_group(
        tmp_path / "dirty", START, corruptions=Corruptions(seed=4), truth_dir=tmp_path / "t", **common
    )
    ms_clean = convert_group(list(clean.files.values()), tmp_path / "c.ms", settings=_settings(tmpfs_root))
    ms_dirty = convert_group(list(dirty.files.values()), tmp_path / "d.ms", settings=_settings(tmpfs_root))
    truth = load_truth(dirty.truth)
    jones = truth.jones()  # (ant, time, freq, pol)
    t = _table(ms_dirty.ms_path)
    a1, a2 = t.getcol("ANTENNA1") - 1, t.getcol("ANTENNA2") - 1
    time_index = np.unique(t.getcol("TIME"), return_inverse=True)[1]
    j1, j2 = jones[a1, time_index], jones[a2, time_index]
    corrected = t.getcol("DATA") / (j1 * np.conj(j2))
    model = _table(ms_clean.ms_path).getcol("DATA")
    present = ~t.getcol("FLAG")
    np.testing.assert_allclose(corrected[present], model[present], rtol=1e-4, atol=1e-4 * np.abs(model).max())


def test_bad_file_is_flagged_or_fails_the_group_by_policy(group, tmp_path, tmpfs_root):
    files = {sb: tmp_path / p.name for sb, p in group.files.items()}
    for sb, p in group.files.items():
        shutil.copy(p, files[sb])
    with open(files[7], "r+b") as handle:
        handle.truncate(files[7].stat().st_size // 2)
    final = tmp_path / "ms" / "g.ms"
    with pytest.raises(InvalidInput) as err:
        convert_group(list(files.values()), final, settings=_settings(tmpfs_root, bad_file_policy="fail"))
    assert files[7].name in str(err.value) and "truncated" in str(err.value)
    assert not final.exists() and _empty(tmpfs_root)
    result = convert_group(list(files.values()), final, settings=_settings(tmpfs_root))
    assert result.subbands_flagged == [3, 7] and str(files[7]) in result.bad_files
    freqs = _table(final, "SPECTRAL_WINDOW").getcol("CHAN_FREQ")[0]
    bad = np.isin(freqs, inst.subband_frequencies(7))
    assert _table(final).getcol("FLAG")[:, bad].all()


def test_files_from_another_group_or_shape_do_not_fit(group, tmp_path, tmpfs_root):
    later = START + dt.timedelta(seconds=309)
    other = simulate_group(tmp_path / "other", later, n_antennas=4, catalog=[], missing_subbands=_all_but(4))
    odd = simulate_group(
        tmp_path / "odd",
        START,
        n_antennas=4,
        catalog=[],
        corrupt_subbands={5: "wrong_shape"},
        missing_subbands=range(6, 16),
    )
    files = [p for sb, p in group.files.items() if sb not in (4, 5)] + [other.files[4], odd.files[5]]
    result = convert_group(files, tmp_path / "m.ms", settings=_settings(tmpfs_root))
    assert result.subbands_flagged == [3, 4, 5]
    assert "differ from the other subbands" in result.bad_files[str(other.files[4])]
    assert "40 channels" in result.bad_files[str(odd.files[5])]


def test_staging_on_disk_or_tmpfs_leaves_nothing_behind(group, tmp_path, tmpfs_root):
    files = list(group.files.values())
    for staging in ("disk", "tmpfs"):
        final = tmp_path / staging / "science" / "g.ms"
        workspace = tmp_path / "tmp" / "staging" / staging
        result = convert_group(files, final, settings=_settings(tmpfs_root, staging=staging), workspace=workspace)
        assert result.staging == staging and final.is_dir()
        assert not workspace.exists()
        assert _empty(tmpfs_root)
        assert [p.name for p in final.parent.iterdir()] == ["g.ms"]
        with pytest.raises(ConflictError, match="already there"):
            convert_group(files, final, settings=_settings(tmpfs_root, staging=staging), workspace=workspace)
        assert not workspace.exists()


def test_no_room_in_tmpfs_falls_back_to_disk(group, tmp_path, tmpfs_root):
    settings = _settings(tmpfs_root, tmpfs_headroom=1e9)  # pretend tmpfs is far too small
    result = convert_group(list(group.files.values()), tmp_path / "f.ms", settings=settings)
    assert result.staging == "disk"


def test_dask_workers_give_the_same_ms(group, converted, tmp_path, tmpfs_root):
    from labpipe.compute import DaskSettings, dask_client

    result, _ = converted
    with dask_client(DaskSettings(n_workers=2, memory_limit="1GiB")) as client:
        again = convert_group(
            list(group.files.values()), tmp_path / "d.ms", settings=_settings(tmpfs_root), client=client
        )
    np.testing.assert_array_equal(_table(again.ms_path).getcol("DATA"), _table(result.ms_path).getcol("DATA"))
    np.testing.assert_array_equal(_table(again.ms_path).getcol("FLAG"), _table(result.ms_path).getcol("FLAG"))


def test_unusable_input_is_named(tmp_path, tmpfs_root):
    stray = tmp_path / "notes_sb01.txt"
    stray.write_text("x")
    with pytest.raises(InvalidInput, match="notes_sb01.txt"):
        convert_group([stray], tmp_path / "x.ms", settings=_settings(tmpfs_root))
    junk = tmp_path / "2025-10-13T13:28:03_sb01.hdf5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(InvalidInput, match="no readable subband"):
        convert_group([junk], tmp_path / "x.ms", settings=_settings(tmpfs_root))
