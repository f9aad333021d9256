"""Batch and image documents: the one way runs, sensors and people change them.

Every change is a read-modify-write conditional on what was read (the document's etag, Cosmos DB's
If-Match; ``orchestration.ports.metadata.update``), so two writers never overwrite each other's fields
(``events_sent``, a status) from stale reads. And **deleted wins**: once a batch is deleted, no writer
but restore changes it — ``change_batch`` raises ``BatchDeleted`` instead of writing, and an image
document written while the delete was landing is put in the trash at once (``write_image``). A run that
hears ``BatchDeleted`` stops; whatever it wrote is swept into the trash with the rest
(``orchestration.domain.retention.sweep``).

Run keys: a batch's first run has ``run_key`` = its id. A batch deleted before it finished and then
restored goes back on the queue as generation *n* ≥ 1, whose message id and run key are ``<id>~n`` — a new
key, because Dagster allows one run per key and the queue drops a message id it has seen.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

from orchestration.ports.metadata import MetadataStore, update

DELETED = "deleted"
# Statuses a run has finished with; a batch deleted in any other status is put back on the queue by restore.
FINISHED = ("completed", "failed", "invalid")
_GENERATION_SEP = "~"


class BatchDeleted(Exception):
    """The batch was deleted: the writer stops and writes nothing more."""

    def __init__(self, batch_id: str):
        super().__init__(f"batch {batch_id} was deleted")
        self.batch_id = batch_id


def run_key(batch_id: str, generation: int = 0) -> str:
    """The run key (and queue message id) of a batch's ``generation``: the batch id for the first."""
    return batch_id if not generation else f"{batch_id}{_GENERATION_SEP}{int(generation)}"


def parse_run_key(key: str) -> tuple[str, int]:
    """``(batch id, generation)`` of a run key; ``ValueError`` for a malformed one."""
    batch_id, sep, generation = key.partition(_GENERATION_SEP)
    if not sep:
        return batch_id, 0
    if not generation.isdigit() or int(generation) < 1:
        raise ValueError(f"malformed run key {key!r}")
    return batch_id, int(generation)


def change_batch(store: MetadataStore, batch_id: str, user_id: str,
                 change: Callable[[dict], dict | None]) -> dict | None:
    """``update`` of the batch document, refused for a deleted batch (``BatchDeleted``). ``change`` may
    return None to leave the document as it is; returns the stored document (None: missing or declined)."""

    def guarded(doc: dict) -> dict | None:
        if doc.get("status") == DELETED:
            raise BatchDeleted(batch_id)
        return change(doc)

    return update(store, "batches", batch_id, user_id, guarded)


def set_batch(store: MetadataStore, batch_id: str, user_id: str, **fields) -> dict | None:
    """Set ``fields`` on the batch document (deleted wins)."""
    return change_batch(store, batch_id, user_id, lambda doc: {**doc, **fields})


def ensure_live(store: MetadataStore, batch_id: str, user_id: str) -> dict | None:
    """The batch document; ``BatchDeleted`` if the batch was deleted."""
    doc = store.read("batches", batch_id, user_id)
    if doc is not None and doc.get("status") == DELETED:
        raise BatchDeleted(batch_id)
    return doc


def trash_ttl(batch_doc: dict, now: datetime | None = None) -> int:
    """Seconds a trashed document of this deleted batch lives: until the restore period set at deletion ends."""
    now = now or datetime.now(timezone.utc)
    until = datetime.fromisoformat(batch_doc["restorable_until"])
    return max(1, int((until - now).total_seconds()))


def trash_image(store: MetadataStore, image_id: str, batch_doc: dict, now: datetime | None = None) -> None:
    """Mark one image document of a deleted batch deleted, expiring with the batch's restore period."""
    ttl = trash_ttl(batch_doc, now)

    def mark(doc: dict) -> dict | None:
        return None if doc.get("deleted") else {**doc, "deleted": True, "ttl": ttl}

    update(store, "images", image_id, batch_doc["batch_id"], mark)


def write_image(store: MetadataStore, doc: dict) -> dict:
    """Write an image document, deleted wins: written first, then the batch is read; if it was deleted
    meanwhile, the document goes to the trash and ``BatchDeleted`` is raised. Together with the delete
    (batch document first, then its images) one of the two always sees the other."""
    stored = store.upsert("images", doc)
    batch = store.read("batches", doc["batch_id"], doc["user_id"])
    if batch is not None and batch.get("status") == DELETED:
        trash_image(store, doc["id"], batch)
        raise BatchDeleted(doc["batch_id"])
    return stored


def write_images(store: MetadataStore, docs: list[dict], *, parallel: int = 8) -> None:
    """``write_image`` of many documents, ``parallel`` at a time (each is two round trips to the store: a
    10,000-image batch one after another is minutes against Cosmos DB). Deleted wins as for one: the first
    ``BatchDeleted`` is raised once the writes in flight are done."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    if len(docs) <= 1 or parallel <= 1:
        for doc in docs:
            write_image(store, doc)
        return
    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="imgpipe-docs")
    try:
        for done in as_completed([pool.submit(write_image, store, doc) for doc in docs]):
            done.result()  # the first failure (BatchDeleted, a store error) stops what has not started
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def change_image(store: MetadataStore, batch_id: str, user_id: str, image_id: str,
                 change: Callable[[dict], dict | None]) -> dict | None:
    """``update`` of one image document (conditional on its etag), deleted wins: a trashed document is left
    as it is (None), and, as ``write_image``, the batch is read after the write; if it was deleted meanwhile the
    document goes to the trash and ``BatchDeleted`` is raised. Returns the stored document (None: missing
    or declined)."""

    def guarded(doc: dict) -> dict | None:
        return None if doc.get("deleted") else change(doc)

    stored = update(store, "images", image_id, batch_id, guarded)
    batch = store.read("batches", batch_id, user_id)
    if batch is not None and batch.get("status") == DELETED:
        trash_image(store, image_id, batch)
        raise BatchDeleted(batch_id)
    return stored
