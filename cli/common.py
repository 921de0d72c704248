"""What every ``labpipe`` command shares: exit codes, JSON output, error reports and progress bars.

A command raises a ``LabpipeError`` and lets it go: the entry point (``labpipe.cli.main``)
reports it once as ``error:``/``hint:`` and exits with ``EXIT_REFUSED``. ``fail`` is for a command that
must stop with its own code, or report an error that is not a ``LabpipeError``.
"""

from __future__ import annotations

import json
from typing import NoReturn

import typer
from labpipe.errors import LabpipeError

# exit codes (docs/platform.md)
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and what it checked or ran failed (or an unexpected error, with a traceback)
EXIT_REFUSED = 2  # error: ... / hint: ... (bad input, configuration, a tool or service that failed) or bad usage
EXIT_SERVER_DOWN = 3  # `labpipe status`: no Prefect server answers


def echo_json(data) -> None:
    """``data`` as indented JSON on stdout (anything not JSON-native as its string)."""
    typer.echo(json.dumps(data, indent=2, default=str))


def report_error(error: BaseException) -> None:
    """``error: <subject>: <problem>`` and ``hint: <hint>`` on stderr (``error: <message>`` for other errors)."""
    if isinstance(error, LabpipeError):
        typer.secho(f"error: {error.subject}: {error.problem.rstrip()}", fg="red", err=True)
        if error.hint:
            typer.echo(f"hint: {error.hint}", err=True)
    else:
        typer.secho(f"error: {error}", fg="red", err=True)


def fail(error: BaseException, code: int = EXIT_REFUSED) -> NoReturn:
    """Report ``error`` and exit with ``code``."""
    report_error(error)
    raise typer.Exit(code)


def progress_bar(description: str, *, unit: str = "items"):
    """A transient rich progress bar and its ``update(done, total)`` callable (lib's progress signature).

    ``unit``: ``items`` shows done/total, elapsed and remaining time; ``bytes`` shows sizes and remaining time.
    Use the bar as a context manager around the work. It draws on stderr: stdout stays the command's output.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    counts = [DownloadColumn()] if unit == "bytes" else [MofNCompleteColumn(), TimeElapsedColumn()]
    progress = Progress(TextColumn(description), BarColumn(), *counts, TimeRemainingColumn(), transient=True,
                        console=Console(stderr=True))  # stdout stays the command's output (JSON)  # fmt: skip
    task = progress.add_task(description, total=None)
    return progress, lambda done, total: progress.update(task, completed=done, total=total or None)
