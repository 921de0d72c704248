"""`labpipe radio products` as users run it: a real process on a real database."""

import json

from labpipe.radio.products import record_product


def test_products_are_listed_by_date_and_kind_from_the_database(lab_db, labpipe_cli, tmp_path):
    image = tmp_path / "images" / "single" / "2025-10-13" / "2025-10-13T03:00:00.image.pbcor.fits"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"x" * 2880)
    ms = tmp_path / "ms" / "science" / "2025-10-14" / "2025-10-14T03:00:00.ms"
    ms.mkdir(parents=True)
    # 2025-10-13 is MJD 60961; 2025-10-14 is 60962
    record_product(lab_db, "image", image, start_mjd=60961.125, end_mjd=60961.13, group_id="2025-10-13T03:00:00")
    record_product(lab_db, "ms", ms, start_mjd=60962.125, end_mjd=60962.13, group_id="2025-10-14T03:00:00")

    listed = labpipe_cli(tmp_path / "home", "radio", "products", "--date", "2025-10-13", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["kind"], r["path"], r["size_bytes"]) for r in rows] == [("image", str(image), 2880)]
    by_kind = json.loads(labpipe_cli(tmp_path / "home", "radio", "products", "--kind", "ms", "--json").stdout)
    assert [r["path"] for r in by_kind] == [str(ms)]
    assert json.loads(labpipe_cli(tmp_path / "home", "radio", "products", "--tables", "--json").stdout) == []


def test_a_bad_date_is_named(lab_db, labpipe_cli, tmp_path):
    result = labpipe_cli(tmp_path / "home", "radio", "products", "--date", "13/10/2025")
    assert result.returncode != 0
    assert "13/10/2025" in result.stderr and "YYYY-MM-DD" in result.stderr


def test_qa_figures_that_are_not_numbers_are_recorded_as_null(lab_db, labpipe_cli, tmp_path):
    """An image with no measurable source has NaN medians; PostgreSQL's json refuses NaN, so they become null."""
    metrics = tmp_path / "2025-10-13T03:00:00.metrics.json"
    metrics.write_text("{}")
    detail = {"rms_jy": 0.03, "flux_error_median": float("nan"), "peak_jy": float("inf"), "sources": [float("nan")]}
    record_product(lab_db, "qa", metrics, start_mjd=60961.125, end_mjd=60961.13, subtype="metrics", detail=detail)
    rows = json.loads(labpipe_cli(tmp_path / "home", "radio", "products", "--kind", "qa", "--json").stdout)
    assert rows[0]["detail"] == {"rms_jy": 0.03, "flux_error_median": None, "peak_jy": None, "sources": [None]}
