"""Products catalogue: every MS, calibration table, image, mosaic and QA record with its path and times.

Rows live in ``<prefix>_radiocal.Product`` (declared with the registry), so ``labpipe radio products
--date D`` and notebooks find products without walking directories. Recording is idempotent on the path.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from pathlib import Path

from labpipe.db.connect import LabDatabase
from labpipe.radio.calregistry import now, tables


def product_id(path: Path | str) -> str:
    return hashlib.md5(str(Path(path)).encode()).hexdigest()


def json_safe(value):
    """``value`` with every NaN or infinity replaced by None: JSON (and PostgreSQL's json type) has neither.

    QA of an image with no measurable source has no median flux error; the record says null, not NaN.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "dtype") and getattr(value, "shape", None) == ():  # numpy scalars
        return json_safe(value.item())
    return value


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size if path.exists() else 0


def record_product(
    db: LabDatabase,
    kind: str,
    path: Path,
    *,
    start_mjd: float,
    end_mjd: float,
    group_id: str = "",
    subtype: str = "",
    detail: dict | None = None,
) -> str:
    """Insert or refresh one product row (idempotent on the path); returns its id."""
    from astropy.time import Time

    path = Path(path)
    row = dict(
        product_id=product_id(path),
        kind=kind,
        subtype=subtype,
        path=str(path),
        group_id=group_id,
        obs_date=Time(start_mjd, format="mjd").to_datetime().date(),
        start_mjd=float(start_mjd),
        end_mjd=float(end_mjd),
        created=now(),
        size_bytes=_size(path),
        detail=json_safe(detail) if detail is not None else None,
    )
    t = tables(db)
    if t.Product & {"product_id": row["product_id"]}:
        t.Product.update1(row)
    else:
        t.Product.insert1(row)
    return row["product_id"]


def products(db: LabDatabase, *, date: dt.date | None = None, kind: str | None = None, group_id: str | None = None):
    """Product rows, oldest first, filtered by observation date, kind and group."""
    query = tables(db).Product
    if date is not None:
        query = query & {"obs_date": date}
    if kind:
        query = query & {"kind": kind}
    if group_id:
        query = query & {"group_id": group_id}
    return query.to_dicts(order_by=["start_mjd", "kind", "path"])
