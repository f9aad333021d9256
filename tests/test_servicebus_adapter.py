"""The Service Bus adapter at the SDK boundary. No Service Bus server runs here (its SDK always does a CBS
token exchange no local broker answers; the official emulator needs Docker), so these tests drive the
adapter through stand-ins of the SDK's client, sender and receivers and check what it sends to the SDK
and how it maps what comes back. The shared contract suite runs against a real namespace when
SERVICEBUS_CONNECTION_STRING is set (tests/contracts)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from azure.servicebus import ServiceBusReceiveMode, ServiceBusSubQueue
from azure.servicebus.exceptions import MessageLockLostError

from orchestration.adapters.azure.servicebus import ServiceBusQueue
from orchestration.ports.queue import MessageLockLost

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


class SdkMessage:
    """The attributes of azure.servicebus.ServiceBusReceivedMessage the adapter reads."""

    def __init__(self, seq, body=b'{"x": 1}', **kw):
        self.message_id = kw.get("message_id", f"m{seq}")
        self.body = iter([body[:3], body[3:]])  # data sections, as the SDK yields them
        self.sequence_number = seq
        self.delivery_count = kw.get("delivery_count", 1)
        self.enqueued_time_utc = NOW
        self.locked_until_utc = NOW + timedelta(seconds=60)
        self.lock_token = f"token-{seq}"
        self.application_properties = {b"user_id": b"alice"}
        self.dead_letter_reason = kw.get("dead_letter_reason")
        self.dead_letter_error_description = kw.get("dead_letter_error_description")


class Receiver:
    def __init__(self, messages=(), fail_with=None):
        self.messages, self.fail_with, self.calls = list(messages), fail_with, []

    def receive_messages(self, max_message_count, max_wait_time):
        self.calls.append(("receive", max_message_count, max_wait_time))
        out, self.messages = self.messages[:max_message_count], self.messages[max_message_count:]
        return out

    def _settle(self, name, msg, **kw):
        self.calls.append((name, msg.lock_token, kw))
        if self.fail_with:
            raise self.fail_with
        return NOW + timedelta(minutes=5) if name == "renew" else None

    def complete_message(self, msg):
        return self._settle("complete", msg)

    def abandon_message(self, msg):
        return self._settle("abandon", msg)

    def dead_letter_message(self, msg, reason=None, error_description=None):
        return self._settle("dead_letter", msg, reason=reason, error_description=error_description)

    def renew_message_lock(self, msg):
        return self._settle("renew", msg)

    def peek_messages(self, max_message_count):
        self.calls.append(("peek", max_message_count))
        return self.messages[:max_message_count]

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


class Client:
    def __init__(self, receiver, dlq=None):
        self.receiver, self.dlq, self.sent, self.receiver_args = receiver, dlq, [], []

    def get_queue_sender(self, queue):
        client = self

        class Sender:
            def send_messages(self, msg):
                client.sent.append((queue, msg))

        return Sender()

    def get_queue_receiver(self, queue, **kw):
        self.receiver_args.append((queue, kw))
        return self.dlq if kw.get("sub_queue") == ServiceBusSubQueue.DEAD_LETTER else self.receiver


def test_send_sets_message_id_properties_and_content_type():
    client = Client(Receiver())
    q = ServiceBusQueue(client, "batches")
    assert q.send(b'{"batch_id": "b1"}', message_id="b1", application_properties={"user_id": "alice"}) is True
    [(queue, msg)] = client.sent
    assert queue == "batches" and msg.message_id == "b1" and msg.content_type == "application/json"
    assert msg.application_properties == {"user_id": "alice"} and b"".join(msg.body) == b'{"batch_id": "b1"}'
    with pytest.raises(ValueError):
        q.send(b"x", message_id="")


def test_receive_uses_peek_lock_and_maps_the_message():
    receiver = Receiver([SdkMessage(7, delivery_count=3)])
    client = Client(receiver)
    [m] = ServiceBusQueue(client, "batches").receive(max_messages=5)
    assert client.receiver_args[0] == ("batches", {"receive_mode": ServiceBusReceiveMode.PEEK_LOCK, "prefetch_count": 0})
    assert receiver.calls[0] == ("receive", 5, 0.5)
    assert (m.message_id, m.body, m.sequence_number, m.delivery_count) == ("m7", b'{"x": 1}', 7, 3)
    assert m.lock_token == "token-7" and m.locked_until == NOW + timedelta(seconds=60)
    assert m.application_properties == {"user_id": "alice"}


@pytest.mark.parametrize("action,expected", [
    (lambda q, m: q.complete(m), ("complete", "token-1", {})),
    (lambda q, m: q.abandon(m), ("abandon", "token-1", {})),
    (lambda q, m: q.dead_letter(m, reason="InvalidManifest", description="user_id missing"),
     ("dead_letter", "token-1", {"reason": "InvalidManifest", "error_description": "user_id missing"})),
])
def test_settlement_goes_to_the_receiver_that_received(action, expected):
    receiver = Receiver([SdkMessage(1)])
    q = ServiceBusQueue(Client(receiver), "batches")
    [m] = q.receive()
    action(q, m)
    assert receiver.calls[-1] == expected
    with pytest.raises(MessageLockLost):  # settled once; a second settlement has no lock
        q.complete(m)


def test_renew_lock_returns_the_new_expiry_and_keeps_the_message():
    receiver = Receiver([SdkMessage(1)])
    q = ServiceBusQueue(Client(receiver), "batches")
    [m] = q.receive()
    renewed = q.renew_lock(m)
    assert renewed.locked_until == NOW + timedelta(minutes=5)
    q.complete(renewed)
    assert [c[0] for c in receiver.calls] == ["receive", "renew", "complete"]


def test_lock_lost_from_the_sdk_becomes_message_lock_lost():
    receiver = Receiver([SdkMessage(1)], fail_with=MessageLockLostError(message="lock expired"))
    q = ServiceBusQueue(Client(receiver), "batches")
    [m] = q.receive()
    with pytest.raises(MessageLockLost, match="expired"):
        q.complete(m)


def test_unknown_lock_token_is_lock_lost_not_a_crash():
    """A sensor tick that settles a message received by an earlier process: the redelivery path applies."""
    q = ServiceBusQueue(Client(Receiver()), "batches")
    from orchestration.ports.queue import ReceivedMessage

    stranger = ReceivedMessage("m9", b"", 9, 1, NOW, NOW, "token-from-another-process")
    with pytest.raises(MessageLockLost, match="not received by this receiver"):
        q.complete(stranger)


def test_peek_dead_letter_reads_reason_and_description_from_the_sub_queue():
    dlq = Receiver([SdkMessage(4, dead_letter_reason="MaxDeliveryCountExceeded",
                               dead_letter_error_description="Message could not be consumed after 10 delivery attempts.")])
    client = Client(Receiver(), dlq=dlq)
    [d] = ServiceBusQueue(client, "batches").peek_dead_letter(10)
    assert client.receiver_args[-1] == ("batches", {"sub_queue": ServiceBusSubQueue.DEAD_LETTER})
    assert (d.message_id, d.reason) == ("m4", "MaxDeliveryCountExceeded") and "10 delivery" in d.description
    assert dlq.calls == [("peek", 10)]  # peeked, never settled


# -- the batch sensor on Service Bus, across ticks, through the real resources -----------------------

AZURE = dict(profile="azure", servicebus_connection_string="Endpoint=sb://double.invalid/;SharedAccessKeyName=k;"
             "SharedAccessKey=not-a-secret", storage_account_url="https://acct.blob.core.windows.net",
             cosmos_endpoint="https://acct.documents.azure.com:443/")


def test_sensor_completes_in_the_next_tick_through_the_receiver_that_received(monkeypatch, tmp_path):
    """The daemon evaluates the sensor once per tick, building its resources each time. On Service Bus the
    message received in tick 1 can only be completed (tick 2, once the run exists) by the receiver that
    received it: the queue resource must hand every tick the process's one client. With a new client per
    tick the completion fails, the message stays locked and is delivered a second time after its lock."""
    from dagster import build_sensor_context, instance_for_test
    from tests.support.dagster_internals import create_run_for_test

    from orchestration.definitions import process_batch_job
    from orchestration.domain.manifest import BatchManifest, ManifestImage
    from orchestration.resources import resources_from_settings
    from orchestration.settings import load_settings
    from orchestration.wiring import CLIENTS
    from sensors.batch_sensor import build_batch_sensor
    from tests.servicebus_double import FakeNamespace, install

    ns = FakeNamespace()
    install(monkeypatch, ns)
    azure, local = load_settings(data_dir=tmp_path, **AZURE), load_settings(data_dir=tmp_path)
    on_azure, on_local = resources_from_settings(azure), resources_from_settings(local)
    resources = {"queue": on_azure["queue"], "signal": on_local["signal"], "metadata": on_local["metadata"]}
    sensor = build_batch_sensor(process_batch_job, settings=local)

    batch_id = "b-20261125-120000-0123abcd"
    manifest = BatchManifest(batch_id=batch_id, user_id="alice", created_at=NOW,
                             images=[ManifestImage(image_id="i0001", name="a.jpg", size=1, sniffed_type="image/jpeg")])
    CLIENTS.queue(azure).send(manifest.model_dump_json().encode(), message_id=batch_id)  # intake, same process
    CLIENTS.signal(local).notify()
    try:
        with instance_for_test() as instance:
            with build_sensor_context(instance=instance, resources=resources) as ctx:
                first = sensor(ctx)
            assert [r.run_key for r in first.run_requests] == [batch_id]
            create_run_for_test(instance, job_name="process_batch", tags={"dagster/run_key": batch_id})
            for _ in range(2):  # the completing tick, and an idle one after it
                with build_sensor_context(instance=instance, cursor=first.cursor, resources=resources) as ctx:
                    first = sensor(ctx)
        queue = ns.queues["batches"]
        assert queue.active == [] and queue.dead == []  # completed once, in the tick after the run appeared
        assert ns.clients_created == 1 and ns.receivers_created == 1  # one client and receiver for all ticks
    finally:
        CLIENTS.close_all()
    assert ns.open_links == 0  # closed at teardown of the process's clients
