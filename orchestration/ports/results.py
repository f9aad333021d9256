"""ResultStream port: results streamed back to users (Kafka, everywhere — Tansu locally).

Every event is JSON with a deterministic ``event_id`` (a re-executed run republishes the same ids, so a
consumer can drop repeats) and is keyed by ``user_id``: one user's events land in one partition, in
order, and a user's page can follow only its own.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable

EVENT_IMAGE_PROCESSED = "image.processed"
EVENT_IMAGE_REJECTED = "image.rejected"
EVENT_IMAGE_UNDERSTOOD = "image.understood"  # labels, moderation decision, faces: after image.processed
EVENT_BATCH_COMPLETED = "batch.completed"


@runtime_checkable
class ResultStream(Protocol):
    def publish(self, key: str, event: Mapping[str, Any]) -> None:
        """Queue one event for sending (``flush`` waits until the broker has acknowledged it)."""

    def flush(self, timeout_seconds: float = 30.0) -> None:
        """Block until every published event is acknowledged (acks=all); raises on failure."""

    def close(self) -> None: ...
