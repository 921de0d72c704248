"""A month of daily images of one field through the science steps: sources found, one identity each,
light curves within their errors, the variable and the ESE-like dip found, no false candidates.

The images come from the simulator's image plane (``simulate_image``: restored beam, primary beam,
beam-correlated noise of 1 mJy) so that 30 epochs take a minute; PyBDSF, the catalogue, photometry
and variability run exactly as on real images.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from labpipe.radio import catalogue, photometry, science, simulate, variability

RA0, DEC0 = 150.0, 55.0
EPOCHS = 60000.0 + np.arange(30)


def _sky() -> tuple[list[simulate.Source], str, str]:
    rng = np.random.default_rng(11)
    positions = [(x, y) for x in (-0.75, -0.25, 0.25, 0.75) for y in (-0.6, 0.0, 0.6)] + [(-0.5, 0.3), (0.5, -0.3)]
    sources = []
    for k, (x, y) in enumerate(positions):
        ra = RA0 + x / math.cos(math.radians(DEC0 + y))
        if k == len(positions) - 2:
            curve = simulate.variable_lightcurve(EPOCHS, modulation=0.3, seed=5)
            sources.append(simulate.Source("variable", ra, DEC0 + y, 0.1, lightcurve=curve))
        elif k == len(positions) - 1:
            curve = simulate.ese_lightcurve(EPOCHS, centre_mjd=EPOCHS[15], fwhm_days=5.0, depth=0.4)
            sources.append(simulate.Source("ese", ra, DEC0 + y, 0.1, lightcurve=curve))
        else:
            sources.append(simulate.Source(f"steady{k}", ra, DEC0 + y, float(10 ** rng.uniform(-1.7, -0.5))))
    return sources, "variable", "ese"


@pytest.mark.slow
def test_a_month_of_images_finds_the_variable_and_the_ese_and_nothing_else(lab_db, tmp_path):
    sky, variable_name, ese_name = _sky()
    settings = science.RadioScienceSettings()
    images = {}
    for k, mjd in enumerate(EPOCHS):
        image = simulate.simulate_image(tmp_path / f"day{k:02d}", sky, ra0_deg=RA0, dec0_deg=DEC0, mjd=mjd, seed=k)
        images[f"day{k:02d}"] = image
        report = science.process_image(lab_db, f"day{k:02d}", image.prefix, settings)
        assert report.n_detections >= len(sky) - 2  # the variable may fall below 5 sigma on a bad day
    again = science.process_image(lab_db, "day00", images["day00"].prefix, settings)
    assert again.already_done

    masters = catalogue.master_sources(lab_db)
    assert len(masters) == len(sky)  # no spurious source, none split in two
    positions = np.array([(m["ra_deg"], m["dec_deg"]) for m in masters])
    identity = {}
    for s in sky:
        sep = np.hypot((positions[:, 0] - s.ra_deg) * math.cos(math.radians(s.dec_deg)), positions[:, 1] - s.dec_deg)
        assert sep.min() * 3600 < 3.0, s.name  # the weighted mean position, well inside a 100" beam
        identity[s.name] = masters[int(np.argmin(sep))]["source_id"]
    assert len(set(identity.values())) == len(sky)
    detections = catalogue.tables(lab_db).Detection.to_dicts()
    per_image = {}
    for d in detections:
        if d["source_id"] is not None:
            per_image.setdefault((d["image_id"], d["source_id"]), []).append(d)
    assert all(len(v) == 1 for v in per_image.values())  # one detection per source per image

    pulls = []
    for s in sky:
        curve = photometry.light_curve(lab_db, identity[s.name])
        assert len(curve.mjd) == len(EPOCHS)  # the first epochs were back-filled after promotion
        truth = np.array([images[i].fluxes[s.name] for i in curve.image_id])
        pulls.extend((curve.flux_jy - truth) / curve.flux_err_jy)
    pulls = np.array(pulls)
    assert np.abs(pulls).max() < 4.5 and 0.7 < pulls.std() < 1.4, (pulls.max(), pulls.std())

    flags = variability.flagged(lab_db)
    assert identity[variable_name] in flags["variable"]
    assert flags["ese_candidate"] == [identity[ese_name]]
    steady = {identity[s.name] for s in sky if s.name.startswith("steady")}
    assert not steady & set(flags["variable"])
    ese = (catalogue.tables(lab_db).Variability & {"source_id": identity[ese_name]}).fetch1()
    assert ese["ese_start_mjd"] <= EPOCHS[15] <= ese["ese_end_mjd"] and ese["ese_depth"] == pytest.approx(0.4, abs=0.08)


def test_a_crash_between_promotion_and_back_fill_is_finished_by_the_rerun(lab_db, tmp_path, monkeypatch):
    """The third image promotes a source, then the process dies before measuring its past: the rerun must."""
    sky = [simulate.Source("s", RA0, DEC0, 0.1)]
    settings = science.RadioScienceSettings()
    images = [
        simulate.simulate_image(tmp_path / f"d{k}", sky, ra0_deg=RA0, dec0_deg=DEC0, mjd=EPOCHS[k], npix=96, seed=k)
        for k in range(3)
    ]
    prefixes = [image.prefix for image in images]
    for k in range(2):
        science.process_image(lab_db, f"d{k}", prefixes[k], settings)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(photometry, "backfill", crash)
    with pytest.raises(KeyboardInterrupt):
        science.process_image(lab_db, "d2", prefixes[2], settings)
    monkeypatch.undo()
    report = science.process_image(lab_db, "d2", prefixes[2], settings)
    (source,) = catalogue.master_sources(lab_db)
    assert report.promoted == [source["source_id"]]
    assert len(photometry.light_curve(lab_db, source["source_id"]).mjd) == 3
