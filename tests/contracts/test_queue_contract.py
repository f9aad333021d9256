"""Contract of the BatchQueue port (Service Bus semantics), run against every adapter."""

from __future__ import annotations

import multiprocessing

import pytest

from orchestration.ports.queue import MAX_DELIVERY_COUNT_EXCEEDED, BatchQueue, MessageLockLost
from tests.support.ports import signature_mismatches


def test_adapter_implements_every_method_of_the_port_with_its_signature(make_queue):
    assert isinstance(make_queue(), BatchQueue)
    assert signature_mismatches(make_queue(), BatchQueue) == []


def test_send_receive_complete(make_queue):
    q = make_queue()
    assert q.send(b'{"x":1}', message_id="m1", application_properties={"user_id": "alice"}) is True
    assert q.active_message_count() == 1
    [msg] = q.receive()
    assert (msg.message_id, msg.body, msg.delivery_count) == ("m1", b'{"x":1}', 1)
    assert msg.application_properties == {"user_id": "alice"}
    q.complete(msg)
    assert q.receive() == []
    assert q.active_message_count() == 0


def test_fifo_order(make_queue):
    q = make_queue()
    for i in range(5):
        q.send(str(i).encode(), message_id=f"m{i}")
    got = q.receive(max_messages=10)
    assert [m.message_id for m in got] == [f"m{i}" for i in range(5)]


def test_duplicate_message_id_dropped_inside_window_only(make_queue, clock):
    q = make_queue(duplicate_window_seconds=600)
    assert q.send(b"a", message_id="same") is True
    assert q.send(b"b", message_id="same") is False
    assert [m.body for m in q.receive(max_messages=10)] == [b"a"]
    clock.advance(seconds=601)
    assert q.send(b"c", message_id="same") is True


def test_peek_lock_hides_message_until_lock_expires(make_queue, clock):
    q = make_queue(lock_duration_seconds=30)
    q.send(b"a", message_id="m1")
    [first] = q.receive()
    assert q.receive() == []  # locked
    clock.advance(seconds=31)
    [again] = q.receive()
    assert again.message_id == "m1" and again.delivery_count == 2
    with pytest.raises(MessageLockLost):
        q.complete(first)  # the old lock is gone
    q.complete(again)


def test_settling_after_lock_expiry_raises_lock_lost(make_queue, clock):
    q = make_queue(lock_duration_seconds=10)
    q.send(b"a", message_id="m1")
    [msg] = q.receive()
    clock.advance(seconds=11)
    with pytest.raises(MessageLockLost):
        q.complete(msg)


def test_renew_lock_extends(make_queue, clock):
    q = make_queue(lock_duration_seconds=10)
    q.send(b"a", message_id="m1")
    [msg] = q.receive()
    clock.advance(seconds=8)
    renewed = q.renew_lock(msg)
    assert renewed.locked_until > msg.locked_until
    clock.advance(seconds=8)
    assert q.receive() == []
    q.complete(renewed)


def test_abandon_makes_visible_again_and_counts_delivery(make_queue):
    q = make_queue()
    q.send(b"a", message_id="m1")
    [msg] = q.receive()
    q.abandon(msg)
    [again] = q.receive()
    assert again.delivery_count == 2


def test_dead_letter_with_reason_and_description(make_queue):
    q = make_queue()
    q.send(b"broken", message_id="m1")
    [msg] = q.receive()
    q.dead_letter(msg, reason="InvalidManifest", description="field 'user_id' missing")
    assert q.receive() == []
    [dl] = q.peek_dead_letter()
    assert (dl.message_id, dl.reason, dl.description, dl.body) == ("m1", "InvalidManifest", "field 'user_id' missing", b"broken")
    assert q.active_message_count() == 0


def test_max_delivery_count_dead_letters_automatically(make_queue, clock):
    q = make_queue(max_delivery_count=3, lock_duration_seconds=5)
    q.send(b"poison", message_id="m1")
    for attempt in range(1, 4):
        [msg] = q.receive()
        assert msg.delivery_count == attempt
        if attempt < 3:
            q.abandon(msg)
        else:
            clock.advance(seconds=6)  # the last delivery's lock simply runs out
    assert q.receive() == []
    [dl] = q.peek_dead_letter()
    assert dl.reason == MAX_DELIVERY_COUNT_EXCEEDED and dl.delivery_count == 3
    assert "3" in dl.description


def test_on_send_hook_fires_for_accepted_messages_only(make_queue):
    calls = []
    q = make_queue(on_send=lambda: calls.append(1))
    q.send(b"a", message_id="m1")
    q.send(b"a", message_id="m1")
    assert calls == [1]


def _receiver(path: str, out, n: int) -> None:
    from orchestration.adapters.local.queue import SqliteBatchQueue

    q = SqliteBatchQueue(path, lock_duration_seconds=300)
    got = []
    while True:
        msgs = q.receive(max_messages=3)
        if not msgs:
            break
        for m in msgs:
            got.append(m.message_id)
            q.complete(m)
    out.put(got)


def test_local_queue_is_safe_across_processes(tmp_path):
    """Four processes drain one SQLite queue: every message is delivered to exactly one of them."""
    from orchestration.adapters.local.queue import SqliteBatchQueue

    path = tmp_path / "q.sqlite"
    q = SqliteBatchQueue(path)
    for i in range(200):
        q.send(b"x", message_id=f"m{i}")
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_receiver, args=(str(path), out, 200)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    everything = [m for r in results for m in r]
    assert sorted(everything) == sorted(f"m{i}" for i in range(200))
    assert len(set(everything)) == 200


def test_settles_a_message_in_a_later_sensor_tick(make_queue, tmp_path):
    """The batch sensor receives a message in one tick and completes it in the next (the run exists only
    after the tick returns), through the process's one queue client. On Service Bus that works only if
    both ticks use the receiver that received the message."""
    from datetime import datetime, timezone

    from dagster import build_sensor_context, instance_for_test
    from tests.support.dagster_internals import create_run_for_test

    from orchestration.adapters.local.metadata import SqliteMetadataStore
    from orchestration.adapters.local.signal import FileSignal
    from orchestration.domain.manifest import BatchManifest, ManifestImage
    from sensors.batch_sensor import evaluate_batch_sensor

    batch_id = "b-20261125-120000-0123abcd"
    manifest = BatchManifest(batch_id=batch_id, user_id="alice", created_at=datetime.now(timezone.utc),
                             images=[ManifestImage(image_id="i0001", name="a.jpg", size=1, sniffed_type="image/jpeg")])
    q = make_queue()
    q.send(manifest.model_dump_json().encode(), message_id=batch_id)
    signal, metadata = FileSignal(tmp_path / "signals"), SqliteMetadataStore(tmp_path / "metadata.sqlite")
    signal.notify()
    with instance_for_test() as instance:
        first = evaluate_batch_sensor(build_sensor_context(instance=instance), q, signal, metadata,
                                      safety_poll_seconds=30)
        assert [r.run_key for r in first.run_requests] == [batch_id]
        assert q.active_message_count() == 1  # not settled before the run exists
        create_run_for_test(instance, job_name="process_batch", tags={"dagster/run_key": batch_id})
        second = evaluate_batch_sensor(build_sensor_context(instance=instance, cursor=first.cursor), q, signal,
                                       metadata, safety_poll_seconds=30)
    assert second.run_requests == []
    assert q.active_message_count() == 0  # completed in the second tick, not left to redeliver
    assert q.receive() == [] and q.peek_dead_letter() == []


def test_another_client_cannot_settle_but_the_message_is_not_lost(make_queue, clock):
    """A message received by one client (a code server that then restarted) either settles through a new
    client (the local queue keeps locks in its database) or raises MessageLockLost (Service Bus: the lock
    belongs to the receiver); either way it is completed exactly once, at the latest after redelivery."""
    first_client, second_client = make_queue(lock_duration_seconds=30), make_queue(lock_duration_seconds=30)
    first_client.send(b"a", message_id="m1")
    [msg] = first_client.receive()
    try:
        second_client.complete(msg)
    except MessageLockLost:
        clock.advance(seconds=31)
        [again] = second_client.receive()
        assert again.message_id == "m1" and again.delivery_count == 2
        second_client.complete(again)
    assert second_client.active_message_count() == 0 and second_client.peek_dead_letter() == []
