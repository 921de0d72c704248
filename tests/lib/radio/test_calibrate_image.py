"""Calibration and imaging on small simulated groups, against the truth they were built from.

The groups are made with pyuvdata by ``calgroup.py`` (independent of labpipe's predict and solver):
known point sources through an Airy beam, per-antenna delays, bandpasses and drifting gains, noise.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from labpipe.errors import InvalidInput
from labpipe.radio import calibrate, calregistry, calrun, caltable, imaging, products, skymodel
from labpipe.radio.ms import read_layout


def _calgroup():
    spec = importlib.util.spec_from_file_location("calgroup", Path(__file__).with_name("calgroup.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["calgroup"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return _calgroup().simulate_group(tmp_path_factory.mktemp("calgroup"), n_ant=32, n_chan=32, n_time=8)


@pytest.fixture(scope="module")
def solved(sim):
    layout = read_layout(sim.ms, channels_per_unit=16)
    catalog = skymodel.read_catalog(sim.catalog)
    return layout, calibrate.solve_group(layout, catalog, calibrate.CalibrationSettings())


def _relative_error(layout, solution, truth):
    chain = calibrate.CalChain(k=solution.k, bp=solution.bp, g=[solution.g])
    est = np.concatenate(
        [chain.jones(u, layout.spw_freqs[u.spw], layout.times_mjd, 2, layout.n_ant)[0] for u in layout.units], axis=1
    )
    ratio = est / truth
    ratio = ratio * np.conj(ratio[..., :1]) / np.abs(ratio[..., :1])  # remove the reference phase
    return np.abs(ratio - 1)


def test_gains_delays_bandpass_recovered_to_the_noise(sim, solved):
    layout, solution = solved
    err = _relative_error(layout, solution, sim.total_gain_ms())
    # thermal limit per channel gain: sigma / (|S_apparent| sqrt(N_ant - 1) sqrt(N_times))
    apparent = solution.field.apparent.mean(axis=(1, 2)).sum()
    noise = sim.noise_jy / (apparent * math.sqrt(layout.n_ant - 1) * math.sqrt(len(layout.times_mjd)))
    assert np.median(err) < 5 * noise + 0.003, (np.median(err), noise)
    assert err.max() < 0.05
    assert solution.k.values.shape == (1, 2, layout.n_ant) and not solution.k.flags.any()
    assert solution.g.qa()["flagged_fraction"] == 0 and solution.g.median_snr() > 50
    assert solution.bp.not_converged == 0


def test_dead_antenna_is_flagged_and_the_rest_still_solve(tmp_path):
    sim = _calgroup().simulate_group(tmp_path, n_ant=12, n_chan=16, n_time=4, dead_antenna=5, seed=3)
    layout = read_layout(sim.ms, channels_per_unit=16)
    solution = calibrate.solve_group(layout, skymodel.read_catalog(sim.catalog), calibrate.CalibrationSettings())
    assert solution.g.flags[:, :, 5].all() and solution.bp.flags[:, :, 5].all()
    assert not solution.g.flags[:, :, [0, 1, 2, 3, 4, 6]].any()
    err = _relative_error(layout, solution, sim.total_gain_ms())
    assert np.nanmedian(np.delete(err, 5, axis=-1)) < 0.02
    ok, reason = calibrate.passes_qa(solution.g, calibrate.CalibrationSettings(max_flagged_fraction=0.05))
    assert not ok and "flagged fraction" in reason


def test_apply_divides_by_both_antennas_terms_and_flags_what_the_chain_flags(sim, solved, tmp_path):
    import dataclasses
    import shutil

    from casacore import tables

    layout, solution = solved
    ms = tmp_path / "copy.ms"
    shutil.copytree(sim.ms, ms)
    layout = read_layout(ms, channels_per_unit=16)
    g = dataclasses.replace(solution.g, flags=solution.g.flags.copy())
    g.flags[:, 1, 7] = True  # the Y hand of antenna 7 is flagged
    chain = calibrate.CalChain(k=solution.k, bp=solution.bp, g=[g])
    assert calibrate.apply_chain(layout, chain)["flagged_fraction"] > 0
    with tables.table(str(ms), ack=False) as t:
        data, corrected, flag = t.getcol("DATA"), t.getcol("CORRECTED_DATA"), t.getcol("FLAG")
        a1, a2, times = t.getcol("ANTENNA1"), t.getcol("ANTENNA2"), t.getcol("TIME")
    ti = np.searchsorted(layout.times_mjd * 86400.0, times - 1e-3)
    jones = np.concatenate(
        [chain.jones(u, layout.spw_freqs[u.spw], layout.times_mjd, 2, layout.n_ant)[0] for u in layout.units], axis=1
    )  # (times, chans, pols, ants)
    expected = data / (jones[ti, :, :, a1] * np.conj(jones[ti, :, :, a2]))  # (rows, chans, pols)
    y_of_7 = (a1 == 7) | (a2 == 7)
    good = ~flag
    np.testing.assert_allclose(corrected[good], expected[good], rtol=2e-5)
    assert flag[y_of_7][:, :, 1].all() and (corrected[y_of_7][:, :, 1] == 0).all()
    assert not flag[~y_of_7].any() and not flag[y_of_7][:, :, 0].any()


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


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(InvalidInput, match="not a Measurement Set"):
        read_layout(tmp_path)
    bad = tmp_path / "cat.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(InvalidInput, match="lack a position or a flux"):
        skymodel.read_catalog(bad)


@pytest.mark.slow
def test_calibrate_apply_image_recovers_catalog_fluxes_and_positions(sim, lab_db, tmp_path):
    radio = tmp_path / "radio"
    settings = calrun.RadioCalSettings()
    settings.calibration.sky.catalog = sim.catalog
    settings.calibration.channels_per_unit = 16
    settings.imaging = imaging.ImagingSettings(npix=640, cell_arcsec=40)
    settings.qa.min_snr = 20
    science = radio / "ms" / "science" / "2025-10-13" / "2025-10-13T13:28:03.ms"
    science.parent.mkdir(parents=True)
    import shutil

    shutil.copytree(sim.ms, science)
    # no calibration yet: the group is held
    held = calrun.apply_and_image(lab_db, radio, science, settings)
    assert held.held and "BP" in held.reason
    assert [g["group_id"] for g in calregistry.held_groups(lab_db)] == ["2025-10-13T13:28:03"]
    solve = calrun.solve_and_register(lab_db, radio, science, "24h", settings)
    assert solve.registered, solve.tables
    assert {Path(t["path"]).name for t in solve.tables.values()} == {
        "2025-10-13T13:28:03_24h.kcal", "2025-10-13T13:28:03_24h.bpcal", "2025-10-13T13:28:03_24h.gpcal",
    }  # fmt: skip
    assert [g["group_id"] for g in calregistry.releasable(lab_db)] == ["2025-10-13T13:28:03"]
    report = calrun.apply_and_image(lab_db, radio, science, settings)
    assert not report.held and not calregistry.held_groups(lab_db)
    metrics = json.loads(Path(report.qa["metrics"]).read_text())
    assert metrics["n_sources"] >= 5
    assert abs(metrics["flux_ratio_median"] - 1) < 0.07, metrics["sources"]
    assert metrics["offset_beams_median"] < 0.1
    assert all(s["offset_beams"] < 0.25 for s in metrics["sources"])
    for kind in ("image.pbcor", "residual", "psf", "pb"):
        assert Path(report.images[kind]).name == f"2025-10-13T13:28:03.{kind}.fits"
    listed = {p["path"] for p in products.products(lab_db)}
    written = {str(p) for p in (radio / "images").rglob("*") if p.is_file()}
    written |= {t["path"] for t in solve.tables.values()} | {str(science)}
    assert written <= listed, written - listed


def test_a_rerun_removes_the_staging_a_killed_run_left_beside_its_products(lab_db, tmp_path):
    """atomic_path stages as ``.<name>.<random>.part`` beside the product; a SIGKILL leaves it there."""
    import shutil

    small = _calgroup().simulate_group(tmp_path / "sim", n_ant=12, n_chan=16, n_time=4, seed=3)
    radio, group = tmp_path / "radio", "2025-10-13T13:28:03"
    settings = calrun.RadioCalSettings()
    settings.calibration.sky.catalog = small.catalog
    settings.calibration.channels_per_unit = 16
    settings.imaging = imaging.ImagingSettings(npix=128, cell_arcsec=60)
    science = radio / "ms" / "science" / group[:10] / f"{group}.ms"
    shutil.copytree(small.ms, science)
    tables_dir = calrun.table_path(radio, group, "24h", "K").parent
    images_dir, qa_dir = calrun.image_prefix(radio, group).parent, calrun.qa_dir(radio, group)
    killed = [
        tables_dir / f".{group}_24h.kcal.k1ll3d.part",
        images_dir / f".{group}.image.fits.k1ll3d.part",
        qa_dir / f".{group}.metrics.json.k1ll3d.part",
    ]
    for staged in killed:
        (staged / "half").mkdir(parents=True)
    other_group = images_dir / ".2025-10-13T13:33:12.image.fits.x.part"  # another group's: not ours to touch
    other_group.mkdir()
    assert calrun.solve_and_register(lab_db, radio, science, "24h", settings).registered
    report = calrun.apply_and_image(lab_db, radio, science, settings)
    assert not report.held and Path(report.images["image"]).is_file()
    assert [p for p in killed if p.exists()] == [], "a killed run's staging stays beside the products"
    assert other_group.exists()
