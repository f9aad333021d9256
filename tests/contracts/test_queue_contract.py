"""Contract of the BatchQueue port (Service Bus semantics), run against every adapter."""

from __future__ import annotations

import multiprocessing

import pytest

from orchestration.ports.queue import MAX_DELIVERY_COUNT_EXCEEDED, BatchQueue, MessageLockLost


def test_adapter_implements_port(make_queue):
    assert isinstance(make_queue(), BatchQueue)


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
    from orchestration.adapters.local_queue import SqliteBatchQueue

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
    from orchestration.adapters.local_queue import SqliteBatchQueue

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
