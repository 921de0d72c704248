"""Database dump hooks (``labpipe.backup.dumps``), with real SQLite and the embedded PostgreSQL."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time

import pytest


def test_sqlite_dump_is_a_consistent_snapshot_of_a_database_being_written(tmp_path):
    from labpipe.backup.dumps import dump_sqlite, verify_dump

    live = tmp_path / "state" / "ingest.sqlite3"
    live.parent.mkdir()
    conn = sqlite3.connect(live)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE queue (id INTEGER PRIMARY KEY, group_id TEXT, payload BLOB)")
    conn.commit()
    stop = threading.Event()

    def writer() -> None:
        db = sqlite3.connect(live, timeout=30)
        i = 0
        while not stop.is_set():
            db.execute("INSERT INTO queue (group_id, payload) VALUES (?, ?)", (f"g{i}", b"x" * 2000))
            db.execute("UPDATE queue SET group_id = group_id || '.' WHERE id = ?", (i // 2 + 1,))
            db.commit()
            i += 1
        db.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.3)
        dumps = [dump_sqlite(live, tmp_path / "dumps", "ingest") for _ in range(2)]
    finally:
        stop.set()
        thread.join()
    for path in dumps:
        verify_dump(path)  # integrity_check of the copy
        copy = sqlite3.connect(path)
        count, largest = copy.execute("SELECT count(*), max(id) FROM queue").fetchone()
        copy.close()
        assert count == largest > 0  # every committed row up to one instant, none half-written
    assert dumps[0].name.startswith("sqlite-ingest-") and dumps[0].suffix == ".sqlite3"
    with pytest.raises(Exception, match="not found"):
        dump_sqlite(tmp_path / "missing.sqlite3", tmp_path / "dumps", "missing")


def test_lab_database_dump_reads_back(lab_db, tmp_path):
    from labpipe.backup.dumps import timed_dump, verify_dump
    from labpipe.backup.schema import tables
    from labpipe.db.connect import dump_lab_database

    tables(lab_db).BackupRun.insert1(
        dict(run_id="a" * 32, started=dt.datetime.now(), status="running", repository="/r")
    )
    result = timed_dump("lab", lambda: dump_lab_database(lab_db, tmp_path / "dumps"))
    assert result.ok and result.path.name.endswith(".pgdump") and len(result.sha256) == 64
    verify_dump(result.path)
    result.path.write_bytes(result.path.read_bytes()[:200])
    with pytest.raises(Exception, match="pg_restore"):
        verify_dump(result.path)
    failed = timed_dump("broken", lambda: (_ for _ in ()).throw(OSError("server gone")))
    assert not failed.ok and "server gone" in failed.error


def test_dump_retention_removes_only_old_dumps_a_proven_backup_holds(tmp_path):
    from labpipe.backup.dumps import prune_dumps

    dumps = tmp_path / "dumps"
    dumps.mkdir()
    now = dt.datetime(2026, 3, 1, 3, 0)
    names = []
    for days in (1, 10, 20, 30, 40):
        stamp = (now - dt.timedelta(days=days)).strftime("%Y%m%dT%H%M%S")
        for label in ("postgresql-labpipe", "sqlite-prefect"):
            names.append(f"{label}-{stamp}.{'pgdump' if label.startswith('postgresql') else 'sqlite3'}")
            (dumps / names[-1]).write_bytes(b"dump")
    (dumps / "notes.txt").write_text("not a dump")
    unproven = {n for n in names if "sqlite-prefect" in n and "20260130" in n}  # 30 days old, never proven
    deleted = prune_dumps(dumps, keep_days=14, keep_last=3, backed_up=lambda n: n not in unproven, now=now)
    # per database: the 3 newest stay (1, 10, 20 days); of the older ones, only proven ones go
    assert sorted(p.name for p in deleted) == sorted(
        n for n in names if ("20260130" in n or "20260120" in n) and n not in unproven
    )
    assert (dumps / "notes.txt").exists() and all((dumps / n).exists() for n in unproven)
