"""The master source catalogue: identities kept across images, promotion after N detections, ambiguity,
reference matches, idempotence. Detections are made by hand (exact positions), images are small simulated FITS."""

from __future__ import annotations

import numpy as np
import pytest
from labpipe.radio import catalogue, simulate
from labpipe.radio.catalogue import CatalogueSettings, Reference
from labpipe.radio.sourcefind import Detection

RA0, DEC0 = 150.0, 55.0
BEAM_ARCSEC = 100.0  # simulate_image's default major axis: match radius 50"


def _image(tmp_path, name: str, mjd: float):
    return simulate.simulate_image(tmp_path / name, [], ra0_deg=RA0, dec0_deg=DEC0, mjd=mjd, npix=64, seed=1)


def _detection(index: int, ra: float, dec: float, flux: float = 0.1, err_arcsec: float = 2.0) -> Detection:
    e = err_arcsec / 3600
    return Detection(index, ra, dec, e, e, flux, 0.001, flux, 0.001, 0.03, 0.02, 0.0, 0.001, 0.001, 1.0,
                     0.001, 0.9, "S")  # fmt: skip


def _catalogue(db, tmp_path, name, mjd, detections, settings, reference=None):
    image = _image(tmp_path, name, mjd)
    row = catalogue.image_record(name, image.prefix, None, 0.001, len(detections))
    catalogue.record_detections(db, row, detections, reference, settings)
    return catalogue.crossmatch(db, name, settings, reference)


def _identities(db, name: str) -> dict[int, int | None]:
    rows = (catalogue.tables(db).Detection & {"image_id": name}).to_dicts()
    return {r["detection"]: r["source_id"] for r in rows}


ARCSEC = 1 / 3600


def test_detections_of_one_source_in_two_images_keep_one_identity(lab_db, tmp_path):
    settings = CatalogueSettings(promote_after=2)
    p1, p2, p3 = (RA0, DEC0), (RA0 + 0.3, DEC0 - 0.2), (RA0 - 0.4, DEC0 + 0.3)
    first = _catalogue(lab_db, tmp_path, "a", 60000.0, [_detection(0, *p1), _detection(1, *p2)], settings)
    assert first.new_candidates == 2 and not first.promoted and not catalogue.master_sources(lab_db)

    second = _catalogue(lab_db, tmp_path, "b", 60001.0, [
        _detection(0, p2[0] + 10 * ARCSEC, p2[1]), _detection(1, p1[0], p1[1] - 8 * ARCSEC), _detection(2, *p3),
    ], settings)  # fmt: skip
    assert sorted(second.promoted) == [1, 2] and second.new_candidates == 1
    ids_a, ids_b = _identities(lab_db, "a"), _identities(lab_db, "b")
    assert ids_a[0] == ids_b[1] and ids_a[1] == ids_b[0]  # the same source, one id, whatever the order
    assert ids_a[0] != ids_a[1] and ids_b[2] is None

    third = _catalogue(lab_db, tmp_path, "c", 60002.0, [_detection(0, *p3), _detection(1, *p1), _detection(2, *p2)],
                       settings)  # fmt: skip
    assert sorted(third.matched) == [1, 2] and third.promoted == [3]
    assert _identities(lab_db, "c") == {0: 3, 1: ids_a[0], 2: ids_a[1]}
    masters = {m["source_id"]: m for m in catalogue.master_sources(lab_db)}
    assert set(masters) == {1, 2, 3}
    one = masters[ids_a[0]]
    assert one["n_detections"] == 3 and one["first_mjd"] == 60000.0 and one["last_mjd"] == 60002.0
    # equal weights: the mean of the three positions (p1, p1 - 8", p1)
    assert one["dec_deg"] == pytest.approx(DEC0 - 8 / 3 * ARCSEC, abs=1e-6)


def test_a_source_seen_fewer_than_n_times_is_not_promoted(lab_db, tmp_path):
    settings = CatalogueSettings(promote_after=3)
    for k in range(2):
        report = _catalogue(lab_db, tmp_path, f"i{k}", 60000.0 + k, [_detection(0, RA0, DEC0)], settings)
        assert not report.promoted
    assert not catalogue.master_sources(lab_db)
    candidates = catalogue.tables(lab_db).Candidate.to_dicts()
    assert len(candidates) == 1 and candidates[0]["n_detections"] == 2
    report = _catalogue(lab_db, tmp_path, "i2", 60002.0, [_detection(0, RA0, DEC0)], settings)
    assert report.promoted == [1] and not catalogue.tables(lab_db).Candidate.to_dicts()
    assert set(_identities(lab_db, "i0").values()) == {1}  # earlier detections get the identity too


def test_a_second_detection_of_a_source_in_one_image_is_ambiguous(lab_db, tmp_path):
    settings = CatalogueSettings(promote_after=1)
    _catalogue(lab_db, tmp_path, "a", 60000.0, [_detection(0, RA0, DEC0)], settings)
    report = _catalogue(lab_db, tmp_path, "b", 60001.0, [
        _detection(0, RA0, DEC0 + 20 * ARCSEC), _detection(1, RA0, DEC0 - 5 * ARCSEC),
    ], settings)  # fmt: skip
    assert report.matched == [1] and report.ambiguous == 1 and not report.promoted
    rows = {r["detection"]: r for r in (catalogue.tables(lab_db).Detection & {"image_id": "b"}).to_dicts()}
    assert rows[1]["source_id"] == 1  # the closer one
    assert rows[0]["source_id"] is None and rows[0]["ambiguous"]
    assert len(catalogue.master_sources(lab_db)) == 1


def test_reference_matches_and_idempotence(lab_db, tmp_path):
    settings = CatalogueSettings(promote_after=1, reference_radius_arcsec=15)
    names, fluxes = np.array(["NVSS J1", "NVSS J2"]), np.array([0.12, 0.5])
    reference = Reference(names, np.array([RA0, RA0 + 1]), np.array([DEC0 + 5 * ARCSEC, DEC0]), fluxes)
    report = _catalogue(lab_db, tmp_path, "a", 60000.0, [_detection(0, RA0, DEC0), _detection(1, RA0 - 0.5, DEC0)],
                        settings, reference)  # fmt: skip
    assert report.promoted == [1, 2]
    masters = {m["source_id"]: m for m in catalogue.master_sources(lab_db)}
    assert masters[1]["ref_name"] == "NVSS J1" and masters[1]["ref_sep_arcsec"] == pytest.approx(5.0, abs=0.01)
    assert masters[2]["ref_name"] == "" and masters[2]["ref_sep_arcsec"] is None
    detection = (catalogue.tables(lab_db).Detection & {"image_id": "a", "detection": 0}).fetch1()
    assert detection["ref_name"] == "NVSS J1" and detection["ref_flux_jy"] == pytest.approx(0.12)
    again = catalogue.crossmatch(lab_db, "a", settings, reference)
    assert again.already_done and len(catalogue.master_sources(lab_db)) == 2
