"""Worker populations of the ingest lifecycle: which tables, in which order, on which pool."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from labpipe.db.connect import LabDatabase
from labpipe.db.jobs import worker_heartbeat
from labpipe.ingest.schema import tables

# population -> computed tables in dependency order (calcium imaging and behaviour: labpipe.calcium.populate)
POPULATIONS: dict[str, tuple[str, ...]] = {
    "mocap": ("MocapRecording",),
}


@dataclass
class PopulateResult:
    population: str
    computed: dict[str, int] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)
    remaining: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per table, where a population's time goes

    def populate(self, table, query, *, label: str | None = None, max_calls=None, make_kwargs=None) -> None:
        """``table.populate(reserve_jobs=True)`` over ``query`` (its key source, restricted), errors recorded, not
        raised; what it computed, the errors, the keys still to do and its wall time go under ``label`` (default:
        the table's name). The one populate step of every population (ingest, calcium imaging)."""
        label = label or table.__name__
        started = time.monotonic()
        outcome = table.populate(
            query.proj(),
            reserve_jobs=True,
            suppress_errors=True,
            max_calls=max_calls,
            make_kwargs=make_kwargs or {},
            display_progress=False,
        )
        self.computed[label] = int(outcome.get("success_count", 0))
        for key, message in _errors(outcome):
            self.errors.append({"table": label, "key": {k: str(v) for k, v in key.items()}, "error": message})
        self.remaining[label] = len(query.proj() - table.proj())
        self.seconds[label] = round(time.monotonic() - started, 3)


def population_tables(db: LabDatabase, population: str | None = None) -> list:
    t = tables(db)
    names = POPULATIONS[population] if population else [n for names in POPULATIONS.values() for n in names]
    return [getattr(t, name) for name in names]


def every_population_table(db: LabDatabase) -> list:
    """The computed tables of every population of the lab database (ingest, calcium imaging, behaviour, pose):
    what job recovery and the jobs listing look at."""
    from labpipe.calcium.populate import population_tables as calcium_tables
    from labpipe.pose.schema import tables as pose_tables

    return population_tables(db) + calcium_tables(db) + [pose_tables(db).PoseEstimation]


def run_population(
    db: LabDatabase,
    population: str,
    share: Path,
    *,
    max_calls: int | None = None,
    session: str | None = None,
    progress=None,
) -> PopulateResult:
    """``populate(reserve_jobs=True)`` each table of the population; errors are recorded, not raised.

    Several workers may run this at once: the jobs table hands each key to one of them.
    ``session``: only that session's keys (re-running one session; the others stay queued).
    """
    if population not in POPULATIONS:
        raise ValueError(f"unknown population {population!r}; expected one of {sorted(POPULATIONS)}")
    result = PopulateResult(population)
    with worker_heartbeat(db):  # the reservations stay ours while this process lives and beats
        for table in population_tables(db, population):
            query = table.key_source & {"session_id": session} if session else table.key_source
            result.populate(table, query, max_calls=max_calls, make_kwargs={"share": str(share)})
            if progress:
                progress(len(result.computed), len(POPULATIONS[population]))
    return result


def _errors(outcome) -> list[tuple[dict, str]]:
    """(key, message) pairs from what ``populate`` returns."""
    items = outcome.get("error_list", [])
    pairs = []
    for item in items:
        key, error = item if isinstance(item, tuple) else (item, "")
        pairs.append((dict(key) if isinstance(key, dict) else {"key": str(key)}, str(error)[:1000]))
    return pairs
