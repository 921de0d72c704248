"""The allocator over real HTTP: tokens and roles, 422s naming the field, JSON refusals, live events."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from labpipe.vms.models import GpuFacts, Registration, Role
from labpipe.vms.pool import ConnectionPool

NO_GPU = GpuFacts(present=False, healthy=True, detail="no GPU")


@pytest.fixture
def vms(allocator):
    """Three registered VMs (rows and client tokens; no client processes: these tests are about the API)."""
    new = allocator.store.add_vms(3, provisioner="local", command=["echo", "hello"])
    for vm in new:
        allocator.store.register(vm.id, Registration(address="10.1.2.3", connection={"ssh": 22}, gpu=NO_GPU))
    return new


@pytest.fixture
def tokens(allocator):
    store = allocator.store
    return {
        "admin": allocator.admin,
        "ada": store.issue_token(Role.user, email="ada@lab.org"),
        "bob": store.issue_token(Role.user, email="bob@lab.org"),
    }


def test_page_and_health_are_open_and_carry_no_data(allocator):
    with allocator.http() as http:
        page = http.get("/")
        assert page.status_code == 200 and "labpipe VM allocation" in page.text
        assert "vm-0" not in page.text
        assert http.get("/health").json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/vms", None),
        ("POST", "/vms/request", {"email": "ada@lab.org"}),
        ("POST", "/vms/1/release", None),
        ("POST", "/vms/register", {"address": "x", "gpu": {"present": False, "healthy": True}}),
        ("POST", "/vms/1/heartbeat", {"gpu": {"present": False, "healthy": True}}),
        ("POST", "/admin/vms", {"count": 1}),
        ("POST", "/admin/vms/destroy", {"ids": [1]}),
        ("GET", "/vms/events", None),
    ],
)
def test_every_endpoint_needs_a_valid_token(allocator, method, path, body):
    with allocator.http() as http:
        missing = http.request(method, path, json=body)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"] == "unauthorized"
    with allocator.http("lpa_not-a-real-token") as http:
        assert http.request(method, path, json=body).status_code == 401


def test_roles_are_enforced(allocator, vms, tokens):
    client_token = vms[0].client_token
    with allocator.http(tokens["ada"]) as ada, allocator.http(client_token) as client:
        for path, body in [("/admin/vms", {"count": 1}), ("/admin/vms/destroy", {"ids": [1]}), ("/admin/reap", None)]:
            refused = ada.post(path, json=body)
            assert refused.status_code == 403 and "needs admin" in refused.json()["detail"]
        assert client.post("/vms/request", json={"email": "ada@lab.org"}).status_code == 403
        beat = {"gpu": NO_GPU.model_dump()}
        assert client.post(f"/vms/{vms[1].id}/heartbeat", json=beat).status_code == 403  # not its VM
        assert client.post(f"/vms/{vms[0].id}/heartbeat", json=beat).status_code == 200
        assert ada.post(f"/vms/{vms[0].id}/heartbeat", json=beat).status_code == 403  # users do not heartbeat
        other = ada.post("/vms/request", json={"email": "bob@lab.org"})
        assert other.status_code == 403 and "bob@lab.org" in other.json()["detail"]


def test_request_release_and_refusal_when_none_is_free(allocator, vms, tokens):
    with allocator.http(tokens["ada"]) as ada, allocator.http(tokens["bob"]) as bob:
        granted = ada.post("/vms/request", json={"email": "ada@lab.org"})
        assert granted.status_code == 200
        vm = granted.json()["vm"]
        assert vm["state"] == "in_use" and vm["owner"] == "ada@lab.org"
        assert vm["address"] == "10.1.2.3" and vm["connection"] == {"ssh": 22} and "provider_ref" not in vm
        assert ada.post("/vms/request", json={"email": "ada@lab.org"}).json()["already_held"] is True
        assert bob.post(f"/vms/{vm['id']}/release").status_code == 403  # not bob's
        assert [v["id"] for v in ada.get("/vms").json()["vms"]] == [vm["id"]]  # users see their own
        with allocator.http(tokens["admin"]) as admin:
            assert len(admin.get("/vms").json()["vms"]) == 3
            for i in range(2):
                admin.post("/vms/request", json={"email": f"user{i}@lab.org"}).raise_for_status()
        refused = bob.post("/vms/request", json={"email": "bob@lab.org"})
        assert refused.status_code == 409
        assert refused.json() | {"hint": None} == {
            "error": "no_vm_available",
            "detail": "no VM is free",
            "available": 0,
            "matching": 0,
            "hint": None,
        }
        released = ada.post(f"/vms/{vm['id']}/release")
        assert released.status_code == 200 and released.json()["vm"]["state"] == "available"
        assert bob.post("/vms/request", json={"email": "bob@lab.org"}).json()["vm"]["id"] == vm["id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "email"),
        ({"email": "not an email"}, "email"),
        ({"email": "ada@lab.org; rm -rf /"}, "email"),
        ({"email": "ada@lab.org", "min_gpu_memory_mb": -1}, "min_gpu_memory_mb"),
        ({"email": "ada@lab.org", "min_gpu_memory_mb": "lots"}, "min_gpu_memory_mb"),
        ({"email": "ada@lab.org", "command": "python train.py; rm -rf ~"}, "command"),
        ({"email": "ada@lab.org", "command": [["nested"]]}, "command.0"),
        ({"email": "ada@lab.org", "vm": 3}, "vm"),
    ],
)
def test_malformed_requests_get_422_naming_the_field(allocator, tokens, body, field):
    with allocator.http(tokens["ada"]) as ada:
        answer = ada.post("/vms/request", json=body)
    assert answer.status_code == 422
    assert answer.json()["error"] == "invalid_request" and field in answer.json()["fields"]


def test_malformed_bodies_and_paths_get_422(allocator, vms, tokens):
    with allocator.http(tokens["admin"]) as admin:
        not_json = admin.post("/vms/request", content=b"{email: ", headers={"content-type": "application/json"})
        assert not_json.status_code == 422 and not_json.json()["fields"]
        assert admin.post("/vms/abc/release").json()["fields"] == ["vm_id"]
        assert admin.post("/admin/vms", json={"count": 0}).json()["fields"] == ["count"]
        assert admin.post("/admin/vms", json={"count": 2, "request_key": "a b"}).json()["fields"] == ["request_key"]
        assert admin.post("/admin/vms/destroy", json={}).status_code == 422
        assert admin.post("/admin/vms/destroy", json={"ids": [987654]}).status_code == 404
        assert admin.get("/vms", params={"state": "sleeping"}).json()["fields"] == ["state.0"]
    with allocator.http(vms[0].client_token) as client:
        bad_beat = client.post(f"/vms/{vms[0].id}/heartbeat", json={"gpu": {"present": "maybe", "healthy": True}})
        assert bad_beat.status_code == 422 and bad_beat.json()["fields"] == ["gpu.present"]


def test_heartbeats_for_destroyed_vms_are_refused(allocator, vms):
    allocator.store.begin_destroy([vms[2].id], "test")
    with allocator.http(vms[2].client_token) as client:
        beat = client.post(f"/vms/{vms[2].id}/heartbeat", json={"gpu": NO_GPU.model_dump()})
    assert beat.status_code == 401  # destroying revokes the VM's token at once
    allocator.store.finish_destroy(vms[2].id)
    admin_token = allocator.admin
    with allocator.http(admin_token) as admin:
        assert admin.get(f"/vms/{vms[2].id}").json()["vm"]["state"] == "destroyed"
        assert admin.get("/vms/424242").status_code == 404


def test_commands_are_stored_as_argument_lists_verbatim(allocator, vms, tokens):
    hostile = ["python", "-c", "print(1)", "; touch /tmp/pwned", "$(reboot)", "`id`", "a && b", "<script>x</script>"]
    with allocator.http(tokens["ada"]) as ada:
        vm = ada.post("/vms/request", json={"email": "ada@lab.org", "command": hostile}).json()["vm"]
    assert vm["user_command"] == hostile
    assert allocator.store.get(vm["id"]).user_command == hostile


def test_admin_tokens_and_history(allocator, vms, tokens):
    with allocator.http(tokens["admin"]) as admin:
        made = admin.post("/admin/tokens", json={"role": "user", "email": "cy@lab.org"}).json()
        assert admin.post("/admin/tokens", json={"role": "client"}).status_code == 422
        assert admin.post("/admin/tokens", json={"role": "user"}).status_code == 422
        history = admin.get(f"/admin/vms/{vms[0].id}/events").json()["events"]
    assert [e["new_state"] for e in history] == ["initializing", "available"]
    with allocator.http(made["token"]) as cy:
        assert cy.get("/whoami").json() == {"role": "user", "email": "cy@lab.org", "vm_id": None}


def test_events_stream_tells_listeners_at_once(allocator, vms, tokens):
    received: list[dict] = []
    connected = threading.Event()

    def follow():
        with allocator.http(tokens["admin"]) as admin, admin.stream("GET", "/vms/events", timeout=20) as stream:
            for line in stream.iter_lines():
                if line.startswith(": connected"):
                    connected.set()
                if line.startswith("data:"):
                    received.append(json.loads(line[5:]))
                    return

    listener = threading.Thread(target=follow, daemon=True)
    listener.start()
    assert connected.wait(10)
    with allocator.http(tokens["ada"]) as ada:
        vm = ada.post("/vms/request", json={"email": "ada@lab.org"}).json()["vm"]
    listener.join(10)
    assert received and received[0]["id"] == vm["id"] and received[0]["state"] == "in_use"


def test_a_client_long_poll_returns_when_its_vm_is_claimed(allocator, vms, tokens):
    vm_id = vms[0].id
    with allocator.http(vms[0].client_token) as client:
        waiting = threading.Thread(
            target=lambda: results.append(
                client.get(f"/vms/{vm_id}/wait", params={"state": "available", "owner": "", "timeout": 20}).json()
            )
        )
        results: list[dict] = []
        waiting.start()
        with allocator.http(tokens["ada"]) as ada:
            threading.Event().wait(0.5)
            ada.post("/vms/request", json={"email": "ada@lab.org"}).raise_for_status()
        waiting.join(15)
    assert results and results[0]["state"] == "in_use" and results[0]["owner"] == "ada@lab.org"


def test_no_bare_500_when_the_database_is_gone(allocator, tokens):
    allocator.store.pool.close()  # as if the database went away under the allocator
    with allocator.http(tokens["ada"]) as ada:
        answer = ada.get("/vms")
    assert answer.status_code == 503 and answer.json()["error"] == "database_unavailable"
    with httpx.Client(base_url=allocator.url) as http:
        assert http.get("/health").status_code == 503
    allocator.store.pool = ConnectionPool(allocator.store.target)  # the database is back (for the teardown)
