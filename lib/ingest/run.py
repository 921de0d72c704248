"""Ingest a share into the database: sessions, scans, raw files and worker tasks, logged per run.

Idempotent: what is already in the database is skipped, so re-running on the
same share inserts nothing twice. Sessions are inserted in batches inside a
transaction; if a batch fails it is retried one session at a time, so one bad
session is recorded as a failure and never stops the others.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from labpipe.db.connect import LabDatabase
from labpipe.files import sha256_file
from labpipe.ingest.schema import tables
from labpipe.ingest.share import Rejection, SessionRecord, ShareScan, scan_share

TASK_TABLE_BY_MODALITY = {"imaging": "ImagingTask", "mocap": "MocapTask", "video": "PoseEstimationTask"}
BATCH = 500


@dataclass
class IngestReport:
    run_id: str
    share_root: str
    status: str = "running"
    sessions: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    inserted: int = 0
    updated: int = 0
    skipped: int = 0
    files_inserted: int = 0
    tasks_inserted: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict:
        return asdict(self)


@dataclass
class _Rows:
    users: list = field(default_factory=list)
    subjects: list = field(default_factory=list)
    sessions: list = field(default_factory=list)
    scans: list = field(default_factory=list)
    files: list = field(default_factory=list)
    tasks: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sessions) + len(self.scans) + len(self.files)


class _Existing:
    """Keys already in the database, read once per run."""

    def __init__(self, t) -> None:
        self.session_folder = dict(zip(*t.Session.fetch("session_id", "folder"), strict=True))
        self.scans = {tuple(k) for k in zip(*t.Scan.fetch("session_id", "scan_id"), strict=True)}
        self.files = {tuple(k) for k in zip(*t.RawFile.fetch("session_id", "scan_id", "file_name"), strict=True)}


def _rows_for(session: SessionRecord, share: Path, existing: _Existing) -> _Rows:
    rows = _Rows()
    sid = session.session_id
    if sid not in existing.session_folder:
        rows.users.append(dict(username=session.username))
        rows.subjects.append(dict(animal_id=session.animal_id))
        rows.sessions.append(
            dict(
                session_id=sid,
                username=session.username,
                animal_id=session.animal_id,
                session_date=session.session_date,
                initials=session.initials,
                folder=session.folder,
            )
        )
    for scan in session.scans:
        if (sid, scan.scan_id) not in existing.scans:
            rows.scans.append(dict(session_id=sid, scan_id=scan.scan_id, setup=scan.setup, folder=scan.folder))
        for f in scan.files:
            key = dict(session_id=sid, scan_id=scan.scan_id, file_name=f.name)
            if (sid, scan.scan_id, f.name) in existing.files:
                continue
            checksum = f.checksum or sha256_file(share / scan.folder / f.name)
            rows.files.append(dict(key, size=f.size, checksum=checksum, modality=f.modality))
            task_table = TASK_TABLE_BY_MODALITY.get(f.modality)
            if task_table and (f.modality != "mocap" or f.name.lower().endswith(".csv")):
                rows.tasks.setdefault(task_table, []).append(key)
    return rows


def _merge(batch: _Rows, rows: _Rows) -> None:
    for name in ("users", "subjects", "sessions", "scans", "files"):
        getattr(batch, name).extend(getattr(rows, name))
    for table, keys in rows.tasks.items():
        batch.tasks.setdefault(table, []).extend(keys)


def _insert(t, rows: _Rows) -> None:
    conn = t.schema.connection
    with conn.transaction:
        t.LabUser.insert(rows.users, skip_duplicates=True)
        t.Subject.insert(rows.subjects, skip_duplicates=True)
        t.Session.insert(rows.sessions)
        t.Scan.insert(rows.scans)
        t.RawFile.insert(rows.files)
        for table, keys in rows.tasks.items():
            getattr(t, table).insert(keys)


def ingest_share(
    db: LabDatabase,
    share: Path,
    *,
    scan: ShareScan | None = None,
    progress: Callable[[int, int], None] | None = None,
    today: dt.date | None = None,
) -> IngestReport:
    """Insert everything new under ``share``; returns the report also logged as an ``IngestRun``."""
    t = tables(db)
    share = Path(share)
    scan = scan or scan_share(share, today=today)
    report = IngestReport(run_id=uuid.uuid4().hex, share_root=str(share))
    report.rejected = [asdict(r) for r in scan.rejected]
    report.sessions = [s.as_json() for s in scan.sessions]
    started = dt.datetime.now()
    t.IngestRun.insert1(dict(run_id=report.run_id, share_root=str(share), started=started, status="running"))
    existing = _Existing(t)
    outcomes: list[dict] = []
    batch, members = _Rows(), []
    failures: list[Rejection] = []

    def flush() -> None:
        nonlocal batch, members
        if not members:
            return
        try:
            _insert(t, batch)
            done = members
        except Exception:  # one bad session must not stop the batch: retry one by one
            done = []
            for session, rows in members:
                try:
                    _insert(t, rows)
                    done.append((session, rows))
                except Exception as exc:
                    failures.append(Rejection(session.folder, f"insert failed: {exc}"))
                    outcomes.append(_outcome(session, "failed", str(exc)[:2000]))
        for session, rows in done:
            kind = "inserted" if rows.sessions else "updated"
            outcomes.append(_outcome(session, kind, f"{len(rows.scans)} scans, {len(rows.files)} files"))
            setattr(report, kind, getattr(report, kind) + 1)
            report.files_inserted += len(rows.files)
            for table, keys in rows.tasks.items():
                report.tasks_inserted[table] = report.tasks_inserted.get(table, 0) + len(keys)
        batch, members = _Rows(), []

    for index, session in enumerate(scan.sessions, start=1):
        known_folder = existing.session_folder.get(session.session_id)
        if known_folder is not None and known_folder != session.folder:
            reason = f"session id {session.session_id} is already ingested from {known_folder}"
            failures.append(Rejection(session.folder, reason))
            outcomes.append(_outcome(session, "failed", reason))
        else:
            try:
                rows = _rows_for(session, share, existing)
            except OSError as exc:
                failures.append(Rejection(session.folder, f"cannot read files: {exc}"))
                outcomes.append(_outcome(session, "failed", str(exc)))
                rows = None
            if rows is not None and len(rows) == 0:
                report.skipped += 1
                outcomes.append(_outcome(session, "skipped", "already ingested"))
            elif rows is not None:
                _merge(batch, rows)
                members.append((session, rows))
                if len(batch) >= BATCH:
                    flush()
        if progress:
            progress(index, len(scan.sessions))
    flush()
    report.failures = [asdict(f) for f in failures]
    report.status = "failed" if failures else "succeeded"
    _finish_run(t, report, outcomes, scan.rejected, failures)
    return report


def _outcome(session: SessionRecord, outcome: str, detail: str) -> dict:
    return dict(session_folder=session.folder, session_id=session.session_id, outcome=outcome, detail=detail)


def _finish_run(t, report: IngestReport, outcomes, rejected, failures) -> None:
    key = dict(run_id=report.run_id)
    problems = [(r, "parse") for r in rejected] + [(f, "insert") for f in failures]
    with t.schema.connection.transaction:
        t.IngestRun.SessionOutcome.insert([dict(key, **o) for o in outcomes])
        t.IngestRun.Failure.insert(
            [
                dict(key, failure_no=i, path=p.path[:1023], stage=stage, reason=p.reason[:2000])
                for i, (p, stage) in enumerate(problems)
            ]
        )
        t.IngestRun.update1(
            dict(
                key,
                finished=dt.datetime.now(),
                status=report.status,
                sessions_inserted=report.inserted,
                sessions_skipped=report.skipped,
                rejected=len(rejected),
                failures=len(failures),
            )
        )
