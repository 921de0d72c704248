"""``labpipe lab``: the lab's certificates, and a simulated lab on this machine (docs/lab.md)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

NAME = "lab"
app = typer.Typer(help="The lab's hosts: certificates, and a simulated lab (network namespaces).", no_args_is_help=True)
simulate_app = typer.Typer(
    help="Three hosts (main, gpu, backup) as network namespaces on this machine, each running its services.",
    no_args_is_help=True,
)
app.add_typer(simulate_app, name="simulate")

PREFIX = typer.Option("labpipe", help="Names the lab's namespaces (<prefix>-main, ...) and folder.")
SUBNET = typer.Option("10.231.0", help="The lab's /24 (first three numbers); hosts are .1 main, .2 gpu, .3 backup.")


@app.command()
def certs(
    out: Path = typer.Option(..., "--out", help="Folder of the CA and the host certificates (keys are 0600)."),
    host: list[str] = typer.Option(
        ..., "--host", help="NAME=ADDRESS[,ADDRESS...]: one host and the names/IPs it is reached by (repeat)."
    ),
    lab: str = typer.Option("lab", help="The lab's name, in the CA's name."),
) -> None:
    """Make the lab's CA (kept if OUT has one) and a certificate per host, for TLS both ways."""
    from labpipe.errors import InvalidInput
    from labpipe.lab.certs import make_certs

    hosts = {}
    for entry in host:
        name, _, addresses = entry.partition("=")
        if not name or not addresses:
            raise InvalidInput(entry, "--host takes NAME=ADDRESS[,ADDRESS...]", "e.g. --host main=10.0.0.5,main.lab")
        hosts[name] = [a for a in addresses.split(",") if a]
    made = make_certs(out, hosts, lab=lab)
    typer.echo(f"CA: {out / 'ca.pem'} (key {out / 'ca-key.pem'}, keep it off the hosts)")
    for cert in made.values():
        typer.echo(f"{cert.host}: {cert.cert} (key {cert.key})")


def _lab(prefix: str, subnet: str):
    from labpipe.lab.simulate import SimulatedLab

    return SimulatedLab(prefix=prefix, subnet=subnet)


@simulate_app.command("up")
def simulate_up(
    prefix: str = PREFIX,
    subnet: str = SUBNET,
    timeout: float = typer.Option(300.0, help="Seconds each service has to become ready."),
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
    slurm: bool = typer.Option(False, "--slurm", help="Also a one-node SLURM on main (munged, slurmctld, slurmd)."),
) -> None:
    """Create the namespaces and start every host's services; prints how long each phase took."""
    lab = _lab(prefix, subnet)
    timings = lab.up(timeout=timeout, slurm=slurm)
    if as_json:
        typer.echo(json.dumps(lab.status(), indent=2))
        return
    for phase, seconds in timings.items():
        typer.echo(f"  {phase:<26} {seconds:7.1f} s")
    typer.echo(f"Prefect API {lab.api_url} (auth string in {lab.secret('prefect-auth')})")
    typer.echo(f"Dask scheduler {lab.dask_address}; hosts' env files in {lab.root / 'hosts'}")
    if slurm:
        typer.echo(f"SLURM on main: SLURM_CONF={lab.slurm.conf} (partition lab); main's env file sets it")
    typer.echo(f"run a command on a host: labpipe lab simulate exec main -- labpipe status  (--prefix {prefix})")


@simulate_app.command("down")
def simulate_down(prefix: str = PREFIX, subnet: str = SUBNET) -> None:
    """Stop every service, end what is left in the namespaces, delete them and the lab's folder."""
    result = _lab(prefix, subnet).down()
    typer.echo(
        f"stopped: {', '.join(result['stopped']) or 'nothing'}; namespaces removed: "
        f"{', '.join(result['namespaces']) or 'none'}; folder removed: {result['folder_removed']}"
    )


@simulate_app.command("status")
def simulate_status(prefix: str = PREFIX, subnet: str = SUBNET, as_json: bool = typer.Option(False, "--json")) -> None:
    """Namespaces, services and their pids, addresses, and the last bring-up time."""
    data = _lab(prefix, subnet).status()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    if not data["up"] and not data["namespaces"]:
        typer.echo("the simulated lab is not up")
        raise typer.Exit(3)
    typer.echo(f"folder {data['folder']}; namespaces {', '.join(data['namespaces']) or 'none'}")
    for name, service in data["services"].items():
        typer.echo(f"  {service['host']:<7} {name:<18} {service['pid'] or 'not running'}")
    if data.get("slurm"):
        daemons = ", ".join(f"{name} {pid or 'not running'}" for name, pid in data["slurm"].items())
        typer.echo(f"  main    one-node SLURM: {daemons}")
    if data["bringup_seconds"]:
        typer.echo(f"brought up in {data['bringup_seconds']['total']:.1f} s")


@simulate_app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def simulate_exec(
    ctx: typer.Context,
    host: str = typer.Argument(..., help="main, gpu or backup."),
    prefix: str = PREFIX,
    subnet: str = SUBNET,
) -> None:
    """Run a command on a host (its namespace, environment file and secrets): exec main -- labpipe status."""
    lab = _lab(prefix, subnet)
    lab.net.namespace(host)  # an unknown host is refused with the hosts' names
    result = lab.run(host, ctx.args, capture_output=False)
    raise typer.Exit(result.returncode)
