"""The `labpipe` command as users run it: a real process on the test's database."""

import os
import subprocess
import sys

import pytest


@pytest.fixture
def labpipe_cli(lab_db):
    """``labpipe_cli(home, *args)`` runs ``labpipe *args`` in a subprocess against ``lab_db``; no Prefect server."""

    def run(home, *args):
        env = dict(os.environ)
        env.update(
            LABPIPE_HOME=str(home),
            LABPIPE_DATABASE_URL=lab_db.target.url,
            LABPIPE_SCHEMA_PREFIX=lab_db.prefix,
            PREFECT_API_URL="http://127.0.0.1:9/api",
            COLUMNS="300",  # rich wraps error boxes at the terminal width
        )
        return subprocess.run(
            [sys.executable, "-m", "labpipe.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    return run
