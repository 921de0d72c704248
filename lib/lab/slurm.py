"""A one-node SLURM cluster on this machine: Debian's ``munged``, ``slurmctld`` and ``slurmd``, all on loopback.

What a facility runs, shrunk to one node so labpipe's Dask steps can be shown starting their workers as SLURM
jobs (``dask-jobqueue``). The node is this machine, with its real CPUs and memory (``slurmd -C``); munged has its
own key and socket; slurm.conf, state, spool, logs and pid files all live in one folder (``root``), so the
machine's own ``/etc/slurm`` and ``/etc/munge`` are never read or written. Client commands (``sbatch``,
``squeue``) find this cluster through ``SLURM_CONF`` (``env()``), which names the munge socket too.

Used alone (``LabSlurm(folder).up()``, the e2e test) or by the simulated lab (``labpipe lab simulate up --slurm``:
the same daemons in the main host's namespace, on its loopback). ``down`` cancels every job, stops the daemons,
ends what is left that carries this cluster's ``SLURM_CONF`` and deletes the folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from labpipe.errors import ConfigError, ToolError
from labpipe.lab.certs import write_private
from labpipe.procs import pid_alive, wait_until

PARTITION = "lab"
DAEMONS = ("munged", "slurmctld", "slurmd")
PACKAGES = {"munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd", "sbatch": "slurm-client"}


def slurm_tool(name: str) -> str:
    """The path of one of Debian's munge/SLURM programs, or ToolError naming the package."""
    path = shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        raise ToolError(name, "is not installed", f"apt-get install {PACKAGES.get(name, 'slurm-wlm')}")
    return path


def missing_slurm() -> str | None:
    """None when this machine can start a one-node SLURM, else why not (a test's skip reason)."""
    if os.geteuid() != 0:
        return "a one-node SLURM needs root (slurmd starts jobs as their owner)"
    for name in (*DAEMONS, "sbatch", "squeue"):
        if not shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin"):
            package = PACKAGES.get(name, "slurm-client")
            return f"{name} is not installed (apt-get install {package}; infra/apt-packages.txt)"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def node_line() -> str:
    """This machine as slurmd sees it: ``CPUs=.. Boards=.. ... RealMemory=..`` (without its name)."""
    result = subprocess.run([slurm_tool("slurmd"), "-C"], capture_output=True, text=True, timeout=60)
    first = result.stdout.splitlines()[0] if result.stdout else ""
    if result.returncode != 0 or not first.startswith("NodeName="):
        raise ToolError("slurmd -C", f"did not describe this machine: {(result.stdout + result.stderr)[-500:]}")
    return first.split(" ", 1)[1]


class LabSlurm:
    """One-node SLURM kept in ``root``; ``wrap`` turns a command into one run on the host (``nsenter --net`` into a
    lab namespace: give ``up`` its ports); None: this process's network, ports chosen free on its loopback."""

    def __init__(self, root: Path, wrap: Callable[[list[str]], list[str]] | None = None, name: str = "labpipe") -> None:
        self.root = root
        self.wrap = wrap or (lambda argv: argv)
        self.cluster = name
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.logs = root / "log"
        self.node = socket.gethostname().split(".")[0]  # slurmctld insists on its own host name
        self._children: dict[str, subprocess.Popen] = {}

    def env(self) -> dict[str, str]:
        """What a client (sbatch, squeue, dask-jobqueue) needs to reach this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def _pidfile(self, daemon: str) -> Path:
        return self.root / "run" / f"{daemon}.pid"

    def pid(self, daemon: str) -> int | None:
        try:
            pid = int(self._pidfile(daemon).read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    # --- bring-up ------------------------------------------------------------------------------------

    def up(self, timeout: float = 60.0, ports: tuple[int, int] | None = None) -> float:
        """Start munged, slurmctld and slurmd; returns seconds until the node is idle. Tears down on failure."""
        if self.conf.exists():
            raise ConfigError(self.root, "a SLURM cluster is up here already", "`down` it first")
        for name in (*DAEMONS, "sbatch"):
            slurm_tool(name)
        started = time.monotonic()
        try:
            for folder in ("munge", "state", "spool", "log", "run"):
                (self.root / folder).mkdir(mode=0o700, parents=True, exist_ok=True)
            self.root.chmod(0o711)
            ctld_port, slurmd_port = ports or (free_port(), free_port())
            self._write_conf(ctld_port, slurmd_port)
            write_private(self.root / "munge" / "munge.key", os.urandom(1024))
            self._start(
                "munged",
                [slurm_tool("munged"), "--foreground", "--force", f"--socket={self.munge_socket}"]
                + [f"--key-file={self.root / 'munge' / 'munge.key'}", f"--seed-file={self.root / 'munge' / 'seed'}"]
                + [f"--pid-file={self.root / 'munge' / 'munged.pid'}", f"--log-file={self.logs / 'munged.log'}"],
            )
            self._wait("munged", lambda: self.munge_socket.exists(), timeout)
            self._start("slurmctld", [slurm_tool("slurmctld"), "-D", "-i", "-f", str(self.conf)])
            self._wait("slurmctld", lambda: self._scontrol("ping").returncode == 0, timeout)
            self._start("slurmd", [slurm_tool("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)])
            self._wait("slurmd (node idle)", lambda: "idle" in self.node_state(), timeout)
        except BaseException:
            self.down()
            raise
        return round(time.monotonic() - started, 2)

    def _write_conf(self, ctld_port: int, slurmd_port: int) -> None:
        root = self.root
        self.conf.write_text(
            "# the simulated lab's one-node SLURM (labpipe.lab.slurm); everything below lives in this folder\n"
            f"ClusterName={self.cluster}\n"
            f"SlurmctldHost={self.node}(127.0.0.1)\n"
            f"SlurmctldPort={ctld_port}\nSlurmdPort={slurmd_port}\n"
            "SlurmUser=root\nSlurmdUser=root\n"
            f"AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={self.munge_socket}\n"
            f"StateSaveLocation={root / 'state'}\nSlurmdSpoolDir={root / 'spool'}\n"
            f"SlurmctldPidFile={self._pidfile('slurmctld.daemon')}\nSlurmdPidFile={self._pidfile('slurmd.daemon')}\n"
            f"SlurmctldLogFile={self.logs / 'slurmctld.log'}\nSlurmdLogFile={self.logs / 'slurmd.log'}\n"
            # no cgroups (a container may not delegate them), no accounting daemon: a record of finished jobs in
            # a text file instead of sacct
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\n"
            "AccountingStorageType=accounting_storage/none\n"
            f"JobCompType=jobcomp/filetxt\nJobCompLoc={self.logs / 'jobs.txt'}\n"
            "SchedulerType=sched/backfill\nSelectType=select/cons_tres\nSelectTypeParameters=CR_Core_Memory\n"
            "MpiDefault=none\nReturnToService=2\nSchedulerParameters=sched_interval=2\n"
            # bind what the host name resolves to (loopback here), not every address: nothing on a wildcard
            "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny\n"
            "SlurmctldTimeout=30\nSlurmdTimeout=30\nInactiveLimit=0\nKillWait=5\nMinJobAge=60\n"
            f"NodeName={self.node} NodeAddr=127.0.0.1 {node_line()} State=UNKNOWN\n"
            f"PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP\n"
        )

    def _start(self, daemon: str, argv: list[str]) -> None:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", **self.env()}
        env["LABPIPE_SLURM"] = str(self.root)  # marks the daemons and their job steps (``_ours``)
        with open(self.logs / f"{daemon}.out", "ab") as log:
            child = subprocess.Popen(
                self.wrap(argv), env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        self._pidfile(daemon).write_text(f"{child.pid}\n")
        self._children[daemon] = child

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float) -> None:
        def check() -> bool:
            for daemon, child in self._children.items():
                if child.poll() is not None:
                    raise ToolError(daemon, f"exited with {child.returncode}", f"see {self.logs}/{daemon}.*")
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                return ready()
            return False

        if not wait_until(check, timeout, 0.3):
            raise ToolError(what, f"not ready within {timeout:.0f} s", f"see the logs in {self.logs}")

    # --- queries ---------------------------------------------------------------------------------------

    def client(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
        """A SLURM client command (sbatch, squeue, sinfo, ...) against this cluster."""
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", **self.env()}
        return subprocess.run(self.wrap(argv), env=env, capture_output=True, text=True, timeout=timeout)

    def _scontrol(self, *args: str) -> subprocess.CompletedProcess:
        return self.client([slurm_tool("scontrol"), *args])

    def node_state(self) -> str:
        result = self.client([slurm_tool("sinfo"), "-h", "-N", "-o", "%T"])
        return result.stdout.strip().lower() if result.returncode == 0 else ""

    def jobs(self) -> list[dict[str, str]]:
        """squeue's jobs: id, name, state, node."""
        result = self.client([slurm_tool("squeue"), "-h", "-o", "%i|%j|%T|%N"])
        fields = ("id", "name", "state", "node")
        return [dict(zip(fields, line.split("|"), strict=True)) for line in result.stdout.split()]

    def finished_jobs(self) -> list[dict[str, str]]:
        """The jobs that ended, from the job completion file (``JobId=.. JobName=.. JobState=..`` per line)."""
        path = self.logs / "jobs.txt"
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            fields = dict(word.split("=", 1) for word in line.split() if "=" in word)
            rows.append({"id": fields.get("JobId"), "name": fields.get("Name"), "state": fields.get("JobState")})
        return rows

    # --- teardown ----------------------------------------------------------------------------------------

    def _ours(self) -> list[int]:
        """Processes of this cluster: its daemons and their job steps (started with ``LABPIPE_SLURM``) and its
        jobs (``SLURM_JOB_ID`` beside its ``SLURM_CONF``; a submit host's own processes have no job id)."""
        daemon = f"LABPIPE_SLURM={self.root}".encode()
        conf = f"SLURM_CONF={self.conf}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                env = set((entry / "environ").read_bytes().split(b"\0"))
                is_job = conf in env and any(v.startswith(b"SLURM_JOB_ID=") for v in env)
                if (daemon in env or is_job) and pid_alive(int(entry.name)):
                    found.append(int(entry.name))
        return found

    def down(self) -> dict:
        """Cancel every job, stop the daemons, end whatever of this cluster is left, delete the folder."""
        stopped: list[str] = []
        if self.pid("slurmctld"):
            self.client([slurm_tool("scancel"), "--full", f"--partition={PARTITION}"])
            wait_until(lambda: not self.jobs(), 20)
        for daemon in ("slurmd", "slurmctld", "munged"):
            pid = self.pid(daemon)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)
                wait_until(lambda p=pid: not pid_alive(p), 15)
                stopped.append(daemon)
        killed = []
        for sig in (signal.SIGTERM, signal.SIGKILL):
            left = self._ours()
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            killed += left
            if not left or wait_until(lambda: not self._ours(), 10):
                break
        for child in self._children.values():
            child.poll()
        existed = self.root.exists()
        shutil.rmtree(self.root, ignore_errors=True)
        return {"stopped": stopped, "killed": sorted(set(killed)), "folder_removed": existed}
