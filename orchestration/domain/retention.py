"""Deleting and restoring a batch, and purging what is past its restore period.

- ``delete_batch``: the batch disappears from the user's pages at once (status 'deleted'); its lake
  objects (raw uploads, renditions, outcomes) are soft-deleted; its documents are marked deleted and
  given a ``ttl`` equal to the restore period, so they expire when it ends (Cosmos DB's per-item TTL;
  the local store honours the same field).
- ``restore_batch``: inside the restore period, the same user (or an operator, for anyone) brings back
  every object that deletion removed — byte for byte, the lake's own undelete — and the documents as
  they were.
- ``purge``: removes lake objects and documents whose period ran out. Locally the `housekeeping`
  schedule runs it daily; in Azure the storage account's blob soft delete purges the lake and Cosmos
  DB expires the documents, so it finds nothing to do there.

Every function takes ``now`` (an injected clock, for tests); the restore period is the lake's soft-delete
retention (``IMGPIPE_LAKE_SOFT_DELETE_DAYS``, 7 days by default; in Azure the account's setting).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from orchestration.domain.services import Services
from orchestration.ports.lake import Lake, ObjectNotFound
from orchestration.ports.metadata import MetadataStore

PREFIXES = ("raw/{batch}/", "processed/{batch}/")


class RetentionError(Exception):
    """Something a person asked that cannot be done (no such batch, not deleted, period over)."""


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(timezone.utc)


def _batch_doc(services: Services, batch_id: str, user_id: str | None) -> dict:
    if user_id is not None:
        doc = services.metadata.read("batches", batch_id, user_id)
    else:  # an operator: any user's batch (a cross-partition query by id)
        found = list(services.metadata.query("batches", {"batch_id": batch_id}))
        doc = found[0] if found else None
    if doc is None:
        raise RetentionError(f"no such batch: {batch_id}")  # no hint whether someone else has it
    return doc


def delete_batch(services: Services, batch_id: str, user_id: str | None, *, deleted_by: str,
                 now: datetime | None = None) -> dict:
    """Delete a batch (``user_id`` None: an operator, any user's batch). Returns the batch document."""
    now = _now(now)
    doc = _batch_doc(services, batch_id, user_id)
    if doc.get("status") == "deleted":
        return doc
    period = services.settings.lake_soft_delete_days
    ttl = int(timedelta(days=period).total_seconds())
    marked = {**doc, "status": "deleted", "status_before_delete": doc.get("status"),
              "deleted_at": now.isoformat(), "deleted_by": deleted_by,
              "restorable_until": (now + timedelta(days=period)).isoformat(), "ttl": ttl}
    # The batch document first: from this moment pages no longer show it, whatever happens next.
    services.metadata.upsert("batches", marked)
    for image in services.metadata.query("images", partition_key=batch_id):
        services.metadata.upsert("images", {**image, "deleted": True, "ttl": ttl})
    for prefix in PREFIXES:
        for path in list(services.lake.list(prefix.format(batch=batch_id))):
            try:
                services.lake.delete(path)
            except ObjectNotFound:
                pass  # deleted concurrently
    return marked


def restore_batch(services: Services, batch_id: str, user_id: str | None, *,
                  now: datetime | None = None) -> dict:
    """Undo ``delete_batch`` inside the restore period. Returns the restored batch document."""
    now = _now(now)
    doc = _batch_doc(services, batch_id, user_id)
    if doc.get("status") != "deleted":
        raise RetentionError(f"batch {batch_id} is not deleted")
    if datetime.fromisoformat(doc["restorable_until"]) <= now:
        raise RetentionError(f"batch {batch_id} was deleted on {doc['deleted_at'][:10]}; its restore period "
                             f"ended on {doc['restorable_until'][:10]}")
    deleted_at = datetime.fromisoformat(doc["deleted_at"])
    for prefix in PREFIXES:
        newest: dict[str, str] = {}
        for obj in services.lake.list_deleted(prefix.format(batch=batch_id)):  # newest first
            # Only what this deletion removed (not, e.g., a rendition a reprocessing replaced earlier).
            if obj.deleted_at >= deleted_at - timedelta(seconds=1) and obj.path not in newest:
                newest[obj.path] = obj.deletion_id
        for path, deletion_id in newest.items():
            if not services.lake.exists(path):
                services.lake.restore(path, deletion_id)
    for image in services.metadata.query("images", partition_key=batch_id):
        services.metadata.upsert("images", {k: v for k, v in image.items() if k not in ("deleted", "ttl")})
    restored = {k: v for k, v in doc.items()
                if k not in ("ttl", "deleted_at", "deleted_by", "restorable_until", "status_before_delete")}
    restored["status"] = doc.get("status_before_delete") or "completed"
    restored["restored_at"] = now.isoformat()
    services.metadata.upsert("batches", restored)
    return restored


def recently_deleted(services: Services, user_id: str | None, *, now: datetime | None = None) -> list[dict]:
    """Deleted batches still restorable, newest deletion first (``user_id`` None: everyone's)."""
    now = _now(now)
    if user_id is not None:
        docs = services.metadata.query("batches", {"status": "deleted"}, partition_key=user_id)
    else:
        docs = services.metadata.query("batches", {"status": "deleted"})
    live = [d for d in docs if datetime.fromisoformat(d["restorable_until"]) > now]
    return sorted(live, key=lambda d: d["deleted_at"], reverse=True)


def purge(lake: Lake, metadata: MetadataStore, *, now: datetime | None = None) -> dict:
    """Remove for good what is past its restore period: soft-deleted lake objects and expired documents."""
    now = _now(now)
    return {"lake_objects": lake.purge_expired(now), "documents": metadata.purge_expired(now.timestamp())}
