"""Radio streaming flows (DSA-110): watch incoming/ -> group subbands -> convert each group to one MS.

Deployments (deployments/prefect.yaml, cpu pool): ``radio-stream/incoming`` every minute (recover
groups of dead workers, record new files, form and queue groups); ``radio-convert/pending`` every
minute (claim pending groups and convert them, per-subband work on Dask; start several runs for
several workers: each group is claimed by one). ``radio-convert-files/by-hand`` converts a given
list of files. Each converted group emits ``labpipe.radio.group.converted`` (calibration listens).
"""

from __future__ import annotations

from pathlib import Path

from labpipe.blocks import dask_settings, lab_database
from labpipe.blocks.radio import radio_settings, radio_tree
from labpipe.compute import dask_client
from labpipe.errors import RunFailed
from labpipe.flows.common import Progress, logger, markdown_table, png_markdown, publish_markdown
from labpipe.radio import quicklook
from labpipe.radio.convert import convert_group
from labpipe.radio.stream import claim_next, group_rows, process_group, recover_stuck, scan_incoming
from labpipe.radio.tree import RadioTree
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event


@task(name="recover-stuck", task_run_name="recover-stuck")
def recover_task(db_block, layout_block, radio_block) -> list[dict]:
    settings = radio_settings(radio_block)
    recovered = recover_stuck(
        lab_database(db_block, layout_block), settings, tree=radio_tree(layout_block), convert_settings=settings
    )
    for r in recovered:
        logger().warning("group %s back to %s: %s (%s)", r["group_id"], r["state"], r["reason"], r["worker"])
    return recovered


@task(name="scan-incoming", task_run_name="scan-incoming")
def scan_task(db_block, layout_block, radio_block) -> dict:
    report = scan_incoming(lab_database(db_block, layout_block), radio_tree(layout_block), radio_settings(radio_block))
    for name in report.late + report.duplicates:
        logger().warning("%s arrived after its group was queued", name)
    return report.as_json()


def _stream_summary(report: dict, recovered: list[dict], db) -> str:
    rows = group_rows(db, limit=5000)
    counts: dict[str, int] = {}
    for g in rows:
        counts[g["state"]] = counts.get(g["state"], 0) + 1
    lines = [
        f"# radio stream: {report['new_files']} new files",
        f"queued {len(report['queued'])} complete groups, {len(report['queued_incomplete'])} incomplete "
        f"(missing {report['queued_incomplete'] or '-'}); failed incomplete {report['failed_incomplete'] or '-'}; "
        f"still collecting {len(report['collecting'])}; late files {len(report['late'])}, duplicates "
        f"{len(report['duplicates'])}; ignored names {len(report['ignored'])}; recovered {len(recovered)}.",
        png_markdown(quicklook.states_figure(counts), "groups per state"),
        "\n## Latest groups\n",
        markdown_table(rows[:20], ["group_id", "state", "n_files", "missing", "kind", "flagged", "seconds", "error"]),
    ]
    if recovered:
        lines += ["\n## Recovered from dead or silent workers\n", markdown_table(recovered)]
    return "\n".join(lines)


@flow(name="radio-stream", flow_run_name="radio-stream", log_prints=True)
def radio_stream(
    layout_block: str | None = "default",
    db_block: str | None = "default",
    radio_block: str | None = "default",
) -> dict:
    """Give back groups of dead workers, record new subband files, form groups and queue the complete ones.

    Args:
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
        db_block: Name of the labpipe lab database block (the DataJoint server).
        radio_block: Name of the labpipe radio streaming block (grouping tolerance, incomplete groups, staging).
    """
    recovered = recover_task(db_block, layout_block, radio_block)
    report = scan_task(db_block, layout_block, radio_block)
    db = lab_database(db_block, layout_block)
    publish_markdown(_stream_summary(report, recovered, db), key="radio-stream", description="radio stream summary")
    return {"recovered": len(recovered), **{k: v for k, v in report.items() if k != "ignored"}}


@task(name="claim-group", task_run_name="claim-group", cache_policy=NO_CACHE)
def claim_task(db_block, layout_block, group: str | None) -> str | None:
    return claim_next(lab_database(db_block, layout_block), group=group)


@task(name="convert-group", task_run_name="convert-{group}", cache_policy=NO_CACHE)
def convert_task(group: str, client, db_block, layout_block, radio_block) -> dict:
    outcome = process_group(
        lab_database(db_block, layout_block),
        radio_tree(layout_block),
        group,
        settings=radio_settings(radio_block),
        client=client,
        progress=Progress(f"subbands of {group}", key=f"convert-{group.replace(':', '').lower()}", every=2.0),
    )
    if outcome["state"] == "completed":
        emit_event(
            event="labpipe.radio.group.converted",
            resource={
                "prefect.resource.id": f"labpipe.radio.group.{group}",
                "prefect.resource.name": "radio",
                "labpipe.radio.kind": str(outcome.get("kind") or ""),  # calibrators | science: triggers match it
            },
            payload={k: v for k, v in outcome.items() if k in ("group_id", "kind", "ms_path", "flagged", "calibrator")},
        )
    elif outcome["state"] == "lost":  # another attempt holds the group now; this one published nothing
        logger().warning("group %s: %s", group, outcome.get("error"))
    else:
        logger().error("group %s failed: %s (log %s)", group, outcome.get("error"), outcome.get("log_path"))
    return outcome


def _convert_summary(outcomes: list[dict], tree: RadioTree, pictures: int = 3) -> str:
    done = [o for o in outcomes if o["state"] == "completed"]
    lines = [
        f"# radio convert: {len(done)} groups converted, {sum(o['state'] == 'failed' for o in outcomes)} failed, "
        f"{sum(o['state'] == 'lost' for o in outcomes)} taken over by another attempt",
        markdown_table(outcomes, ["group_id", "state", "kind", "calibrator", "flagged", "seconds", "ms_path", "error"]),
    ]
    for o in done[-pictures:]:
        try:
            figure = quicklook.spectrum_figure(tree.root / o["ms_path"], f"{o['group_id']} ({o['kind']})")
            lines.append(png_markdown(figure, f"spectrum of {o['group_id']}"))
        except Exception as exc:  # a picture must never fail the run
            lines.append(f"_no picture for {o['group_id']}: {exc}_")
    return "\n\n".join(lines)


@flow(name="radio-convert", flow_run_name="radio-convert", log_prints=True)
def radio_convert(
    max_groups: int | None = None,
    group: str | None = None,
    use_dask: bool = True,
    layout_block: str | None = "default",
    db_block: str | None = "default",
    radio_block: str | None = "default",
    dask_block: str | None = "default",
) -> dict:
    """Claim pending groups and convert each into one Measurement Set; a failed group never stops the others.

    Args:
        max_groups: Convert at most this many groups (empty: every pending group).
        group: Convert only this group id (e.g. 2026-12-01T03:14:15).
        use_dask: Fan each group's subbands out over the Dask cluster.
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
        db_block: Name of the labpipe lab database block (the DataJoint server).
        radio_block: Name of the labpipe radio streaming block.
        dask_block: Name of the labpipe dask cluster block (a scheduler address, or a local cluster).
    """
    outcomes: list[dict] = []
    claimed = claim_task(db_block, layout_block, group)
    if claimed is not None:  # a Dask cluster only when there is work: most scheduled runs find none
        with dask_client(dask_settings(dask_block)) if use_dask else _no_client() as client:
            while claimed is not None:
                outcomes.append(convert_task(claimed, client, db_block, layout_block, radio_block))
                if group or (max_groups is not None and len(outcomes) >= max_groups):
                    break
                claimed = claim_task(db_block, layout_block, None)
    tree = radio_tree(layout_block)
    publish_markdown(_convert_summary(outcomes, tree), key="radio-convert", description="radio conversion summary")
    failed = [o["group_id"] for o in outcomes if o["state"] == "failed"]
    if failed:
        raise RunFailed("radio-convert", f"{len(failed)} groups failed to convert ({', '.join(failed)})",
                        "each group's log is ms/failed/<date>/<group>.log; the others were converted")  # fmt: skip
    return {"converted": [o["group_id"] for o in outcomes], "failed": failed}


class _no_client:  # noqa: N801 - a context manager standing in for a Dask client
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@flow(name="radio-convert-files", flow_run_name="radio-convert-{out}", log_prints=True)
def radio_convert_files(
    files: list[str],
    out: str,
    radio_block: str | None = "default",
    use_dask: bool = False,
    dask_block: str | None = "default",
) -> dict:
    """Convert one group given as files into one Measurement Set (a notebook or by-hand run).

    Args:
        files: The group's UVH5 subband files (paths).
        out: Path of the Measurement Set to write (a .ms folder that must not exist).
        radio_block: Name of the labpipe radio streaming block.
        use_dask: Fan the subbands out over the Dask cluster.
        dask_block: Name of the labpipe dask cluster block (a scheduler address, SLURM jobs, or a local cluster).
    """
    settings = radio_settings(radio_block)
    progress = Progress(f"subbands into {Path(out).name}")
    with dask_client(dask_settings(dask_block)) if use_dask else _no_client() as client:
        result = convert_group([Path(f) for f in files], Path(out), settings=settings, client=client, progress=progress)
    publish_markdown(
        png_markdown(quicklook.spectrum_figure(Path(out)), "spectrum"), key="radio-convert-files", description=out
    )
    return result.as_json()
