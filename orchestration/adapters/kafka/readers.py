"""The two readers of the results topic: ``ResultReader`` (the whole topic: CLI, tests, benchmarks) and
``UserEventFollower`` (one user's partition: the web page).

Each assigns partitions itself instead of joining a consumer group: it needs no committed offsets and starts
at once (a group join costs seconds).
"""

from __future__ import annotations

import json
import time
from typing import Callable, Iterator

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2

from orchestration.adapters.kafka.connection import ResultStreamError


class ResultReader:
    """Reads the results topic from the beginning and yields decoded events; callers filter by batch/user.

    (Tansu answers ``end_offsets`` and ``offsets_for_times`` unreliably, so "from now" is not offered.)"""

    def __init__(self, bootstrap: str, topic: str, *, options: dict | None = None):
        self.topic = topic
        self._consumer = KafkaConsumer(
            **(options or {}),
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            client_id="imgpipe-reader",
            bootstrap_timeout_ms=10_000,
            value_deserializer=lambda b: json.loads(b.decode("utf-8")),
            key_deserializer=lambda b: b.decode("utf-8") if b is not None else None,
        )
        partitions = None
        deadline = time.monotonic() + 10
        while not partitions and time.monotonic() < deadline:
            partitions = self._consumer.partitions_for_topic(topic)
            if not partitions:
                time.sleep(0.1)
        if not partitions:
            self._consumer.close()
            raise ResultStreamError(f"topic {topic!r} does not exist on {bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        self._consumer.seek_to_beginning(*tps)

    def poll(self, timeout_seconds: float = 0.5) -> list[tuple[str | None, dict]]:
        batches = self._consumer.poll(timeout_ms=int(timeout_seconds * 1000))
        out = []
        for records in batches.values():
            out.extend((r.key, r.value) for r in records)
        return out

    def follow(
        self, until: Callable[[str | None, dict], bool], *, timeout_seconds: float
    ) -> Iterator[tuple[str | None, dict]]:
        """Yield events until ``until(key, event)`` is true for one of them (which is yielded too)."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            for key, event in self.poll(min(0.5, max(0.05, deadline - time.monotonic()))):
                yield key, event
                if until(key, event):
                    return
        raise TimeoutError(f"no matching event on {self.topic!r} within {timeout_seconds:.0f} s")

    def close(self) -> None:
        self._consumer.close()


# -- the web page's follower of one user's events ----------------------------------------------------
#
# Choice: one consumer per browser session, reading only the partition that holds the user's events.
# Events are keyed by user id and Kafka's default partitioner puts a key on ``murmur2(key) % partitions``,
# so the follower computes that partition and assigns itself just that one: it never receives another
# user's events (nothing to filter out, nothing to leak), needs no consumer group (a group join costs
# seconds on this broker) and keeps no committed offsets. What the page shows comes from the metadata
# store (the truth, which survives reloads and restarts); Kafka only says *when* to look again, and events
# are de-duplicated by ``event_id``, so a reload, a restart or a re-executed run neither loses nor doubles
# anything. When Kafka is unreachable the follower says so at once instead of hanging the page.

# When Kafka is unreachable, every new page session would wait for the bootstrap timeout again; the
# failure is remembered per process for RETRY_AFTER seconds so pages render at once meanwhile.
RETRY_AFTER = 15.0
_last_failure: dict[str, tuple[float, str]] = {}


def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key``."""
    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


class UserEventFollower:
    """Follows one user's partition from "now" (``since`` seconds since the epoch; default: the moment it
    is made, less ``SLACK`` seconds), not from the partition's start: the page reads the history from
    the metadata store, and replaying a partition that grows without bound on every new page session is
    what this avoids. "From now" is found with ``offsets_for_times`` (the local broker answers
    ``seek_to_end``/``end_offsets`` wrongly, and for a time after its last record answers offset 0 with
    timestamp -1, which is read as "none"): until some event newer than ``since`` exists there is no
    offset, so each poll asks again — one small request — and starts reading at the first one."""

    SLACK = 5.0  # events a few seconds older than the page are read too (clock skew, the page's own read)
    RECHECK_SECONDS = 10.0  # how long a quiet partition goes before asking whether its log was replaced

    def __init__(self, bootstrap: str, topic: str, user_id: str, *, options: dict | None = None,
                 timeout_ms: int = 1500, client_id: str = "imgpipe-web", since: float | None = None):
        self.user_id = user_id
        self.error: str | None = None
        self.seen: set[str] = set()
        self._consumer = None
        self._tp: TopicPartition | None = None
        self._since_ms = int(((time.time() - self.SLACK) if since is None else since) * 1000)
        self._positioned = False
        self._last: tuple[int, int] | None = None  # (offset, timestamp ms) of the last record read
        self._quiet_since = time.monotonic()
        failed = _last_failure.get(bootstrap)
        if failed and time.monotonic() - failed[0] < RETRY_AFTER:
            self.error = failed[1]
            return
        try:
            consumer = KafkaConsumer(
                **(options or {}),
                bootstrap_servers=bootstrap,
                group_id=None,
                enable_auto_commit=False,
                client_id=client_id,
                bootstrap_timeout_ms=timeout_ms,
                request_timeout_ms=5000,
                # Only when the position is gone from the log: a broker that restarted without it (the local
                # one keeps its log in memory and `imgpipe dev` publishes the recent events again). From the
                # start of the new log, nothing published after the restart is skipped; what was seen
                # already is dropped by id. (Kafka's default, "latest", would skip what came meanwhile.)
                auto_offset_reset="earliest",
                value_deserializer=lambda b: json.loads(b.decode("utf-8")),
            )
            partitions = sorted(consumer.partitions_for_topic(topic) or [])
            if not partitions:
                consumer.close()
                self.error = f"the results topic {topic!r} does not exist yet"
                return
            tp = TopicPartition(topic, partitions[partition_for(user_id, len(partitions))])
            consumer.assign([tp])
            self._consumer, self._tp = consumer, tp
            self._position()
        except (KafkaError, OSError, ValueError) as exc:
            self.error = f"live updates are unavailable: Kafka at {bootstrap} is not reachable ({exc})"
            _last_failure[bootstrap] = (time.monotonic(), self.error)

    @property
    def connected(self) -> bool:
        return self._consumer is not None

    def poll(self, timeout_ms: int = 200) -> list[dict]:
        """New events of this user (each event once), without blocking the page for long."""
        if self._consumer is None:
            return []
        try:
            if not self._positioned and not self._position():
                return []  # nothing newer than `since` yet
            batches = self._consumer.poll(timeout_ms=timeout_ms)
            if not batches and time.monotonic() - self._quiet_since > self.RECHECK_SECONDS:
                self._quiet_since = time.monotonic()
                self._reread_if_log_replaced()
        except (KafkaError, OSError) as exc:
            self.error = f"live updates interrupted: {exc}"
            return []
        fresh = []
        for records in batches.values():
            for r in records:
                self._last, self._quiet_since = (r.offset, r.timestamp), time.monotonic()
                event = r.value
                if r.timestamp < self._since_ms:  # the broker answers per record batch: older neighbours
                    continue
                if event.get("user_id") != self.user_id or event.get("event_id") in self.seen:
                    continue
                self.seen.add(event.get("event_id"))
                fresh.append(event)
        return fresh

    def _reread_if_log_replaced(self) -> None:
        """A broker that lost its log (the local one keeps it in memory; `imgpipe dev` then publishes the
        recent events again) numbers its new records from 0 and answers nothing at our old position until
        the new log grows past it, so events published meanwhile would be skipped. If the last record read is
        no longer where it was, read the new log from its start: what was seen is dropped by id, what is
        older than the page by time."""
        if self._last is None:
            return
        offset, timestamp = self._last
        found = self._consumer.offsets_for_times({self._tp: timestamp}).get(self._tp)
        if found is not None and found.timestamp == timestamp and found.offset <= offset:
            return  # still there: the partition is just quiet
        self._consumer.seek_to_beginning(self._tp)
        self._last = None

    def _position(self) -> bool:
        offset = self._consumer.offsets_for_times({self._tp: self._since_ms}).get(self._tp)
        if offset is None or offset.timestamp < 0:  # Kafka: None; the local broker: offset 0, timestamp -1
            return False
        self._consumer.seek(self._tp, offset.offset)
        self._positioned = True
        return True

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
