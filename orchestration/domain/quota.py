"""Per-user upload quotas, checked and taken in one atomic step.

Each user has one quota document (container ``quotas``, partitioned by user) that holds the bytes taken
today (UTC) and the batches in flight, each with what it reserved. An upload *reserves* under optimistic
concurrency (the document's etag, Cosmos DB's If-Match): when two uploads race, one write wins and the
other reads again and decides again, so concurrent uploads can never together pass a limit that each
alone would have passed.

A reservation is released when its batch is no longer waiting or processing (completed, failed,
deleted, invalid): the next reservation looks at the batches it holds and drops those that have ended, so
nothing needs to remember to release it, even after a crash. An upload that fails before its batch is
recorded gives its reservation back at once (``release``); one whose process died meanwhile is dropped
once it is ``ORPHAN_AFTER`` old without a batch document.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from orchestration.domain.services import Services
from orchestration.ports.metadata import Conflict, PreconditionFailed

IN_FLIGHT = ("received", "processing", "retrying")
ORPHAN_AFTER = timedelta(minutes=15)


class QuotaExceeded(ValueError):
    """The user is over one of the per-user limits; the message names it and when it frees up."""


def _still_in_flight(services: Services, user_id: str, batch_id: str, entry: dict, now: datetime) -> bool:
    doc = services.metadata.read("batches", batch_id, user_id)
    if doc is None:  # reserved, not recorded yet (an upload in progress) — or its process died
        return now - datetime.fromisoformat(entry["at"]) < ORPHAN_AFTER
    return doc.get("status") in IN_FLIGHT


def reserve(services: Services, user_id: str, batch_id: str, offered_bytes: int, *,
            now: datetime | None = None, attempts: int = 20, count_bytes: bool = True) -> None:
    """Take ``offered_bytes`` of today's allowance and one in-flight slot for ``batch_id``, or raise
    ``QuotaExceeded`` naming the limit. Atomic against concurrent uploads of the same user.
    ``count_bytes=False``: a slot only (a restored batch goes back in the queue; its bytes were counted)."""
    s, store = services.settings, services.metadata
    now = now or datetime.now(timezone.utc)
    day = now.strftime("%Y-%m-%d")
    for _ in range(attempts):
        doc = store.read("quotas", user_id, user_id)
        current = dict(doc or {"id": user_id, "user_id": user_id})
        used = int(current.get("bytes_today") or 0) if current.get("day") == day else 0
        held = {b: e for b, e in (current.get("in_flight") or {}).items()
                if _still_in_flight(services, user_id, b, e, now)}
        if len(held) >= s.max_batches_in_flight:
            raise QuotaExceeded(f"you have {len(held)} batches waiting or processing; the limit is "
                                f"{s.max_batches_in_flight} (IMGPIPE_MAX_BATCHES_IN_FLIGHT) — upload again once some finish")
        if not count_bytes:
            offered_bytes = 0
        if used + offered_bytes > s.max_bytes_per_day:
            raise QuotaExceeded(f"this batch ({offered_bytes:,} bytes) would take you to {used + offered_bytes:,} "
                                f"bytes today; the limit is {s.max_bytes_per_day:,} bytes per day "
                                f"(IMGPIPE_MAX_BYTES_PER_DAY, UTC) — upload again tomorrow or in smaller batches")
        held[batch_id] = {"bytes": offered_bytes, "at": now.isoformat()}
        new = {**current, "type": "quota", "day": day, "bytes_today": used + offered_bytes, "in_flight": held}
        try:
            if doc is None:
                store.create("quotas", new)
            else:
                store.replace("quotas", new, if_match=doc["_etag"])
            return
        except (PreconditionFailed, Conflict):
            continue  # another upload of this user got in first: read again, decide again
    raise QuotaExceeded("too many uploads at once for this account; try again in a moment")


def release(services: Services, user_id: str, batch_id: str, *, now: datetime | None = None) -> None:
    """Give back what ``reserve`` took for a batch that was never recorded (best effort)."""
    store = services.metadata
    now = now or datetime.now(timezone.utc)
    for _ in range(20):
        doc = store.read("quotas", user_id, user_id)
        if doc is None or batch_id not in (doc.get("in_flight") or {}):
            return
        held = dict(doc["in_flight"])
        entry = held.pop(batch_id)
        bytes_today = int(doc.get("bytes_today") or 0)
        if doc.get("day") == now.strftime("%Y-%m-%d"):
            bytes_today = max(0, bytes_today - int(entry.get("bytes") or 0))
        try:
            store.replace("quotas", {**doc, "in_flight": held, "bytes_today": bytes_today}, if_match=doc["_etag"])
            return
        except PreconditionFailed:
            continue
