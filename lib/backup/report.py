"""The record of one backup run: what was backed up, sizes, durations, checks, proof; stored and drawn.

``BackupReport`` is filled stage by stage by the backup flow; ``record_start``
/ ``record_finish`` write it to ``BackupRun``; ``write_json`` keeps a copy
beside the repository (so a run is documented even when the lab database is
down); ``sizes_figure`` draws sizes per source and before/after compression
and deduplication.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import uuid
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path

from labpipe.backup.borg import ArchiveStats, CheckResult, PruneResult
from labpipe.backup.dumps import DumpResult
from labpipe.backup.proof import ProofResult
from labpipe.files import atomic_write_text
from labpipe.markdown import markdown_table, png_markdown


@dataclass
class SourceOutcome:
    name: str
    origin: str
    status: str  # pulled, failed
    files: int = 0
    bytes: int = 0
    transferred_bytes: int = 0
    seconds: float = 0.0
    detail: str = ""


@dataclass
class BackupReport:
    repository: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: dt.datetime = field(default_factory=dt.datetime.now)
    finished: dt.datetime | None = None
    status: str = "running"
    archive: str = ""
    dumps: list[DumpResult] = field(default_factory=list)
    sources: list[SourceOutcome] = field(default_factory=list)
    stats: ArchiveStats | None = None
    repository_bytes: int = 0  # unique, compressed: what the repository occupies
    repository_original_bytes: int = 0  # all archives before compression and dedup
    proof: ProofResult | None = None
    prune: PruneResult | None = None
    compact: str = ""
    check: CheckResult | None = None
    offsite: list[dict] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # Prefect events this run emits (names)
    check_failed: dict | None = None  # the recorded failed borg check that blocks prune and compact

    def fail(self, stage: str, error: BaseException | str) -> None:
        self.problems.append(f"{stage}: {error}")

    def finish(self) -> BackupReport:
        self.finished = dt.datetime.now()
        self.status = "failed" if self.problems else "succeeded"
        self.durations["total"] = (self.finished - self.started).total_seconds()
        return self

    @property
    def failed_sources(self) -> list[str]:
        return [s.name for s in self.sources if s.status != "pulled"]

    def as_json(self) -> dict:
        def plain(value):
            if is_dataclass(value):
                return {k: plain(v) for k, v in asdict(value).items()}
            if isinstance(value, list):
                return [plain(v) for v in value]
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, (dt.datetime, Path)):
                return str(value)
            return value

        data = {k: plain(v) for k, v in self.__dict__.items()}
        data["proof_ok"] = self.proof.ok if self.proof else None
        data["check_ok"] = self.check.ok if self.check else None
        return data


def write_json(report: BackupReport, folder: Path) -> Path:
    """``<folder>/<started>-<run_id>.json`` (atomic)."""
    name = f"{report.started:%Y%m%dT%H%M%S}-{report.run_id[:8]}.json"
    return atomic_write_text(Path(folder) / name, json.dumps(report.as_json(), indent=1, default=str))


def record_start(tables, report: BackupReport) -> None:
    tables.BackupRun.insert1(
        dict(run_id=report.run_id, started=report.started, status="running", repository=report.repository[:1023])
    )


def record_finish(tables, report: BackupReport) -> None:
    """Final state of the run, its sources, and which dumps its restore proof read back."""
    stats = report.stats
    row = dict(
        run_id=report.run_id,
        finished=report.finished,
        status=report.status,
        archive=report.archive,
        original_bytes=stats.original_size if stats else 0,
        compressed_bytes=stats.compressed_size if stats else 0,
        deduplicated_bytes=stats.deduplicated_size if stats else 0,
        repository_bytes=report.repository_bytes,
        nfiles=stats.nfiles if stats else 0,
        create_seconds=stats.seconds if stats else 0.0,
        total_seconds=report.durations.get("total", 0.0),
        check_ok=None if report.check is None else report.check.ok,
        proof_files=len(report.proof.checked) if report.proof else 0,
        proof_ok=None if report.proof is None else report.proof.ok,
        pruned=len(report.prune.pruned) if report.prune else 0,
        detail="; ".join(report.problems + report.notes)[:4000],
    )
    conn = tables.BackupRun.connection
    with conn.transaction:
        tables.BackupRun.update1(row)
        tables.BackupRun.Source.insert(
            [
                dict(
                    run_id=report.run_id,
                    source=s.name,
                    origin=s.origin[:1023],
                    status=s.status,
                    files=s.files,
                    bytes=s.bytes,
                    transferred_bytes=s.transferred_bytes,
                    seconds=s.seconds,
                    detail=s.detail[:2000],
                )
                for s in report.sources
            ],
            skip_duplicates=True,
        )
    if report.proof is not None:
        for path in report.proof.dumps:
            name = Path(path).name
            if tables.DatabaseDump & {"dump_name": name} and not (tables.DatabaseDump & {"dump_name": name}).fetch1(
                "archive"
            ):
                tables.DatabaseDump.update1(dict(dump_name=name, archive=report.archive))


def record_dumps(tables, dumps: list[DumpResult]) -> None:
    for d in dumps:
        if d.ok:
            tables.DatabaseDump.insert1(
                dict(
                    dump_name=d.path.name,
                    db_label=d.database,
                    bytes=d.bytes,
                    sha256=d.sha256,
                    created=dt.datetime.fromtimestamp(d.path.stat().st_mtime),
                ),
                skip_duplicates=True,
            )


def unproven_dumps(tables) -> list[str]:
    """Dumps not yet read back by any restore proof (and still in the dumps root)."""
    rows = (tables.DatabaseDump & "archive IS NULL" & "deleted IS NULL").to_dicts()
    return sorted(r["dump_name"] for r in rows)


def proven_dump(tables, name: str) -> bool:
    rows = (tables.DatabaseDump & {"dump_name": name}).to_dicts()
    return bool(rows) and rows[0]["archive"] is not None


def sizes_figure(report: BackupReport):
    """Bars: bytes per source (pulled / changed), and the archive before and after compression and dedup."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    names = [s.name for s in report.sources]
    left.barh(names, [s.bytes / 1e6 for s in report.sources], color="#8fb3d9", label="in source")
    left.barh(names, [s.transferred_bytes / 1e6 for s in report.sources], color="#2b6cb0", label="changed this run")
    for i, s in enumerate(report.sources):
        if s.status != "pulled":
            left.text(0, i, "  FAILED", va="center", color="#c53030", fontweight="bold")
    left.set_xlabel("MB")
    left.set_title("sources")
    left.legend(fontsize=8)
    if report.stats:
        labels = ["original", "compressed", "new after dedup"]
        values = [report.stats.original_size, report.stats.compressed_size, report.stats.deduplicated_size]
        right.bar(labels, [v / 1e6 for v in values], color=["#a0aec0", "#48bb78", "#2f855a"])
        for i, v in enumerate(values):
            right.text(i, v / 1e6, f"{v / 1e6:.1f}", ha="center", va="bottom", fontsize=8)
    right.set_ylabel("MB")
    right.set_title(f"archive {report.archive or '(none)'}", fontsize=9)
    fig.tight_layout()
    return fig


def mb(value: int) -> str:
    return f"{value / 1e6:,.1f}"


def dumps_markdown(results: list[DumpResult], pruned: list[str]) -> str:
    rows = [
        {
            "database": r.database,
            "dump": r.path.name if r.path else "",
            "MB": f"{r.bytes / 1e6:.2f}",
            "seconds": f"{r.seconds:.1f}",
            "error": r.error,
        }
        for r in results
    ]
    return markdown_table(rows) + (
        f"\nOld dumps removed (held by a proven backup): {', '.join(pruned)}\n" if pruned else ""
    )


def backup_markdown(report: BackupReport, json_path: Path | None = None) -> str:
    """The run's summary: sources, sizes, durations, checks, proof, prune, off-site copies, problems."""
    lines = [
        f"# Backup `{report.archive or '(no archive)'}`: **{report.status}**",
        f"Repository `{report.repository}`; run `{report.run_id}`; {report.durations.get('total', 0):.1f} s.",
    ]
    if report.problems:
        lines += ["", "## Problems", *[f"- {p}" for p in report.problems]]
    if report.check_failed:
        failed = report.check_failed
        lines += [
            "",
            f"## Prune and compact BLOCKED: borg check failed ({failed.get('what')}) since {failed.get('since')}",
            "They stay blocked, and this is reported (event `labpipe.backup.check-failed`) every run, until a "
            "check passes.",
            *[f"- {p}" for p in failed.get("problems", [])[:10]],
        ]
    if report.dumps:
        lines += ["", "## Database dumps", dumps_markdown(report.dumps, [])]
    lines += [
        "",
        "## Sources",
        markdown_table(
            [
                {
                    "source": s.name,
                    "origin": s.origin,
                    "status": s.status,
                    "files": s.files,
                    "MB": mb(s.bytes),
                    "MB changed": mb(s.transferred_bytes),
                    "seconds": s.seconds,
                    "detail": s.detail,
                }
                for s in report.sources
            ]
        ),
    ]
    if report.stats:
        s = report.stats
        ratio = s.compressed_size / s.original_size if s.original_size else 0
        lines += [
            "",
            "## Archive",
            markdown_table(
                [
                    {
                        "files": s.nfiles,
                        "original MB": mb(s.original_size),
                        "compressed MB": mb(s.compressed_size),
                        "new (deduplicated) MB": mb(s.deduplicated_size),
                        "compression": f"{ratio:.2f}",
                        "create s": f"{s.seconds:.1f}",
                        "MB/s": f"{s.original_size / 1e6 / max(s.seconds, 1e-6):.1f}",
                    }
                ]
            ),
            f"Repository on disk: {mb(report.repository_bytes)} MB for {mb(report.repository_original_bytes)} MB "
            "of archived data (all archives).",
        ]
        if s.warnings:
            lines += ["Warnings: " + "; ".join(s.warnings[:10])]
        with contextlib.suppress(Exception):
            lines += ["", png_markdown(sizes_figure(report), "sizes per source and archive")]
    if report.proof:
        p = report.proof
        verdict = "all match" if p.ok else f"{len(p.mismatches)} MISMATCHES"
        lines += [
            "",
            f"## Restore proof: {verdict}",
            f"{len(p.checked)} files ({mb(p.bytes)} MB) extracted from `{p.archive}` and compared (SHA-256) with "
            f"the staging copy; dumps read back: {', '.join(p.dumps) or 'none'}; {p.seconds:.1f} s.",
        ]
        if p.mismatches:
            lines.append(markdown_table(p.mismatches, ["path", "reason"]))
    if report.check:
        lines += ["", f"## borg check ({report.check.what}): {'ok' if report.check.ok else 'PROBLEMS'}"]
        lines += [f"- {problem}" for problem in report.check.problems[:20]]
    if report.prune:
        kept = ", ".join(f"{name} ({rule})" for name, rule in report.prune.kept.items())
        lines += [
            "",
            f"## Prune: {len(report.prune.pruned)} archives removed",
            f"Kept: {kept}",
            f"Removed: {', '.join(report.prune.pruned) or 'none'}. {report.compact}",
        ]
    if report.offsite:
        lines += ["", "## Off-site copies (rclone sync + rclone check)", markdown_table(report.offsite)]
    lines += ["", "## Durations (s)", markdown_table([{k: f"{v:.2f}" for k, v in report.durations.items()}])]
    if report.notes:
        lines += ["", "## Notes", *[f"- {n}" for n in report.notes]]
    if json_path:
        lines += ["", f"Full report: `{json_path}`"]
    return "\n".join(lines)
