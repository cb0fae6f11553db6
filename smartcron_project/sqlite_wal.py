"""SQLite (the embedded default): WAL checkpoints off the commit path.

In WAL mode SQLite copies the log back into the database file ("checkpoint") inside
whichever commit pushes the log past ``wal_autocheckpoint`` pages.  Recording one
finished run writes about 20 pages, so with the default (1,000 pages) one run in ~50
paid a ~20 ms write-back and fsync inside its own commit: the recording p99.

Here every process that opens the database runs one daemon thread that makes a PASSIVE
checkpoint every ``SMARTCRON_SQLITE_CHECKPOINT_SECONDS`` (0.5 s) on a connection of its
own.  A passive checkpoint never waits for readers or writers, and writers go on
appending to the log while it copies, so commits no longer carry it.  The automatic
checkpoint stays as a safety net at a much larger size (``wal_autocheckpoint`` in the
connection's PRAGMAs, see settings), so the log stays bounded even if no thread ran.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time

log = logging.getLogger(__name__)

_started: dict[str, int] = {}  # database path -> pid of the process whose thread runs
_lock = threading.Lock()


def _loop(path: str, every_s: float) -> None:
    conn = None
    while True:
        time.sleep(every_s)
        if not os.path.exists(path):  # the database is gone (a test's, a reset): nothing to copy, ever
            if conn is not None:
                conn.close()
            return
        try:
            if conn is None:
                conn = sqlite3.connect(path, timeout=0.1, check_same_thread=False)
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # busy, locked, gone: the next round (or the safety net) copies it
            log.debug("WAL checkpoint of %s skipped: %s", path, exc)
            if conn is not None:
                conn.close()
                conn = None


def on_connection_created(sender=None, connection=None, **_kwargs) -> None:
    """``connection_created`` receiver: start this process's checkpoint thread once."""
    from django.conf import settings

    if connection is None or connection.vendor != "sqlite":
        return
    every_s = float(getattr(settings, "SQLITE_CHECKPOINT_SECONDS", 0) or 0)
    path = str(connection.settings_dict.get("NAME") or "")
    if every_s <= 0 or not path or path == ":memory:" or path.startswith("file:"):
        return
    with _lock:
        if _started.get(path) == os.getpid():  # a forked child has no thread: it starts its own
            return
        _started[path] = os.getpid()
    threading.Thread(target=_loop, args=(path, every_s), name="smartcron-sqlite-checkpoint", daemon=True).start()
