"""``labpipe vms``: the allocator, the VM client, and VM admin and user commands."""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path
from urllib.parse import urlsplit

import typer
from labpipe.cli.common import progress_bar

NAME = "vms"
app = typer.Typer(
    help="VM allocation (LabLink): allocator service, VM clients, create/list/destroy/request.", no_args_is_help=True
)

Block = typer.Option("default", "--block", help="VM allocation block to load (falls back to the defaults).")


def _settings(block: str | None):
    from labpipe.blocks.vms import vm_settings

    return vm_settings(block)


def _store(block: str | None):
    from labpipe.blocks import database_settings
    from labpipe.vms.store import VmStore

    settings = _settings(block)
    return VmStore.open(settings.model_copy(update={"pool_size": 2}), database_settings()), settings


def _table(vms) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "hostname", "state", "owner", "address", "GPU", "last heartbeat", "reason")
    for vm in vms:
        gpu = (vm.gpu_name or "GPU") if vm.gpu_present else "no GPU"
        beat = vm.last_heartbeat.strftime("%H:%M:%S") if vm.last_heartbeat else ""
        table.add_row(
            str(vm.id), vm.hostname, vm.state.value, vm.owner or "", vm.address or "", gpu, beat, vm.state_reason
        )
    Console().print(table)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind (another than loopback needs --certfile/--keyfile)."),
    port: int = typer.Option(None, help="Port; default: the port of the block's allocator_url."),
    launch: str = typer.Option("prefect", help="How admin endpoints start work: 'prefect' (deployments) or 'inline'."),
    events: bool = typer.Option(True, help="Also send every VM change as a Prefect event."),
    allocator_url: str = typer.Option(None, help="URL clients of new VMs use; default: the block's."),
    certfile: Path = typer.Option(None, help="TLS certificate (PEM, with its chain): serve HTTPS."),
    keyfile: Path = typer.Option(None, help="TLS private key (PEM, mode 600)."),
    allow_plain_http: bool = typer.Option(
        False, help="Serve plain HTTP on a non-loopback address (only on a link encrypted below HTTP, e.g. WireGuard)."
    ),
    block: str = Block,
) -> None:
    """Run the allocator (FastAPI on uvicorn) on the VM tables; Ctrl-C or SIGTERM stops it."""
    import logging

    from labpipe.errors import ConfigError
    from labpipe.vms.server import check_listen

    try:  # before anything opens: tokens must never be taken in clear from other hosts
        check_listen(host, certfile, keyfile, allow_plain_http=allow_plain_http)
    except ConfigError as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(2) from exc

    from labpipe.blocks import database_settings
    from labpipe.vms.launch import InlineLauncher
    from labpipe.vms.server import run_allocator

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings(block)
    if allocator_url:
        settings = settings.model_copy(update={"allocator_url": allocator_url})
    port = port or urlsplit(settings.allocator_url).port or 8765
    if launch == "prefect":
        from labpipe.flows.vms import PrefectLauncher

        def make_launcher(store):
            return PrefectLauncher(settings.allocator_url, block)
    elif launch == "inline":

        def make_launcher(store):
            return InlineLauncher(store, settings, settings.allocator_url)
    else:
        raise typer.BadParameter("use 'prefect' or 'inline'", param_hint="--launch")
    sinks = []
    if events:
        from labpipe.flows.vms import emit_vm_event

        sinks.append(emit_vm_event)

    def ready(url: str, token_file: Path) -> None:
        typer.echo(f"allocator on {url} (page {url}/); admin token in {token_file}", err=True)

    run_allocator(
        settings, host=host, port=port, db_settings=database_settings(), launcher=make_launcher,
        on_change=sinks, ready=ready, certfile=certfile, keyfile=keyfile, allow_plain_http=allow_plain_http,
    )  # fmt: skip


@app.command()
def client(
    allocator: str = typer.Option(..., help="Allocator URL, e.g. https://allocator.lab:8765."),
    token: str = typer.Option(None, envvar="LABPIPE_VMS_TOKEN", help="This VM's client token."),
    token_file: Path = typer.Option(None, help="File holding the token (mode 600, in a folder of mode 700)."),
    workdir: Path = typer.Option(Path.cwd(), help="Folder for the user's session and logs."),
    gpu_interval: float = typer.Option(20.0, help="Seconds between GPU checks."),
    heartbeat_interval: float = typer.Option(30.0, help="Seconds between heartbeats."),
    retry_interval: float = typer.Option(5.0, help="Seconds between retries while the allocator is away."),
    address: str = typer.Option(None, help="Address users reach this VM at; default: the hostname."),
    ca_file: Path = typer.Option(None, help="CA certificate that signed the allocator's TLS certificate."),
    allow_plain_http: bool = typer.Option(False, help="Allow an http:// allocator on another host (encrypted link)."),
    session_account: str = typer.Option("labpipe-vm", help="Unprivileged account users' commands run as."),
    session_folder: Path = typer.Option(None, help="The session's folder; default: WORKDIR/session."),
    session_isolation: str = typer.Option("auto", help="'systemd' scope, 'cgroup' v2 folder, or 'auto'."),
    cgroup_parent: Path = typer.Option(None, help="cgroup v2 folder for session cgroups; default: the client's own."),
) -> None:
    """The service on each VM: registers, checks the GPU, heartbeats, runs the user's command (as session_account)."""
    import logging
    import socket

    from labpipe.errors import ConfigError
    from labpipe.vms.client import ClientConfig, read_token_file, run_client

    if token_file:
        token = read_token_file(token_file)
    if not token:
        raise typer.BadParameter("give --token-file (or --token, LABPIPE_VMS_TOKEN)", param_hint="--token-file")
    os.environ.pop("LABPIPE_VMS_TOKEN", None)  # nothing this process starts inherits it
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = ClientConfig(
        allocator=allocator, token=token, workdir=workdir, gpu_interval=gpu_interval,
        heartbeat_interval=heartbeat_interval, retry_interval=retry_interval, address=address or socket.gethostname(),
        ca_file=ca_file, allow_plain_http=allow_plain_http, session_account=session_account,
        session_folder=session_folder, session_isolation=session_isolation, cgroup_parent=cgroup_parent,
    )  # fmt: skip
    try:
        raise typer.Exit(run_client(config))
    except ConfigError as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command("session-account")
def session_account(name: str = typer.Option("labpipe-vm", help="The account's name.")) -> None:
    """Make the unprivileged system account VM sessions run as (no home, no login shell); needs root."""
    from labpipe.errors import LabpipeError
    from labpipe.vms.session import ensure_session_account

    try:
        account, made = ensure_session_account(name)
    except LabpipeError as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"{'made' if made else 'kept'} {account.name} (uid {account.uid}, gid {account.gid})")


@app.command()
def create(
    count: int = typer.Argument(..., min=1, max=500),
    command: list[str] = typer.Option(None, "--arg", help="One argument of the VMs' default command (repeat)."),
    request_key: str = typer.Option(None, help="Repeat safely: the same key never makes more VMs."),
    allocator_url: str = typer.Option(None, help="URL the clients reach the allocator at; default: the block's."),
    wait: float = typer.Option(120.0, help="Seconds to wait for the VMs to register (0: do not wait)."),
    block: str = Block,
) -> None:
    """Make COUNT VMs through the block's provisioner, in this process (the create-vms flow does the same)."""
    from labpipe.vms.lifecycle import create_vms, wait_settled

    store, settings = _store(block)
    try:
        key = request_key or f"cli-{secrets.token_hex(6)}"
        progress, update = progress_bar("starting VMs")
        with progress:
            report = create_vms(
                store, settings, count, request_key=key, command=command or [], allocator_url=allocator_url,
                progress=update,
            )  # fmt: skip
        if wait and report.created:
            wait_settled(store, report.created, wait)
        _table(store.list(request_key=key))
    finally:
        store.close()
    if report.failed:
        raise typer.Exit(1)


@app.command("list")
def list_vms(
    state: list[str] = typer.Option(None, help="Only VMs in these states."),
    as_json: bool = typer.Option(False, "--json"),
    block: str = Block,
) -> None:
    """Every VM with its state, owner, GPU and last heartbeat."""
    store, _ = _store(block)
    try:
        vms = store.list(states=state or None)
        if as_json:
            typer.echo(json.dumps([vm.model_dump(mode="json") for vm in vms], indent=1))
        else:
            _table(vms)
            typer.echo(", ".join(f"{n} {s}" for s, n in store.counts().items() if n) or "no VMs")
    finally:
        store.close()


@app.command()
def destroy(
    ids: list[int] = typer.Argument(None, help="VM ids."),
    state: list[str] = typer.Option(None, help="Also every VM in these states (e.g. failed)."),
    block: str = Block,
) -> None:
    """Take VMs down through the provisioner that made each."""
    from labpipe.vms.lifecycle import destroy_vms, ids_in_states

    store, settings = _store(block)
    try:
        chosen = sorted(set(ids or []) | set(ids_in_states(store, state) if state else []))
        if not chosen:
            typer.echo("no VM matched")
            return
        progress, update = progress_bar("destroying VMs")
        with progress:
            report = destroy_vms(store, settings, chosen, reason="destroyed from the CLI", progress=update)
        typer.echo(json.dumps(report.as_json(), indent=1))
    finally:
        store.close()
    if report.failed:
        raise typer.Exit(1)


@app.command()
def reap(block: str = Block) -> None:
    """One reaper sweep now (the reap-vms deployment does this every minute)."""
    from labpipe.vms.lifecycle import reap as reap_once

    store, settings = _store(block)
    try:
        typer.echo(json.dumps(reap_once(store, settings).as_json(), indent=1, default=str))
    finally:
        store.close()


token_app = typer.Typer(help="Bearer tokens: create, list, revoke (talks to the VM database directly).")
app.add_typer(token_app, name="token")


def _day(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else ""


@token_app.command("create")
def token_create(
    role: str = typer.Option(..., help="user or admin (client tokens are made with their VM)."),
    email: str = typer.Option(None, help="The user's email (user tokens)."),
    lifetime_days: float = typer.Option(None, help="Days until it expires; default: the role's lifetime."),
    label: str = typer.Option("issued by the CLI", help="What it is for (shown by `token list`)."),
    block: str = Block,
) -> None:
    """Issue a bearer token; prints it once (only its hash is stored), its id and expiry go to stderr."""
    from datetime import timedelta

    from labpipe.vms.models import TokenCreate

    try:
        request = TokenCreate(role=role, email=email, lifetime_days=lifetime_days, label=label)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if request.role.value == "client":
        raise typer.BadParameter("client tokens are made with their VM", param_hint="--role")
    store, _ = _store(block)
    try:
        lifetime = timedelta(days=request.lifetime_days) if request.lifetime_days else None
        issued = store.issue(request.role, email=request.email, label=request.label, lifetime=lifetime)
    finally:
        store.close()
    whom = issued.email or issued.role.value
    typer.echo(f"token {issued.id} for {whom}, expires {_day(issued.expires_at) or 'with its VM'}", err=True)
    typer.echo(issued.token)


@token_app.command("list")
def token_list(
    email: str = typer.Option(None, help="Only this user's tokens."),
    as_json: bool = typer.Option(False, "--json"),
    block: str = Block,
) -> None:
    """Every token's id, role, email, VM, label, creation, expiry and status (never the token)."""
    store, _ = _store(block)
    try:
        tokens = store.list_tokens(email=email)
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps(tokens, indent=1, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "role", "email", "VM", "label", "created", "expires", "status")
    for t in tokens:
        table.add_row(str(t["id"]), t["role"], t["email"] or "", str(t["vm_id"] or ""), t["label"],
                      _day(t["created_at"]), _day(t["expires_at"]), t["status"])  # fmt: skip
    Console().print(table)


@token_app.command("revoke")
def token_revoke(
    ids: list[int] = typer.Argument(None, help="Token ids (see `labpipe vms token list`)."),
    email: str = typer.Option(None, help="Every token of this user."),
    block: str = Block,
) -> None:
    """Revoke tokens: the allocator refuses them from the next request on."""
    if not ids and not email:
        raise typer.BadParameter("name token ids or --email", param_hint="IDS")
    store, _ = _store(block)
    try:
        known = {t["id"] for t in store.list_tokens(ids=ids)} if ids else set()
        if ids and (missing := sorted(set(ids) - known)):
            typer.echo(f"no token has id {missing}", err=True)
            raise typer.Exit(1)
        revoked = store.revoke_tokens(ids=ids, email=email)
    finally:
        store.close()
    typer.echo(f"revoked {revoked}" if revoked else "nothing to revoke (already revoked)")


def _allocator_call(
    allocator: str, token: str, method: str, path: str, body: dict | None = None, ca_file: Path | None = None
) -> dict:
    import httpx
    from labpipe.errors import ConfigError
    from labpipe.vms.client import check_transport, tls_verify

    try:
        check_transport(allocator)
    except ConfigError as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        response = httpx.request(
            method, allocator.rstrip("/") + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30,
            verify=tls_verify(ca_file),
        )  # fmt: skip
    except httpx.HTTPError as exc:
        typer.echo(f"allocator {allocator} unreachable: {exc}", err=True)
        raise typer.Exit(2) from exc
    data = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code >= 400:
        typer.echo(f"refused ({response.status_code}): {data.get('detail', response.text)}", err=True)
        raise typer.Exit(1)
    return data


Allocator = typer.Option(
    os.environ.get("LABPIPE_VMS_ALLOCATOR", "http://127.0.0.1:8765"), "--allocator", help="Allocator URL."
)
UserToken = typer.Option(..., "--token", envvar="LABPIPE_VMS_USER_TOKEN", help="Your user token.")
CaFile = typer.Option(None, "--ca-file", envvar="LABPIPE_VMS_CA_FILE", help="CA of the allocator's TLS certificate.")


@app.command()
def request(
    email: str = typer.Option(..., help="Your email."),
    min_gpu_memory: int = typer.Option(0, help="Only VMs with at least this much GPU memory (MB)."),
    require_gpu: bool = typer.Option(False, help="Only VMs with a healthy GPU."),
    command: list[str] = typer.Argument(None, help="Program and arguments the VM runs for you (after --)."),
    allocator: str = Allocator,
    token: str = UserToken,
    ca_file: Path = CaFile,
) -> None:
    """Ask the allocator for a VM; prints its hostname and how to connect."""
    body = {"email": email, "min_gpu_memory_mb": min_gpu_memory, "require_gpu": require_gpu}
    if command:
        body["command"] = list(command)
    data = _allocator_call(allocator, token, "POST", "/vms/request", body, ca_file)
    vm = data["vm"]
    held = "you already hold" if data["already_held"] else "assigned"
    typer.echo(f"{held} {vm['hostname']} (VM {vm['id']}) at {vm['address']}; connection {vm['connection']}")


@app.command()
def release(
    vm_id: int = typer.Argument(...), allocator: str = Allocator, token: str = UserToken, ca_file: Path = CaFile
) -> None:
    """Give your VM back."""
    vm = _allocator_call(allocator, token, "POST", f"/vms/{vm_id}/release", ca_file=ca_file)["vm"]
    typer.echo(f"released {vm['hostname']}; it is {vm['state']}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
