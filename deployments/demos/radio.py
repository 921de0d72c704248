"""Radio demo: a simulated DSA-110 streams groups into incoming/; the deployments group and convert them.

Three small groups (24 antennas) centred on 3C286's transit arrive in two waves, with per-subband
timestamp jitter and one truncated subband file; ``radio-stream/incoming`` records and groups them,
``radio-convert/pending`` converts each into one MS: the transit group goes to ms/calibrators, the
others to ms/science, the damaged subband flagged. The simulation's truth (gains, delays, bandpass,
sky) is kept in <radio>/static/simulation for the calibration demo that follows.
"""

from __future__ import annotations

from labpipe.deployments.demo import DemoContext, DemoResult

ORDER = 20


def run(ctx: DemoContext) -> DemoResult:
    from labpipe.blocks import lab_database
    from labpipe.radio.calibrators import DEFAULT_CALIBRATORS, write_calibrators
    from labpipe.radio.schema import tables
    from labpipe.radio.simulate import GroupFaults, simulate_stream
    from labpipe.radio.tree import RadioTree

    tree = RadioTree(ctx.layout.ensure().radio).ensure()
    if not (tree.catalogs / "calibrators.csv").exists():
        write_calibrators(DEFAULT_CALIBRATORS, tree.catalogs / "calibrators.csv")
    truth = tree.root / "static" / "simulation"
    options = dict(n_antennas=24, calibrator="3C286", jitter_s=30.0, truth_dir=truth, seed=11)
    groups = simulate_stream(tree.incoming, 3, faults={2: GroupFaults(corrupt={9: "truncate"})}, **options)
    wave = [g.files for g in groups[2:]]
    for files in wave:  # the third group is still "on the wire": it arrives after the first pass
        for path in files.values():
            path.rename(path.with_name(f".{path.name}.pending"))
    ctx.say(f"simulated {len(groups)} groups of 16 subband files in {tree.incoming} (truth in {truth})")
    runs = [ctx.run("radio-stream/incoming", timeout=300), ctx.run("radio-convert/pending", timeout=900)]
    for files in wave:
        for path in files.values():
            path.with_name(f".{path.name}.pending").rename(path)
    ctx.say("the third group arrived")
    runs += [ctx.run("radio-stream/incoming", timeout=300), ctx.run("radio-convert/pending", timeout=900)]

    t = tables(lab_database())
    rows = t.SubbandGroup.to_dicts(order_by="group_id")
    done = [g for g in rows if g["state"] == "completed"]
    lines = [f"groups: {len(rows)}, converted {len(done)}"]
    for g in rows:
        extra = f", calibrator {g['calibrator']}" if g["calibrator"] else ""
        flagged = f", flagged subbands {g['flagged']}" if g["flagged"] else ""
        lines.append(f"{g['group_id']}: {g['state']} -> {g['ms_path'] or g['error']}{extra}{flagged}")
    lines.append(f"Measurement Sets under {tree.ms}; truth for calibration in {truth}")
    calibrator_groups = [g for g in done if g["kind"] == "calibrators"]
    ok = (
        all(r.state and r.state.is_completed() for r in runs)
        and len(done) >= 3
        and len(calibrator_groups) == 1
        and all((tree.root / g["ms_path"]).is_dir() for g in done)
    )
    return DemoResult("radio", ok, lines)
