"""Local BatchQueue adapter: Service Bus semantics on a SQLite file, safe for several processes.

Every state change runs in a ``BEGIN IMMEDIATE`` transaction, so two receivers in two processes can
never lock the same message. Time comes from an injectable clock so tests can expire locks.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from orchestration.adapters.local.sqlite import connect, init_db
from orchestration.ports.queue import (
    MAX_DELIVERY_COUNT_EXCEEDED,
    DeadLetteredMessage,
    MessageLockLost,
    ReceivedMessage,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id     TEXT NOT NULL,
    body           BLOB NOT NULL,
    props          TEXT NOT NULL,
    enqueued_at    REAL NOT NULL,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    lock_token     TEXT,
    locked_until   REAL,
    state          TEXT NOT NULL DEFAULT 'active',   -- 'active' | 'deadletter'
    dl_reason      TEXT,
    dl_description TEXT,
    dl_at          REAL
);
CREATE INDEX IF NOT EXISTS messages_visible ON messages(state, locked_until, seq);
CREATE TABLE IF NOT EXISTS sent_ids (
    message_id TEXT PRIMARY KEY,
    sent_at    REAL NOT NULL
);
"""


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


class SqliteBatchQueue:
    def __init__(
        self,
        path: Path | str,
        *,
        lock_duration_seconds: float = 60.0,
        max_delivery_count: int = 10,
        duplicate_window_seconds: float = 600.0,
        on_send: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.path = Path(path)
        self.lock_duration = lock_duration_seconds
        self.max_delivery_count = max_delivery_count
        self.duplicate_window = duplicate_window_seconds
        self._on_send = on_send
        self._clock = clock
        init_db(self.path, _SCHEMA)

    # -- sending -------------------------------------------------------------------------------
    def send(self, body: bytes, *, message_id: str, application_properties: dict[str, str] | None = None) -> bool:
        if not message_id:
            raise ValueError("message_id is required (it drives duplicate detection)")
        now = self._clock()
        with connect(self.path, immediate=True) as conn:
            conn.execute("DELETE FROM sent_ids WHERE sent_at < ?", (now - self.duplicate_window,))
            if conn.execute("SELECT 1 FROM sent_ids WHERE message_id=?", (message_id,)).fetchone():
                return False
            conn.execute("INSERT INTO sent_ids(message_id, sent_at) VALUES (?, ?)", (message_id, now))
            conn.execute(
                "INSERT INTO messages(message_id, body, props, enqueued_at) VALUES (?,?,?,?)",
                (message_id, bytes(body), json.dumps(application_properties or {}), now),
            )
        if self._on_send is not None:
            self._on_send()
        return True

    # -- receiving -----------------------------------------------------------------------------
    def _expire_exhausted(self, conn, now: float) -> None:
        """Dead-letter messages whose last lock ran out after their final allowed delivery."""
        conn.execute(
            "UPDATE messages SET state='deadletter', dl_reason=?, dl_description=?, dl_at=?, "
            "lock_token=NULL, locked_until=NULL "
            "WHERE state='active' AND delivery_count >= ? AND (locked_until IS NULL OR locked_until < ?)",
            (
                MAX_DELIVERY_COUNT_EXCEEDED,
                f"Message could not be consumed after {self.max_delivery_count} delivery attempts.",
                now,
                self.max_delivery_count,
                now,
            ),
        )

    def receive(self, max_messages: int = 1, *, max_wait_seconds: float = 0.0) -> list[ReceivedMessage]:
        deadline = time.monotonic() + max_wait_seconds
        while True:
            got = self._receive_once(max_messages)
            if got or time.monotonic() >= deadline:
                return got
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def _receive_once(self, max_messages: int) -> list[ReceivedMessage]:
        now = self._clock()
        out: list[ReceivedMessage] = []
        with connect(self.path, immediate=True) as conn:
            self._expire_exhausted(conn, now)
            rows = conn.execute(
                "SELECT * FROM messages WHERE state='active' AND (locked_until IS NULL OR locked_until < ?) "
                "ORDER BY seq LIMIT ?",
                (now, max_messages),
            ).fetchall()
            for row in rows:
                token = uuid.uuid4().hex
                until = now + self.lock_duration
                conn.execute(
                    "UPDATE messages SET lock_token=?, locked_until=?, delivery_count=delivery_count+1 WHERE seq=?",
                    (token, until, row["seq"]),
                )
                out.append(
                    ReceivedMessage(
                        message_id=row["message_id"],
                        body=bytes(row["body"]),
                        sequence_number=row["seq"],
                        delivery_count=row["delivery_count"] + 1,
                        enqueued_at=_dt(row["enqueued_at"]),
                        locked_until=_dt(until),
                        lock_token=token,
                        application_properties=json.loads(row["props"]),
                    )
                )
        return out

    # -- settlement ----------------------------------------------------------------------------
    def _settle(self, message: ReceivedMessage, sql: str, params: tuple = (), *, abandoning: bool = False) -> None:
        now = self._clock()
        with connect(self.path, immediate=True) as conn:
            row = conn.execute(
                "SELECT lock_token, locked_until FROM messages WHERE seq=? AND state='active'",
                (message.sequence_number,),
            ).fetchone()
            if row is None or row["lock_token"] != message.lock_token or (row["locked_until"] or 0) < now:
                raise MessageLockLost(
                    f"lock for message {message.message_id!r} (seq {message.sequence_number}) was lost or expired"
                )
            conn.execute(sql, params + (message.sequence_number,))
            if abandoning:  # an abandoned message on its last allowed delivery goes to the DLQ now
                self._expire_exhausted(conn, now)

    def complete(self, message: ReceivedMessage) -> None:
        self._settle(message, "DELETE FROM messages WHERE seq=?")

    def abandon(self, message: ReceivedMessage) -> None:
        self._settle(message, "UPDATE messages SET lock_token=NULL, locked_until=NULL WHERE seq=?", abandoning=True)

    def dead_letter(self, message: ReceivedMessage, *, reason: str, description: str) -> None:
        if not reason:
            raise ValueError("a dead-letter reason is required")
        self._settle(
            message,
            "UPDATE messages SET state='deadletter', dl_reason=?, dl_description=?, dl_at=?, "
            "lock_token=NULL, locked_until=NULL WHERE seq=?",
            (reason[:4096], description[:4096], self._clock()),
        )

    def renew_lock(self, message: ReceivedMessage) -> ReceivedMessage:
        until = self._clock() + self.lock_duration
        self._settle(message, "UPDATE messages SET locked_until=? WHERE seq=?", (until,))
        return replace(message, locked_until=_dt(until))

    # -- operators -----------------------------------------------------------------------------
    def peek_dead_letter(self, max_messages: int = 100) -> list[DeadLetteredMessage]:
        with connect(self.path, immediate=True) as conn:
            self._expire_exhausted(conn, self._clock())
            rows = conn.execute(
                "SELECT * FROM messages WHERE state='deadletter' ORDER BY seq LIMIT ?", (max_messages,)
            ).fetchall()
        return [
            DeadLetteredMessage(
                message_id=r["message_id"],
                body=bytes(r["body"]),
                sequence_number=r["seq"],
                delivery_count=r["delivery_count"],
                enqueued_at=_dt(r["enqueued_at"]),
                dead_lettered_at=_dt(r["dl_at"]),
                reason=r["dl_reason"],
                description=r["dl_description"] or "",
                application_properties=json.loads(r["props"]),
            )
            for r in rows
        ]

    def active_message_count(self) -> int:
        with connect(self.path) as conn:
            return conn.execute("SELECT COUNT(*) FROM messages WHERE state='active'").fetchone()[0]
