"""Backup lifecycle flows (ADAMACS + DSA-110), on the ``backup`` pool (the backup host).

- ``dump-databases``: dump hooks (lab database, Prefect's database, other state databases) + dump retention.
- ``backup``: dumps -> rsync pull of every source -> borg create -> restore proof -> prune + compact
  -> borg check -> off-site sync of the repository and archive folders (rclone, then rclone check).
- ``borg-check``: ``borg check`` on its own (``verify_data`` on a slower schedule).
- ``restore``: a whole archive into a new folder, proven against the archive's checksums.
- ``archive-offsite``: rclone sync of the archive folders (and the repository) to the remote, then check.
- ``retention``: per-directory policies (archive, verify, record, then delete); ``dry_run`` lists only.
- ``diskwatch``: free space, tmpfs use, incoming counts, growth; Prefect events at the thresholds.

Every flow leaves a summary artifact; a cancelled run stops its borg, rsync and rclone processes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

from labpipe.backup import dumps as dump_hooks
from labpipe.backup import report as records
from labpipe.backup import rules
from labpipe.backup.archive import RcloneArchive
from labpipe.backup.borg import Borg, archive_name
from labpipe.backup.diskwatch import DiskCollector as _Collector
from labpipe.backup.diskwatch import DiskReport, days_until_full, watch_once, write_textfile
from labpipe.backup.dumps import DumpResult
from labpipe.backup.proc import stop_tool_children
from labpipe.backup.proof import prove_restore, restore_archive
from labpipe.backup.pull import PullResult, pull_source
from labpipe.backup.report import BackupReport, SourceOutcome
from labpipe.backup.retention import run_retention
from labpipe.backup.runlock import backup_lock
from labpipe.backup.schema import tables as backup_tables
from labpipe.backup.settings import (
    BackupPlan,
    BackupSource,
    RcloneRemote,
)
from labpipe.blocks import lab_database, layout
from labpipe.blocks.backup import backup_plan, borg_client, diskwatch_settings, rclone_remote, retention_policies
from labpipe.db.connect import dump_lab_database
from labpipe.errors import RunFailed
from labpipe.flows.common import (
    Progress,
    logger,
    markdown_table,
    publish_markdown,
)
from labpipe.layout import Layout
from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.events import emit_event


# -- configuration ------------------------------------------------------------------------------
def _tables(db_block: str | None, layout_block: str | None):
    return backup_tables(lab_database(db_block, layout_block))


def prefect_database_url() -> str:
    """The Prefect server's database as this process's settings name it (the platform sets them for workers)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    return url.get_secret_value() if hasattr(url, "get_secret_value") else str(url)


@contextlib.contextmanager
def stop_tools_when_cancelled() -> Iterator[None]:
    """Prefect cancels a run by SIGTERM (raised here as a BaseException): stop borg, rsync and rclone too."""
    try:
        yield
    except BaseException:
        stopped = stop_tool_children()
        if stopped:
            logger().warning("stopped child processes %s", stopped)
        raise


# -- dump hooks ---------------------------------------------------------------------------------
@task(name="dump-lab-database", task_run_name="dump-lab", cache_policy=NONE)
def dump_lab(dumps_root: Path, db_block: str | None, layout_block: str | None) -> DumpResult:
    return dump_hooks.timed_dump("lab", lambda: dump_lab_database(lab_database(db_block, layout_block), dumps_root))


@task(name="dump-state-database", task_run_name="dump-{label}", cache_policy=NONE)
def dump_state(label: str, url: str, dumps_root: Path) -> DumpResult:
    return dump_hooks.timed_dump(label, lambda: dump_hooks.dump_url_database(url, dumps_root, label))


def run_dump_hooks(the_plan: BackupPlan, roots: Layout, db_block: str | None, layout_block: str | None) -> list:
    """Every configured dump hook (each failure recorded in its result, the others still run)."""
    settings, results = the_plan.dumps, []
    roots.dumps.mkdir(parents=True, exist_ok=True)
    if settings.lab_database:
        results.append(dump_lab(roots.dumps, db_block, layout_block))
    if settings.prefect_database:
        results.append(dump_state("prefect", prefect_database_url(), roots.dumps))
    for path in dump_hooks.sqlite_state_databases(settings.sqlite_databases):
        label = dump_hooks.state_label(path)
        results.append(dump_state(label, f"sqlite:///{path}", roots.dumps))
    for result in results:
        if result.ok:
            logger().info("dumped %s: %s (%d bytes)", result.database, result.path.name, result.bytes)
        else:
            logger().error("dump of %s failed: %s", result.database, result.error)
    return results


@task(name="prune-dumps", cache_policy=NONE)
def prune_old_dumps(the_plan: BackupPlan, dumps_root: Path, tables) -> list[str]:
    """Dump retention: old dumps go only once a proven backup holds them."""
    deleted = dump_hooks.prune_dumps(
        dumps_root,
        keep_days=the_plan.dumps.keep_days,
        keep_last=the_plan.dumps.keep_last,
        backed_up=lambda name: records.proven_dump(tables, name),
    )
    for path in deleted:
        tables.DatabaseDump.update1(dict(dump_name=path.name, deleted=dt.datetime.now()))
    return [p.name for p in deleted]


@flow(name="dump-databases", flow_run_name="dump-databases")
def dump_databases(
    plan_block: str | None = "default", layout_block: str | None = "default", db_block: str | None = "default"
) -> list[str]:
    """Consistent dumps of the lab database, Prefect's database and other state databases; old dumps pruned.

    Args:
        plan_block: Name of the labpipe backup plan block (sources, keep rules, checks, dump hooks).
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
        db_block: Name of the labpipe lab database block (the DataJoint server).
    """
    roots, the_plan = layout(layout_block), backup_plan(plan_block)
    results = run_dump_hooks(the_plan, roots, db_block, layout_block)
    t = _tables(db_block, layout_block)
    records.record_dumps(t, results)
    pruned = prune_old_dumps(the_plan, roots.dumps, t)
    publish_markdown("# Database dumps\n" + records.dumps_markdown(results, pruned), key="dumps", description="dumps")
    failed = [r for r in results if not r.ok]
    if failed:
        problem = f"{len(failed)} of {len(results)} dumps failed: " + "; ".join(r.error for r in failed)
        raise RunFailed("dump-databases", problem, "the other dumps were written; see the summary")
    return [str(r.path) for r in results]


# -- backup -------------------------------------------------------------------------------------
@task(name="pull", task_run_name="pull-{source.name}", cache_policy=NONE)
def pull(source: BackupSource, staging: Path, rsync_args: list[str]) -> PullResult:
    with Progress(f"pull {source.name} (bytes)") as progress:
        return pull_source(source, staging, extra_args=rsync_args, progress=progress)


@task(name="open-repository", cache_policy=NONE)
def open_repository(borg: Borg) -> tuple[str, list[str]]:
    """Open the repository labpipe knows (never create one: `labpipe backup init` does, once); refuse one that is
    missing or holds another id; break a lock left by a dead borg process of this host."""
    repository_id, notes = borg.open(), []
    for holder in borg.break_stale_lock():
        notes.append(f"broke a stale lock of dead borg process {holder.pid} on {holder.host}")
        logger().warning("broke stale borg lock: %s pid %s", holder.host, holder.pid)
    return repository_id, notes


@task(name="borg-create", task_run_name="create-{archive}", cache_policy=NONE)
def borg_create(borg: Borg, archive: str, names: list[str], staging: Path, the_plan: BackupPlan, total: int, run: str):
    comment = f"labpipe backup run {run}; sources: {', '.join(names)}"
    with Progress("borg create (bytes)") as progress:
        return borg.create(
            archive, names, cwd=staging, plan=the_plan, progress=progress, total_bytes=total, comment=comment
        )


@task(name="restore-proof", task_run_name="proof-{archive}", cache_policy=NONE)
def restore_proof(borg: Borg, archive: str, staging: Path, the_plan: BackupPlan, dumps: list[str], workdir: Path):
    result = prove_restore(
        borg,
        archive,
        staging,
        sample=the_plan.proof_sample_files,
        max_bytes=the_plan.proof_max_bytes,
        dumps=dumps,
        workdir=workdir,
    )
    if not result.ok:
        raise_mismatch(archive, result.mismatches)
    return result


def raise_mismatch(archive: str, mismatches: list[dict]) -> None:
    from labpipe.backup.errors import ArchiveMismatch

    raise ArchiveMismatch(
        archive,
        f"restore proof failed for {len(mismatches)} files: {mismatches[:3]}",
        "do not prune; run `labpipe backup check --verify-data`",
    )


@task(name="borg-prune", cache_policy=NONE)
def borg_prune(borg: Borg, the_plan: BackupPlan):
    result = borg.prune(the_plan)
    return result, borg.compact()


@task(name="borg-check", cache_policy=NONE)
def borg_check(borg: Borg, the_plan: BackupPlan, verify_data: bool = False):
    return borg.check(
        repository=the_plan.check_repository,
        last_archives=the_plan.check_last_archives,
        verify_data=verify_data,
        max_duration=the_plan.check_max_duration,
    )


@task(name="offsite-sync", task_run_name="offsite-{label}", cache_policy=NONE)
def offsite_sync(remote: RcloneRemote, local: Path, label: str, repository_id: str = "") -> dict:
    """rclone sync + check of one folder (a borg repository: only onto a copy of the same repository id);
    what the sync replaces or deletes off-site goes to a dated folder, not away."""
    archive = RcloneArchive(remote)
    with Progress(f"rclone sync {label} (bytes)") as progress:
        if repository_id:
            report = archive.sync_repository(local, repository_id, label, progress=progress)
        else:
            report = archive.sync(local, label, progress=progress)
    row = {
        "folder": str(local),
        "remote": report.remote,
        "MB sent": round(report.bytes / 1e6, 2),
        "files checked": report.check.matched,
        "differences": len(report.check.differences),
        "seconds": round(report.seconds, 1),
        "previous copy kept in": report.previous.split(":", 1)[-1],
    }
    if not report.check.ok:
        from labpipe.backup.errors import ArchiveMismatch

        raise ArchiveMismatch(report.remote, f"rclone check differences: {report.check.differences[:5]}")
    return row


@task(name="offsite-prune-previous", cache_policy=NONE)
def prune_previous_copies(remote: RcloneRemote) -> list[str]:
    """The second step: dated folders of replaced off-site files go after ``keep_previous_days``, and only
    once this run's copies were verified."""
    return RcloneArchive(remote).prune_previous(remote.keep_previous_days)


def _stage(report: BackupReport, name: str, call, *args, **kwargs):
    """Run a task, time it, and turn its failure into a report problem (None returned)."""
    started = time.monotonic()
    state = call(*args, return_state=True, **kwargs)
    report.durations[name] = round(report.durations.get(name, 0.0) + time.monotonic() - started, 3)
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        report.fail(name, error)
        logger().error("%s failed: %s", name, error)
        return None
    return state.result()


def archive_folders(remote: RcloneRemote, roots: Layout) -> list[Path]:
    return [Path(p) for p in remote.archive_folders] or [roots.radio / "archive"]


@flow(name="backup", flow_run_name="backup-{plan_block}")
def backup(
    run_dumps: bool = True,
    offsite: bool = True,
    repository_block: str | None = "default",
    plan_block: str | None = "default",
    remote_block: str | None = "default",
    layout_block: str | None = "default",
    db_block: str | None = "default",
) -> dict:
    """Dump, pull, borg create, prove a restore, prune, compact, check, and copy off-site; one summary.

    Args:
        run_dumps: Run the database dump hooks first (their dumps go into this archive).
        offsite: Copy the repository and the archive folders to the off-site remote after a passing check.
        repository_block: Name of the labpipe borg repository block (location, encryption, passphrase).
        plan_block: Name of the labpipe backup plan block (sources, keep rules, checks, dump hooks).
        remote_block: Name of the labpipe rclone remote block (the off-site copy).
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
        db_block: Name of the labpipe lab database block (the DataJoint server).
    """
    roots, the_plan, remote = layout(layout_block), backup_plan(plan_block), rclone_remote(remote_block)
    borg = borg_client(repository_block, roots)
    report = BackupReport(repository=borg.location)
    t = None
    try:
        t = _tables(db_block, layout_block)
        records.record_start(t, report)
    except Exception as exc:  # backups must not depend on the lab database being up
        report.fail("record", f"lab database unavailable, run recorded only in the JSON report: {exc}")
    try:
        with stop_tools_when_cancelled(), backup_lock(roots.backups, f"backup run {report.run_id}", wait=60):
            _backup_stages(
                report,
                the_plan,
                remote if offsite else RcloneRemote(),
                roots,
                borg,
                t,
                run_dumps,
                db_block,
                layout_block,
            )
    except Exception as exc:  # e.g. the lock: still leave a report
        report.fail("run", exc)
    finally:
        _finish(report, roots, t, borg)
    if report.status != "succeeded":
        raise RunFailed(f"backup {report.archive or '(no archive)'}", "; ".join(report.problems),
                        "the run's summary says what was done and what was skipped")  # fmt: skip
    return report.as_json()


def _backup_stages(report, the_plan, remote, roots, borg, t, run_dumps, db_block, layout_block) -> None:
    staging, workdir = roots.backups / "staging", roots.backups / "tmp"
    if run_dumps:
        started = time.monotonic()
        report.dumps = run_dump_hooks(the_plan, roots, db_block, layout_block)
        report.durations["dumps"] = round(time.monotonic() - started, 3)
        for failed in (d for d in report.dumps if not d.ok):
            report.fail(f"dump {failed.database}", failed.error)
        if t is not None:
            records.record_dumps(t, report.dumps)
    opened = _stage(report, "open", open_repository, borg)
    if opened is None:  # missing, replaced or unreadable: nothing is pulled, archived or copied off-site
        return
    repository_id, notes = opened
    report.notes += notes
    sources = the_plan.resolved_sources(roots)
    for source in sources:
        pulled = _stage(report, f"pull {source.name}", pull, source, staging, the_plan.rsync_args)
        if pulled is None:
            report.sources.append(SourceOutcome(source.name, source.path, "failed", detail=report.problems[-1]))
        else:
            report.sources.append(
                SourceOutcome(
                    source.name,
                    source.path,
                    "pulled",
                    pulled.files,
                    pulled.bytes,
                    pulled.transferred_bytes,
                    round(pulled.seconds, 3),
                    "; ".join(pulled.warnings)[:2000],
                )
            )
    good = [s.name for s in report.sources if s.status == "pulled"]
    if not good:
        return
    report.archive = archive_name(the_plan.archive_prefix)
    total = sum(s.bytes for s in report.sources if s.status == "pulled")
    report.stats = _stage(
        report, "create", borg_create, borg, report.archive, good, staging, the_plan, total, report.run_id
    )
    if report.stats is None:
        report.archive = ""
        return
    dump_paths, missing = rules.dumps_to_prove(
        sources,
        roots,
        staging,
        new=[d.path.name for d in report.dumps if d.ok],
        unproven=records.unproven_dumps(t) if t is not None else [],
        pulled=good,
    )
    if missing and run_dumps:
        report.fail("dumps", missing)
    report.proof = _stage(report, "proof", restore_proof, borg, report.archive, staging, the_plan, dump_paths, workdir)
    blocked = report.check_failed = borg.check_failure()
    if skip := rules.prune_verdict(report.problems, blocked):
        report.notes.append(skip)
    else:
        pruned = _stage(report, "prune", borg_prune, borg, the_plan)
        if pruned is not None:
            report.prune, report.compact = pruned
    report.check = _stage(report, "check", borg_check, borg, the_plan)
    if report.check is not None and not report.check.ok:
        report.fail("check", "; ".join(report.check.problems[:5]))
    elif report.check is not None and (standing := borg.check_failure()):
        report.fail("check", f"the failed check of {standing.get('since')} ({standing.get('what')}) still stands")
    elif blocked and report.check is not None:
        report.notes.append("this run's borg check passed: prune and compact run again from the next run on")
    with contextlib.suppress(Exception):
        info = borg.info()
        report.repository_bytes = int(info.get("unique_csize", 0))
        report.repository_original_bytes = int(info.get("total_size", 0))
    if t is not None and report.dumps:
        with contextlib.suppress(Exception):
            prune_old_dumps(the_plan, roots.dumps, t)
    if remote.configured:
        if skip := rules.offsite_verdict(report.check is not None and report.check.ok, borg.check_failure()):
            report.notes.append(skip)
        else:
            if remote.include_repository and borg.is_local:
                report.offsite.append(
                    _stage(report, "offsite", offsite_sync, remote, borg.local_path, "borg-repository", repository_id)
                )
            for folder in archive_folders(remote, roots):
                if folder.is_dir():
                    report.offsite.append(_stage(report, "offsite", offsite_sync, remote, folder, folder.name))
            if all(report.offsite) and _stage(report, "offsite", prune_previous_copies, remote):
                report.notes.append(f"off-site: previous copies older than {remote.keep_previous_days} days removed")
            report.offsite = [row for row in report.offsite if row]


def _finish(report: BackupReport, roots: Layout, t, borg: Borg) -> None:
    with contextlib.suppress(Exception):
        report.check_failed = borg.check_failure() or report.check_failed
    report.events = [f"labpipe.backup.{'failed' if report.problems else 'succeeded'}"]
    if report.check_failed:
        report.events.append("labpipe.backup.check-failed")  # every run until a check passes
    report.finish()
    if t is not None:
        try:
            records.record_finish(t, report)
        except Exception as exc:  # keep the JSON report and the artifact even then
            report.fail("record", exc)
            report.status = "failed"
    path = records.write_json(report, roots.backups / "reports")
    publish_markdown(records.backup_markdown(report, path), key="backup-summary", description="backup run summary")
    resource = {"prefect.resource.id": f"labpipe.backup.{report.repository}", "prefect.resource.name": "borg"}
    with contextlib.suppress(Exception):
        emit_event(
            event=f"labpipe.backup.{report.status}",
            resource=resource,
            payload={"archive": report.archive, "problems": report.problems[:10], "run_id": report.run_id},
        )
    if report.check_failed:
        with contextlib.suppress(Exception):
            emit_event(event="labpipe.backup.check-failed", resource=resource, payload=report.check_failed)


# -- check, restore, archive --------------------------------------------------------------------
@flow(name="borg-check", flow_run_name="borg-check-verify-{verify_data}")
def check(
    verify_data: bool = False,
    repository_block: str | None = "default",
    plan_block: str | None = "default",
    layout_block: str | None = "default",
) -> dict:
    """``borg check`` of the repository and the newest archives, or of every chunk's data; a failure blocks prune.

    Args:
        verify_data: Read and verify every chunk (slow; the weekly deployment sets it).
        repository_block: Name of the labpipe borg repository block (location, encryption, passphrase).
        plan_block: Name of the labpipe backup plan block (sources, keep rules, checks, dump hooks).
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
    """
    roots, the_plan = layout(layout_block), backup_plan(plan_block)
    borg = borg_client(repository_block, roots)
    with stop_tools_when_cancelled():
        result = borg_check(borg, the_plan, verify_data)
    verdict = "ok" if result.ok else "PROBLEMS"
    publish_markdown(
        f"# borg check ({result.what}): {verdict}\n{result.seconds:.1f} s\n"
        + "\n".join(f"- {p}" for p in result.problems),
        key="borg-check",
        description="borg check",
    )
    if not result.ok:  # recorded by borg.check: prune and compact stay blocked until a check passes
        with contextlib.suppress(Exception):
            emit_event(
                event="labpipe.backup.check-failed",
                resource={"prefect.resource.id": f"labpipe.backup.{borg.location}", "prefect.resource.name": "borg"},
                payload=borg.check_failure() or {},
            )
    borg.raise_if_corrupt(result)
    return {"what": result.what, "ok": result.ok, "seconds": result.seconds}


@flow(name="restore", flow_run_name="restore-{archive}")
def restore(
    archive: str,
    destination: str,
    verify: bool = True,
    repository_block: str | None = "default",
    layout_block: str | None = "default",
) -> dict:
    """Restore a whole archive into a new folder; every file compared with the archive's checksums.

    Args:
        archive: The archive name (as `labpipe backup list` shows it).
        destination: A folder that does not exist yet; the archive is extracted into it.
        verify: Compare every restored file with the archive's checksums.
        repository_block: Name of the labpipe borg repository block (location, encryption, passphrase).
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
    """
    borg = borg_client(repository_block, layout(layout_block))
    with stop_tools_when_cancelled(), Progress("restore (bytes)") as progress:
        result = restore_archive(borg, archive, Path(destination), verify=verify, progress=progress)
    publish_markdown(
        f"# Restore of `{archive}`\n{result.files} files, {records.mb(result.bytes)} MB into "
        f"`{result.destination}` in {result.seconds:.1f} s; "
        f"{'every file matches the archive (SHA-256)' if result.verified else 'not verified'}.",
        key="restore",
        description="restore",
    )
    return {
        "archive": archive,
        "destination": str(result.destination),
        "files": result.files,
        "verified": result.verified,
    }


@flow(name="archive-offsite", flow_run_name="archive-offsite")
def archive_offsite(
    include_repository: bool = True,
    remote_block: str | None = "default",
    repository_block: str | None = "default",
    layout_block: str | None = "default",
    plan_block: str | None = "default",
) -> list[dict]:
    """rclone sync of the archive folders and, after a passing ``borg check``, of the borg repository onto an
    off-site copy of the same repository id; each followed by a check; previous copies kept in dated folders.

    Args:
        include_repository: Copy the borg repository too (only after a passing check, onto the same repository id).
        remote_block: Name of the labpipe rclone remote block (the off-site copy).
        repository_block: Name of the labpipe borg repository block (location, encryption, passphrase).
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
        plan_block: Name of the labpipe backup plan block (sources, keep rules, checks, dump hooks).
    """
    roots, remote, the_plan = layout(layout_block), rclone_remote(remote_block), backup_plan(plan_block)
    borg = borg_client(repository_block, roots)
    rows, problems = [], []
    with stop_tools_when_cancelled(), backup_lock(roots.backups, "archive-offsite", wait=600):
        if include_repository and remote.include_repository and borg.is_local:
            repository_id = borg.open()
            result = borg_check(borg, the_plan)
            if result.ok:
                rows.append(offsite_sync(remote, borg.local_path, "borg-repository", repository_id))
            else:
                problems.append("repository not copied off-site: its check failed: " + "; ".join(result.problems[:3]))
        for folder in archive_folders(remote, roots):
            if not folder.is_dir():
                problems.append(f"archive folder {folder} does not exist: is its disk mounted? (not synced)")
                continue
            rows.append(offsite_sync(remote, folder, folder.name))
        if not problems:
            prune_previous_copies(remote)
    publish_markdown(
        "# Off-site archive\n" + markdown_table(rows) + "".join(f"\n- **{p}**" for p in problems),
        key="archive-offsite",
        description="rclone",
    )
    if problems:
        raise RunFailed("archive-offsite", "; ".join(problems), "nothing was deleted off-site; see the summary")
    return rows


# -- retention ----------------------------------------------------------------------------------
@flow(name="retention", flow_run_name="retention-dry-run-{dry_run}")
def retention(
    dry_run: bool = False,
    policies_block: str | None = "default",
    remote_block: str | None = "default",
    layout_block: str | None = "default",
    db_block: str | None = "default",
) -> dict:
    """Apply the retention policies: archive, verify, record the location, and only then delete.

    Args:
        dry_run: Only list what the policies would do; touch nothing.
        policies_block: Name of the labpipe retention policies block (folders, ages, actions).
        remote_block: Name of the labpipe rclone remote block (the off-site copy).
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
        db_block: Name of the labpipe lab database block (the DataJoint server).
    """
    roots, policies, remote = layout(layout_block), retention_policies(policies_block), rclone_remote(remote_block)
    with stop_tools_when_cancelled():
        plan, rows = run_retention(roots, policies, remote, lab_database(db_block, layout_block), dry_run=dry_run,
                                   holder="retention", wait=600, progress=Progress("entries"))  # fmt: skip
    planned = [
        {
            "root": c.root,
            "entry": c.rel,
            "policy": c.policy,
            "action": c.action,
            "age days": c.age_days,
            "files": c.files,
            "MB": records.mb(c.bytes),
        }
        for c in plan.candidates
    ]
    title = "Retention (dry run: nothing touched)" if dry_run else "Retention"
    publish_markdown(
        f"# {title}\n## Policies\n{markdown_table(plan.kept)}\n## Due\n{markdown_table(planned)}\n"
        f"## Done\n{markdown_table(rows)}",
        key="retention",
        description="retention",
    )
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        raise RunFailed("retention", f"{len(failed)} entries not archived (kept): {failed[:3]}",
                        "they stay in place and are tried again on the next run")  # fmt: skip
    return {"planned": planned, "done": rows, "dry_run": dry_run}


# -- disk watch ---------------------------------------------------------------------------------
def _slug(target: str) -> str:
    return target.strip("/").replace("/", "-") or "root"


def emit_disk_events(report: DiskReport, changed: dict[str, tuple[str, str]]) -> list:
    """``labpipe.disk.warning|critical`` per alarm (every check), ``labpipe.disk.ok`` when a target recovers."""
    events = []
    for alarm in report.alarms:
        events.append(
            emit_event(
                event=f"labpipe.disk.{alarm.level}",
                resource={
                    "prefect.resource.id": f"labpipe.disk.{_slug(alarm.target)}",
                    "prefect.resource.name": alarm.target,
                    "labpipe.path": alarm.path,
                },
                payload={
                    "metric": alarm.metric,
                    "value": round(alarm.value, 3),
                    "threshold": alarm.threshold,
                    "message": alarm.message,
                    "changed": alarm.target in changed,
                },
            )
        )
    for target, (old, new) in changed.items():
        if new == "ok":
            events.append(
                emit_event(
                    event="labpipe.disk.ok",
                    resource={"prefect.resource.id": f"labpipe.disk.{_slug(target)}", "prefect.resource.name": target},
                    payload={"previous": old},
                )
            )
    return [e for e in events if e is not None]


@flow(name="diskwatch", flow_run_name="diskwatch")
def diskwatch(watch_block: str | None = "default", layout_block: str | None = "default") -> dict:
    """Measure the roots, tmpfs and incoming folders; alarm events at the thresholds; a textfile for Prometheus.

    Args:
        watch_block: Name of the labpipe disk watch block (what to measure, thresholds).
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
    """
    roots, settings = layout(layout_block), diskwatch_settings(watch_block)
    folder = roots.backups / "diskwatch"
    report, changed = watch_once(roots, settings, folder / "history.json")
    events = emit_disk_events(report, changed)
    write_textfile(_Collector(roots, settings, folder / "history.json"), folder / "labpipe_disk.prom")
    for alarm in report.alarms:
        (logger().error if alarm.level == "critical" else logger().warning)(alarm.message)
    rows = [
        {
            "target": s.target,
            "path": s.path,
            "free GB": f"{s.free / 1e9:.2f}",
            "used %": f"{s.used_percent:.1f}",
            "growth GB/day": report.growth_gb_per_day.get(s.target),
            "days to full": days_until_full(s, report.growth_gb_per_day.get(s.target)),
            "level": report.levels.get(s.target, ""),
        }
        for s in report.samples
    ]
    publish_markdown(
        f"# Disk watch\n{markdown_table(rows)}\n## Incoming\n"
        + markdown_table([{"folder": k, "files": v} for k, v in report.incoming.items()])
        + "\n## Alarms\n"
        + ("\n".join(f"- {a.message}" for a in report.alarms) or "none"),
        key="diskwatch",
        description="disk watch",
    )
    data = report.as_json()
    data["events"] = [e.event for e in events]
    data["changed"] = changed
    return data
