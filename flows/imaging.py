"""Calcium imaging, behaviour and subject-record flows (ADAMACS ingest, part 2): thin wiring of lib/.

Deployments (deployments/prefect.yaml): ``calcium-imaging/suite2p`` (cpu: ScanInfo -> suite2p ->
motion, ROIs, fluorescence, OASIS), ``calcium-imaging/denoise`` (gpu, optional: stacks with a
``DenoiseTask``), ``calcium-imaging/spikes`` (gpu: the CASCADE-style network), ``behavior-trials/bpod``
(cpu: Bpod trials aligned through the Harp sync stream) and ``subject-records/pyrat`` (PyRAT on a
schedule). Each population run is one worker of ``populate(reserve_jobs=True)``: start several and each
key is computed once; a bad file (a truncated TIFF, a trial file of another session) is an error row of
its key in the summary and the jobs table, never a stop for the others.
"""

from __future__ import annotations

from typing import Literal

from labpipe.blocks import lab_database, layout
from labpipe.blocks.imaging import calcium_context, pyrat_settings
from labpipe.calcium.populate import POOLS, run_population
from labpipe.calcium.schema import CalciumContext
from labpipe.calcium.summary import stack_pictures
from labpipe.flows.common import Progress, gpu_slot, logger, markdown_table, publish_markdown
from labpipe.ingest.populate import PopulateResult
from prefect import flow, task


@task(name="populate-calcium", task_run_name="populate-{population}")
def populate_task(
    population: str, context: CalciumContext, session: str | None, max_calls: int | None, db_block, layout_block
) -> PopulateResult:
    db = lab_database(db_block, layout_block)
    progress = Progress(f"{population} tables")
    if POOLS[population] == "gpu":
        with gpu_slot():  # one network trained or applied per GPU at a time
            return run_population(db, population, context, session=session, max_calls=max_calls, progress=progress)
    return run_population(db, population, context, session=session, max_calls=max_calls, progress=progress)


@task(name="stack-pictures", task_run_name="stack-pictures")
def stack_pictures_task(session: str | None, db_block, layout_block) -> list[str]:
    """Mean image with ROI outlines, and a few cells' dF/F with their spikes and the trials, per recent stack."""
    return stack_pictures(lab_database(db_block, layout_block), session)


def _population_summary(result: PopulateResult, pictures: list[str] = ()) -> str:
    counts = [
        {
            "table": name,
            "computed": done,
            "still to do": result.remaining.get(name, ""),
            "seconds": result.seconds.get(name, ""),
        }
        for name, done in result.computed.items()
    ]
    shown = "## Latest stacks\n\n" + "\n\n".join(pictures) + "\n\n" if pictures else ""
    return (
        f"# {result.population} population\n\n{markdown_table(counts)}\n{shown}"
        f"## Errors ({len(result.errors)})\n\nEach failed key stays in the jobs table until cleared "
        "(`labpipe db jobs`); the other keys went on.\n\n" + markdown_table(result.errors, ["table", "key", "error"])
    )


def _publish(result: PopulateResult, pictures: list[str] = ()) -> dict:
    for error in result.errors:
        logger().warning("%s %s failed: %s", error["table"], error["key"], error["error"])
    publish_markdown(_population_summary(result, pictures), key=f"calcium-{result.population}",
                     description=f"{result.population} population summary")  # fmt: skip
    return {"computed": result.computed, "errors": result.errors, "remaining": result.remaining}


@flow(name="calcium-imaging", flow_run_name="calcium-{population}")
def populate_calcium(
    population: Literal["imaging", "denoise", "spikes"] = "imaging",
    session: str | None = None,
    max_calls: int | None = None,
    suite2p_block: str | None = "default",
    denoise_block: str | None = "default",
    spikes_block: str | None = "default",
    layout_block: str | None = "default",
    db_block: str | None = "default",
) -> dict:
    """One worker of a calcium-imaging population; run several at once, each stack is computed once.

    Args:
        population: imaging (cpu: suite2p registration, ROIs, fluorescence, OASIS), denoise (gpu: Noise2Void,
            only stacks with a DenoiseTask) or spikes (gpu: the CASCADE-style network on dF/F).
        session: Only this session's stacks (its 8-character id); empty: every session.
        max_calls: Stop after this many keys per table (empty: until none is left).
        suite2p_block: Name of the labpipe suite2p processing block (indicator, diameter, registration).
        denoise_block: Name of the labpipe stack denoising block (Noise2Void training and device).
        spikes_block: Name of the labpipe spike inference block (network training and device).
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
        db_block: Name of the labpipe lab database block (the DataJoint server).
    """
    context = calcium_context(layout(layout_block), suite2p_block, denoise_block, spikes_block)
    result = populate_task(population, context, session, max_calls, db_block, layout_block)
    activity = {name: n for name, n in result.computed.items() if name.startswith("Activity")}
    pictures = stack_pictures_task(session, db_block, layout_block) if any(activity.values()) else []
    return _publish(result, pictures)


@flow(name="behavior-trials", flow_run_name="behavior-trials")
def populate_behavior(
    session: str | None = None,
    max_calls: int | None = None,
    layout_block: str | None = "default",
    db_block: str | None = "default",
) -> dict:
    """One worker of the behaviour population: Bpod trials, states and events on the Harp clock and imaging frames.

    Args:
        session: Only this session's scans (its 8-character id); empty: every session.
        max_calls: Stop after this many scans (empty: until none is left).
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
        db_block: Name of the labpipe lab database block (the DataJoint server).
    """
    roots = layout(layout_block)
    context = CalciumContext(share=roots.share, scratch=roots.scratch)
    return _publish(populate_task("behavior", context, session, max_calls, db_block, layout_block))


@task(name="sync-pyrat-subjects", task_run_name="sync-pyrat-subjects")
def sync_subjects_task(settings, db_block: str | None, layout_block: str | None) -> dict:
    from labpipe.records.pyrat import sync_subjects

    return sync_subjects(lab_database(db_block, layout_block), settings).as_json()


@flow(name="subject-records", flow_run_name="subject-records")
def sync_subject_records(
    pyrat_block: str | None = "default", layout_block: str | None = "default", db_block: str | None = "default"
) -> dict:
    """Animals, surgeries and cages from PyRAT into the subject tables (read once, written in one transaction).

    A PyRAT outage fails this run with an error naming PyRAT and leaves the tables as they were; nothing else
    waits on it, and the next scheduled run tries again.

    Args:
        pyrat_block: Name of the labpipe pyrat connection block (instance URL and API tokens); without a
            "default" document the run does nothing and says so.
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
        db_block: Name of the labpipe lab database block (the DataJoint server).
    """
    settings = pyrat_settings(pyrat_block)
    if settings is None:
        text = "# PyRAT\n\nNot configured: save a `labpipe pyrat connection` block named `default` to sync subjects."
        publish_markdown(text, key="subject-records", description="PyRAT subject sync")
        return {"configured": False}
    report = sync_subjects_task(settings, db_block, layout_block)
    skipped = [{"record": s} for s in report["skipped"]]
    text = (
        f"# PyRAT subjects from `{settings.url}`\n\n{report['animals']} animals ({report['inserted']} new, "
        f"{report['updated']} updated), {report['surgeries']} surgeries, {report['cages']} cages.\n\n"
        f"## Skipped records ({len(report['skipped'])})\n\n" + markdown_table(skipped)
    )
    publish_markdown(text, key="subject-records", description="PyRAT subject sync")
    return {"configured": True, **report}
