"""Calibration tables in CASA's format, written and read with pyuvdata (``UVCal.write_ms_cal``).

CASA can apply them (``applycal(gaintable=[...kcal, ...bpcal, ...gpcal])``). Conventions: CASA
stores the gains of V_pq = g_p conj(g_q) M_pq (``CPARAM``) and delays in ns (``FPARAM``) with the
phase 2 pi tau (nu - nu_ref), nu_ref the centre channel of each spectral window; pyuvdata's
``gain_array`` is the complex conjugate of CASA's, so it is conjugated on the way in and out.
Every table is written beside its final path and renamed into place (``labpipe.files.atomic_path``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from labpipe.errors import InvalidInput
from labpipe.files import atomic_path
from labpipe.radio.calibrate import Solutions, ref_freq
from labpipe.radio.ms import MsLayout

JONES = {"X": -5, "Y": -6, "R": -1, "L": -2}
FEED_OF_JONES = {v: k for k, v in JONES.items()}
SUFFIX = {"K": "kcal", "BP": "bpcal", "G": "gpcal"}


def _real_antennas(layout: MsLayout) -> np.ndarray:
    """MS antenna rows that are antennas (writers pad unused antenna numbers with zero positions)."""
    return np.nonzero(np.linalg.norm(layout.ant_positions, axis=1) > 1e6)[0]


def _telescope(layout: MsLayout):
    from pyuvdata import Telescope

    real = _real_antennas(layout)
    location = layout.location()
    xyz = np.array([c.to_value("m") for c in location.geocentric])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Telescope.new(
            name=layout.telescope or "DSA_110",
            location=location,
            antenna_positions=layout.ant_positions[real] - xyz,
            antenna_names=[layout.ant_names[i] for i in real],
            antenna_numbers=real,  # = MS antenna rows: CASA indexes tables by them
            instrument=layout.telescope or "DSA_110",
            feed_array=[f.lower() for f in layout.feeds],
            feed_angle=[np.pi / 2 if f in "XRL" else 0.0 for f in layout.feeds],
            mount_type="fixed",
        )


def _jd(mjd) -> np.ndarray:
    return np.asarray(mjd, dtype=float) + 2400000.5


def to_uvcal(solutions: Solutions, layout: MsLayout):
    """A pyuvdata ``UVCal`` holding ``solutions`` (gain_convention 'divide', CASA-compatible)."""
    from pyuvdata import UVCal

    jones = np.array([JONES[f] for f in solutions.feeds])
    real = _real_antennas(layout)
    spws = sorted(layout.spw_freqs)
    half = solutions.interval_s * 0.4999 / 86400.0  # just under half: adjacent ranges must not overlap
    common = dict(
        cal_style="sky",
        gain_convention="divide",
        jones_array=jones,
        telescope=_telescope(layout),
        ref_antenna_name=layout.ant_names[solutions.refant if solutions.refant in real else int(real[0])],
        sky_catalog="labpipe catalog sky model",
        history=f"labpipe StEFCal {solutions.kind} solve of {solutions.ms_path}",
    )
    # pyuvdata arrays are (ants, freqs|spws, times, jones); ours are (times|chans, pols, ants)
    if solutions.kind == "BP":
        freqs = np.concatenate([layout.spw_freqs[s] for s in spws])
        spw_ids = np.concatenate([np.full(len(layout.spw_freqs[s]), s) for s in spws])
        idx = np.clip(np.searchsorted(solutions.freqs, freqs), 0, len(solutions.freqs) - 1)
        gains = np.conj(solutions.values[idx]).transpose(2, 0, 1)[real, :, None, :]
        flags = solutions.flags[idx].transpose(2, 0, 1)[real, :, None, :]
        quality = solutions.snr[idx].transpose(2, 0, 1)[real, :, None, :]
        uvc = UVCal.new(
            freq_array=freqs,
            flex_spw_id_array=spw_ids,
            channel_width=np.abs(np.gradient(freqs)) if len(freqs) > 1 else 1.0,
            time_range=np.array([[_jd(solutions.times_mjd[0] - half), _jd(solutions.times_mjd[0] + half)]]),
            cal_type="gain",
            integration_time=np.array([solutions.interval_s]),
            data={"gain_array": gains, "flag_array": flags, "quality_array": quality},
            **common,
        )
        return uvc
    freq_range = np.array([[layout.spw_freqs[s].min(), layout.spw_freqs[s].max()] for s in spws])
    times = solutions.times_mjd
    time_range = np.stack([_jd(times - half), _jd(times + half)], axis=1)
    n_spw = len(spws)
    if solutions.kind == "K":
        values = np.nan_to_num(solutions.values)  # (1, pols, ants) seconds
        delay = np.repeat(values.transpose(2, 0, 1)[real, None, :, :], n_spw, axis=1)
        data = {"delay_array": delay}
        cal_type = "delay"
    else:
        values = np.conj(np.where(solutions.flags, 1, np.nan_to_num(solutions.values, nan=1)))
        data = {"gain_array": np.repeat(values.transpose(2, 0, 1)[real, None, :, :], n_spw, axis=1)}
        cal_type = "gain"
    data["flag_array"] = np.repeat(solutions.flags.transpose(2, 0, 1)[real, None, :, :], n_spw, axis=1)
    data["quality_array"] = np.repeat(solutions.snr.transpose(2, 0, 1)[real, None, :, :], n_spw, axis=1)
    return UVCal.new(
        freq_range=freq_range,
        spw_array=np.array(spws),
        time_range=time_range,
        cal_type=cal_type,
        integration_time=np.full(len(times), solutions.interval_s),
        data=data,
        **common,
    )


def write_table(solutions: Solutions, layout: MsLayout, final: Path) -> Path:
    """Write ``solutions`` as a CASA calibration table at ``final`` (atomically; replaces an older one)."""
    from casacore import tables

    uvc = to_uvcal(solutions, layout)
    with atomic_path(Path(final)) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        uvc.write_ms_cal(str(tmp), clobber=True)
        # CASA >= 5.3 pivots K at the centre channel; older readers use REF_FREQUENCY: make both agree
        with tables.table(str(tmp / "SPECTRAL_WINDOW"), readonly=False, ack=False) as spw:
            for row in range(spw.nrows()):
                spw.putcell("REF_FREQUENCY", row, ref_freq(np.asarray(spw.getcell("CHAN_FREQ", row))))
        with tables.table(str(tmp), readonly=False, ack=False) as main:
            main.putkeyword("labpipe_kind", solutions.kind)
            main.putkeyword("labpipe_ms", solutions.ms_path)
    return Path(final)


def read_table(path: Path) -> Solutions:
    """Read a CASA calibration table (ours or CASA's) back into ``Solutions``."""
    from pyuvdata import UVCal

    path = Path(path)
    if not (path / "table.dat").exists():
        raise InvalidInput(path, "not a calibration table", "expected a .kcal/.bpcal/.gpcal folder")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        uvc = UVCal.from_file(str(path), file_type="ms")
    feeds = [FEED_OF_JONES.get(int(j), "X") for j in uvc.jones_array]
    # antenna numbers are MS antenna rows (CASA's convention); rows with no antenna stay flagged
    numbers = np.asarray(uvc.telescope.antenna_numbers)
    n_ant = int(numbers.max()) + 1
    names = [""] * n_ant
    for number, name in zip(numbers, uvc.telescope.antenna_names, strict=True):
        names[int(number)] = str(name)
    order = np.asarray(uvc.ant_array, dtype=int)
    times_jd = uvc.time_array if uvc.time_array is not None else uvc.time_range.mean(axis=1)
    times_mjd = np.asarray(times_jd) - 2400000.5
    interval = float(np.median(uvc.integration_time)) if uvc.integration_time is not None else 0.0
    spw_freqs: dict[int, np.ndarray] = {}

    def full(arr, fill):
        out = np.full((n_ant, *arr.shape[1:]), fill, dtype=arr.dtype)
        out[order] = arr
        return out

    if uvc.cal_type == "delay":
        kind = "K"
        values = full(uvc.delay_array[:, 0], np.nan).transpose(1, 2, 0)  # (times, pols, ants)
        flags = full(uvc.flag_array[:, 0], True).transpose(1, 2, 0)
        snr = full(uvc.quality_array[:, 0], 0.0).transpose(1, 2, 0) if uvc.quality_array is not None else 0 * values
        freqs = np.array([])
    elif uvc.wide_band:
        kind = "G"
        values = np.conj(full(uvc.gain_array[:, 0], np.nan)).transpose(1, 2, 0)
        flags = full(uvc.flag_array[:, 0], True).transpose(1, 2, 0)
        snr = (
            full(uvc.quality_array[:, 0], 0.0).transpose(1, 2, 0) if uvc.quality_array is not None else 0 * values.real
        )
        freqs = np.array([])
    else:
        kind = "BP"
        values = np.conj(full(uvc.gain_array[:, :, 0], np.nan)).transpose(1, 2, 0)  # (chans, pols, ants)
        flags = full(uvc.flag_array[:, :, 0], True).transpose(1, 2, 0)
        snr = (
            full(uvc.quality_array[:, :, 0], 0.0).transpose(1, 2, 0)
            if uvc.quality_array is not None
            else 0 * values.real
        )
        freqs = np.asarray(uvc.freq_array, dtype=float)
        for s in np.unique(uvc.flex_spw_id_array):
            spw_freqs[int(s)] = freqs[uvc.flex_spw_id_array == s]
        order_f = np.argsort(freqs)
        values, flags, snr, freqs = values[order_f], flags[order_f], snr[order_f], freqs[order_f]
    values = np.where(flags, np.nan, values)
    refant = names.index(uvc.ref_antenna_name) if uvc.ref_antenna_name in names else 0
    return Solutions(
        kind=kind, values=values, flags=flags, snr=np.asarray(snr, dtype=float), times_mjd=times_mjd, freqs=freqs,
        spw_freqs=spw_freqs, ant_names=names, feeds=feeds, refant=refant, interval_s=interval, ms_path=str(path),
    )  # fmt: skip
