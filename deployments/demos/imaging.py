"""Imaging demo: a simulated two-photon session with behaviour, denoised, run through suite2p and spike inference.

One session of user ``alice`` (a ScanImage-like stack of 64x64 pixels and 1500 frames with ten cells, its
Bpod and Harp files and a behaviour video) is written into the share and ingested; then, restricted to
that session, the ``calcium-imaging`` workers denoise it (gpu pool), run suite2p and OASIS (cpu pool)
and the CASCADE-style network (gpu pool), and ``behavior-trials`` aligns its trials. The runs use block
documents named ``demo-small`` (the settings' ``small()`` variants): the defaults are sized for a GPU and
would train for about an hour each on a laptop CPU. ``notebooks/analysis.ipynb`` is then executed on the
session (nbclient, a real kernel, the lab's blocks) and saved with its figures, a cell's dF/F and spikes
aligned to the trials, under the artifacts root.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

from labpipe.deployments import PROJECT_ROOT
from labpipe.deployments.demo import DemoContext, DemoResult

ORDER = 15  # after ingest (10); the pose demo (60) then also analyses this session's video
BLOCKS = "demo-small"


def _save_small_blocks() -> dict:
    from labpipe.blocks.imaging import SpikeInference, StackDenoising, Suite2pProcessing
    from labpipe.calcium.settings import DenoiseSettings, SpikeSettings, Suite2pSettings
    from labpipe.deployments.pickers import refresh_on_server

    Suite2pProcessing(**Suite2pSettings.small().model_dump()).save(BLOCKS, overwrite=True)
    # one torch thread, as the tests: networks this small gain nothing from a second thread, and two threads
    # spinning on a CPU shared with suite2p and the server made the demo's denoising crawl (20 min, not 30 s)
    StackDenoising(**DenoiseSettings.small().model_dump()).save(BLOCKS, overwrite=True)
    SpikeInference(**SpikeSettings.small().model_dump()).save(BLOCKS, overwrite=True)
    refresh_on_server()  # the deployments accept only names their block pickers offer
    return {"suite2p_block": BLOCKS, "denoise_block": BLOCKS, "spikes_block": BLOCKS}


def _analysis_notebook(session: str, artifacts: Path) -> tuple[Path, int, int]:
    """Execute notebooks/analysis.ipynb on ``session`` as a user would; the saved copy, its figures and trials."""
    import nbformat
    from labpipe.files import atomic_write_text
    from nbclient import NotebookClient

    notebook = nbformat.read(PROJECT_ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    saved = artifacts / "notebooks" / f"analysis-{session}.ipynb"
    saved.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, LABPIPE_NOTEBOOK_SESSION=session, MPLBACKEND="module://matplotlib_inline.backend_inline")
    # the kernel reads the demo's home and Prefect server from this environment, as a user's would
    NotebookClient(notebook, timeout=600, kernel_name="python3").execute(cwd=str(saved.parent), env=env)
    atomic_write_text(saved, nbformat.writes(notebook))
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    figures = sum("image/png" in o.get("data", {}) for o in outputs)
    printed = re.search(r"; (\d+) trials", "".join(o.get("text", "") for o in outputs))  # the cell's summary line
    return saved, figures, int(printed.group(1)) if printed else 0


def run(ctx: DemoContext) -> DemoResult:
    from labpipe.behavior.schema import tables as behavior_tables
    from labpipe.blocks import lab_database
    from labpipe.calcium.schema import tables
    from labpipe.calcium.simulate import RecordingSpec
    from labpipe.ingest.simulate_science import simulate_science_share

    roots = ctx.layout.ensure()
    spec = RecordingSpec(frames=1500, height=64, width=64, cells=10, photons=8, rate_hz=0.6, seed=7)
    share = simulate_science_share(roots.share, 1, spec=spec, start=dt.date(2026, 4, 20), seed=18)
    scan = share.scans[0]
    session = scan.folder.rsplit("scan", 1)[1]
    ctx.say(f"simulated session {session} of alice: {spec.frames} frames, {spec.cells} cells, Bpod + Harp, video")
    blocks = _save_small_blocks()
    runs = [ctx.run("ingest/share", {"min_age_s": 0}, timeout=600)]
    db = lab_database()
    t, b = tables(db), behavior_tables(db)
    stack = {"session_id": session, "scan_id": session, "file_name": "imaging_00001.tif"}
    t.DenoiseTask.insert1(stack, skip_duplicates=True)
    for deployment in ("denoise", "suite2p", "spikes"):
        runs.append(ctx.run(f"calcium-imaging/{deployment}", {"session": session, **blocks}, timeout=1800))
    runs.append(ctx.run("behavior-trials/bpod", {"session": session}, timeout=600))

    cells = len(t.Segmentation.Mask & stack & "is_cell")
    methods = sorted(set((t.Activity & stack).to_arrays("method"))) if t.Activity & stack else []
    trials = len(b.BehaviorSession.Trial & stack)
    denoised = (t.Denoising & stack).to_dicts()
    lines = [
        f"session {session}: denoised {'yes' if denoised else 'no'}"
        + (f" (noise sd {denoised[0]['noise_before']:.1f} -> {denoised[0]['noise_after']:.1f})" if denoised else ""),
        f"suite2p: {cells} cells (truth: {len(scan.recording.active)} active of {spec.cells}); "
        f"activity by {', '.join(methods) or 'nothing'}; {trials} trials aligned "
        f"(truth {len(scan.behavior.trial_starts_harp)})",
    ]
    notebook, figures, notebook_trials = _analysis_notebook(session, roots.artifacts)
    lines.append(f"analysis notebook: {figures} figures, a cell aligned to {notebook_trials} trials: {notebook}")
    lines.append(f"  (interactive: LABPIPE_NOTEBOOK_SESSION={session} jupyter lab notebooks/analysis.ipynb)")
    states = [r.state.is_completed() for r in runs if r.state]
    ok = all(states) and cells > 0 and methods == ["cascade", "oasis"] and trials > 0 and bool(denoised)
    ok = ok and figures >= 3 and notebook_trials == trials
    return DemoResult("imaging", ok, lines)
