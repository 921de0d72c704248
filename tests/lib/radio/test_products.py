"""The radio products catalogue (``labpipe.radio.products``): what was written, listed by date and kind."""

from __future__ import annotations

import datetime as dt

import pytest
from labpipe.radio import calregistry, products


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


OLD_PRODUCT = """
product_id : char(32)              # md5 of the path
---
kind : enum('ms', 'caltable', 'image', 'mosaic', 'qa')
subtype = '' : varchar(32)         # kcal, bpcal, gpcal, image.pbcor, residual, psf, pb, metrics, png ...
path : varchar(1023)
group_id = '' : varchar(64)
obs_date : date
start_mjd : float64
end_mjd : float64
created : datetime
size_bytes : int64
detail = null : json
"""


def test_a_product_table_declared_before_catalogues_takes_them_once_opened(any_db, tmp_path):
    """The Product table as labpipe declared it before 'catalogue'/'lightcurve': opened, it takes them, rows kept."""
    from labpipe.db.connect import LabDatabase, datajoint_module

    dj = datajoint_module()

    @any_db.schema(calregistry.LIFECYCLE)
    class Product(dj.Manual):
        definition = OLD_PRODUCT

    image = tmp_path / "old.image.pbcor.fits"
    mjd = 60961.56
    row = dict(product_id=products.product_id(image), kind="image", subtype="pbcor", path=str(image), group_id="g",
               obs_date=dt.date(2025, 10, 13), start_mjd=mjd, end_mjd=mjd, created=dt.datetime(2025, 10, 13),
               size_bytes=3)  # fmt: skip
    Product.insert1(row)
    with pytest.raises(Exception, match="(?i)enum|truncated|catalogue"):  # the old table refuses the new kinds
        Product.insert1(dict(row, product_id="0" * 32, kind="catalogue"))
    catalogue = tmp_path / "g.srl.csv"
    catalogue.write_text("id\n")

    for _ in range(2):  # a later process opens the tables again: nothing left to do, nothing lost
        again = LabDatabase(any_db.target, tmp_path / "blobs", prefix=any_db.prefix)
        products.record_product(again, "catalogue", catalogue, start_mjd=mjd, end_mjd=mjd, group_id="g")
        curve = tmp_path / "source_1.lightcurve.csv"
        curve.write_text("mjd,flux\n")
        products.record_product(again, "lightcurve", curve, start_mjd=mjd, end_mjd=mjd)
    rows = products.products(again)
    assert sorted(r["kind"] for r in rows) == ["catalogue", "image", "lightcurve"]
    assert next(r for r in rows if r["kind"] == "image")["path"] == str(image)
    kind = calregistry.tables(again).Product.heading.attributes["kind"]
    assert kind.original_type.replace(" ", "") == "enum(" + ",".join(f"'{k}'" for k in calregistry.PRODUCT_KINDS) + ")"
    assert not kind.nullable
