"""The picture of a processed stack in its population summary: what a neuroscientist checks first.

Left, suite2p's mean image with the outline of every ROI (the cells shown on the right in their colours, the
other cells white, what the classifier rejected grey): did registration work, do the ROIs sit on somata.
Right, the dF/F of the cells suite2p is surest of, the spikes each method inferred as ticks under each trace,
and the trial starts (once the behaviour population has aligned them) as vertical lines: are these cells
alive, and do they answer the trials. Flows embed it with ``labpipe.markdown.png_markdown``.
"""

from __future__ import annotations

import numpy as np
from labpipe.calcium.analysis import as_array, best_cells, cell_activity, trial_rows

COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4")
SPIKE_FRACTION = 0.05  # a frame holds a spike where the inferred activity exceeds this fraction of its maximum
STACK = ("session_id", "scan_id", "file_name")


def processed_stacks(db, session: str | None = None, limit: int = 2) -> list[dict]:
    """The stacks with dF/F, most recently processed first (``session``: only that session's)."""
    from labpipe.calcium.schema import tables

    t = tables(db)
    query = t.Fluorescence.proj() * t.Processing.proj("processed_at")
    if session:
        query = query & {"session_id": session}
    rows = query.to_dicts(order_by="processed_at DESC", limit=limit)
    return [{k: row[k] for k in STACK} for row in rows]


def _outline(axes, mask: dict, shape: tuple, colour: str, width: float) -> None:
    """Draw one ROI's boundary (a contour of its pixels, computed on its bounding box only)."""
    ypix, xpix = as_array(mask["ypix"]).astype(int), as_array(mask["xpix"]).astype(int)
    y0, x0 = max(ypix.min() - 1, 0), max(xpix.min() - 1, 0)
    y1, x1 = min(ypix.max() + 2, shape[0]), min(xpix.max() + 2, shape[1])
    inside = np.zeros((y1 - y0, x1 - x0))
    inside[ypix - y0, xpix - x0] = 1
    axes.contour(np.arange(x0, x1), np.arange(y0, y1), inside, levels=[0.5], colors=[colour], linewidths=width)


def _draw_image(axes, db, key: dict, shown: list[int]) -> None:
    from labpipe.calcium.schema import tables

    t = tables(db)
    mean = as_array((t.MotionCorrection & key).fetch1("mean_image"))
    axes.imshow(mean, cmap="gray", vmin=np.percentile(mean, 1), vmax=np.percentile(mean, 99.5))
    for mask in (t.Segmentation.Mask & key).to_dicts(order_by="roi_id"):
        roi = int(mask["roi_id"])
        if roi in shown:
            _outline(axes, mask, mean.shape, COLOURS[shown.index(roi) % len(COLOURS)], 1.4)
        else:
            _outline(axes, mask, mean.shape, "#ffffff" if mask["is_cell"] else "#808080", 0.6)
    axes.set_title("mean image, ROI outlines", fontsize=9)
    axes.set_axis_off()


def _draw_traces(axes, db, key: dict, shown: list[int]) -> None:
    cells = [cell_activity(db, key, roi) for roi in shown]
    spread = max(float(np.nanpercentile(c.dff, 99.5) - np.nanpercentile(c.dff, 0.5)) for c in cells) or 1.0
    for row, cell in enumerate(cells):
        colour, base = COLOURS[row % len(COLOURS)], -row * 1.6 * spread
        axes.plot(cell.seconds, cell.dff + base, color=colour, linewidth=0.6)
        axes.text(cell.seconds[-1], base, f" ROI {cell.roi_id}", color=colour, fontsize=8, va="bottom")
        for level, (method, values) in enumerate(sorted(cell.activity.items()), start=1):
            frames = np.flatnonzero(values > SPIKE_FRACTION * max(float(values.max()), 1e-12))
            top = base - (0.12 + 0.14 * (level - 1)) * spread
            axes.vlines(cell.seconds[frames], top - 0.1 * spread, top, color=colour, linewidth=0.5)
            if row == 0:
                axes.text(0, top - 0.05 * spread, f"{method} ", fontsize=7, ha="right", va="center")
    for trial in trial_rows(db, key):
        if trial["start_frame"] >= 0:
            axes.axvline(trial["start_frame"] / cells[0].frame_rate, color="#999999", linewidth=0.5, alpha=0.6)
    axes.set_xlabel("time (s); grey lines: trial starts")
    axes.set_yticks([])
    axes.set_title("dF/F and inferred spikes of the surest cells", fontsize=9)


def stack_figure(db, key: dict, cells: int = 4):
    """The two panels for the stack ``key``; None when suite2p classified no ROI as a cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from labpipe.calcium.schema import tables

    segmentation = (tables(db).Segmentation & key).fetch1()
    if not segmentation["n_cells"]:
        return None
    shown = best_cells(db, key, cells)
    figure, (image, traces) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 2]})
    _draw_image(image, db, key, shown)
    _draw_traces(traces, db, key, shown)
    figure.suptitle(
        f"{key['session_id']} {key['file_name']}: {segmentation['n_cells']} cells of {segmentation['n_rois']} ROIs",
        fontsize=10,
    )
    figure.tight_layout()
    return figure


def stack_pictures(db, session: str | None = None, limit: int = 2) -> list[str]:
    """Markdown pictures (``stack_figure``) of the ``limit`` stacks most recently processed, for a run summary."""
    import matplotlib.pyplot as plt
    from labpipe.markdown import png_markdown

    pictures = []
    for key in processed_stacks(db, session, limit):
        figure = stack_figure(db, key)
        if figure is not None:
            pictures.append(png_markdown(figure, f"{key['session_id']} {key['file_name']}: ROIs and activity"))
            plt.close(figure)  # a worker process draws many summaries
    return pictures
