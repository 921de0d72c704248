"""A simulated lab share of mixed data for backup tests, the demo and the benchmark.

What a lab share holds, in the proportions that matter for borg: compressible
two-photon ``.tif`` stacks (smooth cells plus shot noise) and raw ``.csv``
tables, incompressible ``.mp4`` behaviour video (real H.264 of a noisy scene),
and a database dump (a real SQLite file of acquisition rows).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
from labpipe.files import sha256_file


def _tif_stack(path: Path, rng: np.random.Generator, megabytes: float) -> None:
    import tifffile

    size = 256
    frames = max(1, int(megabytes * 1e6 / (size * size * 2)))
    yy, xx = np.mgrid[:size, :size]
    base = np.zeros((size, size), np.float32)
    for _ in range(12):
        cy, cx = rng.uniform(20, size - 20, 2)
        base += 800 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 6.0**2))
    stack = np.empty((frames, size, size), np.uint16)
    for i in range(frames):
        stack[i] = rng.poisson(base * (1 + 0.3 * np.sin(i / 5)) + 100).astype(np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, stack)


def _csv_table(path: Path, rng: np.random.Generator, megabytes: float) -> None:
    rows = max(1, int(megabytes * 1e6 / 40))
    t = np.arange(rows) / 120.0
    data = np.column_stack([t, np.sin(t) + rng.normal(0, 0.01, rows), rng.normal(0, 1, rows).round(3)])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, data, delimiter=",", fmt="%.4f", header="time_s,x_m,noise", comments="")


def _video(path: Path, rng: np.random.Generator, megabytes: float) -> None:
    import imageio.v2 as imageio

    size, fps = 256, 25
    path.parent.mkdir(parents=True, exist_ok=True)
    # noise encodes to roughly its raw size at this quality; stop once the file is big enough
    with imageio.get_writer(
        path, fps=fps, codec="libx264", quality=10, macro_block_size=16, ffmpeg_log_level="error"
    ) as writer:
        frames = max(2, int(megabytes * 1e6 / (size * size * 1.2)))
        for _ in range(frames):
            writer.append_data(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def _dump(path: Path, rng: np.random.Generator, megabytes: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE scan (id INTEGER PRIMARY KEY, session TEXT, setup TEXT, frames INT, rate REAL)")
    rows = max(1, int(megabytes * 1e6 / 60))
    setups = ["mini2p1", "mini2p2", "bench2p1", "aux1", "aux2", "behavior1", "behavior2"]
    conn.executemany(
        "INSERT INTO scan (session, setup, frames, rate) VALUES (?, ?, ?, ?)",
        (
            (
                f"AB_ANM-{rng.integers(1000, 9999)}_2026-02-10_sess{i:08d}",
                setups[i % 7],
                int(rng.integers(100, 9000)),
                float(rng.uniform(5, 60)),
            )
            for i in range(rows)
        ),
    )
    conn.commit()
    conn.close()


def write_lab_share(
    root: Path,
    *,
    tif_mb: float = 2.0,
    csv_mb: float = 1.0,
    video_mb: float = 1.0,
    dump_mb: float = 0.5,
    sessions: int = 2,
    seed: int = 0,
) -> dict[str, str]:
    """Write mixed lab data under ``root`` (``share/``, ``dumps/``); returns relative path -> SHA-256."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for i in range(sessions):
        scan = root / "share" / "alice" / f"AB_ANM-2172_2026-02-1{i}_sessQWERTY{i:02d}" / f"scanQWERTY{i:02d}"
        _tif_stack(scan / "stack_00001.tif", rng, tif_mb / sessions)
        _csv_table(scan / "mocap.csv", rng, csv_mb / sessions)
        _video(scan / "behaviour.mp4", rng, video_mb / sessions)
    _dump(root / "dumps" / "sqlite-acquisition-20260210T020000.sqlite3", rng, dump_mb)
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def tree_checksums(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every regular file under ``root``."""
    root = Path(root)
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}
