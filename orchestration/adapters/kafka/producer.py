"""The Kafka adapter of the ResultStream port: where results leave for the user's page.

Producer settings: acks=all, retries with idempotence where the broker supports it, JSON values, UTF-8 keys
(the user id, so each user's events keep their order in one partition).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from kafka import KafkaProducer
from kafka.errors import KafkaError

from orchestration.adapters.kafka.connection import ResultStreamError


class KafkaResultStream:
    """The producer connects on first use (not on construction), so a process can hold this client from
    start-up and a broker outage fails only the step that publishes; a later publish tries again."""

    def __init__(self, bootstrap: str, topic: str, *, client_id: str = "imgpipe-results", options: dict | None = None):
        self.topic = topic
        self.bootstrap = bootstrap
        self._client_id = client_id
        self._options = options or {}
        self._producer = None
        self._pending: list = []

    def _get_producer(self) -> KafkaProducer:
        if self._producer is not None:
            return self._producer
        try:
            self._producer = KafkaProducer(
                **self._options,
                bootstrap_servers=self.bootstrap,
                client_id=self._client_id,
                acks="all",
                retries=5,
                linger_ms=5,
                enable_idempotence=True,  # broker-side dedupe of producer retries
                max_block_ms=10_000,
                request_timeout_ms=10_000,
                delivery_timeout_ms=30_000,
                bootstrap_timeout_ms=10_000,  # a dead broker is reported in 10 s, not 30
                key_serializer=lambda k: k.encode("utf-8"),
                value_serializer=lambda v: json.dumps(v, sort_keys=True, default=str).encode("utf-8"),
            )
        except KafkaError as exc:
            raise ResultStreamError(f"Kafka broker at {self.bootstrap} is not reachable: {exc}") from exc
        return self._producer

    def publish(self, key: str, event: Mapping[str, Any]) -> None:
        headers = [("event_type", str(event.get("type", "")).encode()), ("event_id", str(event.get("event_id", "")).encode())]
        self._pending.append(self._get_producer().send(self.topic, key=key, value=dict(event), headers=headers))

    def flush(self, timeout_seconds: float = 30.0) -> None:
        if self._producer is None:
            return
        pending, self._pending = self._pending, []
        try:
            self._producer.flush(timeout=timeout_seconds)
            for future in pending:
                future.get(timeout=timeout_seconds)
        except KafkaError as exc:
            # Start over with a new producer on the next publish. An idempotent producer's id and sequence
            # numbers live on the broker: one that lost its state (a restarted broker without its log, as
            # the local one) answers UnknownProducerId to every later send of the old producer for good.
            self._reset()
            raise ResultStreamError(f"publishing to {self.topic!r} on {self.bootstrap} failed: {exc}") from exc

    def _reset(self) -> None:
        producer, self._producer = self._producer, None
        try:
            producer.close(timeout=1)
        except Exception:  # noqa: BLE001 - it already failed; closing is best effort
            pass

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None


