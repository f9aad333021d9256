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

from orchestration.domain import quota
from orchestration.domain.batches import DELETED, FINISHED, run_key, trash_image
from orchestration.domain.manifest import manifest_path, raw_path
from orchestration.domain.services import Services
from orchestration.ports.lake import Lake, ObjectNotFound
from orchestration.ports.metadata import MetadataStore, update

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


# What the Dagster UI has yet to be told of a batch ("deleted" or "restored"): the deletion sensor records
# it on the batch's partitions and then clears it.
PARTITION_NOTE = "partition_note_pending"


def delete_batch(services: Services, batch_id: str, user_id: str | None, *, deleted_by: str,
                 now: datetime | None = None) -> dict:
    """Delete a batch (``user_id`` None: an operator, any user's batch). Returns the batch document.

    Deleted wins: the batch document is marked first (conditionally on the version read, so it neither
    loses nor undoes a concurrent write), and from then on every other writer stops (see
    ``orchestration.domain.batches``). A batch still queued or running is marked ``cleanup_pending``: the
    deletion sensor stops its runs and sweeps into the trash whatever they wrote after this moment."""
    now = _now(now)
    doc = _batch_doc(services, batch_id, user_id)
    period = services.settings.lake_soft_delete_days

    def mark(current: dict) -> dict | None:
        if current.get("status") == DELETED:
            return None
        return {**current, "status": DELETED, "status_before_delete": current.get("status"),
                "deleted_at": now.isoformat(), "deleted_by": deleted_by,
                "restorable_until": (now + timedelta(days=period)).isoformat(),
                "ttl": int(timedelta(days=period).total_seconds()),
                "cleanup_pending": current.get("status") not in FINISHED,
                PARTITION_NOTE: DELETED}  # for the batch's partition in the Dagster UI (the deletion sensor)

    # The batch document first: from this moment pages no longer show it, whatever happens next.
    marked = update(services.metadata, "batches", batch_id, doc["user_id"], mark)
    if marked is None:  # already deleted (or gone): finish a sweep an earlier attempt left half done
        current = services.metadata.read("batches", batch_id, doc["user_id"]) or doc
        if current.get("status") == DELETED:
            sweep(services.lake, services.metadata, current, now=now)
        return current
    sweep(services.lake, services.metadata, marked, now=now)
    return marked


def sweep(lake: Lake, metadata: MetadataStore, batch_doc: dict, *, now: datetime | None = None) -> dict:
    """Put into the trash everything of a deleted batch that is still live: image documents without the
    deleted mark (expiring with the batch's restore period) and lake objects under its prefixes (soft
    deletes). Idempotent; ``delete_batch`` runs it, and the deletion sensor again once the batch's runs
    have stopped, for what they wrote meanwhile. Returns counts."""
    now = _now(now)
    counts = {"documents": 0, "lake_objects": 0}
    batch_id = batch_doc["batch_id"]
    for image in metadata.query("images", partition_key=batch_id):
        if not image.get("deleted"):
            trash_image(metadata, image["id"], batch_doc, now)
            counts["documents"] += 1
    for prefix in PREFIXES:
        for path in list(lake.list(prefix.format(batch=batch_id))):
            try:
                lake.delete(path)
                counts["lake_objects"] += 1
            except ObjectNotFound:
                pass  # deleted concurrently
    return counts


def expected_objects(metadata: MetadataStore, batch_doc: dict) -> list[str]:
    """The lake paths a complete batch has: its manifest and stored uploads (as the batch document lists
    them, so they are known even when the manifest itself is gone), and every rendition its image
    documents record."""
    batch_id = batch_doc["batch_id"]
    paths = [manifest_path(batch_id)]
    paths += [raw_path(batch_id, img["image_id"]) for img in batch_doc.get("images") or () if not img.get("refused")]
    for image in metadata.query("images", partition_key=batch_id):
        paths += [r["path"] for r in image.get("renditions") or ()]
    return paths


def restore_batch(services: Services, batch_id: str, user_id: str | None, *,
                  now: datetime | None = None) -> dict:
    """Undo ``delete_batch`` inside the restore period. Returns the restored batch document, with
    ``missing``: the lake objects that could not be brought back (none when all came back).

    A batch deleted before its run finished goes back on the queue under a new run key (its next
    generation) and is processed to the end like a new upload."""
    now = _now(now)
    doc = _batch_doc(services, batch_id, user_id)
    if doc.get("status") != DELETED:
        raise RetentionError(f"batch {batch_id} is not deleted")
    if doc.get("cleanup_pending"):
        # Its run is still being stopped (the deletion sensor, within seconds): restoring now would let that
        # run write on, next to the one the restore starts.
        raise RetentionError(f"batch {batch_id} is still stopping its run; restore it again in a few seconds")
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
                try:
                    services.lake.restore(path, deletion_id)
                except ObjectNotFound:
                    pass  # purged meanwhile: reported as missing below
    for image in services.metadata.query("images", partition_key=batch_id):
        update(services.metadata, "images", image["id"], batch_id,
               lambda d: {k: v for k, v in d.items() if k not in ("deleted", "ttl")})
    missing = [p for p in expected_objects(services.metadata, doc) if not services.lake.exists(p)]
    before = doc.get("status_before_delete") or "completed"
    requeue = before not in FINISHED
    generation = int(doc.get("generation") or 0) + (1 if requeue else 0)
    if requeue:  # back in flight: it takes a slot of the user's quota again (checked and taken at once)
        try:
            quota.reserve(services, doc["user_id"], batch_id, int(doc.get("bytes") or 0), now=now,
                          count_bytes=False)
        except quota.QuotaExceeded as exc:
            raise RetentionError(f"batch {batch_id} cannot go back in the queue now: {exc}") from None
    if requeue and manifest_path(batch_id) in missing:
        status, error = "failed", "restored, but its uploaded files could not be restored; upload it again"
    else:
        status, error = ("received" if requeue else before), doc.get("error")

    def back(current: dict) -> dict | None:
        if current.get("status") != DELETED or current.get("deleted_at") != doc.get("deleted_at"):
            return None  # restored (or restored and deleted again) concurrently
        restored = {k: v for k, v in current.items()
                    if k not in ("ttl", "deleted_at", "deleted_by", "restorable_until", "status_before_delete",
                                 "cleanup_pending")}
        restored.update(status=status, error=error, restored_at=now.isoformat(), generation=generation,
                        missing_after_restore=missing[:100], **{PARTITION_NOTE: "restored"})
        if requeue:
            restored.update(requeued_at=now.isoformat(), requeue_attempts=0, queue_error=None)
        return restored

    restored = update(services.metadata, "batches", batch_id, doc["user_id"], back)
    if restored is None:
        raise RetentionError(f"batch {batch_id} is not deleted")
    if requeue and status == "received":
        key = run_key(batch_id, generation)
        try:
            services.queue.send(services.lake.read(manifest_path(batch_id)), message_id=key,
                                application_properties={"user_id": doc["user_id"]})
        except Exception as exc:  # noqa: BLE001 - the intake reconciler sends it again
            error = f"{type(exc).__name__}: {exc}"[:1000]
            update(services.metadata, "batches", batch_id, doc["user_id"], lambda d: {**d, "queue_error": error})
    return {**restored, "missing": missing}


def restore_outcome(doc: dict) -> str:
    """What a restore did, in one sentence for the person who asked (``restore_batch``'s result)."""
    if doc["status"] == "received":
        said = "it had not finished, so it is back in the queue and will be processed"
    elif doc["status"] == "failed" and doc.get("error", "").startswith("restored, but"):
        said = doc["error"]
    else:
        said = f"status {doc['status']}"
    if doc["missing"]:
        said += f"; {len(doc['missing'])} file(s) could not be restored (past the lake's retention)"
    return said


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
