"""Pull one source root into the backup host's staging copy with rsync.

In the lab a source is ``user@MAIN_SERVER:/path`` (rsync over ssh, batch mode:
no password prompt can hang a run); in tests and the demo it is a local folder.
The staging copy of a source is a mirror (``--delete``); ``--delay-updates``
moves changed files into place only at the end, so a pull that dies leaves the
previous mirror, not a mix.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from labpipe.backup.errors import DiskFull, SourceUnavailable
from labpipe.backup.proc import run_tool
from labpipe.backup.settings import BackupSource, is_remote_path
from labpipe.errors import ToolError

_PROGRESS = re.compile(r"^\s*([\d,]+)\s+(\d+)%")
_STAT = re.compile(
    r"^(Number of files|Number of regular files transferred|Total file size|Total transferred file size):"
    r"\s+([\d,]+)"
)
_REGULAR = re.compile(r"^Number of files:.*\breg: ([\d,]+)")
_UNREACHABLE = {5, 10, 12, 30, 35, 255}  # rsync: start-up, socket, protocol stream, timeouts, ssh


@dataclass
class PullResult:
    """One source pulled: how much it holds and how much changed."""

    source: str
    origin: str
    staging: Path
    files: int
    bytes: int
    transferred_bytes: int
    seconds: float
    warnings: list[str]


def ssh_command() -> str:
    """rsync's remote shell: batch mode (no prompt can hang a run), and the backup host's own ssh configuration
    (``LABPIPE_SSH_CONFIG``: the pull key, the known host key) when its host.env names one."""
    config = os.environ.get("LABPIPE_SSH_CONFIG")
    ssh = f"ssh -F {shlex.quote(config)}" if config else "ssh"
    return f"{ssh} -o BatchMode=yes -o ConnectTimeout=20 -o ServerAliveInterval=30"


def rsync_command(source: BackupSource, dest: Path, extra_args: list[str] | None = None) -> list[str]:
    origin = source.path.rstrip("/") + "/"
    cmd = [
        "rsync",
        "-aH",
        "--numeric-ids",
        "--delete",
        "--delete-excluded",
        "--delay-updates",
        "--partial-dir=.rsync-partial",
        "--info=progress2,stats2",
        "--no-inc-recursive",
    ]
    if is_remote_path(source.path):
        cmd += ["-e", ssh_command()]
    cmd += [f"--exclude={pattern}" for pattern in source.excludes]
    return [*cmd, *(extra_args or []), origin, str(dest) + "/"]


def pull_source(
    source: BackupSource,
    staging_root: Path,
    *,
    extra_args: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PullResult:
    """rsync ``source`` into ``<staging_root>/<source.name>``; raises ``SourceUnavailable`` if it cannot be read."""
    if not is_remote_path(source.path):
        origin = Path(source.path)
        if not origin.is_dir():
            raise SourceUnavailable(
                source.path,
                f"source {source.name!r}: folder does not exist or is not a folder",
                "check the backup plan's sources and that the share is mounted",
            )
        if not os.access(origin, os.R_OK | os.X_OK):
            raise SourceUnavailable(source.path, f"source {source.name!r}: folder is not readable", "check permissions")
    dest = Path(staging_root) / source.name
    dest.mkdir(parents=True, exist_ok=True)
    stats: dict[str, int] = {}

    def on_stdout(line: str) -> None:
        if progress is not None and (match := _PROGRESS.match(line)):
            done, percent = int(match.group(1).replace(",", "")), int(match.group(2))
            progress(done, max(done, done * 100 // percent if percent else done))
        elif match := _STAT.match(line):
            stats[match.group(1)] = int(match.group(2).replace(",", ""))
            if regular := _REGULAR.match(line):
                stats["regular files"] = int(regular.group(1).replace(",", ""))

    result = run_tool(rsync_command(source, dest, extra_args), on_stdout=on_stdout)
    tail = result.stderr_tail(8)
    if result.returncode in _UNREACHABLE:
        raise SourceUnavailable(
            source.path,
            f"source {source.name!r}: cannot reach it (rsync exit {result.returncode}): {tail}",
            "check the host, ssh keys and network",
        )
    if "No space left on device" in tail:
        raise DiskFull(dest, f"staging copy ran out of space pulling {source.name!r}", "free space on the backups root")
    if result.returncode == 23 and ("No such file or directory" in tail or "change_dir" in tail):
        raise SourceUnavailable(source.path, f"source {source.name!r}: not found: {tail}", "check the path")
    if result.returncode not in (0, 24):  # 24: files vanished while copying (normal on a live share)
        raise ToolError(f"rsync {source.name}", f"exit {result.returncode}: {tail}")
    warnings = [line for line in result.stderr if "vanished" in line] if result.returncode == 24 else []
    return PullResult(
        source=source.name,
        origin=source.path,
        staging=dest,
        files=stats.get("regular files", 0),
        bytes=stats.get("Total file size", 0),
        transferred_bytes=stats.get("Total transferred file size", 0),
        seconds=result.seconds,
        warnings=warnings,
    )
