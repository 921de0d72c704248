"""``labpipe demo``: bring the platform up, feed every lifecycle simulated input, run it, summarise.

Each lifecycle contributes a module in ``labpipe.deployments.demos`` with
``ORDER`` (int) and ``run(ctx: DemoContext) -> DemoResult``; they run in order.
The server and workers stay up afterwards for the UI until ``labpipe down``.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
import traceback
from dataclasses import dataclass, field

import typer
from labpipe.config import Settings


@dataclass
class DemoResult:
    lifecycle: str
    ok: bool
    lines: list[str] = field(default_factory=list)  # what it produced and where
    seconds: float = 0.0


@dataclass
class DemoContext:
    settings: Settings
    timeout: float
    started: float = field(default_factory=time.monotonic)

    @property
    def layout(self):
        from labpipe.blocks import layout

        return layout()

    def say(self, text: str) -> None:
        typer.echo(f"  {text}")

    def run(self, deployment: str, parameters: dict | None = None, *, timeout: float | None = None):
        """Start ``flow-name/deployment-name`` on its pool's worker and wait; returns the final flow run."""
        from prefect.deployments import run_deployment

        remaining = self.timeout - (time.monotonic() - self.started)
        flow_run = run_deployment(
            deployment, parameters=parameters or {}, timeout=max(10.0, min(timeout or remaining, remaining))
        )
        self.say(f"{deployment}: {flow_run.state.name if flow_run.state else 'unknown'} ({flow_run.name})")
        return flow_run

    def run_many(self, deployment: str, parameter_sets: list[dict], *, timeout: float | None = None) -> list:
        """Start several runs of one deployment at once (e.g. two population workers) and wait for all."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(parameter_sets)) as pool:
            return list(pool.map(lambda p: self.run(deployment, p, timeout=timeout), parameter_sets))


def demo_modules() -> list:
    import labpipe.deployments.demos as package

    modules = [importlib.import_module(f"{package.__name__}.{m.name}") for m in pkgutil.iter_modules(package.__path__)]
    return sorted((m for m in modules if hasattr(m, "run")), key=lambda m: getattr(m, "ORDER", 100))


def run_demo(settings: Settings, *, timeout: float = 5400, only: list[str] | None = None) -> bool:
    from labpipe.deployments.platform import up

    typer.echo("labpipe demo: starting the platform ...")
    report = up(settings)
    typer.echo(f"Prefect UI: {report.ui_url}  (GPUs: {report.gpus}; database: {report.database})")
    ctx = DemoContext(settings, timeout)
    results = []
    for module in demo_modules():
        name = module.__name__.rsplit(".", 1)[-1]
        if only and name not in only:
            continue
        typer.echo(f"\n== {name} ==")
        began = time.monotonic()
        try:
            results.append(module.run(ctx))
        except Exception as exc:  # one lifecycle's failure must not hide the others' results
            typer.echo(traceback.format_exc())
            results.append(DemoResult(name, False, [f"demo failed: {exc}"]))
        results[-1].seconds = time.monotonic() - began
    typer.echo("\n================ labpipe demo summary ================")
    for result in results:
        typer.echo(f"[{'ok' if result.ok else 'FAILED'}] {result.lifecycle} ({result.seconds:.0f} s)")
        for line in result.lines:
            typer.echo(f"    {line}")
    typer.echo(f"\nThe server and workers stay up: open {report.ui_url} ; stop them with `labpipe down`.")
    return all(r.ok for r in results)
