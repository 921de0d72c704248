"""Find a scan's behaviour files, read them, check they belong to the session, and align them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from labpipe.behavior import bpod, harp
from labpipe.behavior.sync import AlignedBehavior, SyncWiring, align, check_identity
from labpipe.calcium.scanimage import check_pages
from labpipe.errors import InvalidInput

SYNC_FILE = "harp/Behavior_32.bin"


@dataclass
class LoadedBehavior:
    row: dict
    aligned: AlignedBehavior


def align_files(
    bpod_path: Path,
    sync_path: Path,
    *,
    animal_id: str,
    session_date,
    wiring: SyncWiring,
    tiff: Path | None = None,
) -> tuple[bpod.BpodSession, AlignedBehavior]:
    """Read and check a Bpod file and its sync stream, and align them (frames checked against ``tiff``)."""
    session = bpod.read_session(bpod_path)
    check_identity(session, animal_id, session_date, wiring)
    if not Path(sync_path).is_file():
        raise InvalidInput(sync_path, "no Harp sync stream beside the Bpod file", f"expected {SYNC_FILE} in the scan")
    stream = harp.read_stream(sync_path, harp.DIGITAL_INPUT_STATE)
    frames = check_pages(tiff)[0] if tiff is not None else None
    return session, align(session, stream, wiring, imaging_frames=frames)


def load_scan(key: dict, ingest: SimpleNamespace, share: Path, wiring: SyncWiring) -> LoadedBehavior:
    """The Bpod file (exactly one), sync stream and stack of one ingest scan, aligned."""
    folder = Path(share) / (ingest.Scan & key).fetch1("folder")
    session = (ingest.Session & key).fetch1()
    names = [f["file_name"] for f in (ingest.RawFile & key).to_dicts(order_by="file_name")]
    mats = [n for n in names if n.lower().endswith(".mat")]
    if len(mats) != 1:
        raise InvalidInput(folder, f"{len(mats)} Bpod .mat files ({', '.join(mats)})", "keep one session file per scan")
    tiffs = [n for n in names if n.lower().endswith((".tif", ".tiff"))]
    tiff = folder / tiffs[0] if len(tiffs) == 1 else None
    bpod_session, aligned = align_files(
        folder / mats[0],
        folder / SYNC_FILE,
        animal_id=session["animal_id"],
        session_date=session["session_date"],
        wiring=wiring,
        tiff=tiff,
    )
    row = dict(
        bpod_file=mats[0],
        sync_file=SYNC_FILE,
        protocol=bpod_session.protocol[:64],
        bpod_subject=bpod_session.subject[:64],
        n_trials=len(bpod_session.trials),
        clock_offset=aligned.offset,
        clock_drift=aligned.drift,
        residual_ms=aligned.residual_ms,
        imaging_frame_times=aligned.imaging_frames,
        camera_frame_times=aligned.camera_frames,
    )
    return LoadedBehavior(row, aligned)
