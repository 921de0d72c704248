"""Calibrate a group's Measurement Set: sky model -> K, BP, G by StEFCal, fanned out with Dask; apply.

One *unit* of work is one spectral window, or a slice of ``channels_per_unit`` channels of it (a
subband). Per unit a worker reads its visibilities, predicts the sky model (kept in a scratch
``.npy`` for the next pass and written to ``MODEL_DATA`` at the end) and solves per-channel gains
over the whole group; the parent fits one delay per antenna across the full band (K) and keeps the
remainder as the bandpass (BP). A second pass per unit reduces the data, with K and BP applied, to
normal sums per solution interval; their tree-sum over units gives G by the same solver.

Conventions follow CASA (and so the tables CASA writes): V_pq = J_p conj(J_q) M_pq for
ANTENNA1 = p, ANTENNA2 = q, J = K BP G, K = exp(2 pi i tau (nu - nu_ref)) with nu_ref the centre
channel of each spectral window; ``CORRECTED_DATA = DATA / (J_p conj(J_q))``.
"""

from __future__ import annotations

import contextlib
import operator
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from labpipe.errors import InvalidInput
from labpipe.radio import skymodel
from labpipe.radio.ms import (
    CIRCULAR,
    LINEAR,
    SECONDS_PER_DAY,
    MsLayout,
    Unit,
    UnitData,
    add_column,
    casacore_tables,
    channel_span,
    put_rows,
    read_unit,
    rows_of,
    units_by_ddid,
)
from labpipe.radio.solver import GainSolution, NormalSums, accumulate, fit_delays, stefcal
from pydantic import BaseModel, Field


class CalibrationSettings(BaseModel):
    """How a group is calibrated and when a solution is good enough to register."""

    refant: int = Field(0, description="Reference antenna index (phase zero); the first good one if it is dead.")
    solint_s: float | None = Field(None, description="G solution interval (s); empty: one per integration.")
    channels_per_unit: int = Field(48, description="Channels per Dask work unit (one DSA-110 subband).")
    max_iter: int = Field(100, description="StEFCal iterations per cell at most.")
    tol: float = Field(1e-6, description="StEFCal stops when the relative gain change falls below this.")
    min_baselines: int = Field(4, description="An antenna needs this many unflagged baselines to be solved.")
    min_snr: float = Field(5.0, description="QA: median solution SNR must reach this to register.")
    max_flagged_fraction: float = Field(0.3, description="QA: at most this fraction of solutions flagged.")
    max_phase_scatter_deg: float = Field(30.0, description="QA: largest allowed median phase scatter of G over time.")
    sky: skymodel.SkyModelSettings = Field(default_factory=skymodel.SkyModelSettings)


# ----------------------------------------------------------------------------------------- solutions


@dataclass
class Solutions:
    """One calibration table's content (MS convention gains), independent of the file format.

    ``values``: K -> (1, pols, ants) delays in seconds; BP -> (chans, pols, ants) complex over
    ``freqs``; G -> (times, pols, ants) complex at ``times_mjd``.
    """

    kind: str
    values: np.ndarray
    flags: np.ndarray
    snr: np.ndarray
    times_mjd: np.ndarray
    freqs: np.ndarray
    spw_freqs: dict[int, np.ndarray]
    ant_names: list[str]
    feeds: list[str]
    refant: int
    interval_s: float
    ms_path: str = ""
    iterations: int = 0
    not_converged: int = 0
    present: np.ndarray | None = None  # antennas in the data; absent ones do not count against QA

    def _mask(self) -> np.ndarray:
        return np.ones(self.flags.shape[-1], bool) if self.present is None else self.present

    def flagged_fraction(self) -> float:
        flags = self.flags[..., self._mask()]
        return float(flags.mean()) if flags.size else 1.0

    def median_snr(self) -> float:
        good = self.snr[..., self._mask()][~self.flags[..., self._mask()]]
        return float(np.median(good)) if good.size else 0.0

    def phase_scatter_deg(self) -> float:
        """Median over antennas of the phase scatter in time (G) or frequency (BP); 0 for K."""
        if self.kind == "K" or self.values.shape[0] < 2:
            return 0.0
        v = np.where(self.flags, np.nan, self.values)[..., self._mask()]
        rel = v * np.exp(-1j * np.angle(np.nanmean(v, axis=0)))[None]
        return float(np.nanmedian(np.degrees(np.nanstd(np.angle(rel), axis=0))))

    def qa(self) -> dict:
        return {
            "flagged_fraction": round(self.flagged_fraction(), 4),
            "median_snr": round(self.median_snr(), 2),
            "phase_scatter_deg": round(self.phase_scatter_deg(), 3),
            "not_converged": int(self.not_converged),
        }


def passes_qa(solutions: Solutions, settings: CalibrationSettings) -> tuple[bool, str]:
    """Registration gate: (ok, reason)."""
    qa = solutions.qa()
    problems = []
    if qa["flagged_fraction"] > settings.max_flagged_fraction:
        problems.append(f"flagged fraction {qa['flagged_fraction']:.2f} > {settings.max_flagged_fraction}")
    if solutions.kind != "K" and qa["median_snr"] < settings.min_snr:
        problems.append(f"median SNR {qa['median_snr']:.1f} < {settings.min_snr}")
    if solutions.kind == "G" and qa["phase_scatter_deg"] > settings.max_phase_scatter_deg:
        problems.append(f"phase scatter {qa['phase_scatter_deg']:.1f} deg > {settings.max_phase_scatter_deg}")
    return (not problems, "; ".join(problems) or "passed")


def k_jones(delays: np.ndarray, freqs: np.ndarray, ref_freq: float) -> np.ndarray:
    """(chans, pols, ants) K Jones terms for delays (pols, ants) in seconds."""
    d = np.nan_to_num(delays)
    return np.exp(2j * np.pi * d[None] * (np.asarray(freqs)[:, None, None] - ref_freq))


def ref_freq(freqs: np.ndarray) -> float:
    """CASA's delay pivot: the centre channel of the spectral window."""
    return float(freqs[len(freqs) // 2])


@dataclass
class CalChain:
    """What to apply to a group: optional K, BP and G solutions (G interpolated in time)."""

    k: Solutions | None = None
    bp: Solutions | None = None
    g: list[Solutions] = field(default_factory=list)

    def jones(self, unit: Unit, spw_freqs: np.ndarray, times_mjd: np.ndarray, n_pol: int, n_ant: int):
        """(times, chans, pols, ants) Jones terms for one unit, and their flags."""
        j = np.ones((len(times_mjd), len(unit.freqs), n_pol, n_ant), dtype=np.complex128)
        bad = np.zeros(j.shape, dtype=bool)
        if self.k is not None:
            j *= k_jones(self.k.values[0], unit.freqs, ref_freq(spw_freqs))[None]
            bad |= self.k.flags[0][None, None]
        if self.bp is not None:
            b, fb = bandpass_for(self.bp, unit.freqs)
            j *= np.nan_to_num(b)[None]
            bad |= fb[None]
        if self.g:
            g, fg = interpolate_gains(self.g, times_mjd)
            j *= np.nan_to_num(g)[:, None]
            bad |= fg[:, None]
        return j, bad


def check_fits(table: Solutions, layout: MsLayout, path: Path) -> None:
    """Refuse a table solved on another array or band: applied, it would corrupt the data (or fail in numpy).

    Antennas must match by name, row for row; a bandpass must reach every channel of the MS within one of its
    channel spacings (``bandpass_for`` takes the nearest solved channel).
    """
    if list(table.ant_names) != list(layout.ant_names):
        raise InvalidInput(
            path, f"solved on another array ({len(table.ant_names)} antennas, not the {layout.n_ant} of {layout.path})",
            "apply tables solved on this instrument",
        )  # fmt: skip
    if table.kind == "BP":
        spacing = float(np.median(np.diff(table.freqs))) if len(table.freqs) > 1 else 0.0
        gap = np.min(np.abs(table.freqs[None] - layout.all_freqs[:, None]), axis=1).max()
        if gap > max(spacing, 1.0):
            raise InvalidInput(
                path, f"bandpass does not cover the band of {layout.path} (a channel {gap / 1e6:.2f} MHz away)",
                "apply a bandpass solved on this band",
            )  # fmt: skip


def bandpass_for(bp: Solutions, freqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BP values and flags at ``freqs`` (the nearest solved channel; they match on the same instrument)."""
    idx = np.clip(np.searchsorted(bp.freqs, freqs), 0, len(bp.freqs) - 1)
    lower = np.clip(idx - 1, 0, len(bp.freqs) - 1)
    idx = np.where(np.abs(bp.freqs[lower] - freqs) < np.abs(bp.freqs[idx] - freqs), lower, idx)
    return bp.values[idx], bp.flags[idx]


def interpolate_gains(tables: list[Solutions], times_mjd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """G at ``times_mjd`` from one or more G tables: linear in amplitude and phase between solutions.

    Outside the solved span the nearest solution is used (the registry decides what is valid).
    """
    times = np.concatenate([t.times_mjd for t in tables])
    values = np.concatenate([t.values for t in tables])
    flags = np.concatenate([t.flags for t in tables])
    order = np.argsort(times)
    times, values, flags = times[order], values[order], flags[order]
    out = np.empty((len(times_mjd), *values.shape[1:]), dtype=np.complex128)
    out_flags = np.zeros(out.shape, dtype=bool)
    for i, t in enumerate(np.atleast_1d(times_mjd)):
        hi = int(np.searchsorted(times, t))
        if hi == 0 or hi == len(times):
            k = 0 if hi == 0 else len(times) - 1
            out[i], out_flags[i] = values[k], flags[k]
            continue
        lo = hi - 1
        w = (t - times[lo]) / max(times[hi] - times[lo], 1e-12)
        a, b = values[lo], values[hi]
        amp = (1 - w) * np.abs(a) + w * np.abs(b)
        phase = np.angle(a) + w * np.angle(b * np.conj(a))
        out[i] = amp * np.exp(1j * phase)
        out_flags[i] = flags[lo] | flags[hi]
    return out, out_flags


# ----------------------------------------------------------------------------------------- workers


def _model_path(scratch: Path, unit: Unit) -> Path:
    return Path(scratch) / f"{unit.name}.model.npy"


def _unit_model(
    layout: MsLayout, unit: Unit, field: skymodel.FieldModel, data: UnitData, xx_per_i: float
) -> np.ndarray:
    model_i = skymodel.predict(field, data.uvw, data.time_index, unit.freqs) * np.float32(xx_per_i)
    return np.repeat(model_i[:, :, None], data.vis.shape[2], axis=2)


def solve_unit_per_channel(
    layout: MsLayout, unit: Unit, field: skymodel.FieldModel, settings: CalibrationSettings, scratch: str
) -> GainSolution:
    """Worker: predict the model for one unit (saved for pass two), solve per-channel gains over the group."""
    data = read_unit(layout, unit)
    model = _unit_model(layout, unit, field, data, settings.sky.xx_per_stokes_i)
    np.save(_model_path(Path(scratch), unit), model)
    cell_t = np.zeros(len(data.rows), dtype=np.int64)
    sums = accumulate(
        data.vis, model, data.flag, data.weight, data.ant1, data.ant2, layout.n_ant,
        cell_t, 1, np.arange(len(unit.freqs)), len(unit.freqs),
    )  # fmt: skip
    return stefcal(sums, refant=settings.refant, max_iter=settings.max_iter, tol=settings.tol,
                   min_baselines=settings.min_baselines)  # fmt: skip


def gain_sums_unit(
    layout: MsLayout, unit: Unit, chain: CalChain, cell_t_of_time: np.ndarray, n_cells: int, scratch: str,
    field: skymodel.FieldModel | None = None, xx_per_i: float = 1.0,
) -> NormalSums:  # fmt: skip
    """Worker: normal sums per G interval for one unit, with K and BP folded into the model."""
    data = read_unit(layout, unit)
    path = _model_path(Path(scratch), unit)
    if path.exists():
        model = np.load(path)
    elif field is not None:
        model = _unit_model(layout, unit, field, data, xx_per_i)
        np.save(path, model)
    else:
        raise InvalidInput(path, "model visibilities missing", "solve per channel first or pass the field model")
    spw_freqs = layout.spw_freqs[unit.spw]
    jones, bad = chain.jones(unit, spw_freqs, layout.times_mjd[:1], len(layout.parallel), layout.n_ant)
    jones = np.where(bad[0], 0, jones[0])  # (chans, pols, ants): zero drops flagged BP channels
    return accumulate(
        data.vis, model, data.flag, data.weight, data.ant1, data.ant2, layout.n_ant,
        cell_t_of_time[data.time_index], n_cells, np.zeros(len(unit.freqs), dtype=np.int64), 1, jones=jones,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------- group solve


@dataclass
class GroupSolution:
    """K, BP and G of one group, with timings and the model used."""

    k: Solutions | None
    bp: Solutions | None
    g: Solutions
    field: skymodel.FieldModel
    timings: dict[str, float]


class _Serial:
    """Runs 'submit' in the caller's process: tests and notebooks without a cluster."""

    def submit(self, fn, *args, **kwargs):
        kwargs.pop("pure", None)
        return _Done(fn(*(a.value if isinstance(a, _Done) else a for a in args), **kwargs))

    def gather(self, futures):
        return [f.result() for f in futures]


@dataclass
class _Done:
    value: object

    def result(self):
        return self.value


def _tree_sum(client, futures: list):
    while len(futures) > 1:
        pairs = [client.submit(operator.add, a, b) for a, b in zip(futures[::2], futures[1::2], strict=False)]
        futures = pairs + ([futures[-1]] if len(futures) % 2 else [])
    return futures[0].result()


@contextlib.contextmanager
def calibration_client(settings=None) -> Iterator:
    """A Dask client for the unit fan-out: the configured scheduler, else threads in this process.

    On one host, threads beat worker processes here (measured: 13 s against 31 s for a 24-antenna group
    on 2 cores): the kernels release the GIL, and nothing (visibilities, model) is pickled between processes.
    """
    from distributed import Client

    if settings is not None and settings.address:
        from labpipe.compute import dask_client

        with dask_client(settings) as client:
            yield client
        return
    with Client(processes=False, n_workers=1, threads_per_worker=os.cpu_count() or 1, dashboard_address=None) as client:
        yield client


def field_model(layout: MsLayout, catalog: skymodel.Catalog, settings: CalibrationSettings) -> skymodel.FieldModel:
    """The sky model of this group's field: brightest catalog sources in the beam, per time and channel."""
    if layout.n_fields > 1:
        raise InvalidInput(
            layout.path, f"{layout.n_fields} phase centres", "phase the group to one centre on conversion"
        )
    return skymodel.select_sources(
        catalog, layout.ra0_deg, layout.dec0_deg, layout.times_mjd, layout.all_freqs, layout.location(), settings.sky
    )


def _unit_field(field: skymodel.FieldModel, freqs: np.ndarray) -> skymodel.FieldModel:
    """The field model restricted to one unit's channels (smaller to ship to a worker)."""
    idx = np.searchsorted(field.freqs_hz, freqs)
    idx = np.clip(idx, 0, len(field.freqs_hz) - 1)
    return skymodel.FieldModel(
        field.catalog, field.ra0_deg, field.dec0_deg, field.times_mjd, freqs, field.apparent[:, :, idx]
    )


def solution_cells(layout: MsLayout, solint_s: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(cell index per integration, cell centre times MJD) for a G interval."""
    t = layout.times_mjd
    if not solint_s or solint_s <= layout.integration_s * 1.01:
        return np.arange(len(t)), t.copy()
    cell = np.floor((t - t[0]) * SECONDS_PER_DAY / solint_s + 1e-6).astype(int)
    centres = np.array([t[cell == c].mean() for c in range(cell.max() + 1)])
    return cell, centres


def solve_group(
    layout: MsLayout,
    catalog: skymodel.Catalog,
    settings: CalibrationSettings,
    *,
    solve: str = "KBPG",
    chain: CalChain | None = None,
    client=None,
    scratch: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> GroupSolution:
    """Solve K+BP+G (``solve='KBPG'``) or G only with a known chain (``solve='G'``) for one group.

    ``client``: a ``distributed.Client`` to fan the units out on (serial in this process when None).
    """
    present = int(layout.present.sum()) if layout.present is not None else layout.n_ant
    if present - 1 < settings.min_baselines:
        raise InvalidInput(
            layout.path,
            f"{present} antennas give each antenna {present - 1} baselines; the solver needs "
            f"min_baselines = {settings.min_baselines}, so every solution would be flagged",
            "calibrate with more antennas, or lower calibration.min_baselines in the radio calibration block",
        )
    client = client or _Serial()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    field = field_model(layout, catalog, settings)
    if len(field.catalog) == 0:
        raise InvalidInput(layout.path, "no catalog source in the primary beam", "check the catalog covers this field")
    own_scratch = scratch is None
    scratch = Path(tempfile.mkdtemp(prefix="labpipe-cal-")) if own_scratch else Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    n_units = len(layout.units)
    done = 0
    chain = chain or CalChain()
    k = bp = None
    if "BP" in solve:
        futures = [
            client.submit(
                solve_unit_per_channel, layout, u, _unit_field(field, u.freqs), settings, str(scratch), pure=False
            )
            for u in layout.units
        ]
        per_unit = []
        for f in futures:
            per_unit.append(f.result())
            done += 1
            if progress:
                progress(done, 2 * n_units)
        timings["per_channel_s"] = time.perf_counter() - started
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # antennas absent from the data: all-NaN columns
            k, bp = _split_delay_bandpass(layout, per_unit, settings, solve_k="K" in solve)
        chain = CalChain(k=k, bp=bp)
    t1 = time.perf_counter()
    cell_of_time, centres = solution_cells(layout, settings.solint_s)
    futures = [
        client.submit(
            gain_sums_unit,
            layout,
            u,
            chain,
            cell_of_time,
            len(centres),
            str(scratch),
            _unit_field(field, u.freqs),
            settings.sky.xx_per_stokes_i,
            pure=False,
        )  # fmt: skip
        for u in layout.units
    ]
    sums = _tree_sum(client, futures)
    if progress:
        progress(2 * n_units, 2 * n_units)
    gsol = stefcal(sums, refant=settings.refant, max_iter=settings.max_iter, tol=settings.tol,
                   min_baselines=settings.min_baselines)  # fmt: skip
    g = Solutions(
        kind="G",
        values=gsol.gains[:, 0],
        flags=gsol.flags[:, 0],
        snr=gsol.snr[:, 0],
        times_mjd=centres,
        freqs=layout.all_freqs,
        spw_freqs=layout.spw_freqs,
        ant_names=layout.ant_names,
        feeds=layout.feeds,
        refant=settings.refant,
        interval_s=settings.solint_s or layout.integration_s,
        ms_path=str(layout.path),
        iterations=int(gsol.iterations.max()),
        not_converged=int((~gsol.converged).sum()),
        present=layout.present,
    )
    timings["gain_s"] = time.perf_counter() - t1
    timings["solve_total_s"] = time.perf_counter() - started
    result = GroupSolution(k=k, bp=bp, g=g, field=field, timings=timings)
    result.scratch = scratch  # type: ignore[attr-defined]  # model .npy files for write_model
    return result


def _split_delay_bandpass(layout: MsLayout, per_unit: list[GainSolution], settings: CalibrationSettings, solve_k: bool):
    """Per-channel gains of all units -> one delay per antenna (K) and the remainder (BP)."""
    freqs = np.concatenate([u.freqs for u in layout.units])
    gains = np.concatenate([s.gains[0] for s in per_unit])  # (chans, pols, ants)
    flags = np.concatenate([s.flags[0] for s in per_unit])
    snr = np.concatenate([s.snr[0] for s in per_unit])
    common = dict(
        times_mjd=np.array([layout.mid_mjd]),
        spw_freqs=layout.spw_freqs,
        ant_names=layout.ant_names,
        feeds=layout.feeds,
        refant=settings.refant,
        interval_s=float(len(layout.times_mjd) * layout.integration_s),
        ms_path=str(layout.path),
        present=layout.present,
    )
    iterations = int(max(s.iterations.max() for s in per_unit))
    not_converged = int(sum((~s.converged).sum() for s in per_unit))
    k = None
    bandpass = gains.copy()
    if solve_k:
        delays, _ = fit_delays(freqs, gains, flags)  # (pols, ants)
        kflags = ~np.isfinite(delays)
        ksnr = np.nanmedian(np.where(flags, np.nan, snr), axis=0)
        k = Solutions(
            kind="K", values=delays[None], flags=kflags[None], snr=np.nan_to_num(ksnr)[None], freqs=freqs,
            iterations=iterations, not_converged=0, **common,
        )  # fmt: skip
        for u in layout.units:
            sel = slice(*channel_span(layout, u))
            bandpass[sel] = gains[sel] / k_jones(delays, u.freqs, ref_freq(layout.spw_freqs[u.spw]))
        bandpass = np.where(kflags[None], np.nan, bandpass)
    # normalise: mean amplitude one per antenna and hand (CASA solnorm), so G carries the flux scale
    amp = np.nanmean(np.where(flags, np.nan, np.abs(bandpass)), axis=0)
    bandpass = bandpass / np.where(np.isfinite(amp) & (amp > 0), amp, np.nan)[None]
    bflags = flags | ~np.isfinite(bandpass)
    bp = Solutions(
        kind="BP", values=np.where(bflags, np.nan, bandpass), flags=bflags, snr=snr, freqs=freqs,
        iterations=iterations, not_converged=not_converged, **common,
    )  # fmt: skip
    return k, bp


# ----------------------------------------------------------------------------------------- write/apply


def write_model(layout: MsLayout, solution: GroupSolution) -> None:
    """Write the predicted sky model into MODEL_DATA (all correlations: parallel hands, zero cross hands)."""
    tables = casacore_tables()
    scratch = solution.scratch  # type: ignore[attr-defined]
    with tables.table(str(layout.path), readonly=False, ack=False) as t:
        add_column(t, "MODEL_DATA", define_cells=False)
        for ddid, units in units_by_ddid(layout).items():
            rows = rows_of(t, ddid, len(layout.ddid_spw))
            nchan = len(layout.spw_freqs[layout.ddid_spw[ddid]])
            full = np.zeros((len(rows), nchan, len(layout.corr_types)), dtype=np.complex64)
            for unit in units:
                path = _model_path(scratch, unit)
                if path.exists():
                    full[:, unit.c0 : unit.c1, layout.parallel] = np.load(path)
            put_rows(t, "MODEL_DATA", rows, full)


def _apply_kernel():
    import numba

    @numba.njit(cache=True, nogil=True)
    def kernel(vis, flag, inverse, ti, a1, a2, hand1, hand2, out, out_flag):  # pragma: no cover - compiled
        """inverse: (times, ants, pols, chans) 1/J, zero where J is flagged or zero."""
        nrow, nchan, ncorr = vis.shape
        for r in range(nrow):
            t, p, q = ti[r], a1[r], a2[r]
            for k in range(ncorr):
                jp, jq = inverse[t, p, hand1[k]], inverse[t, q, hand2[k]]
                for c in range(nchan):
                    g = jp[c] * np.conj(jq[c])
                    if g == 0:
                        out[r, c, k] = 0
                        out_flag[r, c, k] = True
                    else:
                        out[r, c, k] = vis[r, c, k] * g
                        out_flag[r, c, k] = flag[r, c, k]

    return kernel


_APPLY = None


def apply_chain(layout: MsLayout, chain: CalChain, progress: Callable[[int, int], None] | None = None) -> dict:
    """Write CORRECTED_DATA = DATA / (J_p conj(J_q)) for every correlation; flag where J is flagged.

    Cross hands (XY, YX) use the two feeds' terms. Each spectral window is assembled in memory and
    written as whole cells (no zero-filling pass). Returns the flagged fraction.
    """
    global _APPLY
    if _APPLY is None:
        _APPLY = _apply_kernel()
    tables = casacore_tables()
    feed_index = {f: i for i, f in enumerate(layout.feeds)}
    corr_feeds = [(LINEAR | CIRCULAR)[c] for c in layout.corr_types]
    hands = np.array([(feed_index.get(f1, 0), feed_index.get(f2, 0)) for f1, f2 in corr_feeds], dtype=np.int64)
    flagged = total = done = 0
    with tables.table(str(layout.path), readonly=False, ack=False) as t:
        add_column(t, "CORRECTED_DATA", define_cells=False)
        for ddid, units in units_by_ddid(layout).items():
            rows = rows_of(t, ddid, len(layout.ddid_spw))
            nchan = len(layout.spw_freqs[layout.ddid_spw[ddid]])
            out = np.zeros((len(rows), nchan, len(corr_feeds)), dtype=np.complex64)
            flag_all = np.ones(out.shape, dtype=bool)
            for unit in units:
                data = read_unit(layout, unit, "DATA", parallel_only=False)
                spw_freqs = layout.spw_freqs[unit.spw]
                jones, bad = chain.jones(unit, spw_freqs, layout.times_mjd, len(layout.parallel), layout.n_ant)
                ok = ~bad & (jones != 0)
                inverse = np.where(ok, 1 / np.where(ok, jones, 1), 0).astype(np.complex64).transpose(0, 3, 2, 1)
                rows_meta = (data.time_index, data.ant1, data.ant2)
                _APPLY(
                    data.vis, data.flag, np.ascontiguousarray(inverse), *(a.astype(np.int64) for a in rows_meta),
                    hands[:, 0], hands[:, 1], out[:, unit.c0 : unit.c1], flag_all[:, unit.c0 : unit.c1],
                )  # fmt: skip
                done += 1
                if progress:
                    progress(done, len(layout.units))
            put_rows(t, "CORRECTED_DATA", rows, out)
            put_rows(t, "FLAG", rows, flag_all)
            flagged += int(flag_all.sum())
            total += flag_all.size
    return {"flagged_fraction": flagged / max(total, 1)}
