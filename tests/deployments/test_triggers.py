"""Lifecycles chained by events: the deployment triggers of deployments/prefect.yaml on a real Prefect server.

Each test deploys one deployment of prefect.yaml with its triggers exactly as `prefect deploy` does (Prefect's own
trigger code), emits the event the upstream flow emits (same ``emit_event`` call) and waits for the flow run the
trigger creates. The latency (event emitted -> flow run created) is measured and printed; the poll it replaces is
the deployment's interval (600 s for imaging, 300 s for the populations).
"""

from __future__ import annotations

import asyncio
import copy
import os
import time
import uuid

import pytest
import yaml
from labpipe.deployments import PREFECT_FILE

TRIGGER_WITHIN_S = 30.0  # "within seconds"; measured ~1-3 s on this machine (see docs/lab.md)


def _spec(entrypoint: str, name: str) -> dict:
    specs = yaml.safe_load(PREFECT_FILE.read_text())["deployments"]
    found = [d for d in specs if d["entrypoint"] == entrypoint and d["name"] == name]
    assert len(found) == 1, f"{entrypoint} {name}: {len(found)} deployments"
    return found[0]


async def _deploy(entrypoint: str, name: str, flow_name: str):
    """The deployment and its triggers, as `prefect deploy` creates them (a unique name: the server is shared)."""
    from prefect.cli.deploy._triggers import _create_deployment_triggers, _initialize_deployment_triggers
    from prefect.client.orchestration import get_client
    from prefect.utilities.templating import apply_values

    spec = apply_values(_spec(entrypoint, name), os.environ, remove_notset=False)  # prefect deploy's first templating
    assert spec.get("triggers"), f"{flow_name}/{name} has no triggers in {PREFECT_FILE.name}"
    unique = f"{name}-{uuid.uuid4().hex[:8]}"
    async with get_client() as client:
        flow_id = await client.create_flow_from_name(flow_name)
        deployment_id = await client.create_deployment(
            flow_id=flow_id, name=unique, entrypoint=entrypoint, parameters=spec.get("parameters") or {}
        )
        triggers = _initialize_deployment_triggers(unique, copy.deepcopy(spec["triggers"]))
        await _create_deployment_triggers(client, deployment_id, triggers)
    return deployment_id


async def _runs(deployment_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with get_client() as client:
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )


async def _first_run(deployment_id, since: float, timeout: float = TRIGGER_WITHIN_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = await _runs(deployment_id)
        if runs:
            return runs, time.monotonic() - since
        await asyncio.sleep(0.1)
    pytest.fail(f"no flow run of the triggered deployment within {timeout:.0f} s of the event")


def _emit(event: str, resource: dict, payload: dict) -> None:
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    emit_event(event=event, resource=resource, payload=payload)
    EventsWorker.instance().wait_until_empty()  # sent, not buffered


def _converted(group: str, kind: str) -> tuple[dict, dict]:
    """Resource and payload as flows/radio.py's convert_task emits them."""
    resource = {
        "prefect.resource.id": f"labpipe.radio.group.{group}",
        "prefect.resource.name": "radio",
        "labpipe.radio.kind": kind,
    }
    ms_path = f"ms/{kind}/{group[:10]}/{group}.ms"
    return resource, {"group_id": group, "kind": kind, "ms_path": ms_path, "flagged": "", "calibrator": None}


def test_converted_group_triggers_imaging_within_seconds():
    deployment_id = asyncio.run(_deploy("flows/radio_calibrate.py:radio_image", "groups", "radio-image"))
    group = "2026-12-06T06:15:00"
    resource, payload = _converted(group, "science")
    time.sleep(2.0)  # the trigger service loads new automations; a real deployment is made long before its event
    start = time.monotonic()
    _emit("labpipe.radio.group.converted", resource, payload)
    runs, latency = asyncio.run(_first_run(deployment_id, start))
    print(f"\ntrigger latency radio.group.converted -> radio-image run created: {latency:.2f} s (poll: 600 s)")
    assert len(runs) == 1
    assert runs[0].parameters["ms"] == [payload["ms_path"]]  # this group, relative to the radio root


def test_converted_calibrator_triggers_calibration_and_science_does_not():
    deployment_id = asyncio.run(_deploy("flows/radio_calibrate.py:radio_calibrate", "hourly", "radio-calibrate"))
    time.sleep(2.0)
    science, science_payload = _converted("2026-12-06T06:20:00", "science")
    calibrator, calibrator_payload = _converted("2026-12-06T06:25:00", "calibrators")
    _emit("labpipe.radio.group.converted", science, science_payload)
    start = time.monotonic()
    _emit("labpipe.radio.group.converted", calibrator, calibrator_payload)
    runs, latency = asyncio.run(_first_run(deployment_id, start))
    print(f"\ntrigger latency converted calibrator -> radio-calibrate run created: {latency:.2f} s (poll: hourly)")
    time.sleep(3.0)  # time enough for a (wrong) run from the science group's event to appear
    runs = asyncio.run(_runs(deployment_id))
    assert [r.parameters for r in runs] == [{"cadence": "1h", "ms": calibrator_payload["ms_path"]}]


POPULATIONS = [  # (entrypoint, deployment, flow name, its parameters)
    ("flows/imaging.py:populate_calcium", "suite2p", "calcium-imaging", {"population": "imaging"}),
    ("flows/imaging.py:populate_behavior", "bpod", "behavior-trials", {}),
    ("flows/ingest.py:populate", "mocap", "populate", {"population": "mocap"}),
]


@pytest.mark.parametrize(
    ("entrypoint", "name", "flow_name", "parameters"), POPULATIONS, ids=[p[1] for p in POPULATIONS]
)
def test_new_ingest_triggers_population(entrypoint, name, flow_name, parameters):
    deployment_id = asyncio.run(_deploy(entrypoint, name, flow_name))
    time.sleep(2.0)
    start = time.monotonic()
    _emit(
        "labpipe.ingest.sessions.inserted",
        {"prefect.resource.id": "labpipe.ingest.share.share", "prefect.resource.name": "ingest"},
        {"run_id": "r1", "inserted": 1, "tasks": {"imaging": 1}},
    )
    runs, latency = asyncio.run(_first_run(deployment_id, start))
    print(f"\ntrigger latency ingest.sessions.inserted -> {flow_name}/{name} run created: {latency:.2f} s")
    assert runs[0].parameters == parameters


def test_every_trigger_in_prefect_yaml_is_valid():
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers

    specs = yaml.safe_load(PREFECT_FILE.read_text())["deployments"]
    triggered = [d for d in specs if d.get("triggers")]
    assert {(d["entrypoint"], d["name"]) for d in triggered} >= {
        ("flows/radio_calibrate.py:radio_image", "groups"),
        ("flows/radio_calibrate.py:radio_calibrate", "hourly"),
        *((entrypoint, name) for entrypoint, name, _, _ in POPULATIONS),
    }
    for d in triggered:
        assert _initialize_deployment_triggers(d["name"], copy.deepcopy(d["triggers"]))
