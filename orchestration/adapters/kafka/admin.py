"""Topic administration: the results topic, created when missing."""

from __future__ import annotations

import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from orchestration.adapters.kafka.connection import ResultStreamError


def ensure_topic(bootstrap: str, topic: str, *, partitions: int = 3, timeout_seconds: float = 15.0) -> None:
    """Create the results topic if it is missing (keyed by user, so partitions keep each user's order)."""
    deadline = time.monotonic() + timeout_seconds
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="imgpipe-admin", request_timeout_ms=5000)
            try:
                if topic in admin.list_topics():
                    return
                admin.create_topics([NewTopic(name=topic, num_partitions=partitions, replication_factor=1)])
                return
            except TopicAlreadyExistsError:
                return
            finally:
                admin.close()
        except KafkaError as exc:  # broker still starting
            last = exc
            time.sleep(0.2)
    raise ResultStreamError(f"could not create Kafka topic {topic!r} on {bootstrap}: {last}")


