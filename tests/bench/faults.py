"""Fault campaign: SIGKILL each lifecycle's long step at random points, rerun it, and check that nothing is lost.

For every scenario in ``tests/bench/fault_scenarios/`` (one module per lifecycle step, each defining
``SCENARIO``), the driver

1. prepares fresh inputs in a new folder and runs the step once undisturbed, to learn how long it takes and to
   check that the scenario's own check passes on an undisturbed run;
2. then, ``--kills`` times: prepares fresh inputs, starts the step as a child process in its own process group,
   SIGKILLs the whole group at a random point of its run (uniform over the undisturbed duration), looks for
   half-written products in final locations at once, reruns the step to completion, and checks the outcome
   against the checksums taken before: every product complete, no input lost, nothing half-written.

The step runs as ``python tests/bench/faults.py --step NAME --root DIR``, which calls the scenario's ``run``:
the same lib code a flow's task calls, in a process of its own, as a worker runs it.

Last line: one JSON object with ``kills``, ``recovered``, ``lost_files`` and ``half_written`` (both must be 0)
over all scenarios, and the same counts per scenario under ``steps``.

    flock /tmp/labpipe-bench.lock .venv/bin/python tests/bench/faults.py [--kills 7] [--only NAME ...] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fault_scenarios import Context, Scenario, scenarios  # noqa: E402


def _start(ctx: Context, scenario: Scenario, root: Path) -> subprocess.Popen:
    log = open(root.parent / f"{root.name}.log", "ab")  # noqa: SIM115 - closed with the process
    env = ctx.env | scenario.env(ctx, root)
    argv = [sys.executable, str(Path(__file__).resolve()), "--step", scenario.name, "--root", str(root)]
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def _finish(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return -1
    finally:
        proc.log.close()  # type: ignore[attr-defined]


def _tail(root: Path, lines: int = 15) -> str:
    log = root.parent / f"{root.name}.log"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def _fresh(ctx: Context, scenario: Scenario, label: str) -> Path:
    root = ctx.workdir / scenario.name / label
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    scenario.prepare(ctx, root)
    return root


def run_scenario(ctx: Context, scenario: Scenario, kills: int, rng: random.Random, bar) -> dict:
    figures = {"kills": 0, "recovered": 0, "lost_files": 0, "half_written": 0, "missed": 0, "failures": []}
    root = _fresh(ctx, scenario, "undisturbed")
    started = time.monotonic()
    code = _finish(_start(ctx, scenario, root), scenario.timeout)
    duration = time.monotonic() - started
    outcome = scenario.check(ctx, root)
    figures["undisturbed_s"] = round(duration, 2)
    if code != 0 or not outcome.ok:
        figures["failures"].append(f"undisturbed run: exit {code}; {outcome.describe()}\n{_tail(root)}")
        return figures
    attempt = 0
    while figures["kills"] < kills and attempt < 3 * kills:
        attempt += 1
        root = _fresh(ctx, scenario, f"kill-{attempt:02d}")
        at = rng.uniform(0.05, 0.95) * duration * scenario.kill_window
        proc = _start(ctx, scenario, root)
        time.sleep(at)
        if proc.poll() is not None:  # finished before the kill: try an earlier point
            _finish(proc, 1)
            figures["missed"] += 1
            duration = max(duration * 0.8, 0.2)
            continue
        os.killpg(proc.pid, signal.SIGKILL)
        _finish(proc, 30)
        figures["kills"] += 1
        after_kill = scenario.check(ctx, root, finished=False)
        code = _finish(_start(ctx, scenario, root), scenario.timeout)
        outcome = scenario.check(ctx, root)
        half = sorted(set(after_kill.half_written) | set(outcome.half_written))
        lost = sorted(set(after_kill.lost_files) | set(outcome.lost_files))
        figures["half_written"] += len(half)
        figures["lost_files"] += len(lost)
        if code == 0 and outcome.ok and not half and not lost:
            figures["recovered"] += 1
        else:
            figures["failures"].append(
                f"killed at {at:.2f} s: rerun exit {code}; {outcome.describe()}; half-written {half[:5]}; "
                f"lost {lost[:5]}\n{_tail(root)}"
            )
        bar(scenario.name, figures)
        if not ctx.keep:
            shutil.rmtree(root, ignore_errors=True)
    return figures


def _bar(name: str, figures: dict) -> None:
    print(
        f"  {name}: {figures['kills']} kills, {figures['recovered']} recovered, "
        f"{figures['lost_files']} lost, {figures['half_written']} half-written",
        file=sys.stderr,
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=7, help="Kills per scenario.")
    parser.add_argument("--only", action="append", help="Run only these scenarios (by name).")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="Keep the work folder.")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # child: run one step
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        found = scenarios([args.step])
        found[0].run(Context.from_env(), Path(args.root))
        return
    workdir = Path(tempfile.mkdtemp(prefix="labpipe-faults-"))
    ctx = Context.start(workdir, keep=args.keep)
    rng = random.Random(args.seed)
    steps, started = {}, time.monotonic()
    try:
        for scenario in scenarios(args.only):
            print(f"== {scenario.name}: {scenario.description}", file=sys.stderr, flush=True)
            steps[scenario.name] = run_scenario(ctx, scenario, args.kills, rng, _bar)
            for failure in steps[scenario.name]["failures"]:
                print(f"  FAILED {failure}", file=sys.stderr)
    finally:
        ctx.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    total = {k: sum(s[k] for s in steps.values()) for k in ("kills", "recovered", "lost_files", "half_written")}
    summary = total | {
        "failures": sum(len(s["failures"]) for s in steps.values()),
        "seconds": round(time.monotonic() - started, 1),
        "steps": {name: {k: v for k, v in s.items() if k != "failures"} for name, s in steps.items()},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
