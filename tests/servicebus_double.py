"""A test double of the azure-servicebus SDK's sync client that enforces the rules of the real service.

No Service Bus server runs here (the SDK always does a CBS token exchange that no local broker answers;
the official emulator needs Docker and SQL Edge), so the adapter is tested at the SDK boundary. This
double stands in for ``ServiceBusClient`` / ``ServiceBusAdministrationClient`` with exactly the surface the
adapter uses, and keeps the rules the adapter must live with:

- peek-lock: a received message is invisible until settled or until its lock (the queue's lock duration)
  expires; each delivery counts; after ``max_delivery_count`` deliveries the message is moved to the
  dead-letter sub-queue with reason ``MaxDeliveryCountExceeded``;
- **a message settles only through the receiver that received it** — another receiver's attempt fails
  with ``MessageLockLostError`` ("the lock supplied is invalid"), the service's answer to a lock token of
  another link; a closed receiver refuses with ``ValueError`` (the SDK's own check); a message settles
  once (``MessageAlreadySettled``); an expired lock is ``MessageLockLostError``;
- duplicate detection drops a repeated ``message_id`` inside the window silently;
- every client, sender and receiver is counted while open, so tests can see leaks.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from azure.servicebus import ServiceBusReceiveMode, ServiceBusSubQueue
from azure.servicebus.exceptions import MessageAlreadySettled, MessageLockLostError

LOCK_INVALID = ("The lock supplied is invalid. Either the lock expired, or the message has already been removed "
                "from the queue, or was received by a different receiver instance.")


@dataclass
class _Stored:
    message_id: str
    body: bytes
    application_properties: dict
    sequence_number: int
    enqueued_time_utc: datetime
    delivery_count: int = 0
    locked_until_utc: datetime | None = None
    lock_token: str | None = None
    locked_by: Any = None
    dead_letter_reason: str | None = None
    dead_letter_error_description: str | None = None


class _ReceivedMessage:
    """What ``ServiceBusReceivedMessage`` offers the adapter (a snapshot of one delivery)."""

    def __init__(self, stored: _Stored, receiver: Any, *, peeked: bool = False):
        self._stored, self._receiver, self._settled, self._peeked = stored, receiver, False, peeked
        self.message_id = stored.message_id
        self.body = iter([stored.body])  # the SDK yields data sections
        self.sequence_number = stored.sequence_number
        self.delivery_count = stored.delivery_count
        self.enqueued_time_utc = stored.enqueued_time_utc
        self.locked_until_utc = stored.locked_until_utc
        self.lock_token = stored.lock_token
        self.application_properties = {k.encode(): str(v).encode() for k, v in stored.application_properties.items()}
        self.dead_letter_reason = stored.dead_letter_reason
        self.dead_letter_error_description = stored.dead_letter_error_description


@dataclass
class FakeQueue:
    lock_duration: timedelta = timedelta(seconds=60)
    max_delivery_count: int = 10
    duplicate_window: timedelta = timedelta(minutes=10)
    active: list[_Stored] = field(default_factory=list)
    dead: list[_Stored] = field(default_factory=list)
    seen_ids: dict[str, datetime] = field(default_factory=dict)


class FakeNamespace:
    """One Service Bus namespace: its queues, a clock, and counters of open links."""

    def __init__(self, clock: Callable[[], datetime] | None = None):
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.queues: dict[str, FakeQueue] = {}
        self._seq = itertools.count(1)
        self.clients_created = 0
        self.receivers_created = 0
        self.open_links = 0

    def queue(self, name: str, **properties) -> FakeQueue:
        if name not in self.queues:
            self.queues[name] = FakeQueue(**properties)
        return self.queues[name]

    def client(self) -> "FakeServiceBusClient":
        return FakeServiceBusClient(self)

    # the service side ---------------------------------------------------------------------------

    def _expire_locks(self, q: FakeQueue) -> None:
        now = self.clock()
        for m in list(q.active):
            if m.locked_by is not None and m.locked_until_utc <= now:
                m.locked_by, m.lock_token = None, None
                if m.delivery_count >= q.max_delivery_count:
                    self._dead_letter(q, m, "MaxDeliveryCountExceeded",
                                      f"Message could not be consumed after {q.max_delivery_count} delivery attempts.")

    def _dead_letter(self, q: FakeQueue, m: _Stored, reason: str, description: str) -> None:
        q.active.remove(m)
        m.locked_by, m.lock_token = None, None
        m.dead_letter_reason, m.dead_letter_error_description = reason, description
        q.dead.append(m)

    def send(self, name: str, message: Any) -> None:
        q = self.queue(name)
        now = self.clock()
        mid = message.message_id
        if mid in q.seen_ids and now - q.seen_ids[mid] < q.duplicate_window:
            return  # duplicate detection: dropped without telling the sender
        q.seen_ids[mid] = now
        body = b"".join(bytes(part) for part in message.body)
        q.active.append(_Stored(mid, body, dict(message.application_properties or {}), next(self._seq), now))

    def receive(self, name: str, receiver: Any, max_count: int) -> list[_ReceivedMessage]:
        q = self.queue(name)
        self._expire_locks(q)
        out = []
        for m in list(q.active):
            if len(out) >= max_count:
                break
            if m.locked_by is not None:
                continue
            m.delivery_count += 1
            m.locked_by, m.lock_token = receiver, str(uuid.uuid4())
            m.locked_until_utc = self.clock() + q.lock_duration
            out.append(_ReceivedMessage(m, receiver))
        return out

    def settle(self, name: str, receiver: Any, msg: _ReceivedMessage, action: str, **kw) -> Any:
        q = self.queue(name)
        if msg._peeked:
            raise ValueError(f"The operation {action} is not supported for peeked messages.")
        if msg._settled:
            raise MessageAlreadySettled(action=action)
        if not receiver._open:
            raise ValueError(f"Failed to {action} the message as the handler has already been shutdown.")
        self._expire_locks(q)
        m = msg._stored
        if msg._receiver is not receiver or m.locked_by is not receiver or m.lock_token != msg.lock_token:
            # The service's rule: the lock token belongs to the link that received the message.
            raise MessageLockLostError(message=LOCK_INVALID)
        if action == "renew":
            m.locked_until_utc = self.clock() + q.lock_duration
            return m.locked_until_utc
        msg._settled = True
        if action == "complete":
            q.active.remove(m)
        elif action == "abandon":
            m.locked_by, m.lock_token = None, None
            if m.delivery_count >= q.max_delivery_count:
                self._dead_letter(q, m, "MaxDeliveryCountExceeded",
                                  f"Message could not be consumed after {q.max_delivery_count} delivery attempts.")
        elif action == "dead_letter":
            self._dead_letter(q, m, kw.get("reason") or "", kw.get("error_description") or "")
        return None


class _Link:
    def __init__(self, ns: FakeNamespace):
        self._ns, self._open = ns, True
        ns.open_links += 1

    def close(self) -> None:
        if self._open:
            self._open = False
            self._ns.open_links -= 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class FakeSender(_Link):
    def __init__(self, ns: FakeNamespace, queue: str):
        super().__init__(ns)
        self._queue = queue

    def send_messages(self, message: Any) -> None:
        if not self._open:
            raise ValueError("The handler has already been shutdown.")
        self._ns.send(self._queue, message)


class FakeReceiver(_Link):
    def __init__(self, ns: FakeNamespace, queue: str, receive_mode: Any, sub_queue: Any):
        super().__init__(ns)
        ns.receivers_created += 1
        self._queue, self._mode, self._sub_queue = queue, receive_mode, sub_queue

    def receive_messages(self, max_message_count: int = 1, max_wait_time: float | None = None):
        if not self._open:
            raise ValueError("The handler has already been shutdown.")
        if self._mode != ServiceBusReceiveMode.PEEK_LOCK:
            raise AssertionError("the adapter must receive in PEEK_LOCK mode")
        if max_wait_time is not None and max_wait_time <= 0:
            raise ValueError("The max_wait_time must be greater than 0.")
        return self._ns.receive(self._queue, self, max_message_count)

    def peek_messages(self, max_message_count: int = 1):
        q = self._ns.queue(self._queue)
        source = q.dead if self._sub_queue == ServiceBusSubQueue.DEAD_LETTER else q.active
        return [_ReceivedMessage(m, self, peeked=True) for m in source[:max_message_count]]

    def complete_message(self, message):
        return self._ns.settle(self._queue, self, message, "complete")

    def abandon_message(self, message):
        return self._ns.settle(self._queue, self, message, "abandon")

    def dead_letter_message(self, message, reason=None, error_description=None):
        return self._ns.settle(self._queue, self, message, "dead_letter", reason=reason,
                               error_description=error_description)

    def renew_message_lock(self, message, *, timeout=None):
        return self._ns.settle(self._queue, self, message, "renew")


class FakeServiceBusClient(_Link):
    def __init__(self, ns: FakeNamespace):
        super().__init__(ns)
        ns.clients_created += 1

    def get_queue_sender(self, queue_name: str, **kw) -> FakeSender:
        return FakeSender(self._ns, queue_name)

    def get_queue_receiver(self, queue_name: str, *, receive_mode=ServiceBusReceiveMode.PEEK_LOCK, sub_queue=None,
                           prefetch_count: int = 0, **kw) -> FakeReceiver:
        return FakeReceiver(self._ns, queue_name, receive_mode, sub_queue)


class _RuntimeProperties:
    def __init__(self, active: int):
        self.active_message_count = active


class FakeAdministrationClient:
    def __init__(self, ns: FakeNamespace):
        self._ns = ns

    def get_queue_runtime_properties(self, queue_name: str) -> _RuntimeProperties:
        q = self._ns.queue(queue_name)
        self._ns._expire_locks(q)
        return _RuntimeProperties(len(q.active))

    def close(self) -> None:
        pass


def install(monkeypatch, ns: FakeNamespace) -> None:
    """Make ``ServiceBusClient.from_connection_string`` (and the admin client's) return clients of ``ns``,
    wherever the adapter builds them from — so the code under test runs unchanged."""
    import azure.servicebus
    import azure.servicebus.management

    monkeypatch.setattr(azure.servicebus.ServiceBusClient, "from_connection_string",
                        classmethod(lambda cls, conn, **kw: ns.client()))
    monkeypatch.setattr(azure.servicebus.management.ServiceBusAdministrationClient, "from_connection_string",
                        classmethod(lambda cls, conn, **kw: FakeAdministrationClient(ns)))
