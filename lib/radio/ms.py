"""Write one Measurement Set per group with python-casacore, one subband slice at a time.

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
from pathlib import Path

import numpy as np
from labpipe.radio.metadata import GroupMeta
from labpipe.radio.uvh5 import Part

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
