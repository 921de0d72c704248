"""Who gets in, and over what: TLS, token lifetimes and revocation, events that keep users' addresses private.

All over real HTTP(S) against the real allocator; the certificates are made in
the test with ``cryptography`` (a CA and a server certificate for 127.0.0.1).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import ssl
import subprocess
import threading
import time
import uuid

import httpx
import pytest
from labpipe.vms.models import GpuFacts, Registration, Role
from labpipe.vms.server import BackgroundAllocator, free_port, labpipe_program
from typer.testing import CliRunner

NO_GPU = GpuFacts(present=False, healthy=True, detail="no GPU")


def make_certificates(folder):
    """A CA and a server certificate for 127.0.0.1/localhost signed by it; returns (ca, cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "labpipe test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    paths[2].chmod(0o600)
    return paths


def test_tls_serves_https_to_whoever_trusts_the_ca_and_refuses_plain_http(store, make_settings, tmp_path):
    from labpipe.vms.client import ClientConfig, VmClient

    ca, cert, key = make_certificates(tmp_path)
    served = BackgroundAllocator(store, make_settings(), certfile=cert, keyfile=key)
    try:
        assert served.url.startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=str(ca))
        assert httpx.get(f"{served.url}/health", verify=trusted).json() == {"status": "ok"}
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the CA stops at the handshake
            httpx.get(f"{served.url}/health")
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port gets no answer at all
            httpx.get(served.url.replace("https://", "http://") + "/health", timeout=5)

        (vm,) = store.add_vms(1, provisioner="local")
        client = VmClient(ClientConfig(allocator=served.url, token=vm.client_token, workdir=tmp_path, ca_file=ca))
        try:
            assert client.register()["state"] == "available"  # the VM client took the CA file
        finally:
            client.http.close()
    finally:
        served.close()


def test_serve_refuses_plain_http_on_an_address_others_reach(tmp_path):
    env = {**os.environ, "LABPIPE_HOME": str(tmp_path / "home")}
    cmd = [labpipe_program(), "vms", "serve", "--host", "0.0.0.0", "--port", str(free_port()), "--launch", "inline",
           "--no-events", "--block", ""]  # fmt: skip
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("labpipe vms serve --host 0.0.0.0 without TLS started serving instead of refusing")
    assert done.returncode != 0
    assert "--certfile" in done.stderr and "127.0.0.1" in done.stderr  # says how: TLS, or a proxy in front


def _status(allocator, token: str) -> tuple[int, dict]:
    with allocator.http(token) as http:
        answer = http.get("/whoami")
    return answer.status_code, answer.json()


def test_tokens_expire_by_role_and_expired_ones_get_a_clear_401(allocator, store):
    ada = store.issue_token(Role.user, email="ada@lab.org")
    boss = store.issue_token(Role.admin, label="test admin")
    (vm,) = store.add_vms(1, provisioner="local")
    assert _status(allocator, ada)[0] == _status(allocator, boss)[0] == _status(allocator, vm.client_token)[0] == 200

    now = dt.datetime.now(dt.UTC)
    store.clock = lambda: now + dt.timedelta(days=31)  # past the admin lifetime (30 days), inside the user's (90)
    status, body = _status(allocator, boss)
    assert status == 401 and body["error"] == "token_expired" and "expired" in body["detail"]
    assert _status(allocator, ada)[0] == 200
    store.clock = lambda: now + dt.timedelta(days=91)
    status, body = _status(allocator, ada)
    assert status == 401 and body["error"] == "token_expired" and "new token" in body["hint"]
    assert _status(allocator, vm.client_token)[0] == 200  # a VM's token lives as long as its VM (revoked with it)
    store.clock = None

    brief = store.issue_token(Role.user, email="cy@lab.org", lifetime=dt.timedelta(seconds=1))
    deadline = time.monotonic() + 15
    while _status(allocator, brief)[0] == 200 and time.monotonic() < deadline:  # the database's own clock
        time.sleep(0.2)
    assert _status(allocator, brief)[1]["error"] == "token_expired"


def test_revoked_tokens_are_refused_on_the_next_request(allocator, store, make_settings):
    from labpipe.blocks.vms import VmAllocation
    from labpipe.cli.vms import app

    block = VmAllocation(**make_settings().model_dump())
    block.database_url, block.schema_name = store.target.url, store.schema
    name = f"tokens-{uuid.uuid4().hex[:8]}"
    block.save(name, overwrite=True)
    cli = CliRunner()

    made = cli.invoke(app, ["token", "create", "--role", "user", "--email", "ada@lab.org", "--block", name])
    assert made.exit_code == 0, made.output
    ada = made.output.strip().splitlines()[-1]
    assert _status(allocator, ada)[0] == 200

    listed = cli.invoke(app, ["token", "list", "--json", "--block", name])
    assert listed.exit_code == 0, listed.output
    (entry,) = [t for t in json.loads(listed.output) if t["email"] == "ada@lab.org"]
    assert entry["expires_at"] and entry["revoked_at"] is None and "token" not in entry and "token_hash" not in entry
    revoked = cli.invoke(app, ["token", "revoke", str(entry["id"]), "--block", name])
    assert revoked.exit_code == 0, revoked.output

    status, body = _status(allocator, ada)  # the very next request
    assert status == 401 and body["error"] == "token_revoked"

    bob = store.issue_token(Role.user, email="bob@lab.org")
    with allocator.http(allocator.admin) as admin:
        tokens = admin.get("/admin/tokens").json()["tokens"]
        (bob_id,) = [t["id"] for t in tokens if t["email"] == "bob@lab.org"]
        assert admin.post(f"/admin/tokens/{bob_id}/revoke").status_code == 200
    assert _status(allocator, bob)[1]["error"] == "token_revoked"


class Listener:
    """Follows ``/vms/events`` with one token in a thread, keeping every raw line."""

    def __init__(self, allocator, token: str) -> None:
        self.lines: list[str] = []
        self.connected, self.stop = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, args=(allocator, token), daemon=True)
        self.thread.start()
        assert self.connected.wait(10)

    def _run(self, allocator, token: str) -> None:
        try:
            with allocator.http(token) as http, http.stream("GET", "/vms/events", timeout=30) as stream:
                for line in stream.iter_lines():
                    if line.startswith(": connected"):
                        self.connected.set()
                    self.lines.append(line)
                    if self.stop.is_set():
                        return
        except httpx.HTTPError:  # the allocator closed the stream (the test's teardown)
            return

    @property
    def changes(self) -> list[dict]:
        return [json.loads(line[5:]) for line in self.lines if line.startswith("data:")]


def test_users_see_only_their_own_vms_events_and_no_one_elses_address(allocator, store, until):
    for vm in store.add_vms(2, provisioner="local"):
        store.register(vm.id, Registration(address="10.1.2.3", gpu=NO_GPU))
    ada = store.issue_token(Role.user, email="ada@lab.org")
    bob = store.issue_token(Role.user, email="bob@lab.org")
    ada_hears, admin_hears = Listener(allocator, ada), Listener(allocator, allocator.admin)

    with allocator.http(bob) as http:
        bobs = http.post("/vms/request", json={"email": "bob@lab.org"}).json()["vm"]["id"]
        http.post(f"/vms/{bobs}/release").raise_for_status()
    with allocator.http(ada) as http:
        adas = http.post("/vms/request", json={"email": "ada@lab.org"}).json()["vm"]["id"]
        http.post(f"/vms/{adas}/release").raise_for_status()

    until(lambda: sum(c.get("id") == adas for c in admin_hears.changes) >= 2, 10, what="the admin to hear all four")
    until(lambda: sum(c.get("id") == adas for c in ada_hears.changes) >= 2, 10, what="ada to hear her own two")
    ada_hears.stop.set()
    admin_hears.stop.set()
    assert {c["id"] for c in ada_hears.changes} == {adas}  # bob's claim and release are not hers to see
    assert "bob@lab.org" not in "\n".join(ada_hears.lines)
    assert [c["state"] for c in ada_hears.changes] == ["in_use", "available"]
    admin_text = "\n".join(admin_hears.lines)
    assert "bob@lab.org" in admin_text and "ada@lab.org" in admin_text  # admins see everything
