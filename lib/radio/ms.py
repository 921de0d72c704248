"""Measurement Sets with python-casacore: reading them (layout and per-unit visibilities, for flagging,
calibration and imaging) and writing them (a group's new MS one subband slice at a time; added columns).

Writing one Measurement Set per group, one subband slice at a time:

The main table is created up front with every row (time-major, the files' row
order) and fixed-shape tiled data columns whose tiles are exactly one subband
wide (48 channels), so each subband's phased visibilities fill whole tiles
with one ``putcolslice``. Per-row columns and the subtables follow pyuvdata's
``write_ms`` (its ``ms_utils`` writers fill the subtables from a metadata-only
``UVData`` of the phased group), so pyuvdata reads the result back as it reads
its own files: CASA conjugation (``pyuvdata_flip_conj``), ANTENNA1/2 holding
antenna numbers (the ANTENNA table has a row per number, unused ones empty),
one field, one spectral window of ascending frequency.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from labpipe.errors import InvalidInput
from labpipe.radio.metadata import GroupMeta
from labpipe.radio.uvh5 import Part

LINEAR = {9: ("X", "X"), 10: ("X", "Y"), 11: ("Y", "X"), 12: ("Y", "Y")}
CIRCULAR = {5: ("R", "R"), 6: ("R", "L"), 7: ("L", "R"), 8: ("L", "L")}
SECONDS_PER_DAY = 86400.0
DATA_COLUMNS = {"DATA": (0j, "complex"), "WEIGHT_SPECTRUM": (0.0, "float"), "FLAG": (False, "boolean")}


class MsWriter:
    """A new Measurement Set at ``path`` for ``meta`` (phased, whole band)."""

    def __init__(
        self,
        path: Path,
        meta: GroupMeta,
        *,
        n_subbands: int,
        channels_per_tile: int,
        tile_rows: int = 512,
        chunk_rows: int = 4096,
        weight_spectrum: str = "auto",
    ) -> None:
        from casacore import tables

        self.path, self.meta = Path(path), meta
        self.n_rows, self.n_chan, self.n_pol = meta.n_rows, meta.n_chan, meta.n_pol
        self.channels_per_tile, self.tile_rows = channels_per_tile, tile_rows
        desc = tables.required_ms_desc("MAIN")
        spec = {}
        for name in ("DATA", "FLAG"):
            desc.pop(name, None)
            column, group = self._column(name)
            desc.update(tables.maketabdesc(column))
            spec.update(group)
        self.table = tables.default_ms(str(self.path), desc, tables.makedminfo(desc, spec))
        self.table.addrows(self.n_rows)
        self.n_subbands = n_subbands
        self.chunk_rows = chunk_rows
        self._data = np.empty((chunk_rows, self.n_chan, self.n_pol), np.complex64)
        self._flags = np.empty((chunk_rows, self.n_chan, self.n_pol), bool)
        self._weights = np.empty((chunk_rows, self.n_chan, self.n_pol), np.float32)
        self._uniform_slabs: list[tuple[int, int, np.ndarray]] = []  # rows written without WEIGHT_SPECTRUM
        self.has_weight_spectrum = False
        if weight_spectrum == "always":
            self._add_weight_spectrum()

    def _column(self, name: str):
        """Column description and data manager spec: fixed shape, tiles one subband wide."""
        from casacore import tables

        value, kind = DATA_COLUMNS[name]
        column = tables.makearrcoldesc(
            name,
            value,
            valuetype=kind,
            shape=[self.n_chan, self.n_pol],
            datamanagertype="TiledColumnStMan",
            datamanagergroup=f"Tiled{name}",
        )
        rows = self.tile_rows * (16 if kind == "boolean" else 1)  # flags are bits: bigger tiles, same bytes
        tile = np.array([self.n_pol, self.channels_per_tile, rows], np.int32)
        return column, {f"Tiled{name}": {"DEFAULTTILESHAPE": tile}}

    def _add_weight_spectrum(self) -> None:
        """Add WEIGHT_SPECTRUM and fill the rows already written (their nsamples were uniform per subband)."""
        from casacore import tables

        column, group = self._column("WEIGHT_SPECTRUM")
        desc = tables.maketabdesc(column)
        self.table.addcols(desc, tables.makedminfo(desc, group))
        self.has_weight_spectrum = True
        for start, stop, per_channel in self._uniform_slabs:
            for lo in range(start, stop, self.chunk_rows):
                n = min(self.chunk_rows, stop - lo)
                self._weights[:n] = per_channel
                self.table.putcol("WEIGHT_SPECTRUM", self._weights[:n], startrow=lo, nrow=n)
        self._uniform_slabs.clear()

    def write_rows(self) -> None:
        """Per-row columns (times, antennas, UVW, ...), as pyuvdata's ``write_ms`` computes them."""
        from astropy.time import Time

        meta, t = self.meta, self.table
        unique, index = np.unique(meta.time_array, return_inverse=True)
        seconds = (Time(unique, format="jd", scale="utc").mjd * 86400.0)[index]
        t.putcol("TIME", seconds)
        t.putcol("TIME_CENTROID", seconds)
        t.putcol("ANTENNA1", meta.ant_1_array)
        t.putcol("ANTENNA2", meta.ant_2_array)
        t.putcol("INTERVAL", meta.integration_time)
        t.putcol("EXPOSURE", meta.integration_time)
        t.putcol("DATA_DESC_ID", np.zeros(self.n_rows, np.int32))
        t.putcol("SCAN_NUMBER", np.ones(self.n_rows, np.int32))  # one phase centre: one scan
        t.putcol("UVW", -meta.uvw_array)  # CASA convention, as write_ms(flip_conj=True)
        t.putcol("FIELD_ID", np.zeros(self.n_rows, np.int32))

    def write_rows_from_parts(self, row_start: int, row_stop: int, parts: dict[int, Part], channels) -> None:
        """Write rows ``[row_start, row_stop)`` whole (every channel), assembled from the subbands' part files.

        Whole rows fill whole tiles in file order: nothing is written twice. A subband without a
        part (missing or bad) gets zeros, flags and weight 0. ``channels(subband)`` is its slice.
        """
        views = {sb: (p.data(), p.flags(), p.weights(), p.row_start) for sb, p in parts.items()}
        uniform = all(p.weight is not None for p in parts.values())
        if not uniform and not self.has_weight_spectrum:
            self._add_weight_spectrum()  # nsamples vary: WEIGHT alone no longer says it all
        for lo in range(row_start, row_stop, self.chunk_rows):
            hi = min(lo + self.chunk_rows, row_stop)
            n = hi - lo
            data, flags, weights = self._data[:n], self._flags[:n], self._weights[:n]
            for sb in range(self.n_subbands):
                chans = channels(sb)
                if sb not in views:
                    data[:, chans], flags[:, chans], weights[:, chans] = 0, True, 0
                    continue
                part_data, part_flags, part_weights, first = views[sb]
                rows = slice(lo - first, hi - first)
                data[:, chans] = part_data[rows]
                flags[:, chans] = False if part_flags is None else part_flags[rows]
                weights[:, chans] = parts[sb].weight if part_weights is None else part_weights[rows]
            self.table.putcol("DATA", data, startrow=lo, nrow=n)
            self.table.putcol("FLAG", flags, startrow=lo, nrow=n)
            if self.has_weight_spectrum:
                self.table.putcol("WEIGHT_SPECTRUM", weights, startrow=lo, nrow=n)
            # write_ms puts the median nsample over the channels in WEIGHT; with uniform parts every row
            # holds the same values, so one row's median is every row's.
            median = np.median(weights[:1], axis=1) if uniform else np.median(weights, axis=1)
            row_weights = np.broadcast_to(median, (n, self.n_pol)) if uniform else median
            self.table.putcol("WEIGHT", np.ascontiguousarray(row_weights), startrow=lo, nrow=n)
            sigma = np.where(row_weights > 0, 1.0 / np.sqrt(np.where(row_weights > 0, row_weights, 1)), 0.0)
            self.table.putcol("SIGMA", np.ascontiguousarray(sigma, np.float32), startrow=lo, nrow=n)
        if not self.has_weight_spectrum:
            self._uniform_slabs.append((row_start, row_stop, self._weights[0].copy()))

    def flag_subband(self, chans: slice) -> None:
        """A missing or unusable subband: zero data and weight, flagged."""
        shape = (self.n_rows, chans.stop - chans.start, self.n_pol)
        blc, trc = [chans.start, 0], [chans.stop - 1, self.n_pol - 1]
        columns = [("DATA", np.complex64(0)), ("FLAG", True)]
        if self.has_weight_spectrum:
            columns.append(("WEIGHT_SPECTRUM", np.float32(0)))
        for name, value in columns:
            block = np.broadcast_to(np.asarray(value), shape)
            for lo in range(0, self.n_rows, 8192):  # bounded memory: at most ~6 MB per block
                hi = min(lo + 8192, self.n_rows)
                self.table.putcolslice(name, np.ascontiguousarray(block[lo:hi]), blc, trc, startrow=lo, nrow=hi - lo)

    def finish(self, history: str) -> None:
        """WEIGHT/SIGMA, keywords and subtables; closes the table."""
        meta, t = self.meta, self.table
        t.putcolkeyword("DATA", "QuantumUnits", meta.vis_units)
        if meta.extra_keywords:
            t.putkeyword("pyuvdata_extra", dict(meta.extra_keywords))
        t.putkeyword("pyuvdata_flip_conj", True)
        t.close()
        self._subtables(history)

    def _subtables(self, history: str) -> None:
        """ANTENNA, FIELD, SPECTRAL_WINDOW, ... with pyuvdata's writers (as its write_ms fills them)."""
        from astropy.time import Time
        from pyuvdata.utils.io import ms as ms_utils
        from pyuvdata.utils.pol import determine_pol_order, get_feeds_from_pols

        meta, path, tel = self.meta, str(self.path), self.meta.telescope
        location = tel._location
        median_time = Time(np.median(meta.time_array), format="jd", scale="utc").mjd * 86400.0
        ms_utils.write_ms_antenna(
            path,
            antenna_numbers=tel.antenna_numbers,
            antenna_names=tel.antenna_names,
            antenna_positions=tel.antenna_positions,
            antenna_diameters=tel.antenna_diameters,
            antenna_mount=tel.mount_type,
            telescope_location=location.xyz(),
            telescope_frame=location.frame,
            telescope_ellipsoid=location.ellipsoid,
        )
        ms_utils.write_ms_data_description(path, nspws=1)
        feed_array, feed_angle = tel.feed_array, tel.feed_angle
        if feed_array is None:  # as write_ms does for files without feed information (DSA-110's)
            feeds = sorted(get_feeds_from_pols(meta.polarization_array))
            feed_array = np.tile(feeds, (len(tel.antenna_numbers), 1))
            feed_angle = np.zeros(feed_array.shape)
        ms_utils.write_ms_feed(
            path,
            nfeeds=feed_array.shape[1],
            nspws=1,
            feed_array=feed_array,
            feed_angle=feed_angle,
            antenna_numbers=tel.antenna_numbers,
            time_val=median_time,
        )
        ms_utils.write_ms_field(path, phase_center_catalog=meta.phase_center_catalog, time_val=median_time)
        ms_utils.write_ms_history(path, history=meta.history + history)
        observer = next((v for k, v in meta.extra_keywords.items() if k.upper() == "OBSERVER"), tel.name)
        ms_utils.write_ms_observation(
            path, telescope_name=tel.name, telescope_location=location.xyz(), observer=observer
        )
        ms_utils.write_ms_pointing(
            path, max_ant=int(np.max(tel.antenna_numbers)), integration_time=meta.integration_time,
            time_array=meta.time_array,
        )  # fmt: skip
        pol_order = determine_pol_order(meta.polarization_array, order="CASA")
        ms_utils.write_ms_polarization(path, pol_order=pol_order, polarization_array=meta.polarization_array)
        ms_utils.write_ms_source(path, time_default=median_time, phase_center_catalog=meta.phase_center_catalog)
        ms_utils.write_ms_spectral_window(
            path,
            freq_array=meta.freq_array,
            channel_width=meta.channel_width,
            spw_array=np.array([0]),
            id_array=np.zeros(meta.n_chan, int),
        )

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # already closed or broken: nothing more to release
            self.table.close()


# ------------------------------------------------------------------------------------------ reading


@dataclass
class Unit:
    """One work unit: a channel slice of one data description (spectral window)."""

    ddid: int
    spw: int
    c0: int
    c1: int
    freqs: np.ndarray

    @property
    def name(self) -> str:
        return f"spw{self.spw:02d}-ch{self.c0:04d}"


@dataclass
class MsLayout:
    """What calibration and imaging need to know about one Measurement Set."""

    path: Path
    n_ant: int
    ant_names: list[str]
    ant_positions: np.ndarray  # ITRF (N, 3) m
    corr_types: list[int]
    parallel: list[int]  # correlation indices of the parallel hands (XX, YY or RR, LL)
    feeds: list[str]  # feed letter per parallel hand, e.g. ['X', 'Y']
    spw_freqs: dict[int, np.ndarray]
    ddid_spw: dict[int, int]
    times_mjd: np.ndarray  # unique integration centres (MJD)
    integration_s: float
    ra0_deg: float
    dec0_deg: float
    n_fields: int
    telescope: str
    units: list[Unit] = field(default_factory=list)
    present: np.ndarray | None = None  # bool per antenna row: appears in the data

    @property
    def longitude_deg(self) -> float:
        return float(self.location().lon.deg)

    def location(self):
        from astropy.coordinates import EarthLocation

        real = np.linalg.norm(self.ant_positions, axis=1) > 1e6  # MS writers pad unused numbers with zeros
        x, y, z = self.ant_positions[real].mean(axis=0)
        return EarthLocation.from_geocentric(x, y, z, unit="m")

    @property
    def all_freqs(self) -> np.ndarray:
        return np.concatenate([self.spw_freqs[s] for s in sorted(self.spw_freqs)])

    @property
    def mid_mjd(self) -> float:
        return float(self.times_mjd.mean())


def casacore_tables():
    from casacore import tables

    return tables


def read_layout(ms: Path, channels_per_unit: int = 48) -> MsLayout:
    """Read the MS's sub-tables; ``InvalidInput`` names the MS and what it lacks."""
    tables = casacore_tables()
    ms = Path(ms)
    if not (ms / "table.dat").exists():
        raise InvalidInput(ms, "not a Measurement Set (no table.dat)", "pass the .ms folder of a converted group")
    try:
        with tables.table(str(ms / "ANTENNA"), ack=False) as t:
            names = list(t.getcol("NAME"))
            positions = t.getcol("POSITION")
        with tables.table(str(ms / "POLARIZATION"), ack=False) as t:
            corr = [int(c) for c in t.getcol("CORR_TYPE")[0]]
        with tables.table(str(ms / "SPECTRAL_WINDOW"), ack=False) as t:
            spw_freqs = {i: np.asarray(t.getcell("CHAN_FREQ", i), dtype=float) for i in range(t.nrows())}
        with tables.table(str(ms / "DATA_DESCRIPTION"), ack=False) as t:
            ddid_spw = {i: int(s) for i, s in enumerate(t.getcol("SPECTRAL_WINDOW_ID"))}
        with tables.table(str(ms / "FIELD"), ack=False) as t:
            phase_dir = t.getcol("PHASE_DIR")
            n_fields = t.nrows()
        with tables.table(str(ms / "OBSERVATION"), ack=False) as t:
            telescope = str(t.getcell("TELESCOPE_NAME", 0)) if t.nrows() else ""
        with tables.table(str(ms), ack=False) as t:
            times = np.unique(t.getcol("TIME"))
            present = np.zeros(len(names), dtype=bool)
            present[np.unique(np.concatenate([t.getcol("ANTENNA1"), t.getcol("ANTENNA2")]))] = True
            interval = float(np.median(t.getcol("INTERVAL", 0, min(t.nrows(), 1000))))
    except RuntimeError as exc:
        raise InvalidInput(ms, f"unreadable Measurement Set: {exc}", "re-run the conversion of this group") from exc
    parallel = [i for i, c in enumerate(corr) if c in (9, 12, 5, 8)]
    if not parallel:
        raise InvalidInput(ms, f"no parallel-hand correlations in {corr}", "expected XX/YY or RR/LL")
    feeds = [(LINEAR | CIRCULAR)[corr[i]][0] for i in parallel]
    ra0, dec0 = np.degrees(phase_dir[0, 0])
    layout = MsLayout(
        path=ms,
        n_ant=len(names),
        ant_names=names,
        ant_positions=np.asarray(positions, dtype=float),
        corr_types=corr,
        parallel=parallel,
        feeds=feeds,
        spw_freqs=spw_freqs,
        ddid_spw=ddid_spw,
        times_mjd=times / SECONDS_PER_DAY,
        integration_s=interval,
        ra0_deg=float(ra0 % 360),
        dec0_deg=float(dec0),
        n_fields=n_fields,
        telescope=telescope,
        present=present,
    )
    for ddid, spw in sorted(ddid_spw.items()):
        freqs = spw_freqs[spw]
        for c0 in range(0, len(freqs), channels_per_unit):
            c1 = min(c0 + channels_per_unit, len(freqs))
            layout.units.append(Unit(ddid, spw, c0, c1, freqs[c0:c1]))
    return layout


@dataclass
class UnitData:
    """Rows of one unit: visibilities of the parallel hands and their metadata."""

    vis: np.ndarray  # (rows, chans, pols) complex64
    flag: np.ndarray  # (rows, chans, pols) bool
    weight: np.ndarray  # (rows, pols)
    ant1: np.ndarray
    ant2: np.ndarray
    time_index: np.ndarray
    uvw: np.ndarray
    rows: np.ndarray  # row numbers in the MS


def rows_of(t, ddid: int, n_ddid: int) -> np.ndarray:
    if n_ddid == 1:
        return np.arange(t.nrows())
    return np.nonzero(t.getcol("DATA_DESC_ID") == ddid)[0]


def contiguous(rows: np.ndarray) -> bool:
    return len(rows) > 0 and rows[-1] - rows[0] + 1 == len(rows)


def read_unit(layout: MsLayout, unit: Unit, column: str = "DATA", *, parallel_only: bool = True) -> UnitData:
    """Read one unit's rows from the MS (flags, weights, antennas, times, uvw)."""
    tables = casacore_tables()
    with tables.table(str(layout.path), ack=False) as t:
        if column not in t.colnames():
            raise InvalidInput(layout.path, f"has no {column} column", "run the step that writes it first")
        rows = rows_of(t, unit.ddid, len(layout.ddid_spw))
        ncorr = len(layout.corr_types)
        blc, trc = [unit.c0, 0], [unit.c1 - 1, ncorr - 1]
        if contiguous(rows):
            start, n = int(rows[0]), len(rows)
            vis = t.getcolslice(column, blc, trc, startrow=start, nrow=n)
            flag = t.getcolslice("FLAG", blc, trc, startrow=start, nrow=n)
            flag_row = t.getcol("FLAG_ROW", start, n) if "FLAG_ROW" in t.colnames() else np.zeros(n, bool)
            weight = t.getcol("WEIGHT", start, n)
            ant1, ant2 = t.getcol("ANTENNA1", start, n), t.getcol("ANTENNA2", start, n)
            times, uvw = t.getcol("TIME", start, n), t.getcol("UVW", start, n)
        else:
            sub = t.selectrows(rows.tolist())
            vis, flag = sub.getcolslice(column, blc, trc), sub.getcolslice("FLAG", blc, trc)
            flag_row = sub.getcol("FLAG_ROW") if "FLAG_ROW" in t.colnames() else np.zeros(len(rows), bool)
            weight = sub.getcol("WEIGHT")
            ant1, ant2, times, uvw = (sub.getcol(c) for c in ("ANTENNA1", "ANTENNA2", "TIME", "UVW"))
    pols = layout.parallel if parallel_only else list(range(ncorr))
    if pols != list(range(ncorr)):
        vis, flag = vis[:, :, pols], flag[:, :, pols]
    if flag_row.any():
        flag = flag | flag_row[:, None, None]
    time_index = np.clip(
        np.searchsorted(layout.times_mjd * SECONDS_PER_DAY, times - 1e-3), 0, len(layout.times_mjd) - 1
    )
    return UnitData(
        vis=np.ascontiguousarray(vis),
        flag=np.ascontiguousarray(flag),
        weight=np.ascontiguousarray(weight[:, pols], dtype=float),
        ant1=ant1,
        ant2=ant2,
        time_index=time_index,
        uvw=uvw,
        rows=rows,
    )


# ------------------------------------------------------------------------------- writing columns


def channel_span(layout: MsLayout, unit: Unit) -> tuple[int, int]:
    start = 0
    for u in layout.units:
        if u is unit:
            return start, start + len(u.freqs)
        start += len(u.freqs)
    raise KeyError(unit.name)


def add_column(t, name: str, like: str = "DATA", *, define_cells: bool = True) -> None:
    """Add a data column shaped like ``like``; ``define_cells=False`` when the caller writes whole cells."""
    from casacore.tables import makecoldesc

    if name in t.colnames():
        return
    desc = makecoldesc(name, t.getcoldesc(like))
    dminfo = t.getdminfo(like)
    dminfo["NAME"] = f"{name}_dm"
    t.addcols(desc, dminfo)
    if not define_cells:
        return
    # a tiled-shape column has no cells until each row gets an array: define them (zeros), in chunks
    ddids = t.getcol("DATA_DESC_ID")
    chunk = 20000
    for start in range(0, t.nrows(), chunk):
        n = min(chunk, t.nrows() - start)
        shape = t.getcell(like, start).shape
        if np.all(ddids[start : start + n] == ddids[start]):
            t.putcol(name, np.zeros((n, *shape), dtype=np.complex64), start, n)
        else:
            for row in range(start, start + n):
                t.putcell(name, row, np.zeros(t.getcell(like, row).shape, dtype=np.complex64))


def units_by_ddid(layout: MsLayout) -> dict[int, list[Unit]]:
    groups: dict[int, list[Unit]] = {}
    for unit in layout.units:
        groups.setdefault(unit.ddid, []).append(unit)
    return groups


def put_rows(t, column: str, rows: np.ndarray, values: np.ndarray, chunk: int = 20000) -> None:
    """Write whole cells (defines them in a tiled-shape column), contiguous rows in chunks."""
    if contiguous(rows):
        for start in range(0, len(rows), chunk):
            part = values[start : start + chunk]
            t.putcol(column, part, int(rows[0]) + start, len(part))
    else:
        for i, r in enumerate(rows):
            t.putcell(column, int(r), values[i])


def put_slice(t, column: str, rows: np.ndarray, unit: Unit, values: np.ndarray) -> None:
    blc, trc = [unit.c0, 0], [unit.c1 - 1, values.shape[2] - 1]
    if contiguous(rows):
        t.putcolslice(column, values, blc, trc, startrow=int(rows[0]), nrow=len(rows))
    else:
        for i, r in enumerate(rows):
            t.putcellslice(column, int(r), values[i], blc, trc)
