"""Per-directory retention (DSA-110): archive, verify, record, and only then delete.

A policy governs the entries (files or folders) of one folder under a layout
root. The default policies keep everything, as the seed's policy states today.
An entry older than a policy's ``keep_days`` is handled in this order, each
step recorded in ``RetentionAction`` and the move log before the next:

1. its files are listed with size, mtime and SHA-256 (the manifest), and recorded;
2. it is copied to the archive remote and ``rclone check`` compares the copy;
3. the archive location is recorded (status ``verified``);
4. for ``archive-delete`` only: if no file changed since step 1, exactly the
   manifest's files are deleted (files that arrived meanwhile stay), then empty
   folders; status ``deleted``.

``plan_retention`` is the dry run: what would happen, touching nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from labpipe.backup.archive import RcloneArchive
from labpipe.backup.settings import RetentionPolicies, RetentionPolicy
from labpipe.errors import ConfigError
from labpipe.files import sha256_file
from labpipe.layout import Layout

log = logging.getLogger("labpipe.backup.retention")


@dataclass
class Candidate:
    """An entry a policy acts on."""

    root: str
    rel: str  # relative to the root
    path: Path
    policy: str
    action: str
    age_days: float
    files: int
    bytes: int


@dataclass
class RetentionPlan:
    candidates: list[Candidate] = field(default_factory=list)
    kept: list[dict] = field(default_factory=list)  # per policy: entries it keeps and why


@dataclass
class FileRecord:
    rel_path: str
    size: int
    mtime_ns: int
    sha256: str


@dataclass
class Outcome:
    candidate: Candidate
    status: str  # verified, deleted, failed, changed
    location: str = ""
    detail: str = ""


def _entry_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _policy_name(policy: RetentionPolicy) -> str:
    return f"{policy.root}/{policy.folder}/{policy.pattern}"


def plan_retention(layout: Layout, policies: RetentionPolicies, *, now: dt.datetime | None = None) -> RetentionPlan:
    """What each policy would do now (nothing is touched)."""
    now_ts = (now or dt.datetime.now()).timestamp()
    plan = RetentionPlan()
    for policy in policies.policies:
        folder = Path(getattr(layout, policy.root)) / policy.folder
        entries = (
            sorted(p for p in folder.glob(policy.pattern) if not p.name.startswith(".")) if folder.is_dir() else []
        )
        acting = policy.action != "keep" and policy.keep_days is not None
        due = 0
        for entry in entries:
            files = _entry_files(entry)
            newest = max((f.stat().st_mtime for f in files), default=entry.stat().st_mtime)
            age = (now_ts - newest) / 86400
            if acting and age > policy.keep_days:
                due += 1
                plan.candidates.append(
                    Candidate(
                        policy.root,
                        str(entry.relative_to(getattr(layout, policy.root))),
                        entry,
                        _policy_name(policy),
                        policy.action,
                        round(age, 2),
                        len(files),
                        sum(f.stat().st_size for f in files),
                    )
                )
        why = "keep forever" if not acting else f"{policy.action} after {policy.keep_days} days"
        plan.kept.append(
            {
                "policy": _policy_name(policy),
                "rule": why,
                "entries": len(entries),
                "due": due,
                "note": policy.note,
                "exists": folder.is_dir(),
            }
        )
    return plan


def manifest(path: Path) -> list[FileRecord]:
    base = path if path.is_dir() else path.parent
    records = []
    for f in _entry_files(path):
        stat = f.stat()
        records.append(FileRecord(str(f.relative_to(base)), stat.st_size, stat.st_mtime_ns, sha256_file(f)))
    return records


def manifest_digest(records: list[FileRecord]) -> str:
    digest = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.rel_path):
        digest.update(f"{r.rel_path}\0{r.size}\0{r.sha256}\n".encode())
    return digest.hexdigest()


class Ledger:
    """Records retention actions in the lab database (``RetentionAction``) and in a JSON-lines move log."""

    def __init__(self, tables, log_file: Path) -> None:
        if tables is None:
            raise ConfigError(
                "retention",
                "the lab database is needed to record archive locations",
                "check the lab database block; nothing is deleted without a record",
            )
        self.t, self.log_file = tables, Path(log_file)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)

    def write_log(self, **event) -> None:
        event = {"time": dt.datetime.now().isoformat(timespec="seconds"), **event}
        with open(self.log_file, "a") as handle:
            handle.write(json.dumps(event, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        log.info("retention %s", event)

    def start(self, c: Candidate, records: list[FileRecord]) -> str:
        action_id = uuid.uuid4().hex
        row = dict(
            action_id=action_id,
            root=c.root,
            path=c.rel,
            policy=c.policy,
            action=c.action,
            files=len(records),
            bytes=sum(r.size for r in records),
            manifest_sha256=manifest_digest(records),
            status="copying",
            started=dt.datetime.now(),
        )
        conn = self.t.RetentionAction.connection
        with conn.transaction:
            self.t.RetentionAction.insert1(row)
            self.t.RetentionAction.File.insert(
                [
                    dict(action_id=action_id, file_no=i, rel_path=r.rel_path, size=r.size, sha256=r.sha256)
                    for i, r in enumerate(records)
                ]
            )
        self.write_log(action_id=action_id, step="copying", root=c.root, path=c.rel, files=len(records))
        return action_id

    def update(self, action_id: str, status: str, **fields) -> None:
        self.t.RetentionAction.update1(dict(action_id=action_id, status=status, **fields))
        self.write_log(action_id=action_id, step=status, **fields)

    def already_archived(self, c: Candidate) -> bool:
        """An ``archive`` (keep local) policy copies an entry once, until it changes."""
        done = self.t.RetentionAction & dict(root=c.root, path=c.rel) & "status in ('verified', 'deleted')"
        return any(r["files"] == c.files and r["bytes"] == c.bytes for r in done.to_dicts())


def _unchanged(path: Path, records: list[FileRecord]) -> bool:
    base = path if path.is_dir() else path.parent
    for r in records:
        f = base / r.rel_path
        try:
            stat = f.stat()
        except FileNotFoundError:
            return False
        if stat.st_size != r.size or stat.st_mtime_ns != r.mtime_ns:
            return False
    return True


def _delete_manifest(path: Path, records: list[FileRecord]) -> None:
    base = path if path.is_dir() else path.parent
    for r in records:
        (base / r.rel_path).unlink()
    if path.is_dir():
        for folder in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
        if not any(path.iterdir()):
            path.rmdir()


def apply_candidate(c: Candidate, archive: RcloneArchive, ledger: Ledger, remote_folder: str) -> Outcome:
    """Archive one entry, verify, record, and (archive-delete) delete it; never deletes an unverified entry."""
    if c.action == "archive" and ledger.already_archived(c):
        return Outcome(c, "verified", detail="already archived, unchanged")
    records = manifest(c.path)
    action_id = ledger.start(c, records)
    try:
        location, check = archive.copy_entry(c.path, remote_folder, c.root, c.rel)
    except Exception as exc:  # the copy failed: record it, keep the data
        ledger.update(action_id, "failed", detail=str(exc)[:2000])
        return Outcome(c, "failed", detail=str(exc))
    if not check.ok:
        detail = f"rclone check found differences: {check.differences[:5]}"
        ledger.update(action_id, "failed", location=location, detail=detail)
        return Outcome(c, "failed", location, detail)
    ledger.update(action_id, "verified", location=location, verified=dt.datetime.now())
    if c.action != "archive-delete":
        return Outcome(c, "verified", location)
    if not _unchanged(c.path, records):
        detail = "files changed after the copy was verified; kept, next run archives the new state"
        ledger.update(action_id, "changed", detail=detail)
        return Outcome(c, "changed", location, detail)
    _delete_manifest(c.path, records)
    ledger.update(action_id, "deleted", deleted=dt.datetime.now())
    return Outcome(c, "deleted", location)


def apply_retention(
    plan: RetentionPlan,
    archive: RcloneArchive | None,
    ledger: Ledger,
    remote_folder: str,
    progress: Callable[[int, int], None] | None = None,
) -> list[Outcome]:
    """Carry out a plan, entry by entry; one entry's failure does not stop the others."""
    if plan.candidates and archive is None:
        raise ConfigError(
            "rclone remote",
            "retention policies act but no archive remote is configured",
            "configure the rclone remote block; nothing was touched",
        )
    outcomes = []
    for done, candidate in enumerate(plan.candidates, 1):
        try:
            outcomes.append(apply_candidate(candidate, archive, ledger, remote_folder))
        except Exception as exc:  # e.g. the database went away mid-way: report, keep going
            outcomes.append(Outcome(candidate, "failed", detail=f"{type(exc).__name__}: {exc}"))
        if progress is not None:
            progress(done, len(plan.candidates))
    return outcomes


def outcome_rows(outcomes: list[Outcome]) -> list[dict]:
    return [
        {
            **{k: v for k, v in asdict(o.candidate).items() if k != "path"},
            "status": o.status,
            "location": o.location,
            "detail": o.detail,
        }
        for o in outcomes
    ]


def run_retention(
    roots: Layout,
    policies: RetentionPolicies,
    remote,
    db,
    *,
    dry_run: bool = False,
    holder: str = "retention",
    wait: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[RetentionPlan, list[dict]]:
    """Plan the policies and, unless ``dry_run``, apply them: archive, verify, record, and only then delete.

    Entries are applied under the backup lifecycle's lock (``holder`` names who holds it; ``wait`` seconds
    for it), each recorded in the ledger (``db``'s backup tables and ``<backups>/logs/retention.jsonl``)
    before anything is deleted; with no remote configured (``remote``: RcloneRemote) only delete-only policies
    act. Returns the plan and one row per applied entry (``outcome_rows``).
    """
    from labpipe.backup.runlock import backup_lock
    from labpipe.backup.schema import tables

    plan = plan_retention(roots, policies)
    if dry_run or not plan.candidates:
        return plan, []
    with backup_lock(roots.backups, holder, wait=wait):
        ledger = Ledger(tables(db), roots.backups / "logs" / "retention.jsonl")
        archive = RcloneArchive(remote) if remote.configured else None
        return plan, outcome_rows(apply_retention(plan, archive, ledger, policies.remote_folder, progress))
