"""The ``labpipe`` command.

Platform commands live here; each lifecycle adds a sub-command group as a
module in this package that defines ``app`` (a ``typer.Typer``) and ``NAME``;
they are found automatically.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import sys

import typer

app = typer.Typer(help="labpipe: a research lab's data lifecycles as Prefect flows.", no_args_is_help=True)


def _settings():
    from labpipe.config import get_settings

    return get_settings()


def echo_json(data) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


@app.command()
def up(
    workers: bool = typer.Option(True, help="Start one worker per pool."),
    pause_schedules: bool = typer.Option(False, help="Deploy with schedules paused (tests, quiet laptops)."),
) -> None:
    """Start (or reuse) the database and Prefect server, create pools, limits, blocks, deployments and workers."""
    from labpipe.deployments.platform import up as platform_up

    report = platform_up(_settings(), workers=workers, pause_schedules=pause_schedules)
    typer.echo(f"database: {report.database}")
    typer.echo(f"GPUs: {report.gpus} (gpu concurrency limit {report.gpu_slots})")
    typer.echo(f"workers: {report.workers or 'not started'}")
    typer.echo(f"Prefect UI: {report.ui_url}")


@app.command()
def down(keep_database: bool = typer.Option(False, help="Leave the embedded PostgreSQL running.")) -> None:
    """Stop what ``labpipe up`` started."""
    from labpipe.deployments.platform import down as platform_down

    stopped = platform_down(_settings(), keep_database=keep_database)
    typer.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Pools, workers, deployments and recent runs."""
    from labpipe.deployments.platform import status as platform_status

    data = platform_status(_settings())
    if as_json or "pools" not in data:
        echo_json(data)
        return
    typer.echo(f"server {data['server']}  (UI {data['ui']}), gpu limit {data['gpu_limit']}")
    for pool in data["pools"]:
        names = ", ".join(f"{w['name']} [{w['status']}]" for w in pool["workers"]) or "no workers"
        typer.echo(f"  pool {pool['pool']:<7} {pool['status']:<10} limit {pool['concurrency']}: {names}")
    typer.echo("deployments:")
    for d in data["deployments"]:
        typer.echo(f"  {d['full_name']:<32} pool {d['pool']:<7} {'; '.join(d['schedules']) or 'no schedule'}")
    typer.echo("recent runs:")
    for r in data["recent_runs"]:
        typer.echo(f"  {r['start'][:19]}  {r['state']:<10} {r['name']}")


@app.command()
def demo(
    timeout: float = typer.Option(5400, help="Seconds the whole demo may take (each run also has its own limit)."),
    only: list[str] = typer.Option(None, help="Run only these lifecycles' demos."),
) -> None:
    """``up``, simulated input for every lifecycle, their deployments run, and a summary."""
    from labpipe.deployments.demo import run_demo

    ok = run_demo(_settings(), timeout=timeout, only=only or None)
    raise typer.Exit(0 if ok else 1)


def _register_subcommands() -> None:
    import labpipe.deployments.cli as package

    for module_info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        name = getattr(module, "NAME", module_info.name)
        if name and isinstance(getattr(module, "app", None), typer.Typer):
            app.add_typer(module.app, name=name)


def main() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MPLBACKEND", "Agg")
    # before anything imports prefect: every command talks to the platform's server, never an ephemeral one
    os.environ.setdefault("PREFECT_API_URL", _settings().api_url)
    _register_subcommands()
    app(prog_name="labpipe")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
