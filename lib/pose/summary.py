"""What a pose run leaves for people: frames processed, mean likelihood per bodypart, frames with their points.

Returns a matplotlib figure; flows embed it in their summary artifact
(``labpipe.markdown.png_markdown``), the CLI saves it as a PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from labpipe.db.connect import LabDatabase
from labpipe.pose.schema import tables
from labpipe.pose.video import read_frames

COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")


def _array(value) -> np.ndarray:
    return np.asarray(value.load() if hasattr(value, "load") else value)


def result_rows(db: LabDatabase, keys: list[dict]) -> list[dict]:
    """One row per analysed task: video, model, frames, mean likelihood per bodypart, worker, seconds."""
    t = tables(db)
    rows = []
    for key in keys:
        restricted = t.PoseEstimation & key
        if not restricted:
            continue
        head = restricted.proj("model_name", "model_id", "n_frames", "worker", "duration_s", "device").fetch1()
        parts = (t.PoseEstimation.Bodypart & key).to_dicts(order_by="bodypart")
        likelihood = ", ".join(f"{p['bodypart']} {p['mean_likelihood']:.3f}" for p in parts)
        rows.append(
            {
                "video": f"{key['session_id']}/{key['scan_id']}/{key['file_name']}",
                "model": f"{head['model_name']} ({head['model_id']})",
                "frames": int(head["n_frames"]),
                "mean likelihood": likelihood,
                "device": head["device"],
                "worker": head["worker"],
                "seconds": round(float(head["duration_s"]), 1),
            }
        )
    return rows


def preview_figure(db: LabDatabase, share: Path, keys: list[dict], *, frames: int = 4, videos: int = 4):
    """A grid: for up to ``videos`` analysed videos, ``frames`` frames with the predicted points drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = tables(db)
    shown = [k for k in keys if t.PoseEstimation & k][:videos]
    if not shown or frames <= 0:
        return None
    figure, axes = plt.subplots(len(shown), frames, figsize=(2.2 * frames, 2.4 * len(shown)), squeeze=False)
    for row, key in enumerate(shown):
        folder = (t.ingest.Scan & key).fetch1("folder")
        parts = (t.PoseEstimation.Bodypart & key).to_dicts()
        n = int((t.PoseEstimation & key).fetch1("n_frames"))
        chosen = np.unique(np.linspace(0, n - 1, frames).round().astype(int))
        images = read_frames(Path(share) / folder / key["file_name"], chosen)
        for col, ax in enumerate(axes[row]):
            ax.axis("off")
            if col >= len(chosen):
                continue
            ax.imshow(images[col])
            for i, part in enumerate(parts):
                x, y, p = (_array(part[c])[chosen[col]] for c in ("x", "y", "likelihood"))
                colour = COLOURS[i % len(COLOURS)]
                ax.scatter([x], [y], s=40, facecolors="none", edgecolors=colour, linewidths=1.5, alpha=0.3 + 0.7 * p)
                if row == 0 and col == 0:
                    ax.scatter([], [], c=colour, label=part["bodypart"])
            ax.set_title(f"{key['file_name']} #{chosen[col]}" if col == 0 else f"#{chosen[col]}", fontsize=7)
        if row == 0:
            axes[0][0].legend(fontsize=6, loc="lower left")
    figure.tight_layout()
    return figure


def summary_markdown(rows: list[dict], errors: list[dict], remaining: int, table) -> str:
    """The text of a run summary; ``table`` renders rows (``labpipe.markdown.markdown_table``)."""
    frames = sum(r["frames"] for r in rows)
    lines = [
        f"# Pose estimation: {len(rows)} videos, {frames} frames processed",
        f"{len(errors)} tasks refused or failed; {remaining} still to do.\n",
        "## Analysed\n",
        table(rows, ["video", "model", "frames", "mean likelihood", "device", "worker", "seconds"]),
        f"## Refused or failed ({len(errors)})\n",
        table([{"task": e["key"].get("file_name", e["key"]), "why": e["error"]} for e in errors], ["task", "why"]),
    ]
    return "\n".join(lines)
