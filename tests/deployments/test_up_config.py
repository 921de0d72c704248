"""What `labpipe up` takes from the lab's configuration: the gpu limit, paused schedules, time zone, lifecycles."""

from __future__ import annotations

import uuid

import pytest
import yaml
from labpipe.config import Settings
from labpipe.deployments import platform
from labpipe.errors import ConfigError
from pydantic import ValidationError


def test_gpu_limit_comes_from_the_gpu_hosts_not_this_host(tmp_path):
    from prefect.client.orchestration import get_client

    main = Settings(home=tmp_path, gpus=0, lab_gpus=3)  # the main server has none, the GPU hosts have 3
    assert platform.lab_gpu_count(main, host_gpus=0) == 3
    assert platform.lab_gpu_count(Settings(home=tmp_path, gpus=2), host_gpus=2) == 2
    with get_client(sync_client=True) as client:
        assert platform.ensure_gpu_limit(client, platform.lab_gpu_count(main, 0)) == 3
        assert client.read_global_concurrency_limit_by_name("gpu").limit == 3


def test_up_keeps_what_an_operator_paused(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(f"paused-{uuid.uuid4().hex[:6]}")
        schedules = [
            DeploymentScheduleCreate(schedule=IntervalSchedule(interval=300)),
            DeploymentScheduleCreate(schedule=CronSchedule(cron="30 2 * * *")),
        ]
        one = client.create_deployment(flow_id=flow_id, name="one", schedules=schedules)
        two = client.create_deployment(flow_id=flow_id, name="two", schedules=schedules[:1])
        platform.set_schedules_active(client, True)
        interval = next(s for s in client.read_deployment(one).schedules if hasattr(s.schedule, "interval"))
        client.update_deployment_schedule(one, interval.id, active=False)  # the operator pauses one schedule
        client.pause_deployment(two)  # and a whole deployment

        before = platform.paused_state(client)
        for d in (one, two):  # what a redeploy does: schedules on, deployment resumed
            client.resume_deployment(d)
            for s in client.read_deployment(d).schedules:
                client.update_deployment_schedule(d, s.id, active=True)
        platform.set_schedules_active(client, True, keep_paused=before)

        after = {getattr(s.schedule, "cron", "interval"): s.active for s in client.read_deployment(one).schedules}
        assert after == {"interval": False, "30 2 * * *": True}
        assert client.read_deployment(two).paused


def test_lab_chooses_lifecycles_and_cron_schedules_carry_its_time_zone(tmp_path):
    settings = Settings(home=tmp_path, lifecycles="ingest, backup", timezone="Europe/Berlin")
    specs = platform.deployment_specs(settings)
    assert {platform.lifecycle_of(d["entrypoint"]) for d in specs} == {"ingest", "backup"}
    crons = [s for d in specs for s in d.get("schedules") or [] if "cron" in s]
    assert crons and all(s["timezone"] == "Europe/Berlin" for s in crons)

    written = yaml.safe_load(platform.deployment_file(settings).read_text())
    assert written["deployments"] == specs and written["pull"]  # the rest of prefect.yaml as it is
    populate = next(d for d in specs if d["name"] == "suite2p")  # calcium imaging belongs to ingest
    assert populate["triggers"][0]["expect"] == ["labpipe.ingest.sessions.inserted"]

    everything = platform.deployment_specs(Settings(home=tmp_path))
    assert {"radio", "segmentation", "vms"} <= {platform.lifecycle_of(d["entrypoint"]) for d in everything}


def test_time_zone_defaults_to_the_hosts(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "America/Phoenix")
    specs = platform.deployment_specs(Settings(home=tmp_path))
    crons = [s for d in specs for s in d.get("schedules") or [] if "cron" in s]
    assert {s["timezone"] for s in crons} == {"America/Phoenix"}


def test_unknown_lifecycle_or_time_zone_is_refused_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown lifecycles \['telescope'\]"):
        platform.deployment_specs(Settings(home=tmp_path, lifecycles="ingest,telescope"))
    with pytest.raises(ValidationError, match="LABPIPE_TIMEZONE='Mars/Olympus' is not an IANA time zone"):
        Settings(home=tmp_path, timezone="Mars/Olympus")
