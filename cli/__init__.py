"""The ``labpipe`` command.

Platform commands live here; each lifecycle adds a sub-command group as a
module in this package that defines ``app`` (a ``typer.Typer``) and ``NAME``;
they are found automatically.

Errors are reported once, here: a ``LabpipeError`` raised by any command (and a
connection refused by the Prefect server or a database) prints ``error: <subject>:
<problem>`` and ``hint: ...`` on stderr and exits with ``EXIT_REFUSED``;
``--debug`` (or ``LABPIPE_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from pathlib import Path

import typer
from labpipe.cli.common import (  # noqa: F401 - EXIT_* and the helpers are this package's API
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_SERVER_DOWN,
    echo_json,
    fail,
    report_error,
)
from labpipe.errors import LabpipeError

app = typer.Typer(help="labpipe: a research lab's data lifecycles as Prefect flows.", no_args_is_help=True)
config_app = typer.Typer(
    help="Every labpipe block document as one YAML file: export, diff, apply.", no_args_is_help=True
)
app.add_typer(config_app, name="config")


def _settings():
    from labpipe.config import get_settings
    from pydantic import ValidationError

    try:
        return get_settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        variable = "LABPIPE_" + "_".join(str(p) for p in error["loc"]).upper()
        raise LabpipeError(variable, error["msg"], "correct or unset that environment variable") from exc


def _debugging() -> bool:
    return os.environ.get("LABPIPE_DEBUG", "").lower() in {"1", "true", "yes"}


def _as_labpipe_error(exc: BaseException) -> LabpipeError | None:
    """The error to report for ``exc``: itself, a connection refused, or None (unexpected: a traceback)."""
    if isinstance(exc, LabpipeError):
        return exc
    httpx = sys.modules.get("httpx")
    if httpx is not None and isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        try:
            url = str(exc.request.url)
        except RuntimeError:
            url = "the Prefect API"
        return LabpipeError(
            url,
            f"does not answer ({exc})",
            "is the Prefect server up? see `labpipe status`; or check LABPIPE_PREFECT_API_URL",
        )
    for module, name in (("psycopg2", "OperationalError"), ("pymysql.err", "OperationalError")):
        database_error = getattr(sys.modules.get(module), name, None)
        if database_error is not None and isinstance(exc, database_error):
            return LabpipeError(
                "the database",
                str(exc).strip(),
                "is the database server up? check LABPIPE_DATABASE_URL or the LabDatabase block",
            )
    return None


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"labpipe {version('labpipe')} (prefect {version('prefect')}, Python {sys.version.split()[0]})")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print labpipe's version and exit."
    ),
    debug: bool = typer.Option(
        False, "--debug", envvar="LABPIPE_DEBUG", help="Show an error's traceback (or set LABPIPE_DEBUG=1)."
    ),
) -> None:
    """labpipe: a research lab's data lifecycles as Prefect flows."""
    if debug:
        os.environ["LABPIPE_DEBUG"] = "1"


@app.command()
def up(
    workers: bool = typer.Option(True, help="Start one worker per pool."),
    pause_schedules: bool = typer.Option(False, help="Deploy with schedules paused (tests, quiet laptops)."),
) -> None:
    """Start (or reuse) the database and Prefect server, create pools, limits, blocks, deployments and workers."""
    from labpipe.deployments.alerts import MISSED_BEATS
    from labpipe.deployments.platform import up as platform_up

    report = platform_up(_settings(), workers=workers, pause_schedules=pause_schedules)
    typer.echo(f"database: {report.database}")
    typer.echo(f"GPUs: {report.gpus} (gpu concurrency limit {report.gpu_slots})")
    typer.echo(f"workers: {report.workers or 'not started'}")
    if report.alert_channels:
        typer.echo(f"alerts: {len(report.alerts)} automations notify by {', '.join(report.alert_channels)}")
    else:
        typer.echo("alerts: none - no e-mail or webhook in the LabAlerts block, nobody hears of failures (docs/lab.md)")
    if report.silent_runs:
        typer.echo(f"silent runs: crashed after {MISSED_BEATS} missed heartbeats ({report.silent_runs!r})")
    typer.echo(f"Prefect UI: {report.ui_url}")


@app.command()
def down(keep_database: bool = typer.Option(False, help="Leave the embedded PostgreSQL running.")) -> None:
    """Stop what ``labpipe up`` started."""
    from labpipe.deployments.platform import down as platform_down

    stopped = platform_down(_settings(), keep_database=keep_database)
    typer.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="Print JSON (with an `error` field when the server is down)."),
    wait: float = typer.Option(90.0, help="Seconds a busy server has to answer (nothing listening: at once)."),
) -> None:
    """Pools, workers, deployments and recent runs; exits 3 when no Prefect server answers."""
    from labpipe.deployments.platform import ServerBusy, ServerDown
    from labpipe.deployments.platform import status as platform_status

    settings = _settings()
    try:
        data = platform_status(settings, wait=wait)
    except ServerDown as down:
        if as_json:
            state = "not answering" if isinstance(down, ServerBusy) else "not running"
            echo_json({"server": f"{state} at {settings.api_url}", "error": down.problem, "hint": down.hint})
        fail(down, EXIT_SERVER_DOWN)
    if as_json:
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
    raise typer.Exit(EXIT_OK if ok else EXIT_FAILED)


@config_app.command("export")
def config_export(
    file: Path = typer.Argument(..., help="YAML file to write ('-': standard output)."),
    include_secrets: bool = typer.Option(
        False, help="Write secret fields in clear text instead of `!env NAME` references."
    ),
) -> None:
    """Write every labpipe block document (all block types, all documents) to FILE."""
    from labpipe.deployments.config import export_config, read_server
    from labpipe.files import atomic_path

    exported = export_config(read_server(), include_secrets=include_secrets)
    if str(file) == "-":
        typer.echo(exported.text, nl=False)
    else:
        with atomic_path(file) as staged:
            staged.write_text(exported.text)
            if include_secrets:
                staged.chmod(0o600)  # private before it takes its name (the staging folder is private too)
    where = "standard output" if str(file) == "-" else str(file)
    typer.echo(f"{exported.documents} block documents written to {where}", err=True)
    if exported.secrets_included:
        typer.echo(f"{exported.secrets_included} secret fields are in clear text: keep the file private", err=True)
    if exported.secret_refs:
        typer.echo("secret fields written as !env references; set these variables before `config apply`:", err=True)
        for variable, where_from in exported.secret_refs.items():
            typer.echo(f"  {variable}  ({where_from})", err=True)


@config_app.command("apply")
def config_apply(
    file: Path = typer.Argument(..., help="YAML file written by `labpipe config export` (and edited)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would change per document; save nothing."),
) -> None:
    """Validate every document of FILE, show the changes, and save the new and changed ones.

    One invalid document refuses the whole file. Documents the file does not name are left as they are.
    """
    from labpipe.deployments.config import parse_config, plan_changes, read_file, read_server, save_changes

    wanted = parse_config(read_file(file), str(file))
    changes = plan_changes(wanted, read_server())
    for change in changes:
        if change.kind != "unchanged":
            typer.echo(f"{change.key}: {change.kind}")
            for line in change.lines:
                typer.echo(f"  {line}")
    counts = {kind: sum(c.kind == kind for c in changes) for kind in ("new", "changed", "unchanged")}
    summary = f"{counts['new']} new, {counts['changed']} changed, {counts['unchanged']} unchanged"
    if dry_run:
        typer.echo(f"{summary} (dry run: nothing saved)")
        return
    saved = save_changes(changes)
    typer.echo(f"{summary}; saved {len(saved)}")
    if saved:
        from labpipe.deployments.pickers import refresh_on_server

        # on stderr: the summary above stays the last line of the result
        typer.echo(f"block pickers refreshed in {refresh_on_server()} deployments", err=True)


@config_app.command("pickers")
def config_pickers() -> None:
    """Refresh the block pickers of the run forms (after saving a block document in the UI or a notebook)."""
    from labpipe.deployments.pickers import refresh_on_server

    typer.echo(f"block pickers refreshed in {refresh_on_server()} deployments")


def _register_subcommands() -> None:
    import labpipe.cli as package

    for module_info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        name = getattr(module, "NAME", module_info.name)
        if name and isinstance(getattr(module, "app", None), typer.Typer):
            app.add_typer(module.app, name=name)


def main() -> None:
    """The ``labpipe`` console script: every command, with errors reported as ``error:``/``hint:`` lines."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        from labpipe.lab.secretenv import resolve_secret_files

        resolve_secret_files(os.environ)  # a lab host's env file names secret files (PREFECT_API_AUTH_STRING_FILE)
        # before anything imports prefect: every command talks to the platform's server, never an ephemeral one
        os.environ.setdefault("PREFECT_API_URL", _settings().api_url)
        _register_subcommands()
        app(prog_name="labpipe")
    except Exception as exc:  # noqa: BLE001 - reported below, or re-raised for a traceback
        error = _as_labpipe_error(exc)
        if error is None or _debugging():
            raise
        report_error(error)
        sys.exit(EXIT_REFUSED)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
