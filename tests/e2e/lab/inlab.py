"""What the lab's e2e tests ask of the simulated lab, run ON a lab host (its namespace, env files and secrets).

``lab.run(host, [python, inlab.py, COMMAND, JSON-ARGS])`` (see ``conftest.in_lab``): the Prefect client and the
Dask client here reach the lab's authenticated TLS server and mutual-TLS scheduler exactly as a flow run on that
host does. Each command prints one JSON object as its last line.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


# spec key, module, block class, label, named: named keys hold {name: fields}, the others one `default` document
BLOCKS = [
    ("layouts", "labpipe.blocks", "StorageLayout", "layout", True),
    ("radio", "labpipe.blocks.radio", "RadioStreaming", "radio", False),
    ("calibration", "labpipe.blocks.radio_calibrate", "RadioCalibration", "calibration", False),
    ("plans", "labpipe.blocks.backup", "NightlyBackup", "plan", True),
    ("repositories", "labpipe.blocks.backup", "BackupRepository", "repository", True),
    ("alerts", "labpipe.blocks.alerts", "LabAlerts", "alerts", False),
]


def save_blocks(spec: dict) -> dict:
    """Block documents by type, as BLOCKS lists them: {"radio": {...}, "layouts": {name: roots}, ...}."""
    import importlib

    saved = []
    for key, module, cls, label, named in BLOCKS:
        if key not in spec:
            continue
        block = getattr(importlib.import_module(module), cls)
        for name, fields in (spec[key] if named else {"default": spec[key]}).items():
            block(**fields).save(name, overwrite=True)
            saved.append(f"{label} {name}")
    from labpipe.deployments.pickers import refresh_on_server

    refresh_on_server()  # as `labpipe config apply` does: deployments accept the names their pickers offer
    return {"saved": saved}


def start(spec: dict) -> dict:
    """A run of deployment ``spec["deployment"]`` with ``spec["parameters"]``, not waited for."""
    from prefect.deployments import run_deployment

    run = run_deployment(spec["deployment"], parameters=spec.get("parameters", {}), timeout=0)
    return {"id": str(run.id), "name": run.name}


def _worker_of(client, run_id: str) -> str | None:
    """The name of the pool worker that submitted the run (its ``prefect.worker.submitted-flow-run`` event)."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    wanted = EventFilter(
        event=EventNameFilter(name=["prefect.worker.submitted-flow-run"]),
        related=EventRelatedFilter(id=[f"prefect.flow-run.{run_id}"]),
    )
    events = client.read_events(filter=wanted, limit=5).events
    return events[0].resource.get("prefect.resource.name") if events else None


def describe(run) -> dict:
    state = run.state
    return {
        "id": str(run.id),
        "name": run.name,
        "state": state.type.value if state else None,
        "state_name": state.name if state else None,
        "message": (state.message or "")[:2000] if state else "",
        "infrastructure_pid": run.infrastructure_pid,
        "created": run.created.isoformat() if run.created else None,
        "start_time": run.start_time.isoformat() if run.start_time else None,
        "end_time": run.end_time.isoformat() if run.end_time else None,
        "parameters": run.parameters,
    }


def _has_artifact(client, run_id: str, key: str) -> bool:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    wanted = ArtifactFilter(key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
    found = client.read_artifacts(artifact_filter=wanted, limit=1)
    if not found:
        return False
    data = found[0].data  # a progress artifact: done only once some work is (created at 0 %)
    return not isinstance(data, int | float) or data > 0


def wait(spec: dict) -> dict:
    """Wait for run ``spec["id"]`` to reach a state type of ``spec["until"]`` (default: any final state), or a
    state named one of ``spec["named"]``, or an artifact keyed ``spec["artifact"]``, within ``timeout`` s."""
    until, named = set(spec.get("until", [])), set(spec.get("named", []))
    deadline = time.monotonic() + float(spec.get("timeout", 600))
    with _client() as client:
        while True:
            run = client.read_flow_run(spec["id"])
            state = run.state
            if named:
                reached = state and state.name in named
            elif "artifact" in spec:  # e.g. a progress artifact above 0 %: the run is working
                reached = _has_artifact(client, spec["id"], spec["artifact"])
            else:
                reached = state and (state.type.value in until if until else state.is_final())
            if reached or time.monotonic() > deadline:
                out = describe(run)
                out["worker"] = _worker_of(client, spec["id"])
                out["timed_out"] = not reached
                return out
            time.sleep(0.5)


def run(spec: dict) -> dict:
    """Start a deployment run and wait for its final state."""
    started = start(spec)
    return wait({"id": started["id"], "timeout": spec.get("timeout", 600)})


def runs(spec: dict) -> dict:
    """Runs of the flows named ``spec["flows"]`` created by deployments (triggered ones included)."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with _client() as client:
        found = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=spec["flows"])), limit=200)
        return {"runs": [describe(r) | {"worker": _worker_of(client, str(r.id))} for r in found if r.deployment_id]}


def events(spec: dict) -> dict:
    """Events named ``spec["name"]`` (newest first): when they occurred, their resource and payload."""
    from prefect.events.filters import EventFilter, EventNameFilter

    with _client() as client:
        found = client.read_events(filter=EventFilter(event=EventNameFilter(name=[spec["name"]])), limit=50).events
    return {"events": [{"occurred": e.occurred.isoformat(), "resource": dict(e.resource), "payload": e.payload}
                       for e in found]}  # fmt: skip


def stage_lag(spec: dict) -> dict:
    """The radio stream's stage lags (arrival -> MS -> image) from the lab database, as radio-image exports them."""
    from dataclasses import asdict

    from labpipe.blocks import lab_database
    from labpipe.radio import lag

    return {"lags": [asdict(x) for x in lag.stage_lags(lab_database())]}


def set_state(spec: dict) -> dict:
    """Force run ``spec["id"]`` into a new Scheduled state (a rerun of a crashed run, as the UI's Retry does)."""
    from prefect.states import Scheduled

    with _client() as client:
        result = client.set_flow_run_state(spec["id"], Scheduled(), force=True)
        return {"status": str(result.status)}


def task_stream(spec: dict) -> dict:
    """The Dask scheduler's task stream from ``spec["index"]`` on (index only when absent): key and worker."""
    from distributed import Client

    with Client(os.environ["LABPIPE_DASK_ADDRESS"], timeout=30) as client:
        if "index" not in spec:
            return {"index": client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.get_task_stream_index())}
        start_index = int(spec["index"])
        rows = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.get_task_stream(start_index=start_index))
        return {"tasks": [{"key": str(r["key"]), "worker": r["worker"]} for r in rows]}


COMMANDS = {
    f.__name__.replace("_", "-"): f
    for f in (save_blocks, start, wait, run, runs, events, stage_lag, set_state, task_stream)
}

if __name__ == "__main__":
    command, argument = sys.argv[1], json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}")
    print(json.dumps(COMMANDS[command](argument), default=str))
