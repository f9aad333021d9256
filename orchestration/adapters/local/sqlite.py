"""SQLite plumbing shared by the local adapters: one short-lived connection per operation, WAL mode,
and a generous busy timeout, so several processes (the web app, the CLI, the Dagster daemon and its
run workers) can use the same database file at once."""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def connect(path: Path, *, immediate: bool = False) -> Iterator[sqlite3.Connection]:
    """A connection in a transaction that commits on success and rolls back on error.

    ``immediate=True`` takes the write lock at BEGIN, which makes read-then-write sequences (such as
    'find a visible message and lock it') atomic across processes.
    """
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()


def init_db(path: Path, schema: str) -> None:
    """Create the database if missing, owner-only (0600; SQLite gives its -wal/-shm files the same mode)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
    conn = sqlite3.connect(path, timeout=30.0)
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(schema)
        conn.commit()
    finally:
        conn.close()
