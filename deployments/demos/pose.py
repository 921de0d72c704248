"""Pose demo: train a small DeepLabCut model on the gpu pool, then fill the pose table for the share's videos.

The ingest demo (ORDER 10) left behaviour videos of two moving dots (64x64, 25 fps) in the
share and a ``PoseEstimationTask`` for each. Here: labelled frames of the same kind of
video are simulated (as a lab member would label them in DeepLabCut), the ``pose-train``
flow trains, evaluates and publishes the model, the model is assigned to every task (one
50 fps "deinterlaced" copy added to the share is refused), and two ``pose-estimation``
workers analyse the videos, each once.
"""

from __future__ import annotations

from labpipe.deployments.demo import DemoContext, DemoResult

ORDER = 60
MODEL = "dots-demo"


def _add_deinterlaced_copy(t, share) -> str | None:
    """A 50 fps copy of one recording next to its original, as ADAMACS had them (ingested by the next run)."""
    from labpipe.pose.simulate import write_marker_video

    scans = t.ingest.Scan.to_dicts(order_by="session_id", limit=1)
    if not scans:
        return None
    target = share / scans[0]["folder"] / "behavior_cam0_deinterlaced.mp4"
    if not target.exists():
        write_marker_video(target, frames=48, fps=50.0, seed=5)
    return target.name


def run(ctx: DemoContext) -> DemoResult:
    from labpipe.blocks import lab_database
    from labpipe.blocks.pose import pose_models
    from labpipe.pose.populate import assign_model
    from labpipe.pose.schema import tables
    from labpipe.pose.settings import PoseTrainingSettings
    from labpipe.pose.simulate import write_labelled_frames, write_marker_video

    roots = ctx.layout.ensure()
    t = tables(lab_database())
    source = roots.models / "pose-labelled" / MODEL
    truth = write_marker_video(source / "videos" / "arena_cam.mp4", frames=100, fps=25.0, seed=1)
    write_labelled_frames(source / "labeled-data", source / "videos" / "arena_cam.mp4", truth, n_frames=20)
    ctx.say(f"simulated 20 labelled frames (DeepLabCut CollectedData) under {source / 'labeled-data'}")
    copy = _add_deinterlaced_copy(t, roots.share)
    runs = [ctx.run("ingest/share", {"min_age_s": 0}, timeout=600)] if copy else []

    settings = PoseTrainingSettings.small(batch_size=4, device="auto").model_dump()
    params = {"labelled": str(source / "labeled-data"), "videos": str(source / "videos"), "name": MODEL}
    runs.append(ctx.run("pose-train/labelled", {**params, "settings": settings}, timeout=1800))
    outcomes = assign_model(lab_database(), pose_models("default", roots), MODEL, roots.share)
    refused = [o for o in outcomes if o["outcome"] == "refused"]
    assigned = [o for o in outcomes if o["outcome"] in ("assigned", "unchanged")]
    ctx.say(f"model {MODEL} assigned to {len(assigned)} videos; refused {len(refused)}")
    runs += ctx.run_many("pose-estimation/worker", [{}, {}], timeout=1800)

    model = (t.PoseModel & {"model_name": MODEL}).to_dicts(order_by="model_id")
    done = t.PoseEstimation & [{k: o[k] for k in ("session_id", "scan_id", "file_name")} for o in assigned]
    frames = sum(int(n) for n in done.to_arrays("n_frames")) if done else 0
    lines = [
        f"model {MODEL}: "
        + (
            f"id {model[0]['model_id']}, train error {model[0]['train_error_px']:.2f} px, "
            f"test error {model[0]['test_error_px']:.2f} px, trained for {model[0]['width']}x{model[0]['height']} "
            f"at {model[0]['fps']:g} fps"
            if model
            else "not published"
        ),
        f"pose table: {len(done)} of {len(assigned)} assigned videos analysed, {frames} frames "
        f"(workers {', '.join(sorted({str(w) for w in done.to_arrays('worker')})) if done else '-'})",
        *[f"refused {o['file_name']}: {o.get('reason', '').split(': ', 1)[-1][:200]}" for o in refused],
        "summary with frames and predicted points: artifact 'pose-estimation-summary' in the Prefect UI",
    ]
    states = [r.state.is_completed() for r in runs if r.state]
    ok = all(states) and bool(model) and len(done) == len(assigned) > 0 and (not copy or len(refused) >= 1)
    return DemoResult("pose", ok, lines)
