"""Training + MEI loop demo: one full turn of the closed loop with a simulated bench2p1.

20 simulated neurons (Gabor filters, Poisson spikes) of animal ANM-3001 see 2,000
natural-like images on bench2p1; the recording is dropped into staging and ingested;
``mei-loop/turn`` links it, trains and publishes a two-member twin ensemble to the
model registry and exports the MEIs to bench2p1's stimulus folder; the simulated rig
then shows the MEIs, that recording is ingested and linked to the MEIs, and a short
second round of training uses it. The summary measures the MEIs against the true filters.
"""

from __future__ import annotations

import datetime as dt

from labpipe.deployments.demo import DemoContext, DemoResult

ORDER = 50
ANIMAL, SEED = "ANM-3001", 0


def _latest_run(t) -> dict:
    runs = (t.MeiRun * t.Twin.proj("animal_id") & {"animal_id": ANIMAL}).to_dicts(order_by="created DESC", limit=1)
    return runs[0] if runs else {}


def run(ctx: DemoContext) -> DemoResult:
    import numpy as np
    from labpipe.blocks import lab_database
    from labpipe.blocks.registry import model_registry
    from labpipe.mei.loop import chosen_meis
    from labpipe.mei.quality import mei_quality, summary
    from labpipe.mei.schema import tables
    from labpipe.mei.simulate import record_meis, start_lab
    from labpipe.mei.stimuli import stimulus_folder
    from labpipe.mei.training import twin_alias

    roots = ctx.layout.ensure()
    db = lab_database()
    today = dt.date.today()
    lab = start_lab(db, stimulus_folder(roots), roots.staging, animal_id=ANIMAL, seed=SEED, date=today)
    ctx.say(
        f"bench2p1 showed {len(lab.natural.ids)} natural images to {len(lab.population.unit_ids)} simulated "
        f"neurons; session {lab.recording.session_folder} waits in staging"
    )
    runs = [ctx.run("ingest/share", {"min_age_s": 0}, timeout=600)]
    runs.append(ctx.run("mei-loop/turn", {"animal_id": ANIMAL, "simulated_seed": SEED}, timeout=1800))
    t = tables(db)
    mei_run = _latest_run(t)
    if not mei_run:
        return DemoResult("training + MEI loop", False, ["no MEI run was recorded; see the mei-loop run's logs"])
    rows = chosen_meis(db, mei_run["mei_run"])
    quality = summary(mei_quality(lab.population, {r["unit_id"]: r["image"] for r in rows}))
    mei_set = (t.StimulusSet & {"kind": "mei", "model_id": mei_run["model_id"]}).fetch1()
    recording = record_meis(roots.staging, lab.population, mei_set["folder"], lab.natural, date=today, seed=SEED + 10)
    ctx.say(f"bench2p1 showed the {mei_set['n_stimuli']} MEIs (10 repeats each) among 500 natural images")
    runs.append(ctx.run("ingest/share", {"min_age_s": 0}, timeout=600))
    runs.append(ctx.run("train-twin/twin", {"animal_id": ANIMAL, "epochs": 3, "ensemble": 1}, timeout=1200))
    scan_id = recording.scan_folder.split("scan")[-1]
    shown = t.ScanStimuli.Shown * t.MeiStimulus & {"scan_id": scan_id}
    registry = model_registry()
    latest = registry.resolve(twin_alias(ANIMAL))
    trained_on = len(t.Twin.TrainedOn & {"model_id": latest.id})
    lines = [
        f"registry room {registry.room}: {len(registry.list(model_type='mei-twin'))} twins; "
        f"{twin_alias(ANIMAL)} -> {latest.id} (cached at {latest.path})",
        f"MEIs vs true filters: median r {quality['mei_filter_corr_median']:.3f}, "
        f"min {quality['mei_filter_corr_min']:.3f}; {quality['fraction_of_optimum_median']:.0%} of the analytic "
        f"optimum; {quality['mei_over_best_natural_median']:.1f}x the best natural image",
        f"stimulus set {mei_set['set_id']} in {mei_set['folder']}",
        f"bench2p1 scan {scan_id} linked to {len(shown)} MEIs; the next twin {latest.id} trained on {trained_on} scans",
    ]
    states = [r.state is not None and r.state.is_completed() for r in runs]
    ok = (
        all(states)
        and quality["mei_filter_corr_median"] >= 0.85
        and len(shown) == len(rows)
        and trained_on >= 2
        and np.isfinite(quality["fraction_of_optimum_median"])
    )
    return DemoResult("training + MEI loop", ok, lines)
