"""Scenarios of the fault campaign (``tests/bench/faults.py``): one module per lifecycle step.

A scenario module defines ``SCENARIO``, an instance of a ``Scenario`` subclass:

- ``prepare(ctx, root)`` writes fresh inputs under ``root`` and records what must survive (checksums) there;
- ``run(ctx, root)`` does the long step once, in a child process (the same lib code a flow's task calls);
- ``check(ctx, root, finished=True)`` returns an ``Outcome``: inputs lost or changed, partial products in a
  final location, and (when ``finished``) whether every product is complete. It is also called right after a
  kill with ``finished=False``: then only ``lost_files`` and ``half_written`` count.

``Context`` carries what scenarios share: a cache folder for expensive inputs made once (a trained model, a
simulated group), an embedded PostgreSQL started once for the whole campaign, and the child environment.
Helpers here (``tree_checksums``, ``compare_tree``, ``partial_names``) are for scenarios to use.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pkgutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Outcome:
    complete: bool = True
    lost_files: list[str] = field(default_factory=list)
    half_written: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.complete and not self.lost_files and not self.half_written

    def describe(self) -> str:
        return f"complete={self.complete} lost={self.lost_files[:3]} half={self.half_written[:3]} {self.detail}".strip()


@dataclass
class Context:
    workdir: Path
    cache: Path
    database_url: str = ""
    keep: bool = False
    env: dict = field(default_factory=dict)
    _server: object = None

    @classmethod
    def start(cls, workdir: Path, keep: bool = False) -> Context:
        from labpipe.db.embedded import EmbeddedPostgres

        cache = workdir / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        server = EmbeddedPostgres(workdir / "pg")
        target = server.start()
        env = dict(os.environ)
        env.update(
            LABPIPE_FAULTS_WORKDIR=str(workdir),
            LABPIPE_FAULTS_CACHE=str(cache),
            LABPIPE_DATABASE_URL=target.url,
            LABPIPE_HOME=str(workdir / "home"),
            PREFECT_API_URL="http://127.0.0.1:9/api",  # steps never need a Prefect server
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            MPLBACKEND="Agg",
        )
        return cls(workdir=workdir, cache=cache, database_url=target.url, keep=keep, env=env, _server=server)

    @classmethod
    def from_env(cls) -> Context:
        return cls(
            workdir=Path(os.environ["LABPIPE_FAULTS_WORKDIR"]),
            cache=Path(os.environ["LABPIPE_FAULTS_CACHE"]),
            database_url=os.environ.get("LABPIPE_DATABASE_URL", ""),
            env=dict(os.environ),
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()


class Scenario:
    name = "scenario"
    description = ""
    timeout = 600.0  # seconds a rerun may take
    kill_window = 1.0  # kill within this fraction of the undisturbed run (1.0: anywhere in it)

    def env(self, ctx: Context, root: Path) -> dict:
        """Extra environment of the step's process (e.g. a schema prefix of this trial)."""
        return {"LABPIPE_SCHEMA_PREFIX": schema_prefix(root)}

    def prepare(self, ctx: Context, root: Path) -> None:
        raise NotImplementedError

    def run(self, ctx: Context, root: Path) -> None:
        raise NotImplementedError

    def check(self, ctx: Context, root: Path, finished: bool = True) -> Outcome:
        raise NotImplementedError


def schema_prefix(root: Path) -> str:
    """A DataJoint schema prefix of one trial (stable for the trial's folder)."""
    return "f" + hashlib.sha256(str(root).encode()).hexdigest()[:10]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def tree_checksums(top: Path) -> dict[str, str]:
    """{relative path: SHA-256} of every regular file under ``top``."""
    top = Path(top)
    return {p.relative_to(top).as_posix(): sha256(p) for p in sorted(top.rglob("*")) if p.is_file()}


def save_checksums(root: Path, name: str, checksums: dict[str, str]) -> None:
    (root / f".{name}.sha256.json").write_text(json.dumps(checksums, indent=1))


def load_checksums(root: Path, name: str) -> dict[str, str]:
    return json.loads((root / f".{name}.sha256.json").read_text())


def compare_tree(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Paths of ``expected`` that are missing from ``actual`` or hold other bytes."""
    return sorted(p for p, digest in expected.items() if actual.get(p) != digest)


def partial_names(top: Path, patterns=(".part", ".tmp", ".partial")) -> list[str]:
    """Files or folders under ``top`` whose names mark them as staged, not finished (atomic_path's ``*.part``)."""
    top = Path(top)
    if not top.exists():
        return []
    return sorted(p.relative_to(top).as_posix() for p in top.rglob("*") if any(s in p.name for s in patterns))


def unique() -> str:
    return uuid.uuid4().hex[:8]


def scenarios(only: list[str] | None = None) -> list[Scenario]:
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        scenario = getattr(module, "SCENARIO", None)
        if isinstance(scenario, Scenario) and (not only or scenario.name in only):
            found.append(scenario)
    if only and len(found) != len(only):
        known = ", ".join(s.name for s in scenarios())
        raise SystemExit(f"unknown scenario in {only}; known: {known}")
    return found
