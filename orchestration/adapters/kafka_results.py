"""Kafka adapter of the ResultStream port (kafka-python), plus the two readers: ``ResultReader`` (the
whole topic: CLI, tests, benchmarks) and ``UserEventFollower`` (one user's partition: the web page).

Producer settings: acks=all, retries with idempotence where the broker supports it, JSON values,
UTF-8 keys (the user id). The reader assigns every partition of the topic itself instead of joining a
consumer group: it needs no committed offsets and starts at once (a group join costs seconds).
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterator, Mapping

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.partitioner.default import murmur2


class ResultStreamError(RuntimeError):
    pass


def eventhubs_bootstrap(connection_string: str) -> str:
    """``<namespace>.servicebus.windows.net:9093`` from an Event Hubs connection string."""
    parts = dict(p.split("=", 1) for p in connection_string.strip().strip(";").split(";") if "=" in p)
    endpoint = parts.get("Endpoint", "")
    host = endpoint.removeprefix("sb://").strip("/")
    if not host:
        raise ResultStreamError("the Event Hubs connection string has no Endpoint=sb://<namespace>.servicebus.windows.net/")
    return f"{host}:9093"


def client_options(security: str = "plaintext", *, eventhubs_connection_string: str | None = None,
                   username: str | None = None, password: str | None = None) -> dict:
    """kafka-python settings for each kind of cluster:
    - ``plaintext``: a plain Kafka cluster (Tansu locally and in tests);
    - ``eventhubs``: Azure Event Hubs' Kafka endpoint — SASL_SSL with the PLAIN mechanism, user
      ``$ConnectionString`` and the namespace (or event hub) connection string as password;
    - ``sasl_ssl``: another managed Kafka with SASL/PLAIN user and password."""
    if security == "plaintext":
        return {"security_protocol": "PLAINTEXT"}
    if security == "eventhubs":
        if not eventhubs_connection_string:
            raise ResultStreamError("IMGPIPE_EVENTHUBS_CONNECTION_STRING is required for IMGPIPE_KAFKA_SECURITY=eventhubs")
        return {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
                "sasl_plain_username": "$ConnectionString", "sasl_plain_password": eventhubs_connection_string}
    if security == "sasl_ssl":
        if not (username and password):
            raise ResultStreamError("IMGPIPE_KAFKA_USERNAME and IMGPIPE_KAFKA_PASSWORD are required for sasl_ssl")
        return {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
                "sasl_plain_username": username, "sasl_plain_password": password}
    raise ResultStreamError(f"unknown Kafka security {security!r} (plaintext, eventhubs, sasl_ssl)")


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
