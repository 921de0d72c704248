"""``labpipe mei``: the MEI loop by hand - simulate a rig session, link scans, see where the loop stands."""

from __future__ import annotations

import datetime as dt
import json

import typer

NAME = "mei"
app = typer.Typer(help="The MEI closed loop (twins, MEIs, bench2p1 stimuli).", no_args_is_help=True)


def _database():
    from labpipe.blocks import lab_database

    return lab_database()


@app.command()
def simulate(
    animal_id: str = typer.Option("ANM-3001", help="Animal of the simulated neurons."),
    units: int = typer.Option(20, help="Simulated neurons."),
    images: int = typer.Option(2000, help="Natural-like images shown in the first session."),
    seed: int = typer.Option(0, help="Seed of the population (the same seed gives the same neurons)."),
    meis: str = typer.Option(None, help="Instead: record a session showing this exported MEI set (set id)."),
) -> None:
    """Drop a simulated bench2p1 session into staging (natural images, or an exported MEI set)."""
    from labpipe.blocks import layout
    from labpipe.mei.simulate import record_meis, start_lab
    from labpipe.mei.stimuli import stimulus_folder

    roots = layout().ensure()
    lab = start_lab(
        _database(),
        stimulus_folder(roots),
        roots.staging,
        animal_id=animal_id,
        n_units=units,
        n_images=images,
        seed=seed,
    )
    recording = lab.recording
    if meis:
        recording = record_meis(
            roots.staging,
            lab.population,
            stimulus_folder(roots) / meis,
            lab.natural,
            date=dt.date.today(),
            seed=seed + 10,
        )
    typer.echo(f"{recording.n_trials} trials recorded: {roots.staging}/{recording.setup}/{recording.session_folder}")
    typer.echo("next: `labpipe ingest scan` (or the ingest/share deployment), then `labpipe mei link`")


@app.command()
def link(as_json: bool = typer.Option(False, "--json")) -> None:
    """Link ingested scans to the stimuli they showed (what the link-stimuli flow does)."""
    from labpipe.blocks import layout
    from labpipe.mei.link import link_scans

    report = link_scans(_database(), layout().share)
    if as_json:
        typer.echo(json.dumps(report.__dict__, indent=1, default=str))
        return
    for scan in report.linked:
        typer.echo(f"linked {scan['folder']}: {scan['trials']} trials, {scan['mei_stimuli']} MEIs")
    for failure in report.failed:
        typer.echo(f"NOT linked {failure['scan']}: {failure['reason']}")
    typer.echo(f"{len(report.linked)} linked now, {report.already} before, {len(report.failed)} failed")
    if report.failed:
        raise typer.Exit(1)


@app.command()
def status(animal_id: str = typer.Option(None, help="Only this animal.")) -> None:
    """Stimulus sets, linked scans, twins and MEI runs in the database."""
    from labpipe.mei.schema import tables

    t = tables(_database())
    animal = {"animal_id": animal_id} if animal_id else {}
    natural, meis = len(t.StimulusSet & {"kind": "natural"}), len(t.StimulusSet & {"kind": "mei"})
    typer.echo(f"stimulus sets: {natural} natural, {meis} MEI; stimuli {len(t.Stimulus())}")
    linked = t.ScanStimuli * t.ingest.Session.proj("animal_id") & animal
    typer.echo(f"linked scans: {len(linked)}; link failures: {len(t.LinkFailure())}")
    for failure in t.LinkFailure.to_dicts():
        typer.echo(f"  {failure['session_id']}/{failure['scan_id']}: {failure['reason']}")
    for twin in (t.Twin & animal).to_dicts(order_by="trained DESC", limit=10):
        typer.echo(
            f"twin {twin['model_id']} {twin['animal_id']} m{twin['member']} {twin['trained']:%Y-%m-%d %H:%M} "
            f"{twin['n_trials']} trials, held-out r {twin['heldout_corr']:.3f}"
        )
    for run in (t.MeiRun * t.Twin.proj("animal_id") & animal).to_dicts(order_by="created DESC", limit=5):
        chosen = len(t.MeiRun.Candidate & {"mei_run": run["mei_run"]} & "chosen")
        typer.echo(f"MEI run {run['mei_run']} by {run['generators']} scored by {run['scorers']}: {chosen} units")
