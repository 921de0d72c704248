"""Imaging benchmark: labpipe's suite2p population against suite2p run by hand, memory, accuracy, spikes, denoising.

Run alone on the machine:
    flock /tmp/labpipe-bench.lock .venv/bin/python tests/bench/imaging.py [--frames 20000 --size 512]

Measured in one run, on a simulated recording (ScanImage-like TIFF, truth kept aside):
- overhead: wall time of labpipe's ``imaging`` population (ScanInfo, suite2p, tables and blob store
  copies) over the same suite2p settings run by hand with ``suite2p.run_s2p`` on the same file;
- peak memory of the worker process running the population, on the recording and on one with half
  the frames: ``peak_gb`` is its private memory (anonymous + shared RSS, sampled every 20 ms), what must
  not grow with the frames; ``peak_rss_gb`` its max RSS, which also counts the touched pages of suite2p's
  memory-mapped binary (reclaimable page cache, 2 bytes per pixel per frame). Use at least 4000 frames:
  suite2p skips its registration metrics below 1500 frames, and their sample grows up to 2000 frames, so a
  shorter half-length run does less work, not less per frame. What stays proportional to the frames: the
  traces (ROIs x frames) and, below detection_bins x round(tau x frame rate) frames (30,000 at 30 Hz,
  tau 1 s), detection's binned movie (frames / round(tau x frame rate) binned frames);
- ROI recall (active true cells found) and precision (ROIs that are true cells) against truth;
- spike-rate correlation with the true spikes on the recording's matched ROIs, for OASIS (suite2p)
  and the CASCADE-style network (the gpu population, here on CPU), and the same on simulated
  dF/F at the lab's frame rates (7.5, 15, 30 Hz) and noise levels nu 1-8;
- denoising: SNR gain of Noise2Void on the recording against its noiseless frames, and ROI
  recall/precision of suite2p on a crop of the raw and of the denoised stack.
Each measured step runs in a child process (its peak RSS is its own). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MPLBACKEND", "Agg")
HERE = Path(__file__).resolve()


def _child(kind: str, *args: str) -> dict:
    """Run one measured step in a fresh process; returns its JSON result with wall seconds and peak GB.

    ``peak_rss_gb`` is the child's max RSS (getrusage): it counts the pages of suite2p's memory-mapped binary
    that the process touched (file-backed page cache the kernel reclaims under pressure, 2 bytes per pixel
    per frame), so it grows with the recording by construction. ``peak_gb`` is the peak of the child's
    private memory (anonymous + shared-memory RSS, what cannot be dropped), sampled from here every 20 ms.
    """
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(HERE), "--child", kind, *args], stdout=subprocess.PIPE, text=True)
    private = {"peak": 0.0}

    def sample() -> None:
        while proc.poll() is None:
            private["peak"] = max(private["peak"], _private_gb(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"child {kind} failed with {proc.returncode}")
    result = json.loads(stdout.strip().splitlines()[-1])  # each child reports its own max RSS
    result["peak_rss_gb"] = result.pop("peak_gb")
    result["peak_gb"] = private["peak"]
    result["wall_s"] = time.monotonic() - started
    return result


def _private_gb(pid: int) -> float:
    """Anonymous + shared-memory resident set of ``pid`` now (0 once it has ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    kib = sum(int(line.split()[1]) for line in status.splitlines() if line.startswith(("RssAnon:", "RssShmem:")))
    return kib / 1024**2


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


# ---- children -----------------------------------------------------------------------------------------------


def child_simulate(work: Path, frames: int, size: int, cells: int, seed: int) -> dict:
    from labpipe.calcium.simulate import RecordingSpec
    from labpipe.ingest.simulate_science import simulate_science_share

    spec = RecordingSpec(frames=frames, height=size, width=size, cells=cells, seed=seed)
    t0 = time.monotonic()
    share = simulate_science_share(work / "share", 1, spec=spec, video=False, seed=seed)
    scan = share.scans[0]
    scan.recording.save(work / "truth.npz")
    return {
        "tiff": str(share.root / scan.folder / "imaging_00001.tif"),
        "seconds": time.monotonic() - t0,
        "peak_gb": _peak_gb(),
        "spec": spec.model_dump(),
    }


def child_by_hand(tiff: Path, work: Path) -> dict:
    """suite2p's own API on the file, with the settings labpipe passes it."""
    import suite2p
    from labpipe.calcium.scanimage import read_scan_info
    from labpipe.calcium.settings import Suite2pSettings

    info = read_scan_info(tiff)
    settings = Suite2pSettings().suite2p(info.frame_rate, info.height, info.width)
    db = {
        "data_path": [str(tiff.parent)],
        "file_list": [tiff.name],
        "save_path0": str(work / "save"),
        "fast_disk": str(work / "fast"),
        "force_sktiff": True,
        "batch_size": Suite2pSettings().batch_size,
    }
    t0 = time.monotonic()
    suite2p.run_s2p(db=db, settings=settings)
    return {"seconds": time.monotonic() - t0, "peak_gb": _peak_gb()}


def child_population(share: Path, work: Path, spec_json: str) -> dict:
    """labpipe: ingest the share into a fresh database, run the imaging population, read ROIs and OASIS back."""
    from labpipe.calcium.populate import run_population
    from labpipe.calcium.schema import CalciumContext, tables
    from labpipe.calcium.settings import Suite2pSettings
    from labpipe.db.connect import LabDatabase
    from labpipe.db.embedded import EmbeddedPostgres
    from labpipe.ingest.run import ingest_share

    server = EmbeddedPostgres(work / "pg")
    db = LabDatabase(server.start(), work / "blobs", prefix=f"bench{os.getpid()}")
    try:
        ingest_share(db, share)
        tables(db)  # declaring tables is not population work
        t0 = time.monotonic()
        result = run_population(db, "imaging", CalciumContext(share, work / "scratch", Suite2pSettings()))
        seconds = time.monotonic() - t0
        assert not result.errors, result.errors
        t = tables(db)
        masks = (t.Segmentation.Mask & "is_cell").to_dicts(order_by="roi_id")
        oasis = {r["roi_id"]: np.asarray(r["activity"]) for r in (t.Activity.Trace & {"method": "oasis"}).to_dicts()}
        dff = {r["roi_id"]: np.asarray(r["dff"]) for r in t.Fluorescence.Trace.to_dicts()}
        mean_image = np.asarray(t.MotionCorrection.fetch1("mean_image"))
        np.savez(
            work / "rois.npz",
            centres=np.array([[m["center_y"], m["center_x"]] for m in masks]).reshape(-1, 2),
            roi_ids=np.array([m["roi_id"] for m in masks]),
            mean_image=mean_image,
            oasis=np.stack([oasis[m["roi_id"]] for m in masks]) if masks else np.zeros((0, 0)),
            dff=np.stack([dff[m["roi_id"]] for m in masks]) if masks else np.zeros((0, 0)),
        )
        return {"seconds": seconds, "peak_gb": _peak_gb(), "rois": len(masks), "steps_s": result.seconds}
    finally:
        db.drop_all()
        server.stop()


def child_spikes(work: Path, frame_rate: float, settings_json: str) -> dict:
    """CASCADE-style network on the recording's dF/F (model for its frame rate and noise level)."""
    from labpipe.calcium.settings import SpikeSettings
    from labpipe.calcium.simulate import noise_level
    from labpipe.calcium.spikes import model_for

    rois = np.load(work / "rois.npz")
    settings = SpikeSettings(**json.loads(settings_json))
    nu = float(np.median(noise_level(rois["dff"], frame_rate)))
    t0 = time.monotonic()
    model = model_for(frame_rate, nu, settings, work / "models")
    train_s = time.monotonic() - t0
    np.save(work / "cascade.npy", model.predict(rois["dff"]))
    return {"noise_level": nu, "train_s": train_s, "peak_gb": _peak_gb()}


def child_denoise(tiff: Path, work: Path, settings_json: str, crop: int, crop_frames: int) -> dict:
    """Noise2Void on the recording: SNR on 40 frames against truth; raw and denoised crops for suite2p."""
    import tifffile
    from labpipe.calcium.denoise import denoise_frames, denoise_stack, train_denoiser
    from labpipe.calcium.evaluate import snr_db
    from labpipe.calcium.settings import DenoiseSettings
    from labpipe.calcium.simulate import Recording, RecordingSpec

    spec = RecordingSpec(**json.loads((work / "spec.json").read_text()))
    settings = DenoiseSettings(**json.loads(settings_json))
    t0 = time.monotonic()
    model, _ = train_denoiser(tiff, settings)
    train_s = time.monotonic() - t0
    recording = Recording(spec)
    frames = recording.noisy_frames(100, 140).astype(np.float32)
    clean = recording.clean_frames(100, 140)
    gain = snr_db(denoise_frames(model, frames), clean) - snr_db(frames, clean)
    # the effect on detection, on a crop (a full-size second suite2p run does not fit the bench's time)
    crop_dir = work / "crop"
    crop_dir.mkdir(exist_ok=True)
    with tifffile.TiffFile(tiff) as tif:
        software = tif.pages.first.software
        stack = np.stack([tif.pages[i].asarray()[:crop, :crop] for i in range(min(crop_frames, len(tif.pages)))])
    tifffile.imwrite(
        crop_dir / "raw.tif", stack, software=software, bigtiff=True, photometric="minisblack", metadata=None
    )
    result = denoise_stack(crop_dir / "raw.tif", crop_dir / "denoised.tif", settings)
    return {"snr_gain_db": gain, "train_s": train_s, "denoise_s": result.seconds, "peak_gb": _peak_gb()}


def child_crop_rois(tiff: Path, work: Path) -> dict:
    """suite2p (labpipe's settings) on a crop; ROI centres saved for matching."""
    from labpipe.calcium.scanimage import read_scan_info
    from labpipe.calcium.settings import Suite2pSettings
    from labpipe.calcium.suite2p_run import Suite2pResult, run_suite2p
    from labpipe.errors import ToolError

    try:
        out = run_suite2p(
            tiff, work / f"s2p-{tiff.stem}" / "plane0", read_scan_info(tiff), Suite2pSettings(), work / "scratch"
        )
    except ToolError as exc:
        if "no ROIs were found" not in str(exc):
            raise
        import tifffile

        np.savez(work / f"crop-{tiff.stem}.npz", centres=np.zeros((0, 2)), mean_image=tifffile.imread(tiff).mean(0))
        return {"rois": 0, "peak_gb": _peak_gb()}
    result = Suite2pResult.load(out)
    rows = [r for r in result.roi_rows() if r["is_cell"]]
    np.savez(
        work / f"crop-{tiff.stem}.npz",
        centres=np.array([[r["center_y"], r["center_x"]] for r in rows]).reshape(-1, 2),
        mean_image=result.ops["meanImg"],
    )
    return {"rois": len(rows), "peak_gb": _peak_gb()}


def child_sweep(settings_json: str) -> dict:
    """CASCADE-style network against OASIS on simulated dF/F at the lab's frame rates and noise levels."""
    from labpipe.calcium.evaluate import rate_correlation
    from labpipe.calcium.settings import SpikeSettings
    from labpipe.calcium.spikes import ground_truth, oasis, train_model

    settings = SpikeSettings(**json.loads(settings_json))
    rows = []
    for rate in (7.5, 15.0, 30.0):
        for nu in (1.0, 4.0, 8.0):
            model = train_model(rate, nu, settings)
            dff, spikes = ground_truth(np.random.default_rng(1234), 40, int(120 * rate), rate, nu, settings.tau_decay)
            rows.append(
                {
                    "frame_rate": rate,
                    "noise": nu,
                    "cascade": rate_correlation(model.predict(dff), spikes, rate),
                    "oasis": rate_correlation(oasis(dff, rate, settings.tau_decay), spikes, rate),
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"rows": rows, "peak_gb": _peak_gb()}


CHILDREN = {
    "simulate": lambda a: child_simulate(Path(a[0]), int(a[1]), int(a[2]), int(a[3]), int(a[4])),
    "by-hand": lambda a: child_by_hand(Path(a[0]), Path(a[1])),
    "population": lambda a: child_population(Path(a[0]), Path(a[1]), a[2]),
    "spikes": lambda a: child_spikes(Path(a[0]), float(a[1]), a[2]),
    "denoise": lambda a: child_denoise(Path(a[0]), Path(a[1]), a[2], int(a[3]), int(a[4])),
    "crop-rois": lambda a: child_crop_rois(Path(a[0]), Path(a[1])),
    "sweep": lambda a: child_sweep(a[0]),
}


# ---- the run ------------------------------------------------------------------------------------------------


def _recording(root: Path, frames: int, size: int, cells: int, seed: int) -> tuple[Path, Path, dict]:
    work = root / f"rec-{frames}"
    work.mkdir(parents=True)
    sim = _child("simulate", str(work), str(frames), str(size), str(cells), str(seed))
    (work / "spec.json").write_text(json.dumps(sim["spec"]))
    print(f"simulated {frames} frames of {size}x{size} in {sim['seconds']:.0f} s", flush=True)
    return work, Path(sim["tiff"]), sim


def _match(work: Path, rois_file: str, truth, crop: int | None = None):
    from labpipe.calcium.evaluate import match_rois, registration_offset

    rois = np.load(work / rois_file)
    reference = truth.footprints.sum(axis=0).A.reshape(truth.shape[1:])
    centres, active = truth.centers, truth.active
    if crop:
        reference = reference[:crop, :crop]
        inside = (centres < crop - 3).all(axis=1)
        active = np.array([a for a in active if inside[a]], int)
        centres = np.where(inside[:, None], centres, -1000)
    offset = registration_offset(rois["mean_image"], reference)
    return match_rois(centres, active, rois["centres"], offset=offset), rois


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--cells", type=int, default=300)
    parser.add_argument("--crop", type=int, default=128, help="side of the crop for the denoising detection check")
    parser.add_argument("--crop-frames", type=int, default=3000)
    parser.add_argument("--spike-settings", default='{"training_traces": 400, "trace_seconds": 60, "epochs": 10}')
    parser.add_argument(
        "--denoise-settings",
        default='{"training_frames": 32, "steps": 400, "patch": 96, "features": 16, "learning_rate": 0.003}',
    )
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (stacks, suite2p outputs)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child[0]](args.child[1:])))
        return
    from labpipe.calcium.evaluate import rate_correlation
    from labpipe.calcium.simulate import RecordingTruth

    load = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="labpipe-bench-imaging-", dir=args.work))
    print(f"work in {root}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    work, tiff, sim = _recording(root, args.frames, args.size, args.cells, 1)
    truth = RecordingTruth.load(work / "truth.npz")

    hand = _child("by-hand", str(tiff), str(root / "by-hand"))
    print(
        f"suite2p by hand: {hand['seconds']:.0f} s, peak {hand['peak_gb']:.2f} GB private, "
        f"{hand['peak_rss_gb']:.2f} GB max RSS",
        flush=True,
    )
    population = _child("population", str(work / "share"), str(work), "{}")
    print(
        f"labpipe population: {population['seconds']:.0f} s, peak {population['peak_gb']:.2f} GB private, "
        f"{population['peak_rss_gb']:.2f} GB max RSS, {population['rois']} cells",
        flush=True,
    )
    match, rois = _match(work, "rois.npz", truth)
    print(f"ROIs: recall {match.recall:.3f}, precision {match.precision:.3f}", flush=True)

    half_work, _, _ = _recording(root, args.frames // 2, args.size, args.cells, 2)
    half = _child("population", str(half_work / "share"), str(half_work), "{}")
    print(
        f"half the frames: {half['seconds']:.0f} s, peak {half['peak_gb']:.2f} GB private, "
        f"{half['peak_rss_gb']:.2f} GB max RSS",
        flush=True,
    )

    frame_rate = float(sim["spec"]["frame_rate"])
    true_cells = [c for c, _ in match.pairs]
    detected = [d for _, d in match.pairs]
    oasis_corr = rate_correlation(rois["oasis"][detected], truth.spikes[true_cells], frame_rate)
    spikes = _child("spikes", str(work), str(frame_rate), args.spike_settings)
    cascade = np.load(work / "cascade.npy")
    cascade_corr = rate_correlation(cascade[detected], truth.spikes[true_cells], frame_rate)
    print(
        f"spike-rate correlation on the recording (nu {spikes['noise_level']:.1f}): OASIS {oasis_corr:.3f}, "
        f"CASCADE-style {cascade_corr:.3f} (training {spikes['train_s']:.0f} s on CPU)",
        flush=True,
    )
    sweep = _child("sweep", args.spike_settings)

    denoise = _child("denoise", str(tiff), str(work), args.denoise_settings, str(args.crop), str(args.crop_frames))
    print(f"denoising: SNR gain {denoise['snr_gain_db']:.2f} dB (training {denoise['train_s']:.0f} s)", flush=True)
    detection = {}
    for name in ("raw", "denoised"):
        _child("crop-rois", str(work / "crop" / f"{name}.tif"), str(work))
        crop_match, _ = _match(work, f"crop-{name}.npz", truth, crop=args.crop)
        detection[name] = {"recall": crop_match.recall, "precision": crop_match.precision}
        print(
            f"crop {args.crop}x{args.crop}x{args.crop_frames} {name}: recall {crop_match.recall:.3f}, "
            f"precision {crop_match.precision:.3f}",
            flush=True,
        )

    summary = {
        "frames": args.frames,
        "size": args.size,
        "cells": args.cells,
        "overhead": population["seconds"] / hand["seconds"] - 1,
        "labpipe_s": population["seconds"],
        "labpipe_steps_s": population.get("steps_s"),  # where labpipe's time went, per table
        "suite2p_by_hand_s": hand["seconds"],
        "peak_gb": population["peak_gb"],
        "peak_gb_half_frames": half["peak_gb"],
        "half_frames_s": half["seconds"],
        "suite2p_by_hand_peak_gb": hand["peak_gb"],
        "peak_rss_gb": population["peak_rss_gb"],
        "peak_rss_gb_half_frames": half["peak_rss_gb"],
        "suite2p_by_hand_peak_rss_gb": hand["peak_rss_gb"],
        "simulate_s": sim["seconds"],
        "roi_recall": match.recall,
        "roi_precision": match.precision,
        "oasis_spike_corr": oasis_corr,
        "gpu_spike_corr": cascade_corr,
        "spike_noise_level": spikes["noise_level"],
        "spike_sweep": sweep["rows"],
        "denoise_snr_gain": denoise["snr_gain_db"],
        "denoise_detection": detection,
        "load_average_start": list(load),
        "load_average_end": list(os.getloadavg()),
    }
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
