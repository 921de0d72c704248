"""RFI flagging of a group's Measurement Set with AOFlagger, written into FLAG (python-casacore).

AOFlagger's strategy (its generic one by default, or a Lua file of yours) runs on time-frequency
images at three levels, each catching what the one before cannot:

1. **array**: per hand, the mean over all cross-correlations of the *normalised power*
   ``|V_pq|^2 / (A_p A_q)`` (A the autocorrelations: the bandpass, the subband roll-off and gain drifts
   cancel, so the image is flat where there is no interference). An emitter seen by the whole array
   (narrow-band transmitters, broadband bursts) stands out here far below the noise of one baseline;
   its (time, channel) cells are flagged on every baseline. Without autocorrelations in the MS the
   power is not normalised (AOFlagger's own high-pass fit then follows the bandpass).
2. **antenna**: the same image per antenna (its baselines only): interference one antenna picks up.
   An antenna whose flagged fraction exceeds ``max_antenna_fraction`` is flagged whole.
3. **baseline** (``baseline_level``, off by default: ~15 ms of AOFlagger per baseline, a minute for
   96 antennas on two cores): every baseline's own image of both hands.

Before AOFlagger, faulty inputs are found from the same sums: an antenna whose median normalised
power lies more than ``antenna_sigma`` robust standard deviations (1.4826 MAD over the antennas)
from the others' (too noisy, or dead) is flagged whole and left out of the array image.

Flags are only ever added (existing flags stay and are excluded from AOFlagger's statistics), in every
correlation of the flagged samples, autocorrelations included. A flagged sample never enters
calibration's normal sums or the gridder.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from labpipe.errors import ConfigError, InvalidInput
from labpipe.optional import require
from labpipe.radio.ms import MsLayout, Unit, read_layout, read_unit
from pydantic import BaseModel, Field


class FlagSettings(BaseModel):
    """How a group's Measurement Set is flagged for interference."""

    column: str = Field("DATA", description="MS column to look for interference in.")
    strategy: str = Field(
        "", description="AOFlagger Lua strategy for the array and antenna images; empty: labpipe's (see the docs)."
    )
    baseline_strategy: str = Field(
        "", description="AOFlagger Lua strategy for single baselines; empty: AOFlagger's generic strategy."
    )
    array_level: bool = Field(True, description="Flag on the mean normalised power of all baselines.")
    antenna_level: bool = Field(False, description="Also flag on each antenna's own image (RFI one antenna picks up).")
    baseline_level: bool = Field(False, description="Also run AOFlagger on every baseline (slow at 96 antennas).")
    antenna_sigma: float = Field(6.0, description="Flag an antenna this many robust sigmas from the others' level.")
    antenna_level_floor: float = Field(
        0.02, description="Smallest relative spread of antenna levels assumed (guards a tiny MAD)."
    )
    max_antenna_fraction: float = Field(0.5, description="Flag an antenna whole when more of its data was flagged.")
    channels_per_unit: int = Field(48, description="Channels read at once (one DSA-110 subband).")


@dataclass
class FlagReport:
    """What one flagging run did."""

    ms: Path
    flagged_before: float  # fraction of all samples flagged on arrival
    flagged_after: float
    bad_antennas: list[str] = field(default_factory=list)
    antenna_levels: dict[str, float] = field(default_factory=dict)  # median normalised power per antenna
    array_cells: int = 0  # (time, channel) cells flagged on every baseline
    antenna_cells: int = 0  # (antenna, time, channel) cells flagged on one antenna's baselines
    baseline_cells: int = 0  # (baseline, time, channel) cells flagged by the per-baseline pass
    timings: dict[str, float] = field(default_factory=dict)


def _aoflagger():
    return require("aoflagger", "radio", "RFI flagging")


def _kernels():
    import numba

    @numba.njit(cache=True, nogil=True)
    def highpass(vis, flag, ant1, ant2, tidx, autos, use_autos, out):  # pragma: no cover - compiled
        """Per cross sample: h = v(c) - (v(c-1) + v(c+1)) / 2 with v = V / sqrt(A_p A_q), scaled to unit noise gain.

        The sky changes little from one channel to the next (a source 2 degrees out turns a 1.2 km
        baseline's phase by 0.2 rad per 244 kHz: the second difference keeps 0.05 % of its power), an
        emitter far more (its coupling to each antenna comes with microseconds of delay), and a
        narrow emitter leaks a quarter of its power into each neighbour, which is flagged with it.
        One neighbour alone is used beside a flagged channel; NaN where unusable (flagged, no usable
        neighbour, autocorrelation). ``out`` is scaled so pure noise has the variance of one sample.
        """
        nrow, nchan, npol = vis.shape
        for r in range(nrow):
            p, q, t = ant1[r], ant2[r], tidx[r]
            for s in range(npol):
                for c in range(nchan):
                    out[r, c, s] = np.nan + 0j
                if p == q:
                    continue
                for c in range(nchan):
                    if flag[r, c, s]:
                        continue
                    norm = 1.0
                    if use_autos:
                        norm = autos[p, t, c, s] * autos[q, t, c, s]
                        if not norm > 0:
                            continue
                        norm = np.sqrt(norm)
                    side = 0j
                    k = 0
                    for d in (c - 1, c + 1):
                        if d < 0 or d >= nchan or flag[r, d, s]:
                            continue
                        nd = 1.0
                        if use_autos:
                            nd = autos[p, t, d, s] * autos[q, t, d, s]
                            if not nd > 0:
                                continue
                            nd = np.sqrt(nd)
                        side += vis[r, d, s] / nd
                        k += 1
                    if k > 0:
                        out[r, c, s] = (vis[r, c, s] / norm - side / k) / np.sqrt(1.0 + 1.0 / k)

    @numba.njit(cache=True, nogil=True)
    def accumulate(h, ant1, ant2, tidx, ant_sum, ant_cnt):  # pragma: no cover - compiled
        """Sum |h|^2 of every usable cross sample into both antennas' (time, channel, hand) images."""
        nrow, nchan, npol = h.shape
        for r in range(nrow):
            p, q, t = ant1[r], ant2[r], tidx[r]
            if p == q:
                continue
            for c in range(nchan):
                for s in range(npol):
                    v = h[r, c, s]
                    if v.real != v.real:  # NaN: unusable
                        continue
                    power = v.real * v.real + v.imag * v.imag
                    ant_sum[p, t, c, s] += power
                    ant_cnt[p, t, c, s] += 1
                    ant_sum[q, t, c, s] += power
                    ant_cnt[q, t, c, s] += 1

    return highpass, accumulate


_KERNELS = None


LABPIPE_STRATEGY = Path(__file__).with_name("aoflagger_labpipe.lua")


class _Flagger:
    """AOFlagger and one loaded strategy: ``run(image (chans, times), excluded) -> flags (chans, times)``.

    ``strategy``: a Lua file; "" with ``generic``: AOFlagger's generic strategy, else labpipe's.
    """

    def __init__(self, strategy: str, generic: bool = False):
        aoflagger = _aoflagger()
        self.lib = aoflagger.AOFlagger()
        default = self.lib.find_strategy_file(aoflagger.TelescopeId.Generic) if generic else LABPIPE_STRATEGY
        path = strategy or default
        if not path or not Path(path).is_file():
            raise ConfigError(strategy or "AOFlagger generic strategy", "strategy file not found",
                              "set flagging.strategy to an AOFlagger Lua strategy")  # fmt: skip
        self.strategy = self.lib.load_strategy_file(str(path))
        self.runs = 0

    def run(self, images: list[np.ndarray], excluded: np.ndarray) -> np.ndarray:
        nchan, ntimes = excluded.shape
        image_set = self.lib.make_image_set(ntimes, nchan, len(images))
        for k, image in enumerate(images):
            image_set.set_image_buffer(k, np.ascontiguousarray(np.where(excluded, 0.0, image), dtype=np.float64))
        mask = self.lib.make_flag_mask(ntimes, nchan, False)
        mask.set_buffer(np.ascontiguousarray(excluded))
        self.runs += 1
        return np.asarray(self.strategy.run(image_set, mask).get_buffer(), dtype=bool) & ~excluded


def _robust_outliers(levels: np.ndarray, sigma: float, floor: float) -> np.ndarray:
    """True where a level lies more than ``sigma`` robust standard deviations from the median (NaN: False)."""
    good = np.isfinite(levels)
    if good.sum() < 3:
        return np.zeros(levels.shape, bool)
    median = float(np.median(levels[good]))
    spread = max(1.4826 * float(np.median(np.abs(levels[good] - median))), floor * abs(median), 1e-30)
    return good & (np.abs(levels - median) > sigma * spread)


def flag_ms(
    ms: Path, settings: FlagSettings | None = None, progress: Callable[[int, int], None] | None = None
) -> FlagReport:
    """Find interference in ``ms`` with AOFlagger and add it to FLAG (see the module doc); returns what was done."""
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = _kernels()
    highpass, accumulate = _KERNELS
    settings = settings or FlagSettings()
    started = time.perf_counter()
    layout = read_layout(ms, settings.channels_per_unit)
    n_times, n_chan, n_pol = len(layout.times_mjd), len(layout.all_freqs), len(layout.parallel)
    if len(layout.ddid_spw) != 1:
        raise InvalidInput(ms, f"{len(layout.ddid_spw)} spectral windows", "flag a one-window MS (as converted)")
    steps = 2 * len(layout.units) + 1 + (1 if settings.baseline_level else 0)
    done = 0

    def tick():
        nonlocal done
        done += 1
        if progress:
            progress(done, steps)

    ant_sum = np.zeros((layout.n_ant, n_times, n_chan, n_pol))
    ant_cnt = np.zeros(ant_sum.shape, dtype=np.int64)
    before = np.zeros(2, dtype=np.int64)  # flagged, total (parallel hands of every row)
    use_autos = True
    unit_data = []  # kept only for the per-baseline pass
    noise_rows = []  # per unit: (rows,) median |h|^2 of each row (every 4th channel)
    keys = None
    for unit in layout.units:
        # one channel more on each side: the high-pass sees across a unit's edges as inside it
        lo, hi = max(unit.c0 - 1, 0), min(unit.c1 + 1, n_chan)
        wide = Unit(unit.ddid, unit.spw, lo, hi, layout.all_freqs[lo:hi])
        data = read_unit(layout, wide, settings.column)
        inner = slice(unit.c0 - lo, unit.c0 - lo + len(unit.freqs))
        before += (int(data.flag[:, inner].sum()), data.flag[:, inner].size)
        autos = np.full((layout.n_ant, n_times, hi - lo, n_pol), np.nan)
        rows = np.nonzero(data.ant1 == data.ant2)[0]
        autos[data.ant1[rows], data.time_index[rows]] = np.where(data.flag[rows], np.nan, data.vis[rows].real)
        use_autos = use_autos and len(rows) > 0
        ant1, ant2, tidx = (a.astype(np.int64) for a in (data.ant1, data.ant2, data.time_index))
        h = np.empty(data.vis.shape, np.complex64)
        highpass(data.vis, data.flag, ant1, ant2, tidx, autos, use_autos, h)
        h = np.ascontiguousarray(h[:, inner])
        accumulate(h, ant1, ant2, tidx, ant_sum[:, :, unit.c0 : unit.c1], ant_cnt[:, :, unit.c0 : unit.c1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # autocorrelation and flagged rows: all NaN
            noise_rows.append(np.nanmedian(np.abs(h[:, ::4, :].reshape(len(h), -1)) ** 2, axis=1))
        keys = ant1 * layout.n_ant + ant2
        if settings.baseline_level:
            unit_data.append((unit, data, h))
        tick()
    t_read = time.perf_counter()
    report = FlagReport(ms=Path(ms), flagged_before=float(before[0] / max(before[1], 1)), flagged_after=0.0)
    report.timings["read_s"] = t_read - started

    with np.errstate(invalid="ignore", divide="ignore"):
        ant_mean = ant_sum / ant_cnt  # NaN where nothing was summed
    present = layout.present if layout.present is not None else np.ones(layout.n_ant, bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows flagged in every unit: all-NaN
        row_noise = np.nanmedian(np.array(noise_rows), axis=0) if noise_rows else None
    levels = _antenna_levels(row_noise, keys, layout.n_ant)
    levels[~present] = np.nan
    bad = _robust_outliers(levels, settings.antenna_sigma, settings.antenna_level_floor)
    # an antenna in the data whose every sample is flagged or zero has nothing to say: flag it whole
    bad |= present & ~np.isfinite(levels)
    report.antenna_levels = {layout.ant_names[a]: round(float(levels[a]), 5) for a in np.nonzero(present)[0]}

    flagger = _Flagger(settings.strategy)
    array_flags = np.zeros((n_times, n_chan), bool)
    if settings.array_level:
        good_ants = np.nonzero(present & ~bad)[0]
        # every baseline is in two antennas' sums: half the sum over antennas counts each once
        total = ant_sum[good_ants].sum(axis=0) / 2
        count = ant_cnt[good_ants].sum(axis=0) / 2
        for b in np.nonzero(bad & present)[0]:  # baselines from a good antenna to a bad one
            total -= ant_sum[b] / 2
            count -= ant_cnt[b] / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / count
        array_flags = _flag_image(flagger, mean, count > 0)
        report.array_cells = int(array_flags.sum())
    antenna_flags = np.zeros((layout.n_ant, n_times, n_chan), bool)
    if settings.antenna_level:
        for a in np.nonzero(present & ~bad)[0]:
            antenna_flags[a] = _flag_image(flagger, ant_mean[a], (ant_cnt[a] > 0) & ~array_flags[:, :, None])
            usable = (ant_cnt[a] > 0).any(axis=-1)
            if usable.any() and (antenna_flags[a] | array_flags)[usable].mean() > settings.max_antenna_fraction:
                bad[a] = True
        antenna_flags[bad] = False  # flagged whole below
        report.antenna_cells = int(antenna_flags.sum())
    report.bad_antennas = [layout.ant_names[a] for a in np.nonzero(bad)[0]]
    tick()
    report.timings["detect_s"] = time.perf_counter() - t_read

    baseline_flags: dict[tuple[int, int], np.ndarray] = {}
    if settings.baseline_level:
        t_bl = time.perf_counter()
        generic = _Flagger(settings.baseline_strategy, generic=True)
        baseline_flags = _flag_baselines(generic, layout, unit_data, array_flags, antenna_flags, bad)
        flagger.runs += generic.runs
        report.baseline_cells = int(sum(f.sum() for f in baseline_flags.values()))
        report.timings["baseline_s"] = time.perf_counter() - t_bl
        unit_data.clear()
        tick()

    t_write = time.perf_counter()
    after = _write_flags(layout, array_flags, antenna_flags, bad, baseline_flags, tick)
    report.flagged_after = after
    report.timings["write_s"] = time.perf_counter() - t_write
    report.timings["aoflagger_runs"] = flagger.runs
    report.timings["total_s"] = time.perf_counter() - started
    return report


def _antenna_levels(row_noise: np.ndarray | None, keys: np.ndarray | None, n_ant: int) -> np.ndarray:
    """Per antenna: the median over its baselines of each baseline's median high-passed power (its noise)."""
    levels = np.full(n_ant, np.nan)
    if row_noise is None or keys is None:
        return levels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ant1, ant2 = keys // n_ant, keys % n_ant
        cross = (ant1 != ant2) & np.isfinite(row_noise)
        unique, inverse = np.unique(keys[cross], return_inverse=True)
        per_baseline = np.array([np.median(row_noise[cross][inverse == k]) for k in range(len(unique))])
        for a in range(n_ant):
            mine = per_baseline[(unique // n_ant == a) | (unique % n_ant == a)]
            if mine.size:
                levels[a] = np.median(mine)
    return levels


def _smooth_profile(values: np.ndarray, width: int) -> np.ndarray:
    """A running median of a 1-D profile (NaN gaps filled by interpolation): narrow features removed."""
    from scipy.ndimage import median_filter

    good = np.isfinite(values)
    if not good.any():
        return np.ones_like(values)
    filled = np.interp(np.arange(len(values)), np.nonzero(good)[0], values[good])
    return median_filter(filled, size=min(width, len(values)), mode="nearest")


def _normalise(power: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """``power`` (times, chans) over a smooth separable model T(t) F(c): ~1 plus noise where nothing interferes.

    The sky drifts through the beam (a trend in time) and has a spectrum (a trend in frequency);
    AOFlagger's high-pass fit of 24 integrations leaves such trends above the tiny noise of an
    average over many baselines. Running medians (5 integrations, 15 channels) ignore a burst or
    a narrow-band emitter, which stay in the ratio.
    """
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows and columns: gaps
        values = np.where(usable, power, np.nan)
        in_time = _smooth_profile(np.nanmedian(values, axis=1), 5)
        in_freq = _smooth_profile(np.nanmedian(values / in_time[:, None], axis=0), 15)
        model = in_time[:, None] * in_freq[None, :]
        return np.where(usable & (model > 0), values / np.where(model > 0, model, 1), 0.0)


def _flag_image(flagger: _Flagger, mean_power: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """(times, chans) flags of a (times, chans, pols) power image: AOFlagger per hand, normalised rms amplitude."""
    flags = np.zeros(mean_power.shape[:2], bool)
    for s in range(mean_power.shape[2]):
        ok = usable[:, :, s] if usable.ndim == 3 else usable
        residual = np.sqrt(_normalise(mean_power[:, :, s], ok)) - 1.0  # ~0 where nothing interferes
        flags |= flagger.run([np.where(ok, residual, 0.0).T], ~ok.T).T
    return flags


def _flag_baselines(flagger, layout: MsLayout, unit_data, array_flags, antenna_flags, bad) -> dict:
    """Per-baseline AOFlagger on the high-passed visibilities of both hands (real and imaginary images)."""
    n_times, n_chan = array_flags.shape
    first = unit_data[0][1]
    pairs = sorted({(int(p), int(q)) for p, q in zip(first.ant1, first.ant2, strict=True) if p != q})
    pairs = [(p, q) for p, q in pairs if not (bad[p] or bad[q])]
    index = {pq: k for k, pq in enumerate(pairs)}
    n_pol = first.vis.shape[2]
    cube = np.zeros((len(pairs), n_times, n_chan, n_pol), np.complex64)
    excluded = np.ones((len(pairs), n_times, n_chan), bool)
    for unit, data, h in unit_data:
        k = np.array([index.get((int(p), int(q)), -1) for p, q in zip(data.ant1, data.ant2, strict=True)])
        use = k >= 0
        cube[k[use], data.time_index[use], unit.c0 : unit.c1] = np.nan_to_num(h[use])
        excluded[k[use], data.time_index[use], unit.c0 : unit.c1] = np.isnan(h[use].real).any(axis=-1)
    flags = {}
    for (p, q), k in index.items():
        skip = excluded[k] | array_flags | antenna_flags[p] | antenna_flags[q]
        images = []
        for s in range(n_pol):
            images += [cube[k, :, :, s].real.T, cube[k, :, :, s].imag.T]
        flags[(p, q)] = flagger.run(images, skip.T).T
    return flags


def _write_flags(layout: MsLayout, array_flags, antenna_flags, bad, baseline_flags, tick) -> float:
    """OR the new flags into FLAG (every correlation), unit by unit; returns the flagged fraction after."""
    from casacore import tables

    flagged = total = 0
    with tables.table(str(layout.path), readonly=False, ack=False) as t:
        ant1, ant2 = t.getcol("ANTENNA1"), t.getcol("ANTENNA2")
        times = t.getcol("TIME")
        tidx = np.clip(np.searchsorted(layout.times_mjd * 86400.0, times - 1e-3), 0, len(layout.times_mjd) - 1)
        row_bad = bad[ant1] | bad[ant2]
        extra_rows = {}
        for (p, q), f in baseline_flags.items():
            extra_rows[(p, q)] = f
        ncorr = len(layout.corr_types)
        for unit in layout.units:
            c0, c1 = unit.c0, unit.c1
            new = array_flags[tidx, c0:c1] | antenna_flags[ant1, tidx, c0:c1] | antenna_flags[ant2, tidx, c0:c1]
            new |= row_bad[:, None]
            if extra_rows:
                for r in np.nonzero(ant1 != ant2)[0]:
                    f = extra_rows.get((int(ant1[r]), int(ant2[r])))
                    if f is not None:
                        new[r] |= f[tidx[r], c0:c1]
            blc, trc = [c0, 0], [c1 - 1, ncorr - 1]
            flag = t.getcolslice("FLAG", blc, trc) | new[:, :, None]
            t.putcolslice("FLAG", flag, blc, trc)
            flagged += int(flag.sum())
            total += flag.size
            tick()
    return flagged / max(total, 1)


@dataclass
class FlagScore:
    """Flags against the truth of what was injected (cross-correlations, any hand flagged = flagged)."""

    recall: float  # fraction of injected samples (emitters and the faulty input) flagged
    recall_power: float  # fraction of the emitters' injected power (amplitude squared) flagged
    false_positive: float  # fraction of clean samples flagged
    injected_fraction: float  # fraction of samples the truth calls interference
    bad_input_recall: float  # fraction of the faulty input's samples flagged (nan: none injected)


def score_flags(ms: Path, truth, min_amplitude_jy: float = 0.0) -> FlagScore:
    """Compare an MS's FLAG with a simulated group's truth (``simulate.Truth.rfi_truth``).

    ``min_amplitude_jy``: emitter samples weaker than this count as neither interference nor clean.
    """
    from casacore import tables

    layout = read_layout(ms)
    with tables.table(str(ms), ack=False) as t:
        ant1, ant2, times = t.getcol("ANTENNA1"), t.getcol("ANTENNA2"), t.getcol("TIME")
        flag = t.getcol("FLAG").any(axis=-1)
    cross = ant1 != ant2
    tidx = np.clip(np.searchsorted(layout.times_mjd * 86400.0, times - 1e-3), 0, len(layout.times_mjd) - 1)
    amplitude, bad = truth.rfi_truth(ant1[cross], ant2[cross], tidx[cross], layout.all_freqs)
    flag = flag[cross]
    emitter = amplitude > 0
    injected = emitter | bad[:, None]
    weak = emitter & (amplitude < min_amplitude_jy) & ~bad[:, None]
    clean = ~injected
    counted = injected & ~weak
    power = np.where(emitter & ~bad[:, None], amplitude.astype(float) ** 2, 0.0)
    return FlagScore(
        recall=float(flag[counted].mean()) if counted.any() else float("nan"),
        recall_power=float(power[flag].sum() / power.sum()) if power.sum() > 0 else float("nan"),
        false_positive=float(flag[clean].mean()) if clean.any() else float("nan"),
        injected_fraction=float(injected.mean()),
        bad_input_recall=float(flag[bad].mean()) if bad.any() else float("nan"),
    )
