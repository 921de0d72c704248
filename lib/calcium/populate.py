"""Worker populations of calcium imaging and behaviour: which tables, in which order, on which pool.

- ``imaging`` (cpu): ScanInfo -> Processing (suite2p) -> MotionCorrection -> Segmentation -> Fluorescence
  -> Activity (OASIS)
- ``denoise`` (gpu): ScanInfo -> Denoising, for the stacks with a ``DenoiseTask``
- ``spikes`` (gpu): Activity (CASCADE-style network)
- ``behavior`` (cpu): BehaviorSession (Bpod trials aligned through the Harp sync stream)

``populate(reserve_jobs=True)`` hands each key to one worker; a key that fails (a truncated
TIFF, a trial file of another session) is recorded in the jobs table and returned, never
raised, so it blocks nothing else. A flow or the command line calls ``run_population``.
"""

from __future__ import annotations

from collections.abc import Callable

from labpipe.calcium.schema import CalciumContext
from labpipe.calcium.schema import tables as calcium_tables
from labpipe.db.connect import LabDatabase
from labpipe.db.jobs import worker_heartbeat
from labpipe.ingest.populate import PopulateResult

# population -> (schema, table, restriction of its keys)
POPULATIONS: dict[str, tuple[tuple[str, str, dict | None], ...]] = {
    "imaging": (
        ("calcium", "ScanInfo", None),
        ("calcium", "Processing", None),
        ("calcium", "MotionCorrection", None),
        ("calcium", "Segmentation", None),
        ("calcium", "Fluorescence", None),
        ("calcium", "Activity", {"method": "oasis"}),
    ),
    "denoise": (("calcium", "ScanInfo", None), ("calcium", "Denoising", None)),
    "spikes": (("calcium", "Activity", {"method": "cascade"}),),
    "behavior": (("behavior", "BehaviorSession", None),),
}
POOLS = {"imaging": "cpu", "denoise": "gpu", "spikes": "gpu", "behavior": "cpu"}


def _namespace(db: LabDatabase, schema: str):
    if schema == "behavior":
        from labpipe.behavior.schema import tables as behavior_tables

        return behavior_tables(db)
    return calcium_tables(db)


def population_tables(db: LabDatabase, population: str | None = None) -> list:
    """The computed tables of ``population`` (all populations: None), for listing and clearing their jobs."""
    names = [population] if population else list(POPULATIONS)
    seen = {(schema, table) for name in names for schema, table, _ in POPULATIONS[name]}
    return [getattr(_namespace(db, schema), table) for schema, table in sorted(seen)]


def _make_kwargs(table, context: CalciumContext) -> dict:
    return {"share": str(context.share)} if table.__name__ == "BehaviorSession" else {"context": context}


def run_population(
    db: LabDatabase,
    population: str,
    context: CalciumContext,
    *,
    session: str | None = None,
    max_calls: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PopulateResult:
    """Populate each table of ``population`` in order; errors are recorded, not raised.

    ``session``: only that session's keys. ``progress(done, total)`` after each table.
    """
    if population not in POPULATIONS:
        raise ValueError(f"unknown population {population!r}; expected one of {sorted(POPULATIONS)}")
    result = PopulateResult(population)
    steps = POPULATIONS[population]
    with worker_heartbeat(db):  # the reservations stay ours while this process lives and beats
        for done, (schema, name, restriction) in enumerate(steps, start=1):
            table = getattr(_namespace(db, schema), name)
            query = _keys(table, restriction, session)
            label = f"{name}[{restriction['method']}]" if restriction and "method" in restriction else name
            result.populate(table, query, label=label, max_calls=max_calls, make_kwargs=_make_kwargs(table, context))
            if progress:
                progress(done, len(steps))
    return result


def _keys(table, restriction: dict | None, session: str | None):
    """The table's key source under its step's restriction (a method) and, when given, one session."""
    query = table.key_source
    for r in (restriction, {"session_id": session} if session else None):
        query = query & r if r else query
    return query


def population_status(db: LabDatabase, session: str | None = None) -> list[dict]:
    """Per population and table: keys done, still to do, reserved by a worker now, and failed (jobs table)."""
    rows = []
    for population, steps in POPULATIONS.items():
        for schema, name, restriction in steps:
            table = getattr(_namespace(db, schema), name)
            query = _keys(table, restriction, session)
            jobs = table.jobs & ({"session_id": session} if session else {})
            rows.append(
                {
                    "population": population,
                    "pool": POOLS[population],
                    "table": name,
                    "done": len(query.proj() & table.proj()),
                    "to do": len(query.proj() - table.proj()),
                    "running": len(jobs & "status = 'reserved'"),
                    "failed": len(jobs & "status = 'error'"),
                }
            )
    return rows
