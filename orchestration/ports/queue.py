"""BatchQueue port: the durable queue batches travel on (Azure Service Bus in Azure).

Service Bus semantics, kept small:
- ``send`` carries a ``message_id``; a second send with the same id inside the duplicate-detection
  window is silently dropped (``send`` returns False) — so a retried upload never makes a second batch;
- ``receive`` is *peek-lock*: the message stays on the queue, invisible to other receivers, until it
  is settled or its lock (``lock_duration``) expires; each delivery increments ``delivery_count``;
- settlement: ``complete`` (done, removed), ``abandon`` (visible again at once), ``dead_letter``
  (moved to the dead-letter queue with a reason and description an operator can read);
- settling with an expired or foreign lock raises ``MessageLockLost`` (the message may already be
  with another receiver); ``renew_lock`` extends a lock for long work;
- a message delivered ``max_delivery_count`` times without being completed is dead-lettered
  automatically with reason ``MaxDeliveryCountExceeded``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"


class QueueError(Exception):
    pass


class MessageLockLost(QueueError):
    """The lock expired or belongs to another delivery; the message was not settled."""


@dataclass(frozen=True)
class ReceivedMessage:
    message_id: str
    body: bytes
    sequence_number: int
    delivery_count: int
    enqueued_at: datetime
    locked_until: datetime
    lock_token: str
    application_properties: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DeadLetteredMessage:
    message_id: str
    body: bytes
    sequence_number: int
    delivery_count: int
    enqueued_at: datetime
    dead_lettered_at: datetime
    reason: str
    description: str
    application_properties: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class BatchQueue(Protocol):
    def send(self, body: bytes, *, message_id: str, application_properties: dict[str, str] | None = None) -> bool:
        """Enqueue; False when dropped as a duplicate of a message sent inside the window."""

    def receive(self, max_messages: int = 1, *, max_wait_seconds: float = 0.0) -> list[ReceivedMessage]: ...

    def complete(self, message: ReceivedMessage) -> None: ...

    def abandon(self, message: ReceivedMessage) -> None: ...

    def dead_letter(self, message: ReceivedMessage, *, reason: str, description: str) -> None: ...

    def renew_lock(self, message: ReceivedMessage) -> ReceivedMessage:
        """The same message with its lock extended by another lock duration."""

    def peek_dead_letter(self, max_messages: int = 100) -> list[DeadLetteredMessage]: ...

    def active_message_count(self) -> int:
        """Messages waiting (locked ones included), dead-lettered ones excluded."""
