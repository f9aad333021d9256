"""MetadataStore port: JSON documents queried by the app and BI tools (Cosmos DB in Azure).

Cosmos DB semantics, kept small:
- documents live in named containers; each has a string ``id`` unique within its partition and a
  partition key value taken from the field the container is partitioned by (``PARTITION_KEYS``);
- every stored document carries a server-made ``_etag``; ``replace``/``upsert`` with ``if_match``
  fail with ``PreconditionFailed`` when the stored etag differs (optimistic concurrency);
- ``read`` of a missing document returns ``None`` (never a crash);
- a document with a positive ``ttl`` (seconds) expires that long after its last write, as with Cosmos
  DB's per-item time to live (containers have default TTL -1);
- ``query`` takes *parameterized* equality filters, an optional ORDER BY and a limit. That subset maps
  one-to-one onto ``SELECT * FROM c WHERE c.f = @p0 ... ORDER BY c.o OFFSET 0 LIMIT n`` in Cosmos and
  onto ``json_extract`` in SQLite; values are always bound as parameters, never spliced into text.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterator, Mapping, Protocol, runtime_checkable

# Container name -> the document field it is partitioned by.
#  batches: by user, so "a user's batches" is a single-partition query (the web app's main view).
#  images:  by batch, so "a batch's images" (status, result page) is a single-partition query.
#  quotas:  by user, one document per user (what their uploads have reserved; orchestration/domain/quota.py).
PARTITION_KEYS: dict[str, str] = {"batches": "user_id", "images": "batch_id", "quotas": "user_id"}


class MetadataError(Exception):
    pass


class PreconditionFailed(MetadataError):
    """The document's etag changed since it was read (HTTP 412 in Cosmos DB)."""


class Conflict(MetadataError):
    """A document with this id already exists in the partition (HTTP 409)."""


class DocumentNotFound(MetadataError, KeyError):
    """``replace`` of a document that does not exist (HTTP 404)."""


_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def check_field(name: str) -> str:
    """Field paths in filters/ORDER BY are identifiers joined by dots; anything else is refused."""
    if not _FIELD.fullmatch(name):
        raise ValueError(f"invalid field name {name!r} in metadata query")
    return name


def partition_value(container: str, doc: Mapping[str, Any]) -> str:
    try:
        key_field = PARTITION_KEYS[container]
    except KeyError:
        raise MetadataError(f"unknown container {container!r} (known: {sorted(PARTITION_KEYS)})") from None
    value = doc.get(key_field)
    if not isinstance(value, str) or not value:
        raise MetadataError(f"document for container {container!r} needs a non-empty string {key_field!r}")
    if not isinstance(doc.get("id"), str) or not doc["id"]:
        raise MetadataError("document needs a non-empty string 'id'")
    return value


@runtime_checkable
class MetadataStore(Protocol):
    def create(self, container: str, doc: Mapping[str, Any]) -> dict:
        """Insert a new document; ``Conflict`` when the id exists in its partition."""

    def upsert(self, container: str, doc: Mapping[str, Any], *, if_match: str | None = None) -> dict:
        """Insert or replace; returns the stored document with its new ``_etag``."""

    def replace(self, container: str, doc: Mapping[str, Any], *, if_match: str | None = None) -> dict:
        """Replace an existing document; ``DocumentNotFound`` / ``PreconditionFailed``."""

    def read(self, container: str, id: str, partition_key: str) -> dict | None:
        """Point read; ``None`` when missing."""

    def delete(self, container: str, id: str, partition_key: str) -> bool:
        """Delete; ``False`` when there was nothing to delete."""

    def purge_expired(self, now: float | None = None) -> int:
        """Remove documents whose ``ttl`` (seconds after their last write) ran out; they are already
        invisible to ``read`` and ``query``. A no-op in Cosmos DB, which purges by itself."""

    def query(
        self,
        container: str,
        where: Mapping[str, Any] | None = None,
        *,
        partition_key: str | None = None,
        order_by: str | None = None,
        descending: bool = False,
        limit: int | None = None,
    ) -> Iterator[dict]:
        """Documents whose fields equal the given values (dotted paths allowed)."""


def update(store: MetadataStore, container: str, id: str, partition_key: str,
           change: Callable[[dict], dict | None], *, attempts: int = 10) -> dict | None:
    """Read-modify-write under optimistic concurrency (the document's ``_etag``, Cosmos DB's If-Match).

    ``change(doc)`` returns the document to store, or None to leave it as it is. When another writer got in
    between the read and the write, ``change`` is called again on a fresh read, so a decision taken on a
    stale read (say, "not completed yet, so mark it retrying") is never written over a newer one. Returns
    the stored document, or None when there is none or ``change`` declined. ``PreconditionFailed`` only if
    others changed it ``attempts`` times in a row."""
    for _ in range(attempts):
        doc = store.read(container, id, partition_key)
        if doc is None:
            return None
        new = change(dict(doc))
        if new is None:
            return None
        try:
            return store.replace(container, new, if_match=doc["_etag"])
        except PreconditionFailed:
            continue
        except DocumentNotFound:
            return None
    raise PreconditionFailed(f"{container}/{id}: changed by another writer {attempts} times in a row")
