"""Streaming: subband files arriving in ``incoming/`` become groups, queued, converted, recovered.

``scan_incoming`` records new files and (re)forms the *collecting* groups by
single-linkage on the file-name timestamps: files within ``tolerance_s`` of
each other belong together, whatever order they arrive in, so per-subband
jitter of +-60 s still yields one group (DSA-110 groups are 309 s apart). A
group's id is the timestamp of its earliest file. A group with every subband
is queued (*pending*); one still incomplete ``incomplete_timeout_s`` after its
first file is queued with the missing subbands flagged, or *failed*, by
``incomplete_policy``. Once queued a group is frozen: a file that arrives
later for it is recorded as *late* (or *duplicate*) and reported.

Workers ``claim_next`` a pending group with a conditional UPDATE (exactly one
wins) that also sets a fresh claim token, heartbeat from a thread of their own
while they hold it (whatever the conversion is doing), and finish it
*completed* or *failed* (partial MS and ``.log`` quarantined in ``ms/failed``).
Every write of a worker is conditional on its token: the final rename of the MS
runs inside a transaction that first locks the group row ``WHERE claim =
token`` and marks it completed before committing, so a worker whose claim was
taken away never publishes. ``recover_stuck`` puts a group back to *pending*
when its worker is dead (same host, no such process) or silent for
``stale_after_s``; after ``max_attempts`` it fails. Each attempt stages in
folders named by its token and removes only those; ``recover_stuck`` removes
a dead worker's.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from labpipe.db.connect import LabDatabase
from labpipe.errors import ConflictError, LabpipeError
from labpipe.files import atomic_write_text
from labpipe.procs import pid_alive
from labpipe.radio import instrument as inst
from labpipe.radio.calibrators import DEFAULT_RADIUS_DEG, load_calibrators, transiting_calibrator
from labpipe.radio.convert import ClaimLost, ConversionResult, ConvertSettings, clean_staging, convert_group
from labpipe.radio.naming import group_id as group_id_of
from labpipe.radio.naming import parse_subband_name
from labpipe.radio.schema import tables
from labpipe.radio.tree import RadioTree
from pydantic import BaseModel, Field

log = logging.getLogger("labpipe.radio.stream")


class StreamSettings(BaseModel):
    """How subband files are grouped, queued and recovered."""

    tolerance_s: float = Field(60.0, description="Files whose name timestamps are this close belong to one group.")
    incomplete_timeout_s: float = Field(
        600.0, description="A group still missing subbands this long after its first file is queued or failed."
    )
    incomplete_policy: Literal["convert", "fail"] = Field(
        "convert", description="Incomplete group at the timeout: convert with missing subbands flagged, or fail it."
    )
    min_file_age_s: float = Field(
        2.0, description="Ignore files modified less than this long ago (still being written)."
    )
    stale_after_s: float = Field(
        300.0, description="An in-progress group whose worker has not reported for this long goes back to pending."
    )
    max_attempts: int = Field(3, description="Attempts (including abandoned ones) before a group is failed for good.")
    calibrator_catalog: Path | None = Field(
        None, description="Calibrator CSV (name, ra_deg, dec_deg, flux_jy); empty: static/catalogs/calibrators.csv."
    )
    calibrator_radius_deg: float = Field(
        DEFAULT_RADIUS_DEG, description="A calibrator this close to the pointing declination is in the field."
    )


class RadioSettings(StreamSettings, ConvertSettings):
    """Everything the radio streaming and conversion flows are configured by (block ``RadioStreaming``)."""


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def this_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# --- scanning and grouping ---------------------------------------------------------------------------


@dataclass
class ScanReport:
    new_files: int = 0
    ignored: list[str] = field(default_factory=list)  # names that are not subband files
    too_young: int = 0
    late: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    collecting: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    queued_incomplete: dict[str, str] = field(default_factory=dict)  # group -> missing subbands
    failed_incomplete: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict:
        return asdict(self)


def _clusters(files: list[dict], tolerance_s: float) -> list[list[dict]]:
    """Single-linkage clusters of files by ``file_time``: order-independent."""
    ordered = sorted(files, key=lambda f: (f["file_time"], f["file_name"]))
    clusters: list[list[dict]] = []
    for f in ordered:
        if clusters and (f["file_time"] - clusters[-1][-1]["file_time"]).total_seconds() <= tolerance_s:
            clusters[-1].append(f)
        else:
            clusters.append([f])
    return clusters


def _list_incoming(incoming: Path, settings: StreamSettings, report: ScanReport, now: float) -> list[dict]:
    found = []
    with os.scandir(incoming) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file():
                continue
            name = parse_subband_name(entry.name)
            if name is None:
                report.ignored.append(entry.name)
                continue
            stat = entry.stat()
            if now - stat.st_mtime < settings.min_file_age_s:
                report.too_young += 1
                continue
            found.append(dict(file_name=entry.name, file_time=name.timestamp, subband=name.subband, size=stat.st_size))
    return found


def scan_incoming(
    db: LabDatabase, tree: RadioTree, settings: StreamSettings | None = None, *, now: dt.datetime | None = None
) -> ScanReport:
    """Record new files in incoming/, regroup what is still collecting, queue complete and timed-out groups."""
    settings = settings or StreamSettings()
    t = tables(db)
    now = now or now_utc()
    report = ScanReport()
    listed = _list_incoming(tree.incoming, settings, report, time.time())
    if listed:
        oldest = min(f["file_time"] for f in listed)
        known = set((t.SubbandFile & f"file_time >= '{oldest}'").to_arrays("file_name"))
    else:
        known = set()
    new = [f for f in listed if f["file_name"] not in known]
    report.new_files = len(new)
    with t.schema.connection.transaction:
        frozen = _frozen_members(t, new, settings.tolerance_s)
        rows = []
        for f in new:
            row = dict(f, recorded=now, status="open", group_id=None)
            hit = _frozen_match(f, frozen, settings.tolerance_s)
            if hit is not None:
                gid, subbands = hit
                row.update(group_id=gid, status="duplicate" if f["subband"] in subbands else "late")
                (report.duplicates if row["status"] == "duplicate" else report.late).append(f["file_name"])
                log.warning("%s arrived after group %s was queued (%s)", f["file_name"], gid, row["status"])
            rows.append(row)
        t.SubbandFile.insert(rows)
        _regroup(t, settings, now, report)
    return report


def _frozen_members(t, new: list[dict], tolerance_s: float) -> list[dict]:
    """Members of groups past 'collecting' whose files are near the new files' times."""
    if not new:
        return []
    lo = min(f["file_time"] for f in new) - dt.timedelta(seconds=tolerance_s + inst.GROUP_SECONDS)
    hi = max(f["file_time"] for f in new) + dt.timedelta(seconds=tolerance_s)
    members = t.SubbandGroup.Member * t.SubbandFile.proj("file_time") * t.SubbandGroup.proj("state")
    return (members & "state != 'collecting'" & f"file_time between '{lo}' and '{hi}'").to_dicts()


def _frozen_match(f: dict, frozen: list[dict], tolerance_s: float) -> tuple[str, set[int]] | None:
    near = [m for m in frozen if abs((m["file_time"] - f["file_time"]).total_seconds()) <= tolerance_s]
    if not near:
        return None
    gid = near[0]["group_id"]
    return gid, {m["subband"] for m in frozen if m["group_id"] == gid}


def _regroup(t, settings: StreamSettings, now: dt.datetime, report: ScanReport) -> None:
    open_files = (t.SubbandFile & "status = 'open'").to_dicts()
    collecting = {g["group_id"]: g for g in (t.SubbandGroup & "state = 'collecting'").to_dicts()}
    clusters = _clusters(open_files, settings.tolerance_s)
    wanted: dict[str, list[dict]] = {}
    for cluster in clusters:
        gid = group_id_of(cluster[0]["file_time"])
        if gid in wanted or (gid not in collecting and len(t.SubbandGroup & {"group_id": gid})):
            # the id of a frozen group: these files are late for it (a rare tie on the same second)
            for f in cluster:
                t.SubbandFile.update1(dict(file_name=f["file_name"], status="late", group_id=gid))
                report.late.append(f["file_name"])
            continue
        wanted[gid] = cluster
    for gid in set(collecting) - set(wanted):  # merged into another group or re-keyed by an earlier file
        (t.SubbandGroup.Member & {"group_id": gid}).delete_quick()
        (t.SubbandGroup & {"group_id": gid}).delete_quick()
    for gid, cluster in wanted.items():
        members: dict[int, dict] = {}
        for f in cluster:
            if f["subband"] in members:  # two files claim one subband: keep the first, report the other
                t.SubbandFile.update1(dict(file_name=f["file_name"], status="duplicate", group_id=gid))
                report.duplicates.append(f["file_name"])
            else:
                members[f["subband"]] = f
        row = dict(
            group_id=gid,
            state="collecting",
            n_files=len(members),
            first_seen=min(f["recorded"] for f in members.values()),
            last_seen=max(f["recorded"] for f in members.values()),
        )
        if gid in collecting:
            t.SubbandGroup.update1(row)
            (t.SubbandGroup.Member & {"group_id": gid}).delete_quick()
        else:
            t.SubbandGroup.insert1(row)
        t.SubbandGroup.Member.insert(
            [dict(group_id=gid, subband=sb, file_name=f["file_name"]) for sb, f in members.items()]
        )
        for f in members.values():
            if f.get("group_id") != gid:
                t.SubbandFile.update1(dict(file_name=f["file_name"], group_id=gid))
        _maybe_queue(t, row, set(members), settings, now, report)


def _maybe_queue(t, row: dict, present: set[int], settings, now: dt.datetime, report: ScanReport) -> None:
    gid = row["group_id"]
    n_subbands = getattr(settings, "n_subbands", inst.N_SUBBANDS)
    missing = ",".join(str(sb) for sb in range(n_subbands) if sb not in present)
    waited = (now - row["first_seen"]).total_seconds()
    if not missing:
        update = dict(group_id=gid, state="pending", queued=now)
        report.queued.append(gid)
    elif waited < settings.incomplete_timeout_s:
        report.collecting.append(gid)
        return
    elif settings.incomplete_policy == "convert":
        update = dict(group_id=gid, state="pending", queued=now, incomplete=True, missing=missing)
        report.queued_incomplete[gid] = missing
    else:
        error = f"incomplete: subbands {missing} still missing {waited:.0f} s after the first file"
        update = dict(
            group_id=gid, state="failed", queued=now, incomplete=True, missing=missing, error=error, finished=now
        )
        report.failed_incomplete[gid] = missing
    t.SubbandGroup.update1(update)
    for member in (t.SubbandGroup.Member & {"group_id": gid}).to_dicts():
        t.SubbandFile.update1(dict(file_name=member["file_name"], status="grouped"))


# --- claiming, heartbeats, finishing -----------------------------------------------------------------


def _execute(t, sql: str, args: tuple) -> int:
    cursor = t.schema.connection.query(sql, args)
    return cursor.rowcount


def claim_next(db: LabDatabase, worker: str | None = None, *, group: str | None = None) -> str | None:
    """Atomically take the oldest pending group (or ``group``) for ``worker``; None when there is none."""
    t = tables(db)
    worker = worker or this_worker()
    table = t.SubbandGroup.full_table_name
    restriction = {"group_id": group} if group else {}
    candidates = (t.SubbandGroup & "state = 'pending'" & restriction).to_arrays("group_id", order_by="group_id")
    for gid in candidates:
        now = now_utc()
        token = uuid.uuid4().hex[:16]
        claimed = _execute(
            t,
            f"UPDATE {table} SET state = 'in_progress', worker = %s, claim = %s, heartbeat = %s, started = %s, "
            "attempts = attempts + 1, error = NULL WHERE group_id = %s AND state = 'pending'",
            (worker, token, now, now, gid),
        )
        if claimed == 1:
            previous = (t.ConversionAttempt & {"group_id": gid}).to_arrays("attempt")
            attempt = int(max(previous, default=0)) + 1  # numbered over the group's life (requeues included)
            t.ConversionAttempt.insert1(dict(group_id=gid, attempt=attempt, worker=worker, started=now, token=token))
            return str(gid)
    return None


def _held(claim: str | None) -> tuple[str, tuple]:
    """SQL condition (and its arguments) that the group row is still held by the attempt ``claim``.

    ``claim`` is None only for a group claimed by a labpipe from before claim tokens.
    """
    condition = "state = 'in_progress' AND worker = %s AND "
    return (condition + "claim = %s", (claim,)) if claim else (condition + "claim IS NULL", ())


def heartbeat(db: LabDatabase, group: str, worker: str, claim: str | None = None) -> bool:
    """Tell the database this worker still converts ``group``; False if the claim was taken away.

    Without ``claim`` any attempt of ``worker`` counts (the CLI's view); workers always pass their token.
    """
    t = tables(db)
    return _beat(t.schema.connection, t.SubbandGroup.full_table_name, group, worker, claim, any_claim=claim is None)


def _beat(connection, table: str, group: str, worker: str, claim: str | None, *, any_claim: bool = False) -> bool:
    condition, args = ("state = 'in_progress' AND worker = %s", ()) if any_claim else _held(claim)
    sql = f"UPDATE {table} SET heartbeat = %s WHERE group_id = %s AND {condition}"
    return connection.query(sql, (now_utc(), group, worker, *args)).rowcount == 1


def current_claim(db: LabDatabase, group: str, worker: str) -> tuple[bool, str | None]:
    """(whether ``worker`` holds ``group``, the claim token it holds it with)."""
    t = tables(db)
    rows = (t.SubbandGroup & {"group_id": group, "worker": worker} & "state = 'in_progress'").to_arrays("claim")
    return (True, rows[0] or None) if len(rows) else (False, None)


def _attempt_rows(t, group: str, worker: str | None, claim: str | None):
    """The unfinished ConversionAttempt row of one attempt (by token; by worker for pre-token rows)."""
    which = {"group_id": group, "token": claim} if claim else {"group_id": group, "worker": worker}
    return t.ConversionAttempt & which & "finished IS NULL"


def _finish(
    db: LabDatabase, group: str, worker: str, claim: str | None, state: str, fields: dict, attempt_fields: dict
) -> bool:
    """Move ``group`` from in_progress (held by this attempt) to ``state``; False (and nothing changed) if the
    claim was lost."""
    t = tables(db)
    now = now_utc()
    columns = dict(fields, state=state, finished=now, worker=None)
    if state == "pending":
        columns.update(claim=None, finished=None, heartbeat=None)
    assignments = ", ".join(f"{name} = %s" for name in columns)
    condition, args = _held(claim)
    sql = f"UPDATE {t.SubbandGroup.full_table_name} SET {assignments} WHERE group_id = %s AND {condition}"
    done = _execute(t, sql, (*columns.values(), group, worker, *args)) == 1
    if done:
        for key in _attempt_rows(t, group, worker, claim).keys():  # noqa: SIM118 - DataJoint keys(), not a dict
            t.ConversionAttempt.update1(dict(key, finished=now, **attempt_fields))
    return done


class ClaimKeeper:
    """Holds a worker's claim on a group while it converts it.

    A thread of its own heartbeats every ``every_s`` over a connection of its own, so
    silent phases (planning, ``finish``, the copy from tmpfs, fsync) never look stale;
    when the database says the claim is gone the thread stops and ``check`` raises
    ``ClaimLost``. ``publish_guard`` is the only way the MS reaches its final folder.
    """

    def __init__(self, db: LabDatabase, group: str, worker: str, claim: str | None, every_s: float) -> None:
        self.db, self.group, self.worker, self.claim, self.every_s = db, group, worker, claim, every_s
        self.table = tables(db).SubbandGroup.full_table_name
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat {group}", daemon=True)
        self._own: LabDatabase | None = None

    def __enter__(self) -> ClaimKeeper:
        self._own = LabDatabase(self.db.target, self.db.blobs, self.db.prefix)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self._own is not None:
            self._own.connection.close()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                held = _beat(self._own.connection, self.table, self.group, self.worker, self.claim)
            except Exception as exc:  # the claim is not lost until the database says so
                log.warning("group %s: heartbeat failed (%s); retrying", self.group, exc)
                continue
            if not held:
                log.warning("group %s: %s lost its claim", self.group, self.worker)
                self.lost.set()
                return

    def check(self) -> None:
        if self.lost.is_set():
            raise ClaimLost(
                self.group,
                f"{self.worker} lost its claim on the group",
                "another attempt took it over (this one looked dead or silent); it publishes nothing",
            )

    def publish_guard(self, completed: Callable[[ConversionResult], tuple[dict, dict]]):
        """A context manager for ``convert_group``: the rename runs with the group row locked while this
        attempt still holds it, and the group becomes completed in the same transaction."""

        @contextmanager
        def guard(result: ConversionResult) -> Iterator[None]:
            self.check()
            fields, attempt_fields = completed(result)
            with self.db.connection.transaction:
                condition, args = _held(self.claim)
                lock = f"UPDATE {self.table} SET heartbeat = %s WHERE group_id = %s AND {condition}"
                if self.db.connection.query(lock, (now_utc(), self.group, self.worker, *args)).rowcount != 1:
                    self.lost.set()
                    self.check()
                yield  # the rename
                if not _finish(self.db, self.group, self.worker, self.claim, "completed", fields, attempt_fields):
                    raise RuntimeError(f"group {self.group}: the locked row changed under its lock")

        return guard


def worker_is_dead(worker: str | None) -> bool:
    """True when ``worker`` ran on this host and its process no longer exists."""
    if not worker:
        return True
    host, _, pid = worker.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid))


def recover_stuck(
    db: LabDatabase,
    settings: StreamSettings | None = None,
    *,
    tree: RadioTree | None = None,
    convert_settings: ConvertSettings | None = None,
    now: dt.datetime | None = None,
) -> list[dict]:
    """Give back groups held by dead or silent workers: pending again, or failed after ``max_attempts``."""
    settings = settings or StreamSettings()
    t = tables(db)
    now = now or now_utc()
    recovered = []
    for g in (t.SubbandGroup & "state = 'in_progress'").to_dicts():
        dead = worker_is_dead(g["worker"])
        silent = g["heartbeat"] is None or (now - g["heartbeat"]).total_seconds() > settings.stale_after_s
        if not (dead or silent):
            continue
        why = "its worker process is gone" if dead else f"no heartbeat for {settings.stale_after_s:.0f} s"
        exhausted = g["attempts"] >= settings.max_attempts
        state = "failed" if exhausted else "pending"
        error = f"abandoned {g['attempts']} times; last: {g['worker']}: {why}" if exhausted else None
        table = t.SubbandGroup.full_table_name
        condition, args = _held(g["claim"])
        sql = (
            f"UPDATE {table} SET state = %s, worker = NULL, claim = NULL, heartbeat = NULL, error = %s "
            f"WHERE group_id = %s AND {condition}"
        )
        if _execute(t, sql, (state, error, g["group_id"], g["worker"], *args)) != 1:
            continue  # it finished or was recovered meanwhile
        for key in _attempt_rows(t, g["group_id"], g["worker"], g["claim"]).keys():  # noqa: SIM118 - DataJoint
            t.ConversionAttempt.update1(dict(key, finished=now, outcome="abandoned", detail=why))
        if dead and tree is not None and g["claim"]:  # only a proven-dead attempt's own folders
            workspace = tree.group_workspace(g["group_id"])
            clean_staging(convert_settings or ConvertSettings(), g["group_id"], workspace, g["claim"])
        log.warning("group %s: %s; back to %s", g["group_id"], why, state)
        recovered.append(dict(group_id=g["group_id"], worker=g["worker"], reason=why, state=state))
    return recovered


def requeue(db: LabDatabase, group: str) -> None:
    """Put a failed or completed group back to pending (after fixing its files); late files fill missing subbands."""
    t = tables(db)
    g = (t.SubbandGroup & {"group_id": group}).to_dicts()
    if not g:
        raise LabpipeError(group, "no such group", "see `labpipe radio groups`")
    if g[0]["state"] not in ("failed", "completed"):
        raise ConflictError(group, f"the group is {g[0]['state']}", "only failed or completed groups are requeued")
    with t.schema.connection.transaction:
        present = set((t.SubbandGroup.Member & {"group_id": group}).to_arrays("subband"))
        for f in (t.SubbandFile & {"group_id": group} & "status = 'late'").to_dicts():
            if f["subband"] not in present:
                t.SubbandGroup.Member.insert1(dict(group_id=group, subband=f["subband"], file_name=f["file_name"]))
                t.SubbandFile.update1(dict(file_name=f["file_name"], status="grouped"))
                present.add(f["subband"])
        t.SubbandGroup.update1(
            dict(group_id=group, state="pending", error=None, queued=now_utc(), n_files=len(present), attempts=0)
        )


# --- converting one group ----------------------------------------------------------------------------


class _LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _route(tree: RadioTree, group: str, settings: RadioSettings, found: dict) -> Callable:
    def route(first_jd: float, last_jd: float, dec_deg: float | None) -> Path:
        catalog = settings.calibrator_catalog or tree.catalogs / "calibrators.csv"
        calibrators = load_calibrators(catalog)
        dec = inst.SITE_LAT_DEG if dec_deg is None else dec_deg
        cal = transiting_calibrator(calibrators, dec, first_jd, last_jd, settings.calibrator_radius_deg)
        found["calibrator"] = cal.name if cal else None
        return tree.ms_path("calibrators" if cal else "science", group)

    return route


def _existing_ms(tree: RadioTree, group: str, n_rows: int | None = None) -> Path | None:
    """A finished MS for ``group`` already in place (a crash after the rename, before the database knew)."""
    from casacore import tables as ctables

    for kind in ("science", "calibrators"):
        path = tree.ms_path(kind, group)
        if path.exists():
            try:
                with ctables.table(str(path), ack=False) as table:
                    if table.nrows() > 0 and (n_rows is None or table.nrows() == n_rows):
                        return path
            except RuntimeError:
                continue
    return None


def process_group(
    db: LabDatabase,
    tree: RadioTree,
    group: str,
    *,
    settings: RadioSettings | None = None,
    worker: str | None = None,
    client=None,
    progress: Callable[[int, int], None] | None = None,
    heartbeat_every_s: float = 10.0,
) -> dict:
    """Convert a group this worker has claimed; record completed or failed (never raises for bad data).

    State ``lost`` when the claim was taken away meanwhile: then nothing is published, quarantined or recorded.
    """
    settings = settings or RadioSettings()
    worker = worker or this_worker()
    if heartbeat_every_s * 3 > settings.stale_after_s:
        heartbeat_every_s = settings.stale_after_s / 3  # three missed beats before the claim looks stale
    t = tables(db)
    holds, claim = current_claim(db, group, worker)
    if not holds:
        return _lost(group, worker, "it does not hold the group's claim")
    members = (t.SubbandGroup.Member & {"group_id": group}).to_dicts(order_by="subband")
    files = [tree.incoming / m["file_name"] for m in members]
    capture = _LogCapture()
    logging.getLogger("labpipe.radio").addHandler(capture)
    found: dict = {}
    previous = (t.SubbandGroup & {"group_id": group}).fetch1("ms_path")
    with ClaimKeeper(db, group, worker, claim, heartbeat_every_s) as keeper:

        def report(done: int, total: int) -> None:
            keeper.check()
            if progress:
                progress(done, total)

        def completed(result: ConversionResult) -> tuple[dict, dict]:
            return _completed(tree, result, found)

        try:
            existing = _existing_ms(tree, group) if previous is None else None
            if existing is not None:  # converted before a crash stopped the database update
                fields = dict(kind=existing.parent.parent.name, ms_path=tree.relative(existing))
                if not _finish(
                    db, group, worker, claim, "completed", fields, dict(outcome="completed", detail="found in place")
                ):
                    return _lost(group, worker, "the claim was taken away")
                return dict(group_id=group, state="completed", **fields, detail="already in place")
            result: ConversionResult = convert_group(
                files,
                _route(tree, group, settings, found),
                group=group,
                settings=settings,
                workspace=tree.group_workspace(group),
                client=client,
                progress=report,
                failed_ms=tree.ms_path("failed", group),
                overwrite=previous is not None,  # a requeued group replaces its earlier MS
                attempt=claim,
                publish_guard=keeper.publish_guard(completed),
            )
            if previous is not None and tree.root / previous != Path(result.ms_path):
                shutil.rmtree(tree.root / previous, ignore_errors=True)  # it moved (science <-> calibrators)
        except ClaimLost as exc:
            return _lost(group, worker, exc.problem)
        except Exception as exc:
            if keeper.lost.is_set():  # whatever failed, the group is another attempt's now: quarantine nothing
                return _lost(group, worker, f"the claim was taken away (then: {exc})")
            return _fail(db, tree, group, worker, claim, files, exc, capture)
        except BaseException:
            # cancelled or interrupted: give the group back rather than leave it to the stale timeout
            _finish(db, group, worker, claim, "pending", {}, dict(outcome="abandoned", detail="interrupted"))
            raise
        finally:
            logging.getLogger("labpipe.radio").removeHandler(capture)
    fields, attempt_fields = _completed(tree, result, found)
    return dict(group_id=group, state="completed", **fields, detail=attempt_fields["detail"], staging=result.staging)


def _completed(tree: RadioTree, result: ConversionResult, found: dict) -> tuple[dict, dict]:
    """The group's and the attempt's columns once ``result`` is in place."""
    kind = "calibrators" if found.get("calibrator") else "science"
    fields = dict(
        kind=kind,
        calibrator=found.get("calibrator"),
        ms_path=tree.relative(Path(result.ms_path)),
        flagged=",".join(map(str, result.subbands_flagged)),
        seconds=round(result.seconds, 2),
    )
    detail = f"{len(result.subbands_written)} subbands written, flagged {result.subbands_flagged}"
    if result.bad_files:
        detail += "; bad files: " + "; ".join(f"{Path(p).name}: {r}" for p, r in result.bad_files.items())
    attempt = dict(outcome="completed", detail=detail[:4000], staging=result.staging, seconds=result.seconds)
    return fields, attempt


def _lost(group: str, worker: str, why: str) -> dict:
    log.warning("group %s: %s stops without publishing anything: %s", group, worker, why)
    return dict(group_id=group, state="lost", worker=worker, error=f"claim lost: {why}")


def _fail(
    db, tree: RadioTree, group: str, worker: str, claim: str | None, files, exc: Exception, capture: _LogCapture
) -> dict:
    log_path = tree.failed_log(group)
    text = "\n".join(
        [
            f"group {group} failed to convert on {worker} at {now_utc().isoformat()}Z",
            f"error: {exc}",
            "",
            "files:",
            *[f"  {f}" for f in files],
            "",
            "log:",
            *capture.lines,
            "",
            "traceback:",
            "".join(traceback.format_exception(exc)),
        ]
    )
    atomic_write_text(log_path, text)
    message = str(exc)[:4000]
    _finish(
        db,
        group,
        worker,
        claim,
        "failed",
        dict(error=message, log_path=tree.relative(log_path)),
        dict(outcome="failed", detail=message),
    )
    log.error("group %s failed: %s (log %s)", group, exc, log_path)
    return dict(group_id=group, state="failed", error=message, log_path=str(log_path))


def convert_pending(
    db: LabDatabase,
    tree: RadioTree,
    *,
    settings: RadioSettings | None = None,
    worker: str | None = None,
    limit: int | None = None,
    client=None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[dict]:
    """Claim and convert pending groups one after another until none is left (or ``limit``)."""
    outcomes = []
    worker = worker or this_worker()
    while limit is None or len(outcomes) < limit:
        group = claim_next(db, worker)
        if group is None:
            break
        step = (lambda d, n, g=group: progress(g, d, n)) if progress else None
        outcomes.append(process_group(db, tree, group, settings=settings, worker=worker, client=client, progress=step))
    return outcomes


def group_rows(db: LabDatabase, *, states: tuple[str, ...] = (), limit: int = 200) -> list[dict]:
    """Groups, newest first, for listings and summaries."""
    t = tables(db)
    query = t.SubbandGroup
    if states:
        query = query & [{"state": s} for s in states]
    return query.to_dicts(order_by="group_id DESC", limit=limit)
