"""Signal port: a cheap "new messages are waiting" notification the sensor polls (Event Grid in Azure).

In Azure, Service Bus raises ``ActiveMessagesAvailableWithNoListeners`` to Event Grid, which lands it in
a Storage queue; locally the queue adapter calls ``notify`` whenever a message is sent. The sensor calls
``drain`` on every tick: it costs a directory listing (locally) or one queue peek (Azure), much less
than a receive on the real queue, and collapses a burst of notifications into one drain of the queue.
Signals are hints, not data: losing one only delays a batch until the sensor's safety-net poll.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Signal(Protocol):
    def notify(self) -> None:
        """Record that messages are waiting."""

    def drain(self) -> int:
        """Consume every pending notification; how many there were (0 = nothing new)."""
