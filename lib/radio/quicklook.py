"""Quick-look pictures of converted groups for run summaries (matplotlib figures, no files written)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def spectrum(ms_path: Path, max_rows: int = 20000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frequencies Hz, mean |cross-correlation| per channel and pol, flagged fraction per channel) of one MS."""
    from casacore import tables

    with tables.table(str(ms_path), ack=False) as t:
        n = min(t.nrows(), max_rows)
        start = max(0, (t.nrows() - n) // 2)  # the middle of the group, where a transit peaks
        data = t.getcol("DATA", start, n)
        flags = t.getcol("FLAG", start, n)
        cross = t.getcol("ANTENNA1", start, n) != t.getcol("ANTENNA2", start, n)
    with tables.table(f"{ms_path}/SPECTRAL_WINDOW", ack=False) as spw:
        freqs = spw.getcol("CHAN_FREQ")[0]
    amp = np.ma.masked_array(np.abs(data[cross]), flags[cross]).mean(axis=0).filled(np.nan)
    return freqs, amp, flags[cross].mean(axis=(0, 2)) if cross.any() else np.ones(len(freqs))


def spectrum_figure(ms_path: Path, title: str | None = None):
    """Mean cross-correlation amplitude against frequency, flagged subbands shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    freqs, amp, flagged = spectrum(ms_path)
    figure, axis = plt.subplots(figsize=(7, 2.6))
    for p, label in enumerate(("XX", "YY")[: amp.shape[1]]):
        axis.plot(freqs / 1e6, amp[:, p], lw=0.8, label=label)
    width = (freqs[1] - freqs[0]) / 1e6 if len(freqs) > 1 else 0.25
    for f, frac in zip(freqs / 1e6, flagged, strict=True):
        if frac > 0.99:
            axis.axvspan(f - width / 2, f + width / 2, color="0.85", lw=0)
    axis.set_xlabel("frequency (MHz)")
    axis.set_ylabel("mean |V| (uncal.)")
    axis.set_title(title or Path(ms_path).name, fontsize=9)
    axis.legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    return figure


def states_figure(counts: dict[str, int]):
    """Bar chart of groups per state."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = ["collecting", "pending", "in_progress", "completed", "failed"]
    colors = ["#9ecae1", "#fdd0a2", "#fd8d3c", "#74c476", "#de2d26"]
    figure, axis = plt.subplots(figsize=(5, 1.8))
    axis.barh(order, [counts.get(s, 0) for s in order], color=colors)
    axis.invert_yaxis()
    axis.set_xlabel("groups")
    figure.tight_layout()
    return figure
