"""SQLite's WAL is copied back by a background thread, not inside commits."""

import os
import sqlite3
import threading
from types import SimpleNamespace

from smartcron_project import sqlite_wal
from tests.helpers import wait_for


def test_the_background_thread_checkpoints_what_commits_left_in_the_log(tmp_path):
    path = str(tmp_path / "wal.sqlite3")
    conn = sqlite3.connect(path)
    conn.executescript("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t (x BLOB);")
    conn.commit()
    for _ in range(50):
        conn.execute("INSERT INTO t VALUES (?)", (os.urandom(8000),))
        conn.commit()
    before = os.path.getsize(path)
    assert os.path.getsize(path + "-wal") > 400_000 and before < 100_000  # all of it still in the log
    threading.Thread(target=sqlite_wal._loop, args=(path, 0.05), daemon=True).start()
    wait_for(lambda: os.path.getsize(path) > 400_000, 5, message="the log copied into the database file")
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (50,)


def test_one_thread_per_process_and_only_for_sqlite_files(tmp_path, settings, monkeypatch):
    started = []
    monkeypatch.setattr(sqlite_wal.threading, "Thread",
                        lambda **kw: SimpleNamespace(start=lambda: started.append(kw["args"][0])))
    monkeypatch.setattr(sqlite_wal, "_started", {})
    settings.SQLITE_CHECKPOINT_SECONDS = 0.5

    def created(vendor, name):
        sqlite_wal.on_connection_created(connection=SimpleNamespace(vendor=vendor, settings_dict={"NAME": name}))

    db = str(tmp_path / "a.sqlite3")
    created("sqlite", db)
    created("sqlite", db)  # a second connection (another thread) of the same process
    created("sqlite", ":memory:")
    created("mysql", "smartcron")
    assert started == [db]
    monkeypatch.setattr(sqlite_wal, "_started", {db: os.getpid() + 1})  # as seen by a forked child
    created("sqlite", db)
    assert started == [db, db]
    settings.SQLITE_CHECKPOINT_SECONDS = 0
    created("sqlite", str(tmp_path / "b.sqlite3"))
    assert started == [db, db]
