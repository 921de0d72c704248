"""The borg client: every borg command labpipe runs, with borg's failures turned into typed errors.

borg runs as an external program (``--log-json``: its messages carry a
``msgid`` we classify), in its own process group (``labpipe.backup.proc``).
Exit code 1 is a warning (a file changed while read), 2 an error.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from labpipe.backup.errors import (
    DiskFull,
    RepositoryCorrupt,
    RepositoryLocked,
    RepositoryMissing,
    RepositoryReplaced,
    WrongPassphrase,
)
from labpipe.backup.proc import ToolResult, run_tool
from labpipe.backup.settings import BackupPlan, BorgRepository
from labpipe.backup.state import RepositoryState
from labpipe.errors import ConfigError, ConflictError, InvalidInput, ToolError
from labpipe.files import atomic_write_text
from labpipe.procs import pid_alive

ProgressFn = Callable[[int, int], None]
_PRUNE_LINE = re.compile(
    r"^(Keeping(?: checkpoint)? archive|Would prune|Pruning archive)(?: \(rule: ([^)]*)\))?[^:]*:\s+(\S+)"
)
_ENOSPC = ("No space left on device", "Errno 28", "InsufficientFreeSpaceError", "StorageQuotaExceeded")


@dataclass
class BorgMessage:
    level: str
    text: str
    msgid: str = ""


@dataclass
class BorgOutput:
    """A finished borg command: exit code, stdout, and its log messages."""

    result: ToolResult
    messages: list[BorgMessage] = field(default_factory=list)

    @property
    def returncode(self) -> int:
        return self.result.returncode

    def texts(self, *levels: str) -> list[str]:
        return [m.text for m in self.messages if not levels or m.level in levels]

    def json(self) -> dict:
        return json.loads(self.result.stdout) if self.result.stdout.strip() else {}


@dataclass
class ArchiveStats:
    """What one ``borg create`` stored: sizes before and after compression and deduplication."""

    name: str
    original_size: int
    compressed_size: int
    deduplicated_size: int
    nfiles: int
    seconds: float
    warnings: list[str] = field(default_factory=list)


@dataclass
class PruneResult:
    kept: dict[str, str] = field(default_factory=dict)  # archive -> rule that kept it
    pruned: list[str] = field(default_factory=list)
    dry_run: bool = False


@dataclass
class CheckResult:
    """A ``borg check``: which parts were checked and the problems found (empty: all good)."""

    what: str
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class LockHolder:
    """One entry of a repository's lock roster."""

    host: str
    pid: int
    thread: int
    state: str  # "running", "dead" (same host, process gone) or "foreign" (another host)


def this_host_id() -> str:
    """borg's host id for this machine (``hostname@node``), as written into lock rosters."""
    return os.environ.get("BORG_HOST_ID") or f"{socket.gethostname()}@{uuid.getnode()}"


def archive_name(prefix: str, when: dt.datetime | None = None) -> str:
    """``<prefix>-YYYY-MM-DDTHH:MM:SS``: sortable, and borg prune reads time from the archive itself."""
    return f"{prefix}-{(when or dt.datetime.now()).strftime('%Y-%m-%dT%H:%M:%S')}"


class Borg:
    """One borg repository, opened with its block's settings."""

    def __init__(self, repo: BorgRepository, *, backups_root: Path, home: Path) -> None:
        self.repo = repo
        self.location = repo.repository or str(Path(backups_root) / "borg")
        self.base_dir = Path(repo.base_dir) if repo.base_dir else Path(home) / "borg"
        self.secrets_dir = Path(home) / "secrets"
        self.state = RepositoryState(home)

    # -- environment ------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return "://" not in self.location and not re.match(r"^[^/]+:", self.location)

    @property
    def local_path(self) -> Path:
        if not self.is_local:
            raise ConfigError(self.location, "not a local repository")
        return Path(self.location)

    def exists(self) -> bool:
        if self.is_local:
            return (self.local_path / "config").is_file()
        return self._run(["info", "--json", self.location], check=False).returncode == 0

    def _passphrase_file(self) -> Path:
        return self.secrets_dir / "borg-passphrase"

    def passphrase(self, *, create: bool = False) -> str | None:
        """The configured passphrase, else the one kept under $LABPIPE_HOME/secrets (made with the repository)."""
        if self.repo.encryption == "none":
            return None
        if self.repo.passphrase is not None:
            return self.repo.passphrase.get_secret_value()
        path = self._passphrase_file()
        if path.exists():
            return path.read_text().strip()
        if not create and self.is_local and not (self.local_path / "config").is_file():
            raise RepositoryMissing(
                self.location, "no borg repository there yet", "create it once with `labpipe backup init`"
            )
        if not create:
            raise WrongPassphrase(
                self.location,
                "no passphrase is configured and none is kept in " + str(path),
                "set the passphrase in the borg repository block",
            )
        self.secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        value = secrets.token_urlsafe(32)
        atomic_write_text(path, value + "\n")
        path.chmod(0o600)
        return value

    def env(self, *, create: bool = False) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BORG_")}
        env.update(
            BORG_BASE_DIR=str(self.base_dir),
            BORG_RELOCATED_REPO_ACCESS_IS_OK="no",
            BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="no",
            BORG_CHECK_I_KNOW_WHAT_I_AM_DOING="NO",  # never repair without a person deciding to
            BORG_DELETE_I_KNOW_WHAT_I_AM_DOING="NO",
            BORG_HOSTNAME_IS_UNIQUE="yes",  # lets borg itself drop locks of dead processes on this host
            LANG="C.UTF-8",
            LC_ALL="C.UTF-8",
        )
        if (passphrase := self.passphrase(create=create)) is not None:
            env["BORG_PASSPHRASE"] = passphrase
        if self.repo.remote_path:
            env["BORG_REMOTE_PATH"] = self.repo.remote_path
        return env

    # -- running borg -----------------------------------------------------------------------
    def _run(
        self,
        args: list[str],
        *,
        cwd: Path | None = None,
        check: bool = True,
        create: bool = False,
        on_json: Callable[[dict], None] | None = None,
        on_list: Callable[[str], None] | None = None,
        lock: bool = True,
    ) -> BorgOutput:
        messages: list[BorgMessage] = []

        def on_stderr(line: str) -> None:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                messages.append(BorgMessage("INFO", line))
                return
            kind = record.get("type")
            if kind == "log_message":
                message = BorgMessage(
                    record.get("levelname", "INFO"), record.get("message", ""), record.get("msgid", "")
                )
                messages.append(message)
                if on_list is not None and record.get("name") == "borg.output.list":
                    on_list(message.text)
            elif on_json is not None:
                on_json(record)

        self.base_dir.mkdir(parents=True, exist_ok=True)
        lock_args = [f"--lock-wait={self.repo.lock_wait}"] if lock else []
        result = run_tool(
            [self.repo.binary, "--log-json", *lock_args, *args],
            env=self.env(create=create),
            cwd=cwd,
            on_stderr=on_stderr,
        )
        output = BorgOutput(result, messages)
        if check and result.returncode >= 2:
            raise self.error_for(output, args[0])
        return output

    def error_for(self, output: BorgOutput, command: str) -> Exception:
        """The typed error for a failed borg command."""
        ids = {m.msgid for m in output.messages if m.msgid}
        errors = output.texts("ERROR", "CRITICAL") or output.result.stderr[-5:]
        text = " | ".join(e.splitlines()[0] if "Traceback" not in e else e.strip().splitlines()[-3] for e in errors)
        every = " ".join(output.texts()) + " ".join(output.result.stderr[-20:])
        if "PassphraseWrong" in ids:
            return WrongPassphrase(
                self.location,
                "the configured passphrase does not open the repository key",
                "check the passphrase in the borg repository block",
            )
        if ids & {"Repository.DoesNotExist", "Repository.InvalidRepository", "Repository.InvalidRepositoryConfig"}:
            return RepositoryMissing(
                self.location,
                f"no borg repository there ({text})",
                "check the repository path (is its disk mounted?); a new one only with `labpipe backup init`",
            )
        if ids & {"LockTimeout", "LockFailed", "LockError", "LockErrorT"}:
            holders = ", ".join(f"{h.host} pid {h.pid} ({h.state})" for h in self.lock_holders()) or "unknown holder"
            return RepositoryLocked(
                self.location,
                f"locked by {holders}; borg {command} gave up after {self.repo.lock_wait} s",
                "wait for that run, or `labpipe backup break-lock` once you know it is gone",
            )
        if any(marker in every for marker in _ENOSPC):
            free = self.free_bytes()
            where = f" ({free / 1e9:.2f} GB free now)" if free is not None else ""
            return DiskFull(
                self.location,
                f"no space left on the repository's disk during borg {command}{where}; "
                "borg rolled the unfinished transaction back",
                "free space or move the repository, then run the backup again",
            )
        if ids & {"Archive.DoesNotExist"}:
            return InvalidInput(self.location, f"no such archive: {text}", "see `labpipe backup list`")
        if ids & {"Archive.AlreadyExists"}:
            return ConflictError(self.location, f"archive exists already: {text}", "wait a second and run again")
        if (
            ids
            & {
                "IntegrityError",
                "Repository.CheckNeeded",
                "Repository.ObjectNotFound",
                "Repository.IntegrityError",
                "Item.IntegrityError",
            }
            or "integrity" in every.lower()
        ):
            return RepositoryCorrupt(
                self.location,
                f"damaged repository data during borg {command}: {text}",
                "run `labpipe backup check` and restore the repository from the off-site copy",
            )
        return ToolError(f"borg {command}", f"exit {output.returncode}: {text[-1500:]}")

    def free_bytes(self) -> int | None:
        if not self.is_local:
            return None
        path = self.local_path
        while not path.exists() and path != path.parent:
            path = path.parent
        return os.statvfs(path).f_bavail * os.statvfs(path).f_frsize

    # -- repository -------------------------------------------------------------------------
    def repository_id(self) -> str:
        """borg's id of the repository at the location (``borg info --json``)."""
        return self._run(["info", "--json", self.location]).json()["repository"]["id"]

    def _missing_known(self, known: dict) -> RepositoryMissing:
        return RepositoryMissing(
            self.location,
            f"the repository labpipe knows there (id {known['id']}, recorded {known.get('recorded', '?')}) is "
            "missing: is the backup disk mounted?",
            "mount the disk and run again; only if that repository is truly gone, "
            "`labpipe backup init --replace` makes a new one",
        )

    def open(self) -> str:
        """The repository's id, after checking it is the one labpipe knows at this location.

        Never creates a repository. A known repository that is missing (``RepositoryMissing``, asking whether
        the disk is mounted) or that holds another id (``RepositoryReplaced``) is refused; a repository labpipe
        has not seen before (made before labpipe kept this record) is recorded on first open.
        """
        known = self.state.known(self.location)
        if not self.exists():
            if known:
                raise self._missing_known(known)
            raise RepositoryMissing(
                self.location, "no borg repository there", "create it once with `labpipe backup init`"
            )
        found = self.repository_id()
        if known is None:
            self.state.remember(self.location, found, "first open")
        elif known["id"] != found:
            raise RepositoryReplaced(
                self.location,
                f"holds repository id {found}, not the known repository id {known['id']} (recorded "
                f"{known.get('recorded', '?')}): another disk mounted there, or a repository made anew?",
                "mount the right disk; if the new repository is meant, `labpipe backup init --replace` records it",
            )
        return found

    def init(self, *, replace: bool = False) -> bool:
        """Create the repository (and export its key beside the passphrase) and record its id; True if created.

        The only way labpipe creates a repository (``labpipe backup init``). An existing repository is opened
        (and checked against the record) instead. A known repository that is missing is refused unless
        ``replace``: an unmounted disk must not be replaced by an empty repository.
        """
        known = self.state.known(self.location)
        if self.exists():
            if replace:
                self.state.remember(self.location, self.repository_id(), "labpipe backup init --replace")
            else:
                self.open()
            return False
        if known and not replace:
            raise self._missing_known(known)
        if self.is_local:
            self.local_path.parent.mkdir(parents=True, exist_ok=True)
        quota = [f"--storage-quota={self.repo.storage_quota}"] if self.repo.storage_quota else []
        self._run(
            ["init", f"--encryption={self.repo.encryption}", "--make-parent-dirs", *quota, self.location],
            create=True,
            lock=False,
        )
        if self.repo.encryption != "none":
            self.secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            export = self.secrets_dir / f"borg-key-{re.sub(r'[^A-Za-z0-9]+', '_', self.location).strip('_')}.txt"
            self._run(["key", "export", "--paper", self.location, str(export)], lock=False)
            export.chmod(0o600)
        self.state.remember(self.location, self.repository_id(), "labpipe backup init")
        return True

    def lock_holders(self) -> list[LockHolder]:
        """Who holds the repository lock (local repositories; empty when unlocked or remote)."""
        if not self.is_local:
            return []
        roster = self.local_path / "lock.roster"
        try:
            data = json.loads(roster.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            data = {}
        holders = []
        me, my_name = this_host_id(), socket.gethostname()
        for kind in ("exclusive", "shared"):
            for host, pid, thread in data.get(kind, []):
                same_host = host == me or host.split("@")[0] == my_name
                state = ("running" if pid_alive(int(pid)) else "dead") if same_host else "foreign"
                holders.append(LockHolder(host, int(pid), int(thread), state))
        exclusive = self.local_path / "lock.exclusive"
        if exclusive.is_dir() and not holders:
            for entry in exclusive.iterdir():  # "<host>.<pid>-<thread>" left without a roster
                match = re.match(r"^(.*)\.(\d+)-(\d+)$", entry.name)
                if match:
                    host, pid = match.group(1), int(match.group(2))
                    same_host = host == me or host.split("@")[0] == my_name
                    state = ("running" if pid_alive(pid) else "dead") if same_host else "foreign"
                    holders.append(LockHolder(host, pid, int(match.group(3)), state))
        return holders

    def break_stale_lock(self) -> list[LockHolder]:
        """Break the lock only if every holder is a dead process of this host; returns the holders broken.

        A lock held by a running process or by another host is left alone
        (``RepositoryLocked`` is raised by the command that then waits for it).
        """
        holders = self.lock_holders()
        if holders and all(h.state == "dead" for h in holders):
            self._run(["break-lock", self.location], lock=False)
            return holders
        return []

    def break_lock(self) -> None:
        """``borg break-lock``: only when the holder is known to be gone (the CLI asks first)."""
        self._run(["break-lock", self.location], lock=False)

    # -- archives ---------------------------------------------------------------------------
    def create(
        self,
        archive: str,
        paths: list[str],
        *,
        cwd: Path,
        plan: BackupPlan,
        progress: ProgressFn | None = None,
        total_bytes: int = 0,
        comment: str = "",
        timestamp: dt.datetime | None = None,
    ) -> ArchiveStats:
        """``borg create`` of ``paths`` (relative to ``cwd``, so archives hold ``<source>/...``)."""
        args = [
            "create",
            "--json",
            "--progress",
            f"--compression={plan.compression}",
            f"--checkpoint-interval={plan.checkpoint_interval}",
            "--one-file-system",
            "--numeric-ids",
        ]
        args += ["--exclude-caches"] if plan.exclude_caches else []
        args += [f"--exclude-if-present={name}" for name in plan.exclude_if_present]
        args += [f"--exclude={pattern}" for pattern in plan.excludes]
        args += [f"--comment={comment}"] if comment else []
        args += [f"--timestamp={timestamp.strftime('%Y-%m-%dT%H:%M:%S')}"] if timestamp else []

        def on_json(record: dict) -> None:
            if progress is not None and record.get("type") == "archive_progress" and not record.get("finished"):
                progress(int(record.get("original_size", 0)), max(total_bytes, int(record.get("original_size", 0))))

        output = self._run([*args, f"{self.location}::{archive}", *paths], cwd=cwd, on_json=on_json)
        stats = output.json()["archive"]
        return ArchiveStats(
            name=stats["name"],
            original_size=stats["stats"]["original_size"],
            compressed_size=stats["stats"]["compressed_size"],
            deduplicated_size=stats["stats"]["deduplicated_size"],
            nfiles=stats["stats"]["nfiles"],
            seconds=float(stats["duration"]),
            warnings=output.texts("WARNING"),
        )

    def archives(self, prefix: str | None = None) -> list[dict]:
        """Archives (oldest first) with name, start time and id; only ``<prefix>-*`` when given."""
        glob = [f"--glob-archives={prefix}-*"] if prefix else []
        return self._run(["list", "--json", *glob, self.location]).json().get("archives", [])

    def info(self) -> dict:
        """Repository totals: ``total_size`` (all archives), ``unique_csize`` (on disk), chunk counts."""
        return self._run(["info", "--json", self.location]).json().get("cache", {}).get("stats", {})

    def archive_info(self, archive: str) -> dict:
        return self._run(["info", "--json", f"{self.location}::{archive}"]).json()["archives"][0]

    def files(self, archive: str, *, checksums: bool = False) -> list[dict]:
        """Entries of an archive (path, type, size; ``sha256`` of regular files when ``checksums``)."""
        fmt = "{path}{size}{sha256}" if checksums else "{path}{size}"
        output = self._run(["list", "--json-lines", f"--format={fmt}", f"{self.location}::{archive}"])
        return [json.loads(line) for line in output.result.stdout.splitlines() if line.strip()]

    def extract(
        self, archive: str, dest: Path, paths: list[str] | None = None, *, progress: ProgressFn | None = None
    ) -> None:
        """``borg extract`` of the whole archive, or of ``paths``, into ``dest``."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        done = [0]

        def on_json(record: dict) -> None:
            if progress is not None and record.get("type") == "progress_percent" and record.get("total"):
                done[0] = int(record.get("current", 0))
                progress(done[0], int(record["total"]))

        args = ["extract", "--numeric-ids"] + (["--progress"] if progress else [])
        self._run([*args, f"{self.location}::{archive}", *(paths or [])], cwd=dest, on_json=on_json)

    def prune(self, plan: BackupPlan, *, dry_run: bool = False) -> PruneResult:
        """``borg prune`` of ``<prefix>-*`` archives by the plan's keep rules (checkpoints go with them)."""
        if not dry_run:
            self.refuse_if_check_failed("prune")
        result = PruneResult(dry_run=dry_run)

        def on_list(text: str) -> None:
            match = _PRUNE_LINE.match(text)
            if not match:
                return
            verb, rule, name = match.groups()
            if verb.startswith("Keeping"):
                result.kept[name] = rule or "checkpoint"
            else:
                result.pruned.append(name)

        args = ["prune", "--list", f"--glob-archives={plan.archive_prefix}-*", *plan.keep_args()]
        self._run([*args, *(["--dry-run"] if dry_run else []), self.location], on_list=on_list)
        return result

    def compact(self) -> str:
        """``borg compact``: frees the space pruned archives held; returns borg's summary line."""
        self.refuse_if_check_failed("compact")
        output = self._run(["compact", "--verbose", self.location])
        return next((t for t in output.texts() if "compaction freed" in t), "")

    def check(
        self, *, repository: bool = True, last_archives: int = 0, verify_data: bool = False, max_duration: int = 0
    ) -> CheckResult:
        """``borg check``: repository segments (optionally time-boxed), archive metadata, or all data."""
        import time

        started, results = time.monotonic(), []
        runs = []
        if verify_data:
            runs.append(("all data (--verify-data)", ["check", "--verify-data", self.location]))
        else:
            if repository:
                box = [f"--max-duration={max_duration}"] if max_duration else []
                runs.append(("repository", ["check", "--repository-only", *box, self.location]))
            if last_archives:
                runs.append(
                    (
                        f"last {last_archives} archives",
                        ["check", "--archives-only", f"--last={last_archives}", self.location],
                    )
                )
        problems = []
        for what, args in runs:
            output = self._run(args, check=False)
            if output.returncode >= 2 and not output.texts("ERROR"):
                raise self.error_for(output, "check")
            if any(m.msgid == "PassphraseWrong" for m in output.messages) or any(
                "lock" in m.msgid.lower() for m in output.messages
            ):
                raise self.error_for(output, "check")
            found = output.texts("ERROR", "CRITICAL")
            if output.returncode != 0 and not found:
                found = [f"borg check exit {output.returncode}"]
            problems += [f"{what}: {p}" for p in found]
            results.append(what)
        result = CheckResult(", ".join(results), problems, time.monotonic() - started)
        self._record_check(result, verify_data)
        return result

    def _record_check(self, result: CheckResult, verify_data: bool) -> None:
        """A failure is kept until a check passes; a failed ``--verify-data`` only a passing ``--verify-data``
        lifts (the nightly check reads less than it did)."""
        failed = self.check_failure()
        if result.ok and failed and failed.get("verify_data") and not verify_data:
            return
        self.state.record_check(self.location, result.ok, result.what, result.problems, verify_data=verify_data)

    def check_failure(self) -> dict | None:
        """The recorded failed check (``since``, ``what``, ``problems``) that blocks prune and compact, or None."""
        return self.state.check_failure(self.location)

    def refuse_if_check_failed(self, command: str) -> None:
        if failed := self.check_failure():
            raise RepositoryCorrupt(
                self.location,
                f"borg check failed ({failed.get('what')}, since {failed.get('since')}): {command} is blocked "
                f"until a check passes; {'; '.join(failed.get('problems', [])[:3])}",
                "run `labpipe backup check` (or --verify-data), and restore from the off-site copy if it is damaged",
            )

    def raise_if_corrupt(self, check: CheckResult) -> None:
        if not check.ok:
            raise RepositoryCorrupt(
                self.location,
                "; ".join(check.problems[:5]),
                "do not prune; run `borg check --repair` only after copying the repository, "
                "or restore it from the off-site copy",
            )
