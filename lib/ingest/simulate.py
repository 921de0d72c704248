"""A realistic simulated lab share for tests, the demo and the benchmark.

Several users, setups, sessions and scans with small but real raw files: .tif
stacks of moving cells with calcium transients (their true shifts, centres and
traces are kept outside the share), .mp4 behaviour video, Motive .csv motion
capture and .json metadata; plus malformed folders that ingest must reject.
"""

from __future__ import annotations

import datetime as dt
import json
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from labpipe.ingest.naming import session_folder_name
from labpipe.ingest.schema import SETUPS

USERS = {"alice": "AB", "bob": "BCD", "carol": "CW"}
ID_ALPHABET = np.array(list(string.ascii_uppercase + string.digits))

# name -> reason ingest must give (a substring of it)
MALFORMED = {
    "ab_ANM-2172_2026-02-10_sessQWERTY12": "initials token 'ab'",
    "AB_ANM-2172_2026-02-30_sessQWERTY13": "not a real calendar date",
    "AB_ANM-2172_2026-02-10_sessSHORT": "expected exactly 8 characters",
    "AB_ANM_2172_2026-02-10_sessQWERTY14": "expected 4 underscore-separated tokens",
    "AB_ANM-2172_10-02-2026_sessQWERTY15": "expected an ISO date",
    "AB_ANM-2172_2026-02-10_QWERTY16": "session token 'QWERTY16'",
}


def random_id(rng: np.random.Generator) -> str:
    return "".join(rng.choice(ID_ALPHABET, 8))


@dataclass
class StackTruth:
    shifts: np.ndarray  # (frames, 2) displacement applied to each frame
    centers: np.ndarray  # (cells, 2)
    activity: np.ndarray  # (cells, frames) true calcium signal


@dataclass
class SimulatedShare:
    root: Path
    sessions: list[str] = field(default_factory=list)  # accepted session folders, relative to root
    malformed: dict[str, str] = field(default_factory=dict)  # relative path -> expected reason
    stacks: dict[str, StackTruth] = field(default_factory=dict)  # relative .tif path -> truth


def imaging_stack(
    rng: np.random.Generator, frames: int = 64, size: int = 48, cells: int = 5, max_shift: float = 3.0
) -> tuple[np.ndarray, StackTruth]:
    """A uint16 stack of Gaussian cells with calcium transients, rigidly moving, with shot noise."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    margin = 8
    centers = rng.uniform(margin, size - margin, (cells, 2))
    while cells > 1 and np.min([np.hypot(*(a - b)) for i, a in enumerate(centers) for b in centers[i + 1 :]]) < 8:
        centers = rng.uniform(margin, size - margin, (cells, 2))
    spikes = rng.random((cells, frames)) < 0.06
    kernel = np.exp(-np.arange(20) / 4.0)
    activity = np.stack([np.convolve(s.astype(float), kernel)[:frames] for s in spikes])
    shifts = np.cumsum(rng.normal(0, 0.6, (frames, 2)), axis=0)
    shifts = np.clip(shifts - shifts.mean(axis=0), -max_shift, max_shift)
    stack = np.empty((frames, size, size), dtype=np.float32)
    for t in range(frames):
        frame = np.full((size, size), 100.0, dtype=np.float32)
        for (cy, cx), trace in zip(centers, activity, strict=True):
            y, x = cy + shifts[t, 0], cx + shifts[t, 1]
            frame += (60 + 300 * trace[t]) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.8**2))
        stack[t] = frame
    noisy = rng.poisson(stack).astype(np.uint16)
    return noisy, StackTruth(shifts.astype(np.float32), centers.astype(np.float32), activity.astype(np.float32))


def write_video(path: Path, rng: np.random.Generator, frames: int = 24, size: int = 64, fps: int = 25) -> None:
    """An .mp4 of two bright dots moving on a dark arena."""
    import imageio.v3 as iio

    t = np.arange(frames) / fps
    video = np.zeros((frames, size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    phase = rng.uniform(0, 2 * np.pi)
    for i, ti in enumerate(t):
        for k, radius in enumerate((3.0, 2.0)):
            cy = size / 2 + size / 4 * np.sin(2 * np.pi * 0.5 * ti + phase + k)
            cx = size / 2 + size / 4 * np.cos(2 * np.pi * 0.5 * ti + phase + k)
            video[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 255
    iio.imwrite(path, video, fps=fps, codec="libx264", macro_block_size=16)


def write_motive_csv(path: Path, rng: np.random.Generator, frames: int = 120, markers: int = 3) -> None:
    """A Motive (OptiTrack) export of a few markers, with some occluded samples left empty."""
    rate = 120.0
    names = [f"Rat:Marker{i + 1}" for i in range(markers)]
    lines = [
        f"Format Version,1.23,Take Name,sim,Capture Frame Rate,{rate},Export Frame Rate,{rate},Length Units,Meters",
        "",
        ",," + ",".join(["Marker", "Marker", "Marker"] * markers),
        "Type,," + ",".join(["Marker"] * 3 * markers),
        "Name,," + ",".join(n for n in names for _ in range(3)),
        ",," + ",".join(["Position"] * 3 * markers),
        "Frame,Time (Seconds)," + ",".join(["X", "Y", "Z"] * markers),
    ]
    walk = np.cumsum(rng.normal(0, 0.002, (frames, markers, 3)), axis=0)
    for f in range(frames):
        cells = [f"{v:.6f}" if rng.random() > 0.02 else "" for v in walk[f].ravel()]
        lines.append(f"{f},{f / rate:.6f}," + ",".join(cells))
    path.write_text("\n".join(lines) + "\n")


def write_scan(scan_dir: Path, rng: np.random.Generator, *, light: bool = False) -> StackTruth | None:
    """Raw files of one scan; ``light`` writes only metadata (for the 10,000-folder benchmark)."""
    import tifffile

    scan_dir.mkdir(parents=True, exist_ok=True)
    (scan_dir / "metadata.json").write_text(json.dumps({"objective": "16x", "fps": 30.0}))
    if light:
        return None
    stack, truth = imaging_stack(rng)
    tifffile.imwrite(scan_dir / "imaging_00001.tif", stack)
    write_video(scan_dir / "behavior_cam0.mp4", rng)
    write_motive_csv(scan_dir / "mocap_take.csv", rng)
    (scan_dir / "mocap_take.tak").write_bytes(rng.bytes(512))
    return truth


def simulate_share(
    root: Path,
    *,
    sessions_per_user: int = 2,
    scans_per_session: int = 1,
    users: dict[str, str] | None = None,
    malformed: bool = True,
    light: bool = False,
    seed: int = 0,
    start: dt.date = dt.date(2026, 2, 10),
) -> SimulatedShare:
    """Write a share under ``root``; returns what ingest should accept and reject."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    sim = SimulatedShare(root)
    for u, (username, initials) in enumerate((users or USERS).items()):
        for s in range(sessions_per_user):
            session_id = random_id(rng)
            date = start + dt.timedelta(days=s)
            folder = session_folder_name(initials, f"ANM-{2100 + u * 10 + s % 3}", date, session_id)
            for k in range(scans_per_session):
                scan_id = session_id if k == 0 else random_id(rng)
                scan_dir = root / username / folder / f"scan{scan_id}"
                truth = write_scan(scan_dir, rng, light=light)
                setup = SETUPS[(u + s + k) % len(SETUPS)]
                (scan_dir / ".origin.json").write_text(json.dumps({"setup": setup, "files": {}}))
                if truth is not None:
                    sim.stacks[f"{username}/{folder}/scan{scan_id}/imaging_00001.tif"] = truth
            sim.sessions.append(f"{username}/{folder}")
    if malformed:
        for name, reason in MALFORMED.items():
            bad = root / "alice" / name / "scanQWERTY99"
            bad.mkdir(parents=True, exist_ok=True)
            (bad / "metadata.json").write_text("{}")
            sim.malformed[f"alice/{name}"] = reason
        empty = root / "bob" / "BCD_ANM-2200_2026-02-11_sessEMPTY001"
        empty.mkdir(parents=True, exist_ok=True)
        sim.malformed["bob/BCD_ANM-2200_2026-02-11_sessEMPTY001"] = "contains no scan"
    return sim
