"""Enter a user's session: join its cgroup, become the session account for good, exec the user's command.

The VM client runs this as root with ``python -I -m labpipe.vms.session_exec
--uid U --gid G --groups G1,G2 [--cgroup DIR] -- PROGRAM ARG...``: ``-I`` keeps the session
folder (the working directory) and the environment out of Python's import path.
Order matters: the cgroup is joined while still root (only root may move a
process there), then supplementary groups, gid and uid are dropped (uid last,
so the others can still be changed), a return to root is checked impossible,
``no_new_privs`` stops setuid programs (sudo, su) from raising privileges again,
and the user's argument list is exec'd as is: no shell ever parses it.
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_NO_NEW_PRIVS = 38
EXIT_CANNOT_ENTER, EXIT_NOT_FOUND, EXIT_CANNOT_RUN = 125, 127, 126


def _fail(message: str, code: int = EXIT_CANNOT_ENTER) -> int:
    sys.stderr.write(f"labpipe session: {message}\n")
    sys.stderr.flush()
    return code


def _no_new_privileges() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")


def parse(argv: list[str]) -> tuple[int, int, list[int], str | None, list[str]]:
    """(uid, gid, supplementary groups, cgroup folder or None, the user's command) from this module's arguments."""
    if "--" not in argv:
        raise ValueError("usage: --uid U --gid G [--groups G1,G2] [--cgroup DIR] -- PROGRAM [ARG...]")
    cut = argv.index("--")
    options, command = argv[:cut], argv[cut + 1 :]
    if len(options) % 2 or not command:
        raise ValueError("options come in pairs and a program must follow --")
    pairs = dict(zip(options[::2], options[1::2], strict=True))
    unknown = set(pairs) - {"--uid", "--gid", "--groups", "--cgroup"}
    if unknown or "--uid" not in pairs or "--gid" not in pairs:
        raise ValueError(f"need --uid and --gid; unknown options {sorted(unknown)}")
    groups = [int(g) for g in pairs.get("--groups", "").split(",") if g]
    return int(pairs["--uid"]), int(pairs["--gid"]), groups, pairs.get("--cgroup"), command


def main(argv: list[str] | None = None) -> int:
    try:
        uid, gid, groups, cgroup, command = parse(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        return _fail(str(exc))
    if uid == 0 or gid == 0 or 0 in groups:
        return _fail("refusing to run a session as root or in root's group")
    try:
        if cgroup is not None:
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
                procs.write(str(os.getpid()))
        os.setgroups(groups)
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        _no_new_privileges()
    except OSError as exc:
        return _fail(f"cannot enter the session: {exc}")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        return _fail("could return to root after dropping privileges; refusing to run")
    if 0 in os.getresuid() or 0 in os.getresgid():
        return _fail("still holds uid or gid 0; refusing to run")
    os.umask(0o077)
    try:
        os.execvp(command[0], command)
    except FileNotFoundError:
        return _fail(f"no program {command[0]!r} on PATH {os.environ.get('PATH', '')}", EXIT_NOT_FOUND)
    except OSError as exc:
        return _fail(f"cannot run {command[0]!r}: {exc.strerror or exc}", EXIT_CANNOT_RUN)
    return EXIT_CANNOT_RUN  # not reached: exec replaced this process


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
