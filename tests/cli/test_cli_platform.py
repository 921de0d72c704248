"""The `labpipe` console script's own behaviour, as a real process: errors, exit codes, `--version`, `status`."""

import json
import os
import socket
import subprocess
import sys
from importlib.metadata import version

import pytest


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def labpipe(tmp_path, *args, **env):
    """``labpipe *args`` in a subprocess with its own LABPIPE_HOME; nothing answers on the Prefect port."""
    port = _closed_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LABPIPE_"))}
    base.update(
        LABPIPE_HOME=str(tmp_path / "home"),
        LABPIPE_PREFECT_PORT=str(port),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        COLUMNS="300",
    )
    return subprocess.run(
        [sys.executable, "-m", "labpipe.cli", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("command", [["radio", "groups"], ["ingest", "jobs"], ["mei", "status"]], ids=" ".join)
def test_a_labpipe_error_is_two_lines_and_exit_2_in_any_command(tmp_path, command):
    """These commands raise the database's DatabaseError without catching it; the entry point reports it."""
    dead = f"postgresql://lab@127.0.0.1:{_closed_port()}/lab"
    result = labpipe(tmp_path, *command, LABPIPE_DATABASE_URL=dead)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"error: {dead}: cannot connect"), result.stderr
    assert [line for line in lines if line.startswith("hint: ")] == ["hint: check LABPIPE_DATABASE_URL"]
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    dead = f"postgresql://lab@127.0.0.1:{_closed_port()}/lab"
    result = labpipe(tmp_path, "--debug", "ingest", "jobs", LABPIPE_DATABASE_URL=dead)
    assert result.returncode != 0 and "Traceback" in result.stderr and "DatabaseError" in result.stderr


def test_a_server_that_does_not_answer_is_named_with_a_hint(tmp_path):
    """A command whose Prefect client meets a refused connection (httpx.ConnectError) gets the two lines too."""
    result = labpipe(tmp_path, "config", "export", "-")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: http://127.0.0.1:") and "does not answer" in result.stderr
    assert "\nhint: is the Prefect server up?" in result.stderr and "Traceback" not in result.stderr


def test_status_exits_3_with_a_hint_when_no_server_answers(tmp_path):
    text = labpipe(tmp_path, "status")
    assert text.returncode == 3 and text.stdout == ""
    assert text.stderr.splitlines()[0].endswith("/api: no Prefect server answers")
    assert text.stderr.splitlines()[1].startswith("hint: start the platform with `labpipe up`")
    as_json = labpipe(tmp_path, "status", "--json")
    assert as_json.returncode == 3
    data = json.loads(as_json.stdout)
    assert data["error"] == "no Prefect server answers" and "not running at" in data["server"] and data["hint"]


def test_status_tells_a_server_that_listens_but_does_not_answer_from_none(tmp_path):
    """A busy server (here: a socket that accepts and never replies) is waited for, then named as not answering."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = str(silent.getsockname()[1])
        as_json = labpipe(tmp_path, "status", "--json", "--wait", "2", LABPIPE_PREFECT_PORT=port)
    assert as_json.returncode == 3, as_json.stderr
    data = json.loads(as_json.stdout)
    assert "not answering at" in data["server"] and "has not answered within 2 s" in data["error"]


def test_version(tmp_path):
    result = labpipe(tmp_path, "--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"labpipe {version('labpipe')} (prefect {version('prefect')},")
