"""Azure Service Bus adapter of the BatchQueue port (azure-servicebus). Azure is touched here.

Mapping:
- ``send`` → ``ServiceBusMessage(message_id=…)``; duplicate detection is a queue property
  (``requiresDuplicateDetection`` + window, set by the infrastructure code): the service drops a repeat
  silently, so ``send`` cannot tell and returns True;
- ``receive`` → one PEEK_LOCK receiver per adapter, kept open; the SDK message is held here by lock
  token, because Service Bus settles a message only through the receiver that received it. The adapter
  is created once per process (``orchestration.wiring.CLIENTS``), so a sensor can receive in one tick and
  complete in the next; calls are serialised by a lock (the SDK's receiver is not thread-safe);
- ``complete`` / ``abandon`` / ``dead_letter(reason, description)`` / ``renew_lock`` → the receiver's
  methods; ``MessageLockLostError`` (and a lock token this instance does not hold, e.g. after a restart
  of the sensor process) → ``MessageLockLost``: the message comes back after its lock expires and the
  sensor completes the redelivery once it sees the run exists;
- automatic dead-lettering after ``MaxDeliveryCount`` is done by the service (queue property);
- ``peek_dead_letter`` → a receiver on the ``$DeadLetterQueue`` sub-queue, peek only (nothing settled).
There is no Service Bus server that runs here: this is unit-tested at the SDK boundary
(tests/test_servicebus_adapter.py) and runs the shared contract suite when
``SERVICEBUS_CONNECTION_STRING`` is set.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Any

from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusReceiveMode, ServiceBusSubQueue
from azure.servicebus.exceptions import MessageLockLostError, ServiceBusError

from orchestration.ports.queue import DeadLetteredMessage, MessageLockLost, ReceivedMessage


def _body(msg: Any) -> bytes:
    body = msg.body
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    return b"".join(bytes(part) for part in body)


def _props(msg: Any) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (v.decode() if isinstance(v, bytes) else str(v))
        for k, v in (msg.application_properties or {}).items()
    }


def _utc(value: datetime | None) -> datetime:
    if value is None:
        return datetime.now(timezone.utc)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


class ServiceBusQueue:
    def __init__(self, client: ServiceBusClient, queue_name: str, *, admin_client: Any = None):
        self._client = client
        self._queue = queue_name
        self._admin = admin_client
        self._sender = None
        self._receiver = None
        self._held: dict[str, Any] = {}
        self._lock = threading.RLock()

    @classmethod
    def from_settings(cls, queue_name: str, *, connection_string: str | None = None,
                      fully_qualified_namespace: str | None = None) -> "ServiceBusQueue":
        from azure.servicebus.management import ServiceBusAdministrationClient

        if connection_string:
            return cls(ServiceBusClient.from_connection_string(connection_string), queue_name,
                       admin_client=ServiceBusAdministrationClient.from_connection_string(connection_string))
        if fully_qualified_namespace:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
            return cls(ServiceBusClient(fully_qualified_namespace, credential), queue_name,
                       admin_client=ServiceBusAdministrationClient(fully_qualified_namespace, credential))
        raise ValueError("Service Bus needs a connection string or a fully qualified namespace")

    def _get_sender(self):
        if self._sender is None:
            self._sender = self._client.get_queue_sender(self._queue)
        return self._sender

    def _get_receiver(self):
        if self._receiver is None:
            self._receiver = self._client.get_queue_receiver(
                self._queue, receive_mode=ServiceBusReceiveMode.PEEK_LOCK, prefetch_count=0
            )
        return self._receiver

    def send(self, body: bytes, *, message_id: str, application_properties: dict[str, str] | None = None) -> bool:
        if not message_id:
            raise ValueError("message_id is required (it drives duplicate detection)")
        with self._lock:
            self._get_sender().send_messages(
                ServiceBusMessage(body, message_id=message_id, application_properties=application_properties or {},
                                  content_type="application/json")
            )
        return True

    def receive(self, max_messages: int = 1, *, max_wait_seconds: float = 0.0) -> list[ReceivedMessage]:
        with self._lock:
            return self._receive(max_messages, max_wait_seconds)

    def _receive(self, max_messages: int, max_wait_seconds: float) -> list[ReceivedMessage]:
        # The SDK needs a positive wait; a short one keeps a sensor tick cheap when the queue is empty.
        msgs = self._get_receiver().receive_messages(max_message_count=max_messages,
                                                     max_wait_time=max(max_wait_seconds, 0.5))
        out = []
        for m in msgs:
            token = str(m.lock_token)
            self._held[token] = m
            out.append(ReceivedMessage(
                message_id=str(m.message_id),
                body=_body(m),
                sequence_number=int(m.sequence_number or 0),
                delivery_count=int(m.delivery_count or 0),
                enqueued_at=_utc(m.enqueued_time_utc),
                locked_until=_utc(m.locked_until_utc),
                lock_token=token,
                application_properties=_props(m),
            ))
        return out

    def _settle(self, message: ReceivedMessage, action: str, **kwargs) -> Any:
        with self._lock:
            return self._settle_locked(message, action, **kwargs)

    def _settle_locked(self, message: ReceivedMessage, action: str, **kwargs) -> Any:
        sdk = self._held.get(message.lock_token)
        if sdk is None:
            raise MessageLockLost(
                f"message {message.message_id!r} was not received by this receiver (or was already settled)")
        try:
            result = getattr(self._get_receiver(), action)(sdk, **kwargs)
        except MessageLockLostError as exc:
            self._held.pop(message.lock_token, None)
            raise MessageLockLost(f"lock for message {message.message_id!r} expired: {exc}") from exc
        except ServiceBusError as exc:
            if "lock" in str(exc).lower():
                self._held.pop(message.lock_token, None)
                raise MessageLockLost(f"lock for message {message.message_id!r} lost: {exc}") from exc
            raise
        if action != "renew_message_lock":
            self._held.pop(message.lock_token, None)
        return result

    def complete(self, message: ReceivedMessage) -> None:
        self._settle(message, "complete_message")

    def abandon(self, message: ReceivedMessage) -> None:
        self._settle(message, "abandon_message")

    def dead_letter(self, message: ReceivedMessage, *, reason: str, description: str) -> None:
        if not reason:
            raise ValueError("a dead-letter reason is required")
        self._settle(message, "dead_letter_message", reason=reason[:4096], error_description=description[:4096])

    def renew_lock(self, message: ReceivedMessage) -> ReceivedMessage:
        from dataclasses import replace

        until = self._settle(message, "renew_message_lock")
        return replace(message, locked_until=_utc(until))

    def peek_dead_letter(self, max_messages: int = 100) -> list[DeadLetteredMessage]:
        with self._client.get_queue_receiver(self._queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
            msgs = dlq.peek_messages(max_message_count=max_messages)
        return [
            DeadLetteredMessage(
                message_id=str(m.message_id),
                body=_body(m),
                sequence_number=int(m.sequence_number or 0),
                delivery_count=int(m.delivery_count or 0),
                enqueued_at=_utc(m.enqueued_time_utc),
                dead_lettered_at=_utc(m.enqueued_time_utc),  # Service Bus keeps no separate dead-letter time
                reason=m.dead_letter_reason or "",
                description=m.dead_letter_error_description or "",
                application_properties=_props(m),
            )
            for m in msgs
        ]

    def active_message_count(self) -> int:
        if self._admin is None:
            raise NotImplementedError("active_message_count needs the Service Bus administration client")
        return int(self._admin.get_queue_runtime_properties(self._queue).active_message_count)

    def close(self) -> None:
        with self._lock:
            for link in (self._sender, self._receiver):
                if link is not None:
                    link.close()
            self._sender = self._receiver = None
            self._held.clear()
            self._client.close()
