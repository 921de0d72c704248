"""Work lands on the right host of the simulated lab, and survives the gpu host's death.

Every run is started on the lab's server from the main host (``inlab.py``, with main's env files and secrets) and
where it ran is read from what the lab itself recorded: the pool worker that submitted it (Prefect's
``prefect.worker.submitted-flow-run`` event, worker ``<pool>@<host>``, each worker in its host's namespace), and
for Dask work the worker of every task in the scheduler's task stream (``tls://<host's lab address>:port``).
The lab is the folder's one bring-up (conftest.py); these tests need `labpipe up` on main (``deployed``).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from collections import Counter
from urllib.parse import urlsplit

import pytest
from labpipe.layout import Layout

from tests.e2e.lab.support import LABPIPE, WHY_NOT, in_lab, session_tiny_model

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))]

EVENT = "labpipe.radio.group.converted"
NOTIFIED_WITHIN_S = 120.0


@pytest.fixture(scope="module")
def roots(lab, deployed) -> dict[str, Layout]:
    """The lab's one storage layout, each root on the host that holds it (the backups root on the backup host),
    saved as the `default` layout block; the radio block for a simulated stream; the backup plan `lab` pulling
    main's share and blobs over ssh (paths relative to the folder main's forced rrsync serves)."""
    main = Layout.default(lab.home("main"))
    backup = Layout.default(lab.home("backup"))
    lab_layout = main.model_copy(update={"backups": backup.backups}).ensure()
    blocks = {
        "layouts": {"default": json.loads(lab_layout.model_dump_json())},
        "radio": {"min_file_age_s": 0, "fsync": False, "tmpfs_root": str(lab.home("main") / "tmpfs")},
        # the sky model's catalog is <radio>/static/catalogs/nvss.csv (the radio test writes it); images of a
        # 4-antenna array need no more than 512 pixels of 45"
        "calibration": {"imaging": {"npix": 512, "cell_arcsec": 45.0}, "registration_wait_s": 5},
        "plans": {
            "lab": {
                "sources": [
                    {"name": n, "path": f"main:{getattr(main, n).relative_to(lab.home('main'))}"}
                    for n in ("share", "blobs")
                ],  # fmt: skip
                "dumps": {"lab_database": False, "prefect_database": False},
                "proof_sample_files": 5,
            }
        },
    }
    in_lab(lab, "main", "save-blocks", blocks)
    return {"lab": lab_layout, "main": main, "backup": backup}


def _host_of(lab, address: str) -> str:
    ip = urlsplit(address).hostname
    return next(h for h in lab.net.hosts if lab.net.address(h) == ip)


def _until(found, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    while not (result := found()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.5)
    return result


def _seconds(later: str, earlier: str) -> float:
    return round((dt.datetime.fromisoformat(later) - dt.datetime.fromisoformat(earlier)).total_seconds(), 2)


def _triggered(lab, flow: str, ms_path: str, what: str) -> dict:
    """The run of ``flow`` a trigger made for the MS ``ms_path`` (its parameters name it)."""

    def found():
        runs = in_lab(lab, "main", "runs", {"flows": [flow]})["runs"]
        return next((r for r in runs if ms_path in json.dumps(r["parameters"])), None)

    return _until(found, what, 180)


def test_radio_groups_fan_out_over_main_and_gpu_and_triggers_start_their_calibration_and_imaging(lab, roots, inboxes):
    """A science group and a calibrator transit arrive; radio-stream and radio-convert run on main, the subbands on
    the Dask workers of main and gpu; each converted event starts imaging (and, for the calibrator, the 1 h
    calibration) within seconds; the science group, with no calibration yet, is held and the on-call is told; the
    daily calibration on the transit then releases it and it is imaged."""
    from labpipe.radio.instrument import GROUP_SECONDS, INTEGRATION_S
    from labpipe.radio.naming import group_id
    from labpipe.radio.simulate import (
        Source,
        calibrator_source,
        find_calibrator,
        simulate_group,
        transit_start,
        write_catalog,
    )
    from labpipe.radio.tree import RadioTree

    tree = RadioTree(roots["lab"].radio).ensure()
    # a calibrator transit: its four integrations centred on 3C286's meridian crossing (the full group's start
    # would put them 2 minutes before it, and the stream would rightly route the group as science)
    cal = find_calibrator("3C286")

    def centred(ra_deg: float) -> dt.datetime:
        transit = transit_start(ra_deg) + dt.timedelta(seconds=GROUP_SECONDS / 2)
        return (transit - dt.timedelta(seconds=2 * INTEGRATION_S)).replace(microsecond=0)

    # six antennas: with four, every StEFCal solution is flagged (too few baselines per antenna) and none passes QA
    # the science field 20 minutes later at declination 55 (inside the calibrator's 1 h gain window), its source on
    # the meridian; the sky model's catalog holds both, as NVSS holds the bright calibrators
    source = Source("s", cal.ra_deg + 20 * 0.25 * 1.0027379, 55.0, 2.0)
    write_catalog([source, calibrator_source(cal)], tree.root / "static" / "catalogs" / "nvss.csv")
    science_start = centred(source.ra_deg)
    science = group_id(science_start)
    simulate_group(tree.incoming, science_start, n_antennas=6, n_times=4, catalog=[source])
    calibrator = simulate_group(tree.incoming, centred(cal.ra_deg), n_antennas=6, n_times=4, calibrator=cal.name,
                                catalog=[])  # fmt: skip
    index = in_lab(lab, "main", "task-stream")["index"]

    stream = in_lab(lab, "main", "run", {"deployment": "radio-stream/incoming"})
    assert (stream["state"], stream["worker"]) == ("COMPLETED", "cpu@main"), stream
    convert = in_lab(lab, "main", "run", {"deployment": "radio-convert/pending"})
    assert (convert["state"], convert["worker"]) == ("COMPLETED", "cpu@main"), convert
    assert tree.ms_path("science", science).is_dir()

    tasks = in_lab(lab, "main", "task-stream", {"index": index})["tasks"]
    per_host = Counter(_host_of(lab, t["worker"]) for t in tasks if t["key"].startswith("phase_part"))
    print(f"subband slabs converted per host: {dict(per_host)}")
    assert set(per_host) == {"main", "gpu"}, per_host  # the groups' subbands ran on both hosts' Dask workers

    converted = {e["payload"]["group_id"]: e for e in in_lab(lab, "main", "events", {"name": EVENT})["events"]}
    cal_event = converted[calibrator.group_id]
    assert cal_event["payload"]["kind"] == "calibrators" and cal_event["payload"]["calibrator"] == "3C286"
    event = converted[science]
    image = _triggered(lab, "radio-image", event["payload"]["ms_path"], "radio-image run of the science group")
    assert image["parameters"]["ms"] == [event["payload"]["ms_path"]]  # this group, not every pending one
    calibrate = _triggered(lab, "radio-calibrate", cal_event["payload"]["ms_path"], "radio-calibrate run")
    assert calibrate["parameters"] == {"cadence": "1h", "ms": cal_event["payload"]["ms_path"]}
    latency = {
        "converted -> radio-image created": _seconds(image["created"], event["occurred"]),
        "converted calibrator -> radio-calibrate created": _seconds(calibrate["created"], cal_event["occurred"]),
    }
    started = in_lab(lab, "main", "wait", {"id": calibrate["id"], "until": ["RUNNING", "COMPLETED", "FAILED"]})
    if started["start_time"]:  # created -> running: the cpu worker's poll (10 s) and the flow process's start
        latency["converted calibrator -> radio-calibrate running"] = _seconds(
            started["start_time"], cal_event["occurred"]
        )
    print(f"trigger latency in the lab (s): {latency}")

    done = in_lab(lab, "main", "wait", {"id": image["id"], "timeout": 600})
    assert done["worker"] == "cpu@main" and done["state"] in ("COMPLETED", "FAILED"), done
    lags = {x["group_id"]: x for x in in_lab(lab, "main", "stage-lag")["lags"]}
    print(f"stage lag of {science} in the lab: {lags[science]} (radio-image {done['state']}: {done['message'][:200]})")
    assert lags[science]["arrival_to_ms"] is not None and lags[science]["arrival_to_ms"] >= 0
    # no calibration covers the science group yet: it is held, and the on-call hears it (sent by the server on main)
    subject = f"labpipe: radio calibration missing for labpipe.radio.group.{science}"
    _until(lambda: any(p["subject"] == subject for p in inboxes.posts), "calibration-missing webhook", 120)
    calibrated = in_lab(lab, "main", "wait", {"id": calibrate["id"], "timeout": 600})
    print(f"radio-calibrate/hourly of the calibrator transit: {calibrated['state']} {calibrated['message'][:300]}")
    assert calibrated["worker"] == "cpu@main"
    # a fresh lab has no bandpass yet: the hourly gain solve needs the daily one, which its cron (00:15) would run;
    # run now by hand, it solves K, BP and G on the transit and releases the held science group: imaged on main
    ms = cal_event["payload"]["ms_path"]
    spec = {"deployment": "radio-calibrate/daily", "parameters": {"ms": ms}, "timeout": 900}
    daily = in_lab(lab, "main", "run", spec)
    assert (daily["state"], daily["worker"]) == ("COMPLETED", "cpu@main"), daily
    lag = next(x for x in in_lab(lab, "main", "stage-lag")["lags"] if x["group_id"] == science)
    print(f"stage lag of {science} after the daily calibration released it: {lag}")
    assert lag["imaged"] is not None and lag["ms_to_image"] > 0 and lag["arrival_to_image"] > lag["arrival_to_ms"]
    images = [p for p in (tree.root / "images").rglob("*.fits") if science in str(p)]
    assert images, f"no FITS image of {science} under {tree.root / 'images'}"


@pytest.fixture(scope="module")
def seg_model(roots, labpipe_home) -> str:
    """The session's tiny nnU-Net model (trained once per session, shared with tests/lib/seg) in the lab's models
    root: the gpu host finds it where a lab keeps its models."""
    from labpipe.seg.nnunet import model_folder

    model = session_tiny_model(labpipe_home)
    shutil.copytree(model.folder, model_folder(roots["lab"], model.name), dirs_exist_ok=True)
    return model.name


def _tomogram(roots, name: str, shape) -> str:
    from labpipe.seg.simulate import simulate_tomogram, write_simulated

    write_simulated(roots["lab"].tomograms / f"{name}.mrc", simulate_tomogram(shape, seed=7))
    return f"{name}.mrc"


def test_a_segmentation_runs_on_the_gpu_host(lab, roots, seg_model):
    tomogram = _tomogram(roots, "lab_a", (40, 64, 64))
    index = in_lab(lab, "main", "task-stream")["index"]
    params = {"tomogram": tomogram, "model": seg_model, "run": "lab-a", "mirroring": False, "device": "cpu"}
    run = in_lab(lab, "main", "run", {"deployment": "segment/tomogram", "parameters": params})
    assert (run["state"], run["worker"]) == ("COMPLETED", "gpu@gpu"), run
    final = roots["lab"].artifacts / "lab-a"
    assert {p.name for p in final.iterdir()} == {"mask.mrc", "mask.nii.gz", "mask.nrrd", "stats.json"}
    windows = in_lab(lab, "main", "task-stream", {"index": index})["tasks"]
    hosts = Counter(_host_of(lab, t["worker"]) for t in windows if t["key"].startswith("seg-lab-a-"))
    print(f"segmentation windows per host (device cpu: any Dask worker; cuda would ask for GPU=1): {dict(hosts)}")
    assert sum(hosts.values()) > 0


def test_the_nightly_backup_on_the_backup_host_pulls_from_main_over_ssh_into_borg(lab, roots):
    share = roots["main"].share / "lab-e2e"
    share.mkdir(parents=True, exist_ok=True)
    (share / "session.txt").write_text("pulled over ssh\n")
    init = lab.run("backup", [LABPIPE, "backup", "init"], timeout=300)
    assert init.returncode == 0, init.stdout + init.stderr
    params = {"run_dumps": False, "offsite": False, "plan_block": "lab"}
    run = in_lab(lab, "main", "run", {"deployment": "backup/nightly", "parameters": params})
    assert (run["state"], run["worker"]) == ("COMPLETED", "backup@backup"), run
    report = json.loads(sorted((roots["backup"].backups / "reports").glob("*.json"))[-1].read_text())
    assert report["status"] == "succeeded"
    assert {s["name"]: (s["origin"], s["status"]) for s in report["sources"]} == {
        "share": ("main:data/share", "pulled"),
        "blobs": ("main:data/blobs", "pulled"),
    }
    assert "share/lab-e2e/session.txt" in report["proof"]["checked"] and not report["proof"]["mismatches"]
    assert (roots["backup"].backups / "borg" / "config").is_file()  # the repository is on the backup host
    sshd = (lab.logs / "sshd.log").read_text()
    assert f"Accepted publickey for root from {lab.net.address('backup')}" in sshd  # key only, from backup


def test_disk_watch_runs_on_the_hosts_with_disks(lab, roots):
    run = in_lab(lab, "main", "run", {"deployment": "diskwatch/every-5-min"})
    assert (run["state"], run["worker"]) == ("COMPLETED", "backup@backup"), run
    assert (roots["lab"].backups / "diskwatch" / "labpipe_disk.prom").is_file()
    services = lab.status()["services"]
    for host in ("main", "backup"):  # the exporters: a process in each data host's namespace, serving its gauges
        assert services[f"diskwatch-{host}"]["host"] == host
        assert services[f"diskwatch-{host}"]["pid"] in lab.net.pids()[lab.net.namespace(host)]


@pytest.mark.slow
def test_the_gpu_host_dies_mid_segmentation_and_the_run_completes_when_it_is_back(lab, roots, seg_model, inboxes):
    """Power cut on gpu (link down, every process killed): the run is marked crashed from its missed heartbeats,
    the on-call hears it, nothing is published, and the run, retried once the host is back, completes there."""
    tomogram = _tomogram(roots, "lab_dead", (48, 96, 96))
    params = {"tomogram": tomogram, "model": seg_model, "run": "lab-dead", "mirroring": False, "device": "cpu"}
    started = in_lab(lab, "main", "start", {"deployment": "segment/tomogram", "parameters": params})
    # past the gpu slot and predicting windows: the run's progress artifact exists
    progress = {"id": started["id"], "artifact": "segment-progress-lab-dead", "timeout": 600}
    predicting = in_lab(lab, "main", "wait", progress)
    assert predicting["state"] == "RUNNING" and not predicting["timed_out"], predicting
    killed_at = time.monotonic()
    killed = lab.power_off("gpu")
    assert killed, "nothing ran on the gpu host"

    crashed = in_lab(lab, "main", "wait", {"id": started["id"], "until": ["CRASHED"], "timeout": 420})
    assert crashed["state"] == "CRASHED", crashed
    print(f"gpu host died: run crashed {time.monotonic() - killed_at:.0f} s later ({crashed['message']})")
    final = roots["lab"].artifacts / "lab-dead"
    assert not final.exists()  # nothing half-written where the products go
    subject = f"labpipe: flow run {crashed['name']} Crashed"
    _until(lambda: any(p["subject"] == subject for p in inboxes.posts), "crashed-run webhook", NOTIFIED_WITHIN_S)
    _until(lambda: any(m["Subject"] == subject for m in inboxes.mails), "crashed-run e-mail", NOTIFIED_WITHIN_S)

    lab.power_on("gpu")
    in_lab(lab, "main", "set-state", {"id": started["id"]})  # the UI's Retry
    rerun = in_lab(lab, "main", "wait", {"id": started["id"], "until": ["COMPLETED", "FAILED"], "timeout": 900})
    assert (rerun["state"], rerun["worker"]) == ("COMPLETED", "gpu@gpu"), rerun
    assert {p.name for p in final.iterdir()} == {"mask.mrc", "mask.nii.gz", "mask.nrrd", "stats.json"}
    assert not list(roots["lab"].artifacts.glob(".lab-dead.*"))  # the dead attempt's staging is gone too
    assert not list((roots["lab"].scratch / "seg").glob("lab-dead-*"))
