"""StEFCal: per-antenna complex gains by alternating least squares (Salvini & Wijnholds 2014).

Model: V_pq = g_p conj(g_q) M_pq for every sample of one solution cell (times and channels
sharing one gain). Holding the other antennas fixed, the least-squares g_p is
sum_q g_q A_pq / sum_q |g_q|^2 B_pq with the cell's normal sums A_pq = sum w conj(M_pq) V_pq and
B_pq = sum w |M_pq|^2, so the data are reduced once (``accumulate``) and every iteration costs
O(antennas^2) per cell, whatever the number of samples. Every second step averages the new and
the previous estimate, as in the paper, which makes the iteration converge monotonically.

Delays: ``fit_delays`` takes per-channel gains, finds the peak of their zero-padded Fourier
transform (a coarse delay that survives phase wraps) and refines it by a weighted linear fit of the
residual phase against frequency.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _accumulate_kernel():
    import numba

    @numba.njit(cache=True, nogil=True)
    def kernel(
        vis, model, flag, weight, ant1, ant2, cell_t, cell_c, jones, a_sum, b_sum, c_sum, n_sum
    ):  # pragma: no cover
        nrow, nchan, npol = vis.shape
        for r in range(nrow):
            p, q = ant1[r], ant2[r]
            if p == q or cell_t[r] < 0:
                continue
            t = cell_t[r]
            for c in range(nchan):
                k = cell_c[c]
                for s in range(npol):
                    if flag[r, c, s]:
                        continue
                    w = weight[r, s]
                    jp = jones[c, s, p]
                    jq = jones[c, s, q]
                    m = model[r, c, s] * jp * np.conj(jq)
                    v = vis[r, c, s]
                    a = w * np.conj(m) * v
                    b = w * (m.real * m.real + m.imag * m.imag)
                    cc = w * (v.real * v.real + v.imag * v.imag)
                    a_sum[t, k, s, p, q] += a  # one triangle here; the caller mirrors (half the writes)
                    b_sum[t, k, s, p, q] += b
                    c_sum[t, k, s, p, q] += cc
                    n_sum[t, k, s, p, q] += 1.0

    return kernel


_ACC = None


@dataclass
class NormalSums:
    """Per solution cell (time bins, channel bins, pols) the antenna x antenna normal sums."""

    a: np.ndarray  # complex128 (T, K, P, N, N): sum w conj(M) V
    b: np.ndarray  # float64: sum w |M|^2
    c: np.ndarray  # float64: sum w |V|^2
    n: np.ndarray  # float64: samples

    def __add__(self, other: NormalSums) -> NormalSums:
        return NormalSums(self.a + other.a, self.b + other.b, self.c + other.c, self.n + other.n)


def accumulate(
    vis: np.ndarray,
    model: np.ndarray,
    flag: np.ndarray,
    weight: np.ndarray,
    ant1: np.ndarray,
    ant2: np.ndarray,
    n_ant: int,
    cell_t: np.ndarray,
    n_t: int,
    cell_c: np.ndarray,
    n_c: int,
    jones: np.ndarray | None = None,
) -> NormalSums:
    """Reduce rows (vis/model/flag: rows x chans x pols) to normal sums per (time cell, channel cell).

    ``jones`` (chans, pols, antennas), if given, multiplies the model as J_p conj(J_q) M: the
    already-known terms (delay and bandpass when solving gains). Rows with ``cell_t < 0`` are skipped.
    """
    global _ACC
    if _ACC is None:
        _ACC = _accumulate_kernel()
    nchan, npol = vis.shape[1], vis.shape[2]
    if jones is None:
        jones = np.ones((nchan, npol, n_ant), dtype=np.complex128)
    shape = (n_t, n_c, npol, n_ant, n_ant)
    sums = NormalSums(np.zeros(shape, np.complex128), np.zeros(shape), np.zeros(shape), np.zeros(shape))
    _ACC(
        vis,
        model,
        flag,
        np.ascontiguousarray(weight, dtype=np.float64),
        np.ascontiguousarray(ant1, dtype=np.int64),
        np.ascontiguousarray(ant2, dtype=np.int64),
        np.ascontiguousarray(cell_t, dtype=np.int64),
        np.ascontiguousarray(cell_c, dtype=np.int64),
        np.ascontiguousarray(jones, dtype=np.complex128),
        sums.a,
        sums.b,
        sums.c,
        sums.n,
    )
    # each baseline went to (p, q) as the row names it: add the Hermitian mirror (q, p)
    sums.a += np.conj(np.swapaxes(sums.a, -1, -2))
    for part in (sums.b, sums.c, sums.n):
        part += np.swapaxes(part, -1, -2)
    return sums


@dataclass
class GainSolution:
    """Gains per cell and antenna (MS convention: V_pq = g_p conj(g_q) M_pq), with their quality."""

    gains: np.ndarray  # complex (..., N); NaN where not solvable
    flags: np.ndarray  # bool (..., N)
    snr: np.ndarray  # (..., N)
    iterations: np.ndarray  # (...)
    converged: np.ndarray  # bool (...)
    noise: np.ndarray  # (...) rms of one sample's residual


def stefcal(
    sums: NormalSums,
    *,
    refant: int = 0,
    max_iter: int = 100,
    tol: float = 1e-6,
    min_baselines: int = 4,
) -> GainSolution:
    """Solve every cell of ``sums`` at once; antennas with fewer than ``min_baselines`` are flagged."""
    a = sums.a.reshape(-1, *sums.a.shape[-2:])
    b = sums.b.reshape(a.shape)
    n = sums.n.reshape(a.shape)
    cells, n_ant = a.shape[0], a.shape[-1]
    usable = (n > 0).sum(axis=-1) >= min_baselines  # (cells, N)
    # dead antennas drop out of everybody's sums so they cannot bias the others
    mask = usable[:, :, None] & usable[:, None, :]
    a = np.where(mask, a, 0)
    b = np.where(mask, b, 0)
    g = usable.astype(np.complex128)
    iterations = np.zeros(cells, dtype=int)
    converged = np.zeros(cells, dtype=bool)
    active = np.ones(cells, dtype=bool)
    last_change = np.full(cells, np.inf)
    for it in range(1, max_iter + 1):
        idx = np.nonzero(active)[0]
        if idx.size == 0:
            break
        ga = g[idx]
        num = np.einsum("cpq,cq->cp", a[idx], ga)
        den = np.einsum("cpq,cq->cp", b[idx], np.abs(ga) ** 2)
        new = np.where(den > 0, num / np.where(den > 0, den, 1), 0)
        if it % 2 == 0:
            new = 0.5 * (new + ga)
        change = np.linalg.norm(new - ga, axis=1) / np.maximum(np.linalg.norm(new, axis=1), 1e-30)
        g[idx] = new
        last_change[idx] = change
        iterations[idx] = it
        done = change < tol
        converged[idx[done]] = True
        active[idx[done]] = False
    g = _reference(g, usable, refant)
    noise, snr = _quality(sums, g, usable)
    flags = ~usable | ~np.isfinite(g) | (np.abs(g) == 0)
    # a cell that ran out of iterations but has settled to 1e-3 is usable; one still moving is not
    converged |= last_change < 1e-3
    flags |= ~converged[:, None]
    g = np.where(flags, np.nan, g)
    shape = sums.a.shape[:-2]
    return GainSolution(
        gains=g.reshape(*shape, n_ant),
        flags=flags.reshape(*shape, n_ant),
        snr=snr.reshape(*shape, n_ant),
        iterations=iterations.reshape(shape),
        converged=converged.reshape(shape),
        noise=noise.reshape(shape),
    )


def _reference(g: np.ndarray, usable: np.ndarray, refant: int) -> np.ndarray:
    """Rotate each cell so the reference antenna (or the first usable one) has zero phase."""
    out = g.copy()
    for cell in range(g.shape[0]):
        candidates = [refant] + list(np.nonzero(usable[cell])[0])
        ref = next((a for a in candidates if usable[cell, a] and abs(g[cell, a]) > 0), None)
        if ref is not None:
            out[cell] *= np.conj(g[cell, ref]) / abs(g[cell, ref])
    return out


def _quality(sums: NormalSums, g: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cell the residual rms of one sample, per antenna the gain's signal-to-noise ratio."""
    a = sums.a.reshape(-1, *sums.a.shape[-2:])
    b = sums.b.reshape(a.shape)
    c = sums.c.reshape(a.shape)
    n = sums.n.reshape(a.shape)
    gg = np.where(usable, g, 0)
    cross = np.conj(gg)[:, :, None] * gg[:, None, :] * a
    power = (np.abs(gg) ** 2)[:, :, None] * (np.abs(gg) ** 2)[:, None, :] * b
    chi2 = np.clip(c - 2 * cross.real + power, 0, None)
    samples = n.sum(axis=(1, 2))
    noise = np.sqrt(chi2.sum(axis=(1, 2)) / np.maximum(samples, 1))
    info = np.einsum("cpq,cq->cp", b, np.abs(gg) ** 2)  # Fisher information of g_p per unit noise variance
    sigma_g = noise[:, None] / np.sqrt(np.maximum(info, 1e-30))
    snr = np.where(usable, np.abs(gg) / np.maximum(sigma_g, 1e-30), 0.0)
    return noise, snr


def fit_delays(
    freqs_hz: np.ndarray, gains: np.ndarray, flags: np.ndarray, *, oversample: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Delay (s) per (..., antenna) from per-channel gains (chan, ..., antenna) and a phase offset at freqs[0].

    The phase model is exp(2 pi i tau nu + i phi). Channels flagged or NaN are ignored; an antenna with
    fewer than three channels gets NaN.
    """
    freqs_hz = np.asarray(freqs_hz, dtype=float)
    order = np.argsort(freqs_hz)
    freqs_hz, gains, flags = freqs_hz[order], gains[order], flags[order]
    df = np.min(np.diff(freqs_hz)) if len(freqs_hz) > 1 else 1.0
    slot = np.rint((freqs_hz - freqs_hz[0]) / df).astype(int)
    n_fft = int(2 ** np.ceil(np.log2(max(slot[-1] + 1, 2) * oversample)))
    ok = ~flags & np.isfinite(gains)
    unit = np.where(ok, gains / np.where(ok, np.abs(gains), 1), 0)
    grid = np.zeros((n_fft, *gains.shape[1:]), dtype=np.complex128)
    np.add.at(grid, slot, unit)
    spectrum = np.fft.ifft(grid, axis=0)  # peak at tau * df * n_fft for exp(+2 pi i tau nu)
    peak = np.argmax(np.abs(spectrum), axis=0)
    lag = np.where(peak > n_fft // 2, peak - n_fft, peak)
    coarse = lag / (n_fft * df)
    rel = (freqs_hz - freqs_hz[0])[:, *([None] * (gains.ndim - 1))]
    residual = np.angle(unit * np.exp(-2j * np.pi * coarse[None] * rel))
    residual = np.where(ok, residual, 0)
    w = ok.astype(float) * np.where(ok, np.abs(np.where(ok, gains, 0)), 0)
    sw = w.sum(axis=0)
    mean_x = (w * rel).sum(axis=0) / np.maximum(sw, 1e-30)
    # unwrap against the weighted mean phase so one wrap does not bend the fit
    mean_phase = np.angle((w * np.exp(1j * residual)).sum(axis=0))
    residual = np.angle(np.exp(1j * (residual - mean_phase[None]))) + mean_phase[None]
    mean_y = (w * residual).sum(axis=0) / np.maximum(sw, 1e-30)
    slope = (w * (rel - mean_x) * (residual - mean_y)).sum(axis=0) / np.maximum(
        (w * (rel - mean_x) ** 2).sum(axis=0), 1e-30
    )
    tau = coarse + slope / (2 * np.pi)
    offset = mean_y - slope * mean_x
    bad = ok.sum(axis=0) < 3
    return np.where(bad, np.nan, tau), np.where(bad, np.nan, offset)
