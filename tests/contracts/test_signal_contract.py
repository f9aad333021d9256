"""Contract of the Signal port (Event Grid notifications), run against every adapter."""

from orchestration.ports.signal import Signal
from tests.support.ports import signature_mismatches


def test_adapter_implements_every_method_of_the_port_with_its_signature(signal):
    assert isinstance(signal, Signal)
    assert signature_mismatches(signal, Signal) == []


def test_drain_counts_and_consumes_notifications(signal):
    assert signal.drain() == 0
    for _ in range(3):
        signal.notify()
    assert signal.drain() == 3
    assert signal.drain() == 0


def test_queue_send_raises_the_signal(make_queue, signal):
    q = make_queue(on_send=signal.notify)
    q.send(b"m", message_id="a")
    q.send(b"m", message_id="b")
    assert signal.drain() == 2
