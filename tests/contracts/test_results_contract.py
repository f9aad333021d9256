"""Contract of the ResultStream port against a real Kafka broker (Tansu)."""

from __future__ import annotations

import pytest

from orchestration.adapters.kafka.producer import KafkaResultStream
from orchestration.adapters.kafka.readers import ResultReader
from orchestration.adapters.kafka.connection import ResultStreamError
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


def test_a_page_follower_starts_from_now_not_from_the_partition_start(kafka_bootstrap, kafka_topic):
    """A new page session reads only events newer than itself (the store holds the history): older events
    of the user are not replayed, newer ones arrive — also when the partition had nothing new at first."""
    import time

    from orchestration.adapters.kafka.producer import KafkaResultStream
    from orchestration.adapters.kafka.readers import UserEventFollower

    stream = KafkaResultStream(kafka_bootstrap, kafka_topic)
    try:
        for n in range(30):
            stream.publish("u-old", {"event_id": f"old-{n}", "user_id": "u-old", "type": "image.processed"})
        stream.flush()
        time.sleep(0.05)
        follower = UserEventFollower(kafka_bootstrap, kafka_topic, "u-old", since=time.time())
        try:
            assert follower.poll(timeout_ms=1000) == []  # nothing newer yet: no replay of the 30 old ones
            stream.publish("u-old", {"event_id": "new-1", "user_id": "u-old", "type": "batch.completed"})
            stream.flush()
            got = []
            for _ in range(20):
                got += follower.poll(timeout_ms=300)
                if got:
                    break
            assert [e["event_id"] for e in got] == ["new-1"]
        finally:
            follower.close()
    finally:
        stream.close()
