"""The pose-estimation worker population, task listing, preflight of pending tasks, and model assignment.

Workers call ``run_population``: DataJoint ``populate(reserve_jobs=True)`` hands each task
to one worker; errors (refusals, failed preflights, crashes of DeepLabCut) are recorded in
the jobs table and returned, never raised, so one bad video never stops the others. A
task that failed stays failed until its job is cleared (``labpipe pose jobs --clear``);
a task whose worker died stays reserved until then too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from labpipe.db.connect import LabDatabase
from labpipe.db.jobs import worker_heartbeat
from labpipe.errors import ConflictError, InvalidInput, LabpipeError
from labpipe.pose.preflight import PreflightError, mismatch, preflight
from labpipe.pose.schema import PoseContext, tables
from labpipe.pose.video import probe_video


@dataclass
class PoseRunResult:
    """What one worker did: the task keys it analysed, the ones it could not, and what is left."""

    analysed: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    remaining: int = 0

    def as_json(self) -> dict:
        return {"analysed": self.analysed, "errors": self.errors, "remaining": self.remaining}


def _key_text(key: dict) -> dict:
    return {k: str(key[k]) for k in ("session_id", "scan_id", "file_name") if k in key}


def run_population(
    db: LabDatabase,
    context: PoseContext,
    *restrictions,
    max_calls: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PoseRunResult:
    """One worker: analyse pending tasks until none is left (or ``max_calls``); errors recorded, not raised."""
    t = tables(db)
    result = PoseRunResult()
    total = len(_todo(t, restrictions))
    user_hook = context.on_analysed

    def analysed(key: dict, pose) -> None:
        result.analysed.append(_key_text(key))
        if user_hook:
            user_hook(key, pose)
        if progress:
            progress(len(result.analysed), max(total, len(result.analysed)))

    context.on_analysed = analysed
    try:
        with worker_heartbeat(db):  # the reservations stay ours while this process lives and beats
            outcome = t.PoseEstimation.populate(
                *restrictions,
                reserve_jobs=True,
                suppress_errors=True,
                max_calls=max_calls,
                make_kwargs={"context": context},
                display_progress=False,
            )
    finally:
        context.on_analysed = user_hook
    for item in outcome.get("error_list", []):
        key, message = item if isinstance(item, tuple) else (item, "")
        result.errors.append({"key": _key_text(dict(key)), "error": str(message)[:2000]})
    # a key analysed but not inserted (e.g. a lost connection at commit) is not a success
    done = set(map(_frozen, t.PoseEstimation.keys()))
    result.analysed = [k for k in result.analysed if _frozen(k) in done]
    result.remaining = len(t.PoseEstimation.key_source - t.PoseEstimation.proj())
    return result


def _todo(t, restrictions: tuple):
    """Tasks with a model and no result yet, within every restriction (AND, unlike a list's OR)."""
    query = t.PoseEstimation.key_source
    for restriction in restrictions:
        query = query & restriction
    return query - t.PoseEstimation.proj()


def _frozen(key: dict) -> tuple:
    return tuple(str(key[k]) for k in ("session_id", "scan_id", "file_name"))


def task_rows(db: LabDatabase) -> list[dict]:
    """Every pose-estimation task with its model, state (pending / done / error / reserved / unassigned)."""
    t = tables(db)
    ingest = t.ingest
    jobs = {_frozen(j): j for j in (t.PoseEstimation.jobs & "status in ('reserved', 'error')").to_dicts()}
    done = {_frozen(r): r for r in t.PoseEstimation.proj("model_id", "n_frames", "mean_likelihood").to_dicts()}
    rows = []
    for task in (ingest.PoseEstimationTask * ingest.Scan.proj("folder")).to_dicts(order_by="session_id, scan_id"):
        key = _frozen(task)
        row = {**_key_text(task), "video": f"{task['folder']}/{task['file_name']}", "model": task["model_name"] or ""}
        if key in done:
            row.update(state="done", model_id=done[key]["model_id"], frames=int(done[key]["n_frames"]))
        elif key in jobs:
            row.update(state=jobs[key]["status"], error=(jobs[key].get("error_message") or "")[:500])
        else:
            row.update(state="pending" if task["model_name"] else "unassigned")
        rows.append(row)
    return rows


def preflight_tasks(db: LabDatabase, context: PoseContext, *restrictions) -> list[dict]:
    """Preflight every task still to do, without analysing; one row per task with its problems (empty: ready)."""
    t = tables(db)
    ingest = t.ingest
    todo = _todo(t, restrictions)
    rows = []
    query = ingest.PoseEstimationTask * ingest.Scan.proj("folder") * ingest.RawFile.proj("checksum") & todo.proj()
    for task in query.to_dicts(order_by="session_id, scan_id"):
        video = Path(context.share) / task["folder"] / task["file_name"]
        expected = task["checksum"] if context.settings.check_checksum else None
        try:
            preflight(
                video,
                task["model_name"],
                context.store,
                [context.staging, *context.extra_outputs],
                expected_sha256=expected,
            )
            problems: list[str] = []
        except PreflightError as exc:
            problems = [str(p) for p in exc.problems]
        rows.append({**_key_text(task), "model": task["model_name"], "problems": problems})
    return rows


def assign_model(
    db: LabDatabase,
    store,
    model_name: str,
    share: Path,
    *,
    file_name: str | None = None,
    restriction=None,
    replace: bool = False,
) -> list[dict]:
    """Name ``model_name`` as the model of the matching tasks, refusing videos the model was not trained for.

    The choice is explicit and checked now (frame rate and resolution against the model's
    card). Outcomes: assigned, unchanged (already analysed with this model), refused (with the
    reason); a result of another model is only deleted and redone with ``replace``.
    """
    t = tables(db)
    ingest = t.ingest
    card = store.card(model_name)
    query = ingest.PoseEstimationTask * ingest.Scan.proj("folder")
    if file_name:
        query = query & {"file_name": file_name}
    if restriction is not None:
        query = query & restriction
    tasks = query.to_dicts(order_by="session_id, scan_id")
    if not tasks:
        raise InvalidInput(file_name or restriction or "tasks", "no pose-estimation task matches")
    outcomes = []
    for task in tasks:
        key = {k: task[k] for k in ("session_id", "scan_id", "file_name")}
        video = Path(share) / task["folder"] / task["file_name"]
        row = {**_key_text(key), "model": model_name}
        try:
            info = probe_video(video)
            problem = mismatch(info, card)
            if problem is not None:
                raise InvalidInput(problem.subject, problem.problem, problem.hint)
            if t.PoseEstimation & key:
                if not replace and task["model_name"] == model_name:
                    outcomes.append({**row, "outcome": "unchanged"})
                    continue
                if not replace:
                    raise ConflictError(
                        video, f"already analysed with {task['model_name']}", "pass replace to delete and redo it"
                    )
                (t.PoseEstimation & key).delete()
            ingest.PoseEstimationTask.update1({**key, "model_name": model_name})
            (t.PoseEstimation.jobs & key).delete_quick()  # a new choice deserves a new attempt
            row.update(outcome="assigned")
        except LabpipeError as exc:
            row.update(outcome="refused", reason=str(exc))
        outcomes.append(row)
    return outcomes
