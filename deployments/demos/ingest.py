"""Ingest demo: a simulated share (some of it still in staging), ingested, motion capture populated by two workers.

The imaging populations (suite2p, denoising, spikes, behaviour) have their own demo: deployments/demos/imaging.py.
"""

from __future__ import annotations

import shutil

from labpipe.deployments.demo import DemoContext, DemoResult

ORDER = 10


def _stage_some(share, staging, sessions: list[str]) -> None:
    """Move one simulated session into a setup's staging folder, as if it had just been recorded."""
    import json

    for rel in sessions[-1:]:
        source = share / rel
        for origin in source.rglob(".origin.json"):
            setup = json.loads(origin.read_text())["setup"]
            origin.unlink()
            scan_rel = origin.parent.relative_to(share)
            target = staging / setup / scan_rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(origin.parent, target, dirs_exist_ok=True)
        shutil.rmtree(source)


def run(ctx: DemoContext) -> DemoResult:
    from labpipe.blocks import lab_database
    from labpipe.ingest.schema import tables
    from labpipe.ingest.simulate import simulate_share

    roots = ctx.layout.ensure()
    sim = simulate_share(roots.share, sessions_per_user=2, scans_per_session=1)
    _stage_some(roots.share, roots.staging, sim.sessions)
    ctx.say(f"simulated {len(sim.sessions)} sessions and {len(sim.malformed)} malformed folders in {roots.share}")
    ingest_run = ctx.run("ingest/share", {"min_age_s": 0}, timeout=600)
    runs = ctx.run_many("populate/mocap", [{}, {}], timeout=600)
    dump_run = ctx.run("dump-database/lab", timeout=300)
    t = tables(lab_database())
    last = (t.IngestRun & "status != 'running'").to_dicts(order_by="started DESC", limit=1)
    lines = [
        f"sessions in the database: {len(t.Session())}, scans {len(t.Scan())}, raw files {len(t.RawFile())}",
        f"last ingest run: {last[0]['status'] if last else '?'}, "
        f"rejected folders {last[0]['rejected'] if last else '?'}",
        f"motion capture: {len(t.MocapRecording())} recordings parsed",
        f"objects under {roots.blobs}; dumps under {roots.dumps}",
    ]
    states = [r.state.is_completed() for r in [ingest_run, *runs, dump_run] if r.state]
    ok = all(states) and len(t.MocapRecording()) == len(t.MocapTask()) > 0
    return DemoResult("ingest", ok, lines)
