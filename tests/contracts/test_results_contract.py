"""Contract of the ResultStream port against a real Kafka broker (Tansu)."""

from __future__ import annotations

import pytest

from orchestration.adapters.kafka_results import KafkaResultStream, ResultReader, ResultStreamError
from orchestration.ports.results import ResultStream


def test_publish_keyed_events_and_read_back_in_per_key_order(kafka_bootstrap, kafka_topic):
    stream = KafkaResultStream(kafka_bootstrap, kafka_topic)
    assert isinstance(stream, ResultStream)
    for i in range(10):
        stream.publish(f"user{i % 3}", {"event_id": f"e{i}", "type": "image.processed", "i": i})
    stream.flush()
    stream.close()
    reader = ResultReader(kafka_bootstrap, kafka_topic)
    got = []
    try:
        for key, event in reader.follow(lambda k, e: len(got) >= 10, timeout_seconds=20):
            got.append((key, event))
    finally:
        reader.close()
    assert sorted(e["i"] for _, e in got) == list(range(10))
    for user in ("user0", "user1", "user2"):
        ordered = [e["i"] for k, e in got if k == user]
        assert ordered == sorted(ordered) and ordered  # per-key order holds
    assert all(int(k[-1]) == e["i"] % 3 for k, e in got)


def test_unreachable_broker_is_a_clear_error():
    with pytest.raises(ResultStreamError, match="127.0.0.1:1"):
        stream = KafkaResultStream("127.0.0.1:1", "nothing")
        stream.publish("u", {"event_id": "x"})
        stream.flush(timeout_seconds=3)
