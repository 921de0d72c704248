"""The nightly backup's rules: which dumps a restore proof covers, when prune and the off-site copy are skipped.

The backup flow runs the stages; these decide. Each rule is here once, so a summary, a CLI or a test asks
the same question and gets the same answer.
"""

from __future__ import annotations

from pathlib import Path

from labpipe.backup.settings import BackupSource, is_remote_path
from labpipe.layout import Layout


def dump_archive_paths(sources: list[BackupSource], roots: Layout, names: list[str]) -> tuple[list[str], str]:
    """Archive paths of dump files (under the source that pulls the dumps root), or why there are none."""
    for source in sources:
        same = not is_remote_path(source.path) and Path(source.path).resolve() == roots.dumps.resolve()
        if same or (is_remote_path(source.path) and source.name == "dumps"):
            return [f"{source.name}/{name}" for name in names], ""
    return [], "no source pulls the dumps root: database dumps are not in the archive"


def dumps_to_prove(
    sources: list[BackupSource],
    roots: Layout,
    staging: Path,
    *,
    new: list[str],
    unproven: list[str],
    pulled: list[str],
) -> tuple[list[str], str]:
    """The dumps a restore proof must extract: this run's and every earlier one no proof covered yet.

    Only dumps of a source pulled this run and present in staging count. Returns their archive paths and,
    when the dumps root is not backed up at all, why (a problem to report when dumps ran).
    """
    paths, missing = dump_archive_paths(sources, roots, sorted(set(new) | set(unproven)))
    return [p for p in paths if p.split("/", 1)[0] in pulled and (Path(staging) / p).exists()], missing


def prune_verdict(problems: list[str], check_failed: dict | None) -> str | None:
    """None when prune and compact may run; else why not (a note for the summary).

    A failed borg check blocks them until a check passes (a damaged repository is not rewritten); a run with
    any failure skips them (a bad day must not push good archives out of retention).
    """
    if check_failed:
        return (
            f"prune and compact blocked: borg check failed ({check_failed.get('what')}, since "
            f"{check_failed.get('since')}); they run again once a check passes"
        )
    if problems:
        return "prune skipped: this run had failures"
    return None


def offsite_verdict(check_ok: bool | None, check_failed: dict | None) -> str | None:
    """None when the off-site copy may be synced; else why not: only a repository whose check passed, with
    no failed check standing, is copied (never copy damage over the good off-site copy)."""
    if not check_ok or check_failed:
        return "off-site sync skipped: the repository check did not pass (no copying damage)"
    return None
