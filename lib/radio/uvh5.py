"""Read DSA-110 UVH5 subband files with h5py alone: headers for validation, phased visibilities per subband.

Deliberately free of pyuvdata (its import costs seconds of CPU in every Dask
worker); the per-subband work a worker does is: read the visibilities in row
blocks, rotate them to the new phase centre (multiply by exp(-2 pi i w f / c),
as pyuvdata's ``phase`` does for unprojected data), conjugate into the CASA
convention (pyuvdata ``write_ms(flip_conj=True)``), reverse the descending
channels into ascending order, and return complex64 arrays.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from labpipe.errors import InvalidInput
from labpipe.radio.instrument import C_LIGHT

ROW_BLOCK = 16384  # rows per read: bounds a worker's temporary memory to ~30 MB per array


@dataclass(frozen=True)
class SubbandHeader:
    """What a subband file says about itself, enough to check it belongs with the others."""

    path: str
    n_blts: int
    n_freqs: int
    n_pols: int
    freqs_hz: np.ndarray  # file order
    channel_width_hz: float
    polarizations: tuple[int, ...]
    unique_times_jd: np.ndarray
    layout_digest: str  # sha1 of (time, ant1, ant2) per row: rows must line up across subbands
    projected: bool
    pointing_dec_rad: float | None
    antenna_numbers: tuple[int, ...]
    chunk_rows: tuple[int, ...] = ()  # HDF5 chunk length along rows of visdata, flags, nsamples


def _read(group, name: str):
    if name not in group:
        raise KeyError(name)
    return group[name][()]


def read_header(path: Path) -> SubbandHeader:
    """The header of a UVH5 file; ``InvalidInput`` naming the file if it is unreadable, truncated or incomplete."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            h = f["Header"]
            n_blts, n_freqs, n_pols = int(_read(h, "Nblts")), int(_read(h, "Nfreqs")), int(_read(h, "Npols"))
            freqs = np.asarray(_read(h, "freq_array"), float).reshape(-1)
            width = np.abs(np.asarray(_read(h, "channel_width"), float)).reshape(-1)
            times = np.asarray(_read(h, "time_array"), float)
            ant1, ant2 = np.asarray(_read(h, "ant_1_array")), np.asarray(_read(h, "ant_2_array"))
            pols = tuple(int(p) for p in np.asarray(_read(h, "polarization_array")).reshape(-1))
            catalog = h.get("phase_center_catalog")
            types = {bytes(catalog[k]["cat_type"][()]).decode() for k in catalog} if catalog is not None else set()
            dec = None
            if "extra_keywords" in h and "phase_center_dec" in h["extra_keywords"]:
                dec = float(h["extra_keywords"]["phase_center_dec"][()])
            antennas = tuple(int(a) for a in _read(h, "antenna_numbers"))
            data = f["Data"]
            chunk_rows = []
            for name in ("visdata", "flags", "nsamples"):
                dset = data[name]
                chunk_rows.append(dset.chunks[0] if dset.chunks else n_blts)
                if dset.shape != (n_blts, n_freqs, n_pols):
                    raise InvalidInput(
                        path, f"Data/{name} has shape {dset.shape}, header says {(n_blts, n_freqs, n_pols)}"
                    )
                dset[-1:]  # a truncated file fails here: its last rows are gone
    except InvalidInput:
        raise
    except KeyError as exc:
        raise InvalidInput(path, f"not a UVH5 subband file: no {exc}", "expected pyuvdata's UVH5 layout") from exc
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidInput(path, f"unreadable or truncated HDF5 ({exc})", "the file is damaged; re-copy it") from exc
    if len(freqs) != n_freqs or len(times) != n_blts or len(ant1) != n_blts:
        raise InvalidInput(path, "header arrays disagree with Nblts/Nfreqs", "the file is damaged")
    digest = hashlib.sha1()
    for array in (np.round((times - times[0]) * 86400.0, 3), ant1.astype(np.int64), ant2.astype(np.int64)):
        digest.update(np.ascontiguousarray(array).tobytes())
    return SubbandHeader(
        path=str(path),
        n_blts=n_blts,
        n_freqs=n_freqs,
        n_pols=n_pols,
        freqs_hz=freqs,
        channel_width_hz=float(width[0]) if len(width) else 0.0,
        polarizations=pols,
        unique_times_jd=np.unique(times),
        layout_digest=digest.hexdigest(),
        projected=bool(types - {"unprojected"}),
        pointing_dec_rad=dec,
        antenna_numbers=antennas,
        chunk_rows=tuple(chunk_rows),
    )


@dataclass
class Part:
    """One subband's phased rows ``[row_start, row_stop)``, written as raw files by a worker.

    ``<prefix>.c64``: (rows, chans, pols) complex64, ascending channels, CASA conjugation.
    ``<prefix>.flags`` (bool) only when something is flagged; ``<prefix>.weights`` (float32) only
    when the nsamples differ, else ``weight`` is the one value they all have (DSA-110: always).
    """

    subband: int
    row_start: int
    row_stop: int
    prefix: str
    shape: tuple[int, int, int]
    flagged: bool = False
    weight: float | None = 1.0
    seconds: float = 0.0

    def data(self) -> np.ndarray:
        return np.memmap(f"{self.prefix}.c64", np.complex64, "r", shape=self.shape)

    def flags(self) -> np.ndarray | None:
        return np.memmap(f"{self.prefix}.flags", bool, "r", shape=self.shape) if self.flagged else None

    def weights(self) -> np.ndarray | None:
        return (
            None if self.weight is not None else np.memmap(f"{self.prefix}.weights", np.float32, "r", shape=self.shape)
        )


def _axis_index(order: np.ndarray):
    """A slice when the reordering is the identity or a reversal (views, no copies), else the index array."""
    n = len(order)
    if np.array_equal(order, np.arange(n)):
        return slice(None)
    if np.array_equal(order, np.arange(n)[::-1]):
        return slice(None, None, -1)
    return order


def phase_part(
    path: str,
    subband: int,
    w_m: np.ndarray,
    row_start: int,
    row_stop: int,
    prefix: str,
    pol_order: list[int] | None = None,
    block_rows: int = ROW_BLOCK,
) -> Part:
    """Phase rows ``[row_start, row_stop)`` of one file with their new w (m) into raw part files; a Dask task.

    pyuvdata phases unprojected data by ``data *= exp(-2 pi i w f / c)``; the
    Measurement Set holds the conjugate (CASA convention), so this writes
    ``conj(data) * exp(+2 pi i w f / c)``, complex64. Phases are reduced to
    turns in float64 before the float32 sine and cosine, which keeps float32
    precision on kilometre baselines. Memory: a few row blocks, never the file.
    """
    import time

    import h5py

    started = time.perf_counter()
    flag_file = weight_file = None
    try:
        with h5py.File(path, "r") as f, open(f"{prefix}.c64", "wb") as out_file:
            freqs = np.asarray(f["Header/freq_array"][()], float).reshape(-1)
            vis, flags_in, nsamples = f["Data/visdata"], f["Data/flags"], f["Data/nsamples"]
            _, n_chan, n_pol = vis.shape
            order = np.argsort(freqs, kind="stable")  # ascending, for the MS
            chans = _axis_index(order)
            pols = _axis_index(np.asarray(pol_order if pol_order is not None else range(n_pol)))
            f_over_c = freqs[order] / C_LIGHT
            rows = min(block_rows, row_stop - row_start)
            raw = _buffer("raw", (rows, n_chan, n_pol), vis.dtype)
            out = _buffer("out", (rows, n_chan, n_pol), np.complex64)
            raw_flags = _buffer("flags", (rows, n_chan, n_pol), bool)
            raw_weights = _buffer("weights", (rows, n_chan, n_pol), np.float32)
            turns, whole = _buffer("turns", (rows, n_chan), float), _buffer("whole", (rows, n_chan), float)
            angle = _buffer("angle", (rows, n_chan), np.float32)
            rot = _buffer("rot", (rows, n_chan), np.complex64)
            weight: float | None = None
            seen = 0
            for lo in range(row_start, row_stop, block_rows):
                hi = min(lo + block_rows, row_stop)
                n = hi - lo
                vis.read_direct(raw, np.s_[lo:hi], np.s_[:n])
                np.conjugate(raw[:n][:, chans][:, :, pols], out=out[:n], casting="same_kind")
                np.multiply.outer(w_m[lo - row_start : hi - row_start], f_over_c, out=turns[:n])
                np.floor(turns[:n], out=whole[:n])
                turns[:n] -= whole[:n]
                np.multiply(turns[:n], 2 * np.pi, out=angle[:n], casting="same_kind")
                np.cos(angle[:n], out=rot.real[:n])
                np.sin(angle[:n], out=rot.imag[:n])
                out[:n] *= rot[:n, :, None]
                out[:n].tofile(out_file)
                flags_in.read_direct(raw_flags, np.s_[lo:hi], np.s_[:n])
                block_flags = raw_flags[:n][:, chans][:, :, pols]
                if flag_file is None and block_flags.any():
                    flag_file = _backfill(f"{prefix}.flags", seen, (n_chan, n_pol), bool, False)
                if flag_file is not None:
                    np.ascontiguousarray(block_flags).tofile(flag_file)
                nsamples.read_direct(raw_weights, np.s_[lo:hi], np.s_[:n])
                block_weights = raw_weights[:n][:, chans][:, :, pols]
                first = float(block_weights.flat[0])
                if weight_file is None and (weight is None or weight == first) and np.all(block_weights == first):
                    weight = first
                else:
                    if weight_file is None:
                        weight_file = _backfill(f"{prefix}.weights", seen, (n_chan, n_pol), np.float32, weight)
                    np.ascontiguousarray(block_weights).tofile(weight_file)
                seen += n
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise InvalidInput(path, f"cannot read the visibilities ({exc})", "the file is damaged; re-copy it") from exc
    finally:
        for handle in (flag_file, weight_file):
            if handle is not None:
                handle.close()
    shape = (row_stop - row_start, n_chan, n_pol)
    return Part(
        subband=subband,
        row_start=row_start,
        row_stop=row_stop,
        prefix=prefix,
        shape=shape,
        flagged=flag_file is not None,
        weight=None if weight_file is not None else weight,
        seconds=time.perf_counter() - started,
    )


_buffers = threading.local()


def _buffer(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A scratch array kept per thread between tasks: a worker phases dozens of slabs, and touching
    fresh memory (page faults) for every one of them costs more CPU than the arithmetic."""
    cache = _buffers.__dict__.setdefault("arrays", {})
    dtype = np.dtype(dtype)
    have = cache.get(name)
    if have is None or have.dtype != dtype or have.shape[1:] != shape[1:] or have.shape[0] < shape[0]:
        have = cache[name] = np.empty(shape, dtype)
    return have[: shape[0]]


def _backfill(name: str, rows: int, cell: tuple[int, int], dtype, value):
    """Open a part file that starts late: the rows already done all had ``value``."""
    handle = open(name, "wb")  # noqa: SIM115 - closed by the caller
    if rows:
        np.full((rows, *cell), value if value is not None else 0, dtype).tofile(handle)
    return handle
