"""The radio products catalogue (``labpipe.radio.products``): what was written, listed by date and kind."""

from __future__ import annotations

import datetime as dt

from labpipe.radio import products


def test_products_catalogue_lists_by_date_and_kind(lab_db, tmp_path):
    image = tmp_path / "2025-10-13T13:28:03.image.pbcor.fits"
    image.write_bytes(b"x" * 10)
    mjd = 60961.56  # 2025-10-13
    products.record_product(lab_db, "image", image, start_mjd=mjd, end_mjd=mjd + 0.003, group_id="g", subtype="pbcor")
    products.record_product(lab_db, "image", image, start_mjd=mjd, end_mjd=mjd + 0.003, group_id="g", subtype="pbcor")
    rows = products.products(lab_db, date=dt.date(2025, 10, 13))
    assert len(rows) == 1 and rows[0]["size_bytes"] == 10 and rows[0]["path"] == str(image)
    assert products.products(lab_db, date=dt.date(2025, 10, 14)) == []
    assert products.products(lab_db, kind="mosaic") == []
