"""Calibration registry and products catalogue in the lab database (schema ``<prefix>_radiocal``).

Registry: every calibration table with its validity window (MJD), QA figures and status. A table
is inserted as ``registering`` (its files already in their final place), checked against the QA
gate, then flipped to ``active`` or ``rejected`` in one update. Lookups only ever return ``active``
tables, and ``pending(t)`` tells an applier that a registration covering ``t`` is in flight, so it
waits instead of applying an older table: applying never races a registration.

"Which K, BP and G apply at time t": the K and BP of the active 24 h solve whose window covers t
and whose solve time is nearest to t; for G, the nearest active G table before t and the nearest
after t whose windows cover t (windows reach backward as well as forward), interpolated between.
A science group with nothing valid is *held* (``HeldGroup``), and released when a table arrives.

The same schema holds the products catalogue (``labpipe.radio.products``).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from types import SimpleNamespace

from labpipe.db import evolve
from labpipe.db.connect import LabDatabase, datajoint_module
from labpipe.errors import ConflictError
from pydantic import BaseModel, Field

LIFECYCLE = "radiocal"
KINDS = ("K", "BP", "G")
PRODUCT_KINDS = ("ms", "caltable", "image", "mosaic", "qa", "catalogue", "lightcurve")


class ValiditySettings(BaseModel):
    """How far a table's validity reaches before and after its solve time (hours)."""

    bandpass_before_h: float = Field(12.0, description="A 24 h K/BP table applies this long before its solve.")
    bandpass_after_h: float = Field(24.0, description="A 24 h K/BP table applies this long after its solve.")
    gain_before_h: float = Field(1.0, description="A G table applies this long before its solve.")
    gain_after_h: float = Field(1.0, description="A G table applies this long after its solve.")


def _build(schema) -> SimpleNamespace:
    dj = datajoint_module()

    @schema
    class CalTable(dj.Manual):
        """A calibration table. Attributes: table_name, kind, cadence, path, window, status, QA figures."""

        definition = """
        table_name : varchar(128)          # e.g. 2025-10-13T13:28:03_24h.bpcal
        ---
        kind : enum('K', 'BP', 'G')
        cadence : enum('24h', '1h')
        path : varchar(1023)
        ms_path : varchar(1023)
        solve_mjd : float64                # mid time of the solve
        valid_start_mjd : float64
        valid_end_mjd : float64
        status : enum('registering', 'active', 'rejected', 'superseded')
        flagged_fraction : float32
        median_snr : float32
        phase_scatter_deg : float32
        reason = '' : varchar(1000)
        registered : datetime
        """

    @schema
    class HeldGroup(dj.Manual):
        """A science group waiting for a valid calibration. Attributes: group_id, status, reason."""

        definition = """
        group_id : varchar(32)
        ---
        ms_path : varchar(1023)
        mid_mjd : float64
        status : enum('held', 'released', 'failed')
        reason : varchar(1000)
        held_since : datetime
        released = null : datetime
        """

    @schema
    class Product(dj.Manual):
        """A file or folder the radio lifecycle wrote. Attributes: path, kind, group, date, times."""

        definition = """
        product_id : char(32)              # md5 of the path
        ---
        kind : enum('ms', 'caltable', 'image', 'mosaic', 'qa', 'catalogue', 'lightcurve')
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

    evolve.widen_enum(Product, "kind", PRODUCT_KINDS)  # declared before 'catalogue' and 'lightcurve' existed
    return SimpleNamespace(schema=schema, CalTable=CalTable, HeldGroup=HeldGroup, Product=Product)


def tables(db: LabDatabase) -> SimpleNamespace:
    """The radiocal tables on ``db`` (declared on first use)."""
    return db.tables(LIFECYCLE, _build)


def now() -> dt.datetime:
    """Local time to the second, as the registry stores times."""
    return dt.datetime.now().replace(microsecond=0)


# ----------------------------------------------------------------------------------------- registry


@dataclass
class Lookup:
    """What applies at one time: table rows (dicts) or None."""

    k: dict | None
    bp: dict | None
    g: list[dict]
    pending: list[str]

    @property
    def complete(self) -> bool:
        return self.bp is not None and bool(self.g)

    def paths(self) -> list[str]:
        return [r["path"] for r in ([self.k] if self.k else []) + ([self.bp] if self.bp else []) + self.g]


def window(kind: str, solve_mjd: float, start_mjd: float, end_mjd: float, settings: ValiditySettings):
    """(valid_start, valid_end) of a table solved over [start, end] at ``solve_mjd``."""
    before, after = (
        (settings.bandpass_before_h, settings.bandpass_after_h)
        if kind in ("K", "BP")
        else (settings.gain_before_h, settings.gain_after_h)
    )
    return min(start_mjd, solve_mjd - before / 24), max(end_mjd, solve_mjd + after / 24)


def begin_registration(db: LabDatabase, row: dict) -> None:
    """Insert a table as ``registering`` (not yet visible to lookups). Idempotent for the same path."""
    t = tables(db)
    existing = (t.CalTable & {"table_name": row["table_name"]}).to_dicts()
    if existing:
        if existing[0]["path"] != row["path"]:
            raise ConflictError(row["table_name"], f"already registered at {existing[0]['path']}", "rename the table")
        if existing[0]["status"] in ("active", "rejected"):
            return
        t.CalTable.update1({**row, "status": "registering"})
        return
    t.CalTable.insert1({**row, "status": "registering", "registered": now()})


def finish_registration(db: LabDatabase, table_name: str, passed: bool, reason: str) -> str:
    """Flip a ``registering`` table to ``active`` or ``rejected`` (one update); returns the status."""
    t = tables(db)
    status = "active" if passed else "rejected"
    row = (t.CalTable & {"table_name": table_name}).fetch1()
    if row["status"] != "registering":
        return row["status"]
    t.CalTable.update1({"table_name": table_name, "status": status, "reason": reason[:1000]})
    return status


def pending(db: LabDatabase, mjd: float) -> list[str]:
    """Names of tables being registered whose window covers ``mjd``."""
    t = tables(db)
    rows = (t.CalTable & "status = 'registering'" & f"valid_start_mjd <= {mjd}" & f"valid_end_mjd >= {mjd}").to_dicts()
    return [r["table_name"] for r in rows]


def lookup(db: LabDatabase, mjd: float) -> Lookup:
    """The active K, BP and G tables that apply at ``mjd`` (see the module doc)."""
    t = tables(db)
    covering = t.CalTable & "status = 'active'" & f"valid_start_mjd <= {mjd}" & f"valid_end_mjd >= {mjd}"
    rows = covering.to_dicts()

    def nearest(kind: str):
        cands = [r for r in rows if r["kind"] == kind]
        return min(cands, key=lambda r: (abs(r["solve_mjd"] - mjd), -r["solve_mjd"])) if cands else None

    bp = nearest("BP")
    # K and BP come from the same solve: prefer the K of the chosen BP's calibrator group
    k_rows = [r for r in rows if r["kind"] == "K" and bp and r["ms_path"] == bp["ms_path"]]
    k = k_rows[0] if k_rows else nearest("K")
    gains = [r for r in rows if r["kind"] == "G"]
    before = [r for r in gains if r["solve_mjd"] <= mjd]
    after = [r for r in gains if r["solve_mjd"] > mjd]
    g = []
    if before:
        g.append(max(before, key=lambda r: r["solve_mjd"]))
    if after:
        g.append(min(after, key=lambda r: r["solve_mjd"]))
    return Lookup(k=k, bp=bp, g=g, pending=pending(db, mjd))


def wait_for_registrations(db: LabDatabase, mjd: float, timeout_s: float = 120.0, poll_s: float = 1.0) -> Lookup:
    """``lookup`` once no registration covering ``mjd`` is in flight (or the timeout passed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = lookup(db, mjd)
        if not found.pending or time.monotonic() > deadline:
            return found
        time.sleep(poll_s)


def hold(db: LabDatabase, group_id: str, ms_path: str, mid_mjd: float, reason: str) -> bool:
    """Record a held science group; True when it was not held already (the caller raises the alert)."""
    t = tables(db)
    key = {"group_id": group_id}
    existing = (t.HeldGroup & key).to_dicts()
    if existing and existing[0]["status"] == "held":
        return False
    row = dict(key, ms_path=ms_path, mid_mjd=mid_mjd, status="held", reason=reason[:1000], held_since=now())
    if existing:
        t.HeldGroup.update1({**row, "released": None})
    else:
        t.HeldGroup.insert1(row)
    return True


def held_groups(db: LabDatabase) -> list[dict]:
    return (tables(db).HeldGroup & "status = 'held'").to_dicts(order_by="mid_mjd")


def releasable(db: LabDatabase) -> list[dict]:
    """Held groups for which a complete calibration is now active."""
    return [g for g in held_groups(db) if lookup(db, g["mid_mjd"]).complete]


def release(db: LabDatabase, group_id: str, status: str = "released") -> None:
    tables(db).HeldGroup.update1({"group_id": group_id, "status": status, "released": now()})
