"""Streaming: grouping with jitter, the state machine, recovery, quarantine, and a worker killed mid-conversion."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest
from labpipe.radio.naming import group_id, subband_file_name
from labpipe.radio.schema import tables
from labpipe.radio.simulate import Source, simulate_group
from labpipe.radio.stream import (
    RadioSettings,
    claim_next,
    convert_pending,
    group_rows,
    heartbeat,
    now_utc,
    process_group,
    recover_stuck,
    requeue,
    scan_incoming,
)
from labpipe.radio.tree import RadioTree

START = dt.datetime(2025, 10, 13, 13, 28, 3)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> dict[int, Path]:
    """16 small subband files; copied under other names to make many groups (their content is one group's)."""
    out = tmp_path_factory.mktemp("template")
    sky = [Source("s", 230.0, 55.0, 1.0)]
    return simulate_group(out, START, n_antennas=3, n_times=4, catalog=sky, seed=5).files


@pytest.fixture
def radio(lab_db, tmp_path):
    tree = RadioTree(tmp_path / "radio").ensure()
    tmpfs = Path("/dev/shm") / f"labpipe-test-{uuid.uuid4().hex[:8]}"
    settings = RadioSettings(tmpfs_root=tmpfs, fsync=False, min_file_age_s=0)
    yield lab_db, tree, settings
    shutil.rmtree(tmpfs, ignore_errors=True)


def drop(template, tree: RadioTree, start: dt.datetime, subbands=range(16), jitter: dict | None = None) -> list[str]:
    """Copy template files into incoming/ as group ``start`` would write them (``jitter`` s per subband)."""
    names = []
    for sb in subbands:
        name = subband_file_name(start + dt.timedelta(seconds=(jitter or {}).get(sb, 0)), sb)
        shutil.copy(template[sb], tree.incoming / name)
        names.append(name)
    return names


def state(db, gid: str) -> dict:
    return (tables(db).SubbandGroup & {"group_id": gid}).fetch1()


def test_jittered_files_arriving_in_any_order_form_one_group_each(radio, template):
    db, tree, settings = radio
    rng = np.random.default_rng(1)
    later = START + dt.timedelta(seconds=309)
    jitter_a = {sb: int(rng.integers(-60, 61)) for sb in range(16)}
    jitter_b = {sb: int(rng.integers(-60, 61)) for sb in range(16)}
    # first the late-jittered half of group A and part of B arrive
    early_a = sorted(jitter_a, key=jitter_a.get)
    drop(template, tree, START, early_a[8:], jitter_a)
    drop(template, tree, later, range(5), jitter_b)
    report = scan_incoming(db, tree, settings)
    assert report.new_files == 13 and report.queued == [] and len(report.collecting) == 2
    provisional_a = min(report.collecting)
    assert provisional_a == group_id(START + dt.timedelta(seconds=jitter_a[early_a[8]]))
    # the rest arrive: an earlier file re-keys group A to its earliest timestamp
    drop(template, tree, START, early_a[:8], jitter_a)
    drop(template, tree, later, range(5, 16), jitter_b)
    (tree.incoming / "README.txt").write_text("not a subband file")
    report = scan_incoming(db, tree, settings)
    expected_a = group_id(START + dt.timedelta(seconds=min(jitter_a.values())))
    expected_b = group_id(later + dt.timedelta(seconds=min(jitter_b.values())))
    assert sorted(report.queued) == sorted([expected_a, expected_b]) and report.ignored == ["README.txt"]
    t = tables(db)
    assert len(t.SubbandGroup()) == 2
    for gid in (expected_a, expected_b):
        g = state(db, gid)
        assert g["state"] == "pending" and g["n_files"] == 16 and not g["incomplete"]
        assert sorted((t.SubbandGroup.Member & {"group_id": gid}).to_arrays("subband")) == list(range(16))
    assert scan_incoming(db, tree, settings).new_files == 0, "a second scan records nothing twice"


def test_incomplete_group_is_converted_flagged_or_failed_at_the_timeout(radio, template):
    db, tree, settings = radio
    drop(template, tree, START, [sb for sb in range(16) if sb not in (3, 9)])
    other = START + dt.timedelta(seconds=618)
    drop(template, tree, other, range(15))
    now = now_utc()
    report = scan_incoming(db, tree, settings, now=now)
    assert sorted(report.collecting) == [group_id(START), group_id(other)]
    report = scan_incoming(db, tree, settings, now=now + dt.timedelta(seconds=settings.incomplete_timeout_s - 5))
    assert report.queued_incomplete == {}
    report = scan_incoming(db, tree, settings, now=now + dt.timedelta(seconds=settings.incomplete_timeout_s + 1))
    assert report.queued_incomplete == {group_id(START): "3,9", group_id(other): "15"}
    g = state(db, group_id(START))
    assert g["state"] == "pending" and g["incomplete"] and g["missing"] == "3,9"

    strict = settings.model_copy(update={"incomplete_policy": "fail"})
    third = START + dt.timedelta(seconds=927)
    drop(template, tree, third, range(4))
    scan_incoming(db, tree, strict, now=now)
    report = scan_incoming(db, tree, strict, now=now + dt.timedelta(seconds=strict.incomplete_timeout_s + 1))
    assert list(report.failed_incomplete) == [group_id(third)]
    g = state(db, group_id(third))
    assert g["state"] == "failed" and "4,5,6" in g["error"] and "still missing" in g["error"]


def test_late_and_duplicate_files_are_recorded_and_requeue_uses_them(radio, template):
    db, tree, settings = radio
    drop(template, tree, START, [sb for sb in range(16) if sb != 6])
    now = now_utc()
    scan_incoming(db, tree, settings, now=now)
    scan_incoming(db, tree, settings, now=now + dt.timedelta(seconds=settings.incomplete_timeout_s + 1))
    gid = group_id(START)
    assert state(db, gid)["state"] == "pending"
    late = drop(template, tree, START, [6], {6: 20})
    dup = drop(template, tree, START, [2], {2: -30})
    report = scan_incoming(db, tree, settings)
    assert report.late == late and report.duplicates == dup
    t = tables(db)
    assert (t.SubbandFile & {"file_name": late[0]}).fetch1("status", "group_id") == ("late", gid)
    claim_next(db, "w:1", group=gid)
    outcome = process_group(db, tree, gid, settings=settings, worker="w:1")
    assert outcome["state"] == "completed" and state(db, gid)["flagged"] == "6"
    requeue(db, gid)
    g = state(db, gid)
    assert g["state"] == "pending" and g["n_files"] == 16
    claim_next(db, "w:1", group=gid)
    assert process_group(db, tree, gid, settings=settings, worker="w:1")["flagged"] == ""


def test_only_one_worker_claims_a_group(radio, template, embedded_target):
    from labpipe.db.connect import LabDatabase

    db, tree, settings = radio
    for k in range(6):
        drop(template, tree, START + dt.timedelta(seconds=309 * k))
    assert len(scan_incoming(db, tree, settings).queued) == 6
    claims: dict[str, list[str]] = {"a": [], "b": []}

    def worker(name: str) -> None:
        own = LabDatabase(embedded_target, db.blobs, db.prefix)  # its own connection, as another process has
        while (gid := claim_next(own, f"host:{name}")) is not None:
            claims[name].append(gid)

    threads = [threading.Thread(target=worker, args=(n,)) for n in claims]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not set(claims["a"]) & set(claims["b"])
    assert len(claims["a"]) + len(claims["b"]) == 6
    assert claim_next(db, "host:c") is None
    assert {g["state"] for g in group_rows(db)} == {"in_progress"}
    assert len(tables(db).ConversionAttempt()) == 6


def test_stuck_groups_go_back_to_pending_then_fail_after_max_attempts(radio, template):
    db, tree, settings = radio
    for k in range(3):
        drop(template, tree, START + dt.timedelta(seconds=309 * k))
    gids = sorted(scan_incoming(db, tree, settings).queued)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    assert claim_next(db, f"{host}:{dead.pid}", group=gids[0]) == gids[0]  # its process is gone
    assert claim_next(db, f"{host}:{os.getpid()}", group=gids[1]) == gids[1]  # alive but silent
    assert claim_next(db, f"{host}:{os.getpid()}", group=gids[2]) == gids[2]  # alive and reporting
    t = tables(db)
    t.SubbandGroup.update1(dict(group_id=gids[1], heartbeat=now_utc() - dt.timedelta(hours=1)))
    assert heartbeat(db, gids[2], f"{host}:{os.getpid()}")
    recovered = {r["group_id"]: r for r in recover_stuck(db, settings, tree=tree)}
    assert set(recovered) == {gids[0], gids[1]}
    assert "process is gone" in recovered[gids[0]]["reason"] and "no heartbeat" in recovered[gids[1]]["reason"]
    assert [state(db, g)["state"] for g in gids] == ["pending", "pending", "in_progress"]
    outcomes = (t.ConversionAttempt & {"group_id": gids[0]}).to_arrays("outcome")
    assert list(outcomes) == ["abandoned"]
    assert not heartbeat(db, gids[0], f"{host}:{dead.pid}"), "a recovered claim is no longer the dead worker's"
    for _ in range(settings.max_attempts - 1):
        claim_next(db, f"{host}:{dead.pid}", group=gids[0])
        recover_stuck(db, settings, tree=tree)
    g = state(db, gids[0])
    assert g["state"] == "failed" and "abandoned 3 times" in g["error"]


def _corrupt_flag_chunk(path: Path) -> None:
    """Damage the first compressed flags chunk: the header and the last rows still read, the data do not."""
    with h5py.File(path, "r+") as f:
        flags = f["Data/flags"][()]
        del f["Data/flags"]
        f["Data"].create_dataset("flags", data=flags, chunks=(4, *flags.shape[1:]), compression="lzf")
        info = f["Data/flags"].id.get_chunk_info(0)
    with open(path, "r+b") as handle:
        handle.seek(info.byte_offset)
        handle.write(b"\xff" * info.size)


def test_science_calibrator_and_failed_groups_land_where_they_belong(radio, template, tmp_path):
    db, tree, settings = radio
    drop(template, tree, START)
    cal = simulate_group(tmp_path / "cal", None, calibrator="3C286", n_antennas=3, catalog=[], seed=2)
    for path in cal.files.values():
        shutil.copy(path, tree.incoming / path.name)
    broken_start = START + dt.timedelta(seconds=618)
    names = drop(template, tree, broken_start)
    _corrupt_flag_chunk(tree.incoming / names[4])
    queued = scan_incoming(db, tree, settings).queued
    assert len(queued) == 3
    strict = settings.model_copy(update={"bad_file_policy": "fail"})
    outcomes = {o["group_id"]: o for o in convert_pending(db, tree, settings=strict, worker="w:1")}
    science, calibrator, broken = group_id(START), cal.group_id, group_id(broken_start)
    assert outcomes[science]["state"] == "completed" and outcomes[science]["kind"] == "science"
    assert (tree.root / outcomes[science]["ms_path"]) == tree.ms_path("science", science)
    assert outcomes[calibrator]["kind"] == "calibrators" and outcomes[calibrator]["calibrator"] == "3C286"
    assert tree.ms_path("calibrators", calibrator).is_dir()
    assert outcomes[broken]["state"] == "failed" and names[4] in outcomes[broken]["error"]
    log_text = tree.failed_log(broken).read_text()
    assert names[4] in log_text and "traceback" in log_text and "cannot read the visibilities" in log_text
    assert tree.ms_path("failed", broken).is_dir(), "the partial MS is kept for review"
    assert not tree.ms_path("science", broken).exists()
    g = state(db, broken)
    assert g["state"] == "failed" and g["log_path"] == tree.relative(tree.failed_log(broken))
    assert not any(tree.staging.iterdir()) and not (settings.tmpfs_root.exists() and any(settings.tmpfs_root.iterdir()))
    attempts = tables(db).ConversionAttempt.to_dicts()
    assert sorted(a["outcome"] for a in attempts) == ["completed", "completed", "failed"]


WORKER = """
import json, sys, time
from pathlib import Path
from labpipe.db.connect import LabDatabase
from labpipe.db.target import DatabaseTarget
from labpipe.radio.stream import RadioSettings, claim_next, process_group
from labpipe.radio.tree import RadioTree
a = json.loads(sys.argv[1])
db = LabDatabase(DatabaseTarget.from_url(a["url"]), Path(a["blobs"]), a["prefix"])
gid = claim_next(db, group=a["group"])
def stall(done, total):
    if done == 3:
        Path(a["marker"]).write_text("midway")
        time.sleep(600)
process_group(db, RadioTree(Path(a["root"])), gid, settings=RadioSettings(**a["settings"]), progress=stall)
"""


@pytest.mark.slow
def test_a_worker_killed_mid_conversion_leaves_nothing_final_and_the_group_converts_on_retry(radio, template, tmp_path):
    db, tree, settings = radio
    drop(template, tree, START)
    (gid,) = scan_incoming(db, tree, settings).queued
    marker = tmp_path / "midway"
    args = dict(
        url=db.target.url,
        blobs=str(db.blobs),
        prefix=db.prefix,
        group=gid,
        marker=str(marker),
        root=str(tree.root),
        settings=json.loads(settings.model_dump_json()),
    )
    child = subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(args)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert child.poll() is None, child.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the worker never got midway"
        time.sleep(0.2)
    assert any(settings.tmpfs_root.iterdir()), "the worker was staging when it died"
    child.send_signal(signal.SIGKILL)
    child.wait()
    finals = [p for kind in ("science", "calibrators", "failed") for p in (tree.ms / kind).rglob("*")]
    assert finals == [], "nothing reaches a final folder"
    g = state(db, gid)
    assert g["state"] == "in_progress" and g["worker"].endswith(f":{child.pid}")
    (recovered,) = recover_stuck(db, settings, tree=tree, convert_settings=settings)
    assert recovered["group_id"] == gid and state(db, gid)["state"] == "pending"
    assert not any(settings.tmpfs_root.iterdir()) and not any(tree.staging.iterdir()), "leftovers cleaned"
    (outcome,) = convert_pending(db, tree, settings=settings)
    assert outcome["state"] == "completed" and tree.ms_path("science", gid).is_dir()
    attempts = tables(db).ConversionAttempt & {"group_id": gid}
    assert sorted(attempts.to_arrays("outcome")) == ["abandoned", "completed"]


# --- issue 13 item 4: a live conversion keeps its claim; a worker that lost it neither publishes nor deletes ---


def _ms_rows(path: Path) -> int:
    from casacore.tables import table

    with table(str(path), ack=False) as ms:
        return ms.nrows()


def _attempt_folders(settings: RadioSettings, tree: RadioTree, gid: str) -> list[Path]:
    """Every attempt's folders of ``gid`` (per-subband parts in tmpfs, the build on disk)."""
    from labpipe.radio.naming import fs_safe

    tops = (settings.tmpfs_root / fs_safe(gid), tree.group_workspace(gid))
    return sorted(p for top in tops if top.is_dir() for p in top.iterdir())


def test_a_silent_phase_longer_than_stale_after_keeps_the_claim(radio, template):
    db, tree, settings = radio
    settings = settings.model_copy(update={"stale_after_s": 2.0})
    drop(template, tree, START)
    (gid,) = scan_incoming(db, tree, settings).queued
    claim_next(db, "w:1", group=gid)
    recovered: list[dict] = []

    def silent(done: int, total: int) -> None:
        if done == 1:  # planning, finish, the copy from tmpfs, fsync: no progress for longer than stale_after_s
            time.sleep(settings.stale_after_s + 2.5)
            recovered.extend(recover_stuck(db, settings, tree=tree, convert_settings=settings))

    outcome = process_group(db, tree, gid, settings=settings, worker="w:1", progress=silent, heartbeat_every_s=0.3)
    assert recovered == [], "a live worker in a silent phase lost its group to recover_stuck"
    assert outcome["state"] == "completed" and state(db, gid)["state"] == "completed"
    assert list((tables(db).ConversionAttempt & {"group_id": gid}).to_arrays("outcome")) == ["completed"]


def test_a_worker_that_lost_its_claim_does_not_publish(radio, template):
    db, tree, settings = radio
    drop(template, tree, START)
    (gid,) = scan_incoming(db, tree, settings).queued
    claim_next(db, "w:1", group=gid)

    def taken_over_at_the_end(done: int, total: int) -> None:
        if done == total:  # the last slab is written; the worker goes silent before the final rename
            later = now_utc() + dt.timedelta(seconds=settings.stale_after_s + 60)
            assert [r["group_id"] for r in recover_stuck(db, settings, now=later)] == [gid]
            assert claim_next(db, "w:2", group=gid) == gid

    outcome = process_group(db, tree, gid, settings=settings, worker="w:1", progress=taken_over_at_the_end)
    assert not tree.ms_path("science", gid).exists(), "a worker without its claim renamed its MS into place"
    assert outcome["state"] != "completed"
    g = state(db, gid)
    assert g["state"] == "in_progress" and g["worker"] == "w:2", "the new claimant still holds the group"
    assert not tree.ms_path("failed", gid).exists() and not tree.failed_log(gid).exists(), "nothing quarantined"


def test_the_new_claimant_does_not_delete_the_first_workers_workspace(radio, template):
    db, tree, settings = radio
    drop(template, tree, START)
    (gid,) = scan_incoming(db, tree, settings).queued
    claim_next(db, "w:1", group=gid)
    seen: dict[str, list[Path]] = {}

    def taken_over_midway(done: int, total: int) -> None:
        if done == 3 and "first" not in seen:
            seen["first"] = _attempt_folders(settings, tree, gid)
            later = now_utc() + dt.timedelta(seconds=settings.stale_after_s + 60)
            recover_stuck(db, settings, tree=tree, convert_settings=settings, now=later)
            assert claim_next(db, "w:2", group=gid) == gid
            seen["second"] = [process_group(db, tree, gid, settings=settings, worker="w:2")]
            seen["after"] = _attempt_folders(settings, tree, gid)

    first = process_group(db, tree, gid, settings=settings, worker="w:1", progress=taken_over_midway)
    assert seen["first"], "the first worker was staging when it was taken over"
    gone = [p for p in seen["first"] if p not in seen["after"]]
    assert gone == [], f"the new claimant deleted the first worker's folders {gone}"
    (second,) = seen["second"]
    assert second["state"] == "completed" and first["state"] != "completed"
    ms = tree.ms_path("science", gid)
    assert _ms_rows(ms) > 0, "the second worker's MS is intact after the first gave up"
    assert state(db, gid)["state"] == "completed"
    assert _attempt_folders(settings, tree, gid) == [], "each worker removed its own folders"
