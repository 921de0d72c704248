"""The VM tables on real PostgreSQL: claims under concurrency, state rules, notifications, the reaper's choices."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pytest
from labpipe.db.target import DatabaseTarget
from labpipe.errors import ConfigError
from labpipe.vms.feed import listening
from labpipe.vms.models import GpuFacts, Heartbeat, Registration, Role, VmState
from labpipe.vms.pool import ConnectionPool, PoolExhausted
from labpipe.vms.settings import VmLimits
from labpipe.vms.store import NoVmAvailable, Principal, StateConflict, VmGone, VmNotFound, VmStore, hash_token

NO_GPU = GpuFacts(present=False, healthy=True, source="none", detail="no GPU")


def gpu(memory_mb: int, healthy: bool = True) -> GpuFacts:
    """GPU facts as a client on a GPU host would report them (this machine has none: simulated reports)."""
    return GpuFacts(present=True, healthy=healthy, source="nvidia-smi", name="Tesla T4", memory_total_mb=memory_mb)


def available_vms(store: VmStore, count: int, facts: GpuFacts = NO_GPU, key: str | None = None) -> list[int]:
    new = store.add_vms(count, provisioner="local", request_key=key)
    for vm in new:
        store.register(vm.id, Registration(address="127.0.0.1", gpu=facts))
    return [vm.id for vm in new]


def test_concurrent_claims_never_double_book(any_store):
    """200 users at once for 50 VMs: exactly 50 granted, each VM once, 150 told none is free."""
    ids = available_vms(any_store, 50)

    def claim(i: int):
        try:
            return any_store.claim(f"user{i}@lab.org").vm
        except NoVmAvailable as refusal:
            return refusal

    with ThreadPoolExecutor(40) as pool:
        results = list(pool.map(claim, range(200)))
    granted = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, NoVmAvailable)]
    assert len(granted) == 50 and len(refused) == 150
    assert sorted(vm.id for vm in granted) == sorted(ids)  # every VM once, none twice
    rows = any_store.list(ids=ids)
    assert {vm.state for vm in rows} == {VmState.in_use}
    assert len({vm.owner for vm in rows}) == 50
    assert all("no VM is free" in r.problem or "just claimed" in r.problem for r in refused)
    assert any_store.pool.opened <= any_store.pool.size


def test_a_user_gets_their_vm_back_instead_of_a_second(store):
    available_vms(store, 3)
    with ThreadPoolExecutor(8) as pool:  # a double click, eight times over
        claims = list(pool.map(lambda _: store.claim("ada@lab.org"), range(8)))
    assert len({c.vm.id for c in claims}) == 1
    assert sum(not c.already_held for c in claims) == 1
    assert store.counts()["in_use"] == 1
    two = store.claim("bob@lab.org", max_per_user=2), store.claim("bob@lab.org", max_per_user=2)
    assert two[0].vm.id != two[1].vm.id and not two[1].already_held


def test_requirements_pick_a_fitting_vm_or_say_why_none(store):
    small, big = available_vms(store, 1, gpu(8_000), key="small")[0], available_vms(store, 1, gpu(40_000), key="big")[0]
    cpu_only = available_vms(store, 1, key="cpu")[0]
    assert store.claim("a@lab.org", min_gpu_memory_mb=16_000).vm.id == big
    with pytest.raises(NoVmAvailable, match="none fits") as refusal:
        store.claim("b@lab.org", min_gpu_memory_mb=16_000)
    assert refusal.value.available == 2 and refusal.value.matching == 0
    assert store.claim("c@lab.org", require_gpu=True).vm.id == small
    assert store.claim("d@lab.org").vm.id == cpu_only
    with pytest.raises(NoVmAvailable, match="no VM is free"):
        store.claim("e@lab.org")


def test_release_rules(store):
    (vm_id,) = available_vms(store, 1)
    store.claim("ada@lab.org", user_command=["python", "train.py"])
    with pytest.raises(PermissionError):
        store.release(vm_id, Principal(Role.user, "bob@lab.org"))
    released = store.release(vm_id, Principal(Role.user, "ada@lab.org"))
    assert released.state == VmState.available and released.owner is None and released.user_command is None
    with pytest.raises(StateConflict, match="not in use"):
        store.release(vm_id, Principal(Role.admin))
    with pytest.raises(VmNotFound):
        store.release(9999, Principal(Role.admin))


def test_heartbeats_are_refused_for_unknown_failed_and_destroyed_vms(store):
    a, b, c = available_vms(store, 3)
    beat = Heartbeat(gpu=NO_GPU)
    assert store.heartbeat(a, beat).last_heartbeat is not None
    with pytest.raises(VmNotFound):
        store.heartbeat(9999, beat)
    store.set_state(b, VmState.failed, "test")
    with pytest.raises(StateConflict, match="failed"):
        store.heartbeat(b, beat)
    store.begin_destroy([c], "test")
    with pytest.raises(VmGone, match="destroying"):
        store.heartbeat(c, beat)
    store.finish_destroy(c)
    with pytest.raises(VmGone, match="destroyed"):
        store.register(c, Registration(address="x", gpu=NO_GPU))
    fresh = store.add_vms(1, provisioner="local")[0]
    with pytest.raises(StateConflict, match="not registered"):
        store.heartbeat(fresh.id, beat)


def test_a_gpu_that_breaks_or_vanishes_fails_the_vm(store):
    a, b = available_vms(store, 2, gpu(16_000))
    broken = store.heartbeat(a, Heartbeat(gpu=gpu(16_000, healthy=False).model_copy(update={"detail": "Xid 79"})))
    assert broken.state == VmState.failed and "GPU unhealthy" in broken.state_reason
    lost = store.heartbeat(b, Heartbeat(gpu=NO_GPU))
    assert lost.state == VmState.failed and "GPU lost" in lost.state_reason
    (c,) = available_vms(store, 1, key="cpu")  # never had a GPU: honest, not broken
    assert store.heartbeat(c, Heartbeat(gpu=NO_GPU)).state == VmState.available


def test_every_change_is_notified_and_recorded_but_quiet_heartbeats_are_not(store):
    with listening(store.target, store.channel) as next_change:
        (vm_id,) = available_vms(store, 1)
        store.heartbeat(vm_id, Heartbeat(gpu=NO_GPU))  # only the time changes: no event
        store.claim("ada@lab.org")
        store.release(vm_id, Principal(Role.user, "ada@lab.org"))
        seen = []
        while (change := next_change(1.0)) is not None:
            seen.append((change["op"], change["old_state"], change["state"], change["owner"]))
    assert seen == [
        ("INSERT", None, "initializing", None),
        ("UPDATE", "initializing", "available", None),
        ("UPDATE", "available", "in_use", "ada@lab.org"),
        ("UPDATE", "in_use", "available", None),
    ]
    history = [(e["old_state"], e["new_state"]) for e in store.events(vm_id)]
    assert history == [
        (None, "initializing"),
        ("initializing", "available"),
        ("available", "in_use"),
        ("in_use", "available"),
    ]


def test_create_is_idempotent_by_request_key(store):
    first = store.add_vms(3, provisioner="local", request_key="batch-1")
    store.set_provider_ref(first[0].id, {"pid": 1})
    again = store.add_vms(3, provisioner="local", request_key="batch-1")
    assert [vm.id for vm in again] == [vm.id for vm in first[1:]]  # not provisioned yet: handed out again
    assert store.authenticate(first[1].client_token) is None  # with a new token; the old one is revoked
    assert store.authenticate(again[0].client_token) == Principal(Role.client, None, first[1].id)
    assert len(store.list(request_key="batch-1")) == 3


def test_tokens_are_stored_only_as_hashes(store):
    token = store.issue_token(Role.user, email="ada@lab.org")
    with store.pool.connection() as conn, conn.cursor() as cur:
        cur.execute(f'SELECT token_hash FROM "{store.schema}".tokens')
        stored = [row[0] for row in cur.fetchall()]
    assert token not in stored and hash_token(token) in stored
    assert store.authenticate(token) == Principal(Role.user, "ada@lab.org", None)
    assert store.authenticate("lpu_" + "x" * 43) is None
    with pytest.raises(ConfigError):
        store.issue_token(Role.user)


def test_reaper_reboots_then_fails_silent_and_stuck_vms(store):
    limits = VmLimits(silent_after=0.5, stuck_after=0.5, max_reboots=1)
    silent, busy = available_vms(store, 2)
    store.claim("ada@lab.org")  # takes `silent` (lowest id)... so name them by what happens next
    in_use, idle = silent, busy
    stuck = store.add_vms(1, provisioner="local", request_key="stuck")[0].id
    time.sleep(0.8)
    actions = {a.vm.id: a for a in store.stale(limits)}
    assert set(actions) == {in_use, idle, stuck}
    assert actions[in_use].action == "fail"  # not rebooted under its user
    assert actions[idle].action == "reboot" and "silent" in actions[idle].why
    assert actions[stuck].action == "reboot" and "initializing" in actions[stuck].why
    assert store.mark_failed(actions[in_use], limits).state == VmState.failed
    assert store.get(in_use).owner == "ada@lab.org"  # the record keeps whose VM it was
    rebooted = store.mark_rebooting(actions[idle], limits)
    assert rebooted.state == VmState.initializing and rebooted.reboots == 1
    time.sleep(0.8)
    again = {a.vm.id: a for a in store.stale(limits)}
    assert again[idle].action == "fail"  # its one reboot did not bring it back


def test_reaper_loses_the_race_to_a_heartbeat(store):
    limits = VmLimits(silent_after=0.5, stuck_after=60)
    (vm_id,) = available_vms(store, 1)
    time.sleep(0.8)
    (action,) = store.stale(limits)
    store.heartbeat(vm_id, Heartbeat(gpu=NO_GPU))  # arrives between the look and the act
    assert store.mark_rebooting(action, limits) is None
    assert store.get(vm_id).state == VmState.available


def test_pool_is_bounded_and_callers_wait_for_it(embedded_target):
    pool = ConnectionPool(embedded_target, size=3, wait=20)

    def query(_):
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(0.05)")
        return True

    with ThreadPoolExecutor(30) as executor:
        assert all(executor.map(query, range(60)))
    assert pool.opened <= 3
    impatient = ConnectionPool(embedded_target, size=1, wait=0.2)
    with impatient.connection(), pytest.raises(PoolExhausted, match="busy"), impatient.connection():
        pass
    pool.close()
    impatient.close()


def test_pool_replaces_a_connection_the_server_dropped(store):
    with store.pool.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    admin = psycopg2.connect(**store.target.psycopg2_kwargs())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    admin.close()
    with pytest.raises(psycopg2.OperationalError):
        store.counts()  # the dead connection is found and dropped ...
    assert store.counts()["available"] == 0  # ... and the next call gets a fresh one


def test_vm_tables_refuse_mysql():
    with pytest.raises(ConfigError, match="needs PostgreSQL"):
        VmStore(DatabaseTarget.from_url("mysql://root@127.0.0.1:3306"), "x_vms")
    with pytest.raises(ConfigError, match="schema name"):
        VmStore(DatabaseTarget.from_url("postgresql://postgres@127.0.0.1/test"), 'x"; DROP TABLE y; --')
