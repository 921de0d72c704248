"""The calibration run (``labpipe.radio.calrun``): solve, register, apply and image a group; science on images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from labpipe.radio import calregistry, calrun, imaging, products, simulate

RA0, DEC0 = 150.0, 55.0


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


def test_a_rerun_removes_the_staging_a_killed_run_left_beside_its_products(calgroup, lab_db, tmp_path):
    """atomic_path stages as ``.<name>.<random>.part`` beside the product; a SIGKILL leaves it there."""
    import shutil

    small = calgroup.simulate_group(tmp_path / "sim", n_ant=12, n_chan=16, n_time=4, seed=3)
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


def test_an_image_whose_science_step_did_not_finish_is_pending_until_it_does(lab_db, tmp_path):
    """What radio-image resumes: a group imaged (products recorded) but killed before its science step ended."""
    root, group, mjd = tmp_path / "radio", "2023-02-25T06:00:00", 60000.25
    image = simulate.simulate_image(calrun.image_prefix(root, group), [simulate.Source("s", RA0, DEC0, 0.1)],
                                    ra0_deg=RA0, dec0_deg=DEC0, mjd=mjd, npix=96)  # fmt: skip
    products.record_product(lab_db, "image", image.paths["image"], start_mjd=mjd, end_mjd=mjd, group_id=group,
                            subtype="image")  # fmt: skip
    assert calrun.science_pending(lab_db) == [group]
    settings = calrun.RadioCalSettings()
    settings.science.catalogue.promote_after = 1
    done = calrun.image_science(lab_db, root, group, settings)
    assert done["detections"] == 1 and done["measured"] == 1
    assert calrun.science_pending(lab_db) == []
    (listed,) = [p for p in products.products(lab_db, kind="catalogue")]
    assert listed["group_id"] == group and Path(listed["path"]).exists()


def test_a_killed_writers_staging_is_swept_by_the_next_writer(tmp_path):
    """Found by the radio-science fault scenario: SIGKILL inside atomic_path left .source-NNNNNN.png.*.part."""
    final = tmp_path / "lightcurves" / "source-000004.png"
    stale = final.parent / ".source-000004.png._ms4ekgm.part"
    stale.mkdir(parents=True)
    (stale / "source-000004.png").write_bytes(b"\x89PNG half")
    other = final.parent / ".source-000005.png.abc.part"
    other.mkdir()
    assert calrun.sweep_staging(final) == [stale.name]
    assert not stale.exists() and other.exists()  # only this product's staging
