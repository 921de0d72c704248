"""Shared fixtures: an isolated $LABPIPE_HOME, one Prefect test server, and real databases.

Databases: the embedded PostgreSQL (always), plus the PostgreSQL and MariaDB
servers of this machine kind (127.0.0.1:5432 and :3306) where they answer;
a backend that is absent is skipped with the reason. Each test gets its own
schema prefix and its schemas are dropped afterwards.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

SERVER_URLS = {
    "postgres": os.environ.get("LABPIPE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    "mariadb": os.environ.get("LABPIPE_TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306"),
}
# DataJoint 2.3.5 on MariaDB 10.11: hash-addressed store attributes (<blob@store>) fail on insert with
# "TypeError: dict can not be used as parameter" (the store metadata dict is handed to PyMySQL unserialised).
# <npy@store> (schema-addressed), in-row <blob>, plain tables and the jobs tables work: labpipe uses <npy@blobs>.
MARIADB_STORE_BUG = "DataJoint 2.3.5 cannot insert <blob@store> attributes on MariaDB (dict passed to PyMySQL)"


def pytest_configure(config):
    # The embedded PostgreSQL runs as the user 'pgserver' when tests run as root, so it must traverse
    # the temp folders; pytest resets /tmp/pytest-of-<user> to 0700 at every session start (and removes
    # old sessions' folders), which breaks a server of a concurrent session. Use a folder of our own.
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        parent = Path(os.environ.get("LABPIPE_TEST_TMP", "/tmp/labpipe-tests"))
        parent.mkdir(parents=True, exist_ok=True)
        for old in parent.iterdir():  # folders of finished sessions
            if old.name.isdigit() and not Path(f"/proc/{old.name}").exists():
                shutil.rmtree(old, ignore_errors=True)
        config.option.basetemp = parent / str(os.getpid())
    if hasattr(config, "workerinput"):  # one of `make test`'s two pytest-xdist workers: one thread each for
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")  # torch and BLAS, or two workers fight over two cores


TESTS = Path(__file__).parent
_SHARED_SCOPE = re.compile(r"scope=\"(session|package)\"")


@functools.cache
def _sharing_folder(folder: Path) -> Path | None:
    """The topmost folder at or above ``folder`` (below tests/) whose conftest.py holds a session or package fixture."""
    if folder == TESTS or TESTS not in folder.parents:
        return None
    conftest = folder / "conftest.py"
    shares = conftest.exists() and _SHARED_SCOPE.search(conftest.read_text()) is not None
    return _sharing_folder(folder.parent) or (folder if shares else None)


def pytest_xdist_make_scheduler(config, log):
    """`make test`'s two workers (pytest -n 2) take whole work units: a module (its module fixtures built once), or
    every test under a folder whose conftest shares a session or package fixture (the simulated lab, a trained
    model: built once, and never two simulated labs at a time). xdist's own `--dist loadgroup` marks do not work
    with pytest 9.2 (xdist 3.8 renames `item._nodeid`, which pytest no longer reads), so the units are made here."""
    from xdist.scheduler import LoadScopeScheduling

    class FolderScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = TESTS.parent / nodeid.split("::", 1)[0]
            return str((_sharing_folder(path.parent) or path).relative_to(TESTS))

    return FolderScheduling(config, log)


@pytest.fixture(scope="session", autouse=True)
def no_embedded_postgres_left(tmp_path_factory):
    """At the session's end, stop every embedded PostgreSQL started under its temp folder: a CLI call or a flow
    run that resolves the default database starts one in $LABPIPE_HOME, and it outlives its process by design
    (labpipe.db.embedded), so without this it kept running after the suite."""
    yield
    from labpipe.db.embedded import EmbeddedPostgres

    for pid_file in tmp_path_factory.getbasetemp().rglob("postmaster.pid"):
        EmbeddedPostgres(pid_file.parent).stop()


@pytest.fixture(scope="session", autouse=True)
def labpipe_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("labpipe-home")
    os.environ["LABPIPE_HOME"] = str(home)
    os.environ["MPLCONFIGDIR"] = str(home / "mpl")
    return home


@pytest.fixture(scope="session", autouse=True)
def prefect_server(labpipe_home):
    """One temporary Prefect server (SQLite) for the whole session, as Prefect's own tests do."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def embedded_target(tmp_path_factory):
    from labpipe.db.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg"))
    target = server.start()
    yield target
    server.stop()


def _open(target, blobs: Path):
    from labpipe.db.connect import LabDatabase

    return LabDatabase(target, blobs, prefix=f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
def lab_db(embedded_target, tmp_path):
    """A LabDatabase on the embedded PostgreSQL with a fresh schema prefix."""
    db = _open(embedded_target, tmp_path / "blobs")
    yield db
    db.drop_all()


def server_target(backend: str):
    from labpipe.db.target import DatabaseTarget

    target = DatabaseTarget.from_url(SERVER_URLS[backend])
    if not target.reachable():
        pytest.skip(f"no {backend} server answers at {target.url} on this machine")
    return target


@pytest.fixture(params=["embedded", "postgres", "mariadb"])
def any_db(request, tmp_path):
    """The same test on every backend: embedded PostgreSQL, PostgreSQL server, MariaDB server."""
    target = request.getfixturevalue("embedded_target") if request.param == "embedded" else server_target(request.param)
    db = _open(target, tmp_path / "blobs")
    db.backend_name = request.param
    yield db
    db.drop_all()
