"""Live results for one user from the Kafka results topic.

Choice: one consumer per browser session, reading only the partition that holds the user's events.
Events are keyed by user id and Kafka's default partitioner puts a key on ``murmur2(key) % partitions``,
so the session computes that partition and assigns itself just that one: it never receives another
user's events (nothing to filter out, nothing to leak), needs no consumer group (a group join costs
seconds on this broker) and keeps no committed offsets. What the page shows comes from the metadata
store (the truth, which survives reloads and restarts); Kafka only says *when* to look again, and events
are de-duplicated by ``event_id``, so a reload, a restart or a re-executed run neither loses nor doubles
anything. When Kafka is unreachable the follower says so at once instead of hanging the page.
"""

from __future__ import annotations

import json
import time

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2

from orchestration.settings import Settings
from orchestration.wiring import kafka_options


# When Kafka is unreachable, every new page session would wait for the bootstrap timeout again; the
# failure is remembered per process for RETRY_AFTER seconds so pages render at once meanwhile.
RETRY_AFTER = 15.0
_last_failure: dict[str, tuple[float, str]] = {}


def partition_for(key: str, partitions: int) -> int:
    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


class UserEvents:
    def __init__(self, settings: Settings, user_id: str, *, timeout_ms: int = 1500):
        self.user_id = user_id
        self.error: str | None = None
        self.seen: set[str] = set()
        self._consumer = None
        failed = _last_failure.get(settings.kafka_bootstrap)
        if failed and time.monotonic() - failed[0] < RETRY_AFTER:
            self.error = failed[1]
            return
        try:
            consumer = KafkaConsumer(
                **kafka_options(settings),
                bootstrap_servers=settings.kafka_bootstrap,
                group_id=None,
                enable_auto_commit=False,
                client_id=f"imgpipe-web-{user_id[:40]}",
                bootstrap_timeout_ms=timeout_ms,
                request_timeout_ms=5000,
                value_deserializer=lambda b: json.loads(b.decode("utf-8")),
            )
            partitions = sorted(consumer.partitions_for_topic(settings.kafka_topic) or [])
            if not partitions:
                consumer.close()
                self.error = f"the results topic {settings.kafka_topic!r} does not exist yet"
                return
            tp = TopicPartition(settings.kafka_topic, partitions[partition_for(user_id, len(partitions))])
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            self._consumer = consumer
        except (KafkaError, OSError, ValueError) as exc:
            self.error = f"live updates are unavailable: Kafka at {settings.kafka_bootstrap} is not reachable ({exc})"
            _last_failure[settings.kafka_bootstrap] = (time.monotonic(), self.error)

    @property
    def connected(self) -> bool:
        return self._consumer is not None

    def poll(self, timeout_ms: int = 200) -> list[dict]:
        """New events of this user (each event once), without blocking the page for long."""
        if self._consumer is None:
            return []
        try:
            batches = self._consumer.poll(timeout_ms=timeout_ms)
        except (KafkaError, OSError) as exc:
            self.error = f"live updates interrupted: {exc}"
            return []
        fresh = []
        for records in batches.values():
            for r in records:
                event = r.value
                if event.get("user_id") != self.user_id or event.get("event_id") in self.seen:
                    continue
                self.seen.add(event.get("event_id"))
                fresh.append(event)
        return fresh

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
