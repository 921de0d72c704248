"""What the analysis notebook asks of the database: a cell's activity, the trials, a pose trace, aligned.

Arrays come from the calcium, behaviour and pose tables (``labpipe.calcium.schema``,
``labpipe.behavior.schema``, ``labpipe.pose.schema``); alignment is by frame index, the
behaviour population having placed every trial on the imaging and camera frames through the
Harp sync stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from labpipe.errors import InvalidInput


def as_array(value) -> np.ndarray:
    return np.asarray(value.load() if hasattr(value, "load") else value)


@dataclass
class CellActivity:
    """One ROI's dF/F and its inferred activity by each method that ran (frames,)."""

    key: dict
    roi_id: int
    frame_rate: float
    dff: np.ndarray
    activity: dict[str, np.ndarray] = field(default_factory=dict)  # method -> (frames,)

    @property
    def seconds(self) -> np.ndarray:
        return np.arange(len(self.dff)) / self.frame_rate


def best_cells(db, key: dict, count: int) -> list[int]:
    """The ``count`` ROIs suite2p's classifier is surest are cells (ties: the larger skew) in the stack ``key``."""
    from labpipe.calcium.schema import tables

    masks = (tables(db).Segmentation.Mask & key & "is_cell").proj("cell_probability", "skew").to_dicts()
    if not masks:
        raise InvalidInput(str(key), "no ROI classified as a cell", "check the imaging population's summary")
    ranked = sorted(masks, key=lambda m: (m["cell_probability"], m["skew"]), reverse=True)
    return [int(m["roi_id"]) for m in ranked[:count]]


def best_cell(db, key: dict) -> int:
    """The ROI suite2p's classifier is surest is a cell (ties: the larger skew) in the stack ``key``."""
    return best_cells(db, key, 1)[0]


def cell_activity(db, key: dict, roi_id: int | None = None) -> CellActivity:
    """dF/F and inferred activity (every method that ran) of ROI ``roi_id`` (default: ``best_cell``)."""
    from labpipe.calcium.schema import tables

    t = tables(db)
    roi_id = best_cell(db, key) if roi_id is None else roi_id
    stack = (t.Fluorescence & key).keys()
    if len(stack) != 1:
        raise InvalidInput(str(key), f"matches {len(stack)} processed stacks, expected one", "name the file_name too")
    stack, roi = stack[0], {"roi_id": roi_id}
    dff = as_array((t.Fluorescence.Trace & stack & roi).fetch1("dff"))
    activity = {
        row["method"]: as_array(row["activity"]) for row in (t.Activity.Trace & stack & roi).to_dicts(order_by="method")
    }
    return CellActivity(stack, roi_id, float((t.Fluorescence & stack).fetch1("frame_rate")), dff, activity)


def trial_rows(db, key: dict) -> list[dict]:
    """The scan's trials in order (type, start and stop on the Harp clock, imaging and camera frames)."""
    from labpipe.behavior.schema import tables

    scan = {k: key[k] for k in ("session_id", "scan_id")}
    return (tables(db).BehaviorSession.Trial & scan).to_dicts(order_by="trial_id")


def trial_windows(trace: np.ndarray, starts, before: int, after: int) -> np.ndarray:
    """(trials, before + after) samples of ``trace`` around each start index; NaN outside the trace."""
    trace = np.asarray(trace, dtype=float)
    out = np.full((len(starts), before + after), np.nan)
    for i, start in enumerate(starts):
        if start < 0:
            continue
        lo, hi = start - before, start + after
        src = trace[max(lo, 0) : min(hi, len(trace))]
        out[i, max(0, -lo) : max(0, -lo) + len(src)] = src
    return out


@dataclass
class PoseTrace:
    bodypart: str
    x: np.ndarray  # (camera frames,) pixels
    y: np.ndarray
    likelihood: np.ndarray


def pose_trace(db, key: dict, bodypart: str | None = None) -> PoseTrace | None:
    """One bodypart's track from the scan's pose estimation, or None when the scan has none."""
    from labpipe.pose.schema import tables

    scan = {k: key[k] for k in ("session_id", "scan_id")}
    rows = (tables(db).PoseEstimation.Bodypart & scan).to_dicts(order_by="bodypart")
    if bodypart is not None:
        rows = [r for r in rows if r["bodypart"] == bodypart]
    if not rows:
        return None
    row = rows[0]
    return PoseTrace(row["bodypart"], as_array(row["x"]), as_array(row["y"]), as_array(row["likelihood"]))
