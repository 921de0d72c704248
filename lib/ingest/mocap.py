"""Motion capture: parse Motive (OptiTrack) .csv exports into marker trajectories."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from labpipe.errors import InvalidInput


@dataclass
class MocapRecordingData:
    frame_rate: float
    markers: list[str]
    trajectories: np.ndarray  # (frames, markers, 3)

    def row(self) -> dict:
        return dict(
            n_frames=len(self.trajectories),
            frame_rate=self.frame_rate,
            markers=",".join(self.markers),
            trajectories=self.trajectories,
            missing_fraction=float(np.isnan(self.trajectories).any(axis=2).mean()) if self.trajectories.size else 1.0,
        )


def read_motive_csv(path: Path) -> MocapRecordingData:
    """Read a Motive export: a metadata line, then Type/Name/.../Position/X,Y,Z header rows, then frames.

    Empty cells (occluded markers) become NaN. Raises ``InvalidInput`` naming the
    file and the row that is wrong.
    """
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or not rows[0] or rows[0][0] != "Format Version":
        raise InvalidInput(path, "not a Motive .csv export (first cell is not 'Format Version')")
    meta = dict(zip(rows[0][0::2], rows[0][1::2], strict=False))
    try:
        frame_rate = float(meta.get("Export Frame Rate") or meta["Capture Frame Rate"])
    except (KeyError, ValueError):
        raise InvalidInput(path, "metadata line has no numeric 'Export Frame Rate'") from None
    header_end = next((i for i, row in enumerate(rows) if row[:2] == ["Frame", "Time (Seconds)"]), None)
    if header_end is None:
        raise InvalidInput(path, "no 'Frame,Time (Seconds)' header row")
    names_row = next((row for row in rows[1:header_end] if row and row[0] == "Name"), None)
    if names_row is None:
        raise InvalidInput(path, "no 'Name' header row")
    columns = rows[header_end]
    markers = []
    for col in range(2, len(columns), 3):
        if columns[col : col + 3] != ["X", "Y", "Z"]:
            raise InvalidInput(path, f"column {col}: expected X,Y,Z position triplets, got {columns[col : col + 3]}")
        markers.append(names_row[col])
    data = []
    for line_no, row in enumerate(rows[header_end + 1 :], start=header_end + 2):
        if not row:
            continue
        try:
            values = [float(v) if v != "" else np.nan for v in row[2 : 2 + 3 * len(markers)]]
        except ValueError:
            raise InvalidInput(path, f"line {line_no}: non-numeric position value") from None
        values += [np.nan] * (3 * len(markers) - len(values))
        data.append(values)
    trajectories = np.asarray(data, dtype=np.float32).reshape(len(data), len(markers), 3)
    return MocapRecordingData(frame_rate, markers, trajectories)
