"""``NAME_FILE`` -> ``NAME``: secrets live in 0600 files that the environment file only names.

``python -m labpipe.lab.secretenv PROGRAM ARGS...`` reads each secret variable's file, puts its content
in the environment and execs the program (the systemd units and the simulated lab start every service
this way); ``labpipe`` itself does the same at start. Only the variables in ``SECRET_VARIABLES`` are
read, and a file that others may read is refused, so a secret never sits in a world-readable file nor
in a unit, an environment file or a command line.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import MutableMapping
from pathlib import Path

from labpipe.errors import ConfigError

SECRET_VARIABLES = (
    "PREFECT_API_AUTH_STRING",  # clients: user:password of the Prefect API's basic auth
    "PREFECT_SERVER_API_AUTH_STRING",  # the server: the same string
    "PREFECT_SERVER_DATABASE_CONNECTION_URL",  # the server's PostgreSQL, with its password
    "LABPIPE_DATABASE_URL",  # the lab database, with its password
    "LABPIPE_PREFECT_DATABASE_URL",
)


def read_secret_file(path: Path, variable: str) -> str:
    """The secret in ``path`` (one line; a trailing newline is dropped), refused if others may read it."""
    try:
        info = path.stat()
        text = path.read_text()
    except OSError as exc:
        subject = f"{variable}_FILE={path}"
        raise ConfigError(subject, f"cannot be read: {exc.strerror}", "create it (mode 0600)") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{variable}_FILE={path}", "is not a regular file", "point it at the secret's file")
    if info.st_mode & 0o077:
        raise ConfigError(
            f"{variable}_FILE={path}",
            f"may be read by others (mode {stat.S_IMODE(info.st_mode):04o})",
            f"chmod 600 {path}",
        )
    secret = text.rstrip("\r\n")
    if not secret or "\n" in secret:
        raise ConfigError(f"{variable}_FILE={path}", "must hold the secret on one line", "write it without blank lines")
    return secret


def resolve_secret_files(environ: MutableMapping[str, str]) -> list[str]:
    """Set each ``NAME`` whose ``NAME_FILE`` is set from that file and drop ``NAME_FILE``; returns the names set.

    Dropping it makes resolving idempotent: a ``labpipe`` command started by a service (or a flow run of a
    worker) that was resolved already finds ``NAME`` alone.
    """
    resolved = []
    for name in SECRET_VARIABLES:
        file = environ.get(f"{name}_FILE")
        if not file:
            continue
        if environ.get(name):
            raise ConfigError(name, f"is set and so is {name}_FILE", f"keep only {name}_FILE (the secret's file)")
        environ[name] = read_secret_file(Path(file), name)
        del environ[f"{name}_FILE"]
        resolved.append(name)
    return resolved


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        sys.exit("usage: python -m labpipe.lab.secretenv PROGRAM [ARGS...]")
    try:
        resolve_secret_files(os.environ)
    except ConfigError as error:
        print(f"error: {error.subject}: {error.problem}\nhint: {error.hint}", file=sys.stderr)
        sys.exit(2)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
