"""Contract of the MetadataStore port (Cosmos DB semantics), run against every adapter."""

from __future__ import annotations

import pytest

from orchestration.ports.metadata import Conflict, DocumentNotFound, MetadataError, MetadataStore, PreconditionFailed
from tests.support.ports import signature_mismatches


def _batch(i: int, user: str = "alice", **extra) -> dict:
    return {"id": f"b{i}", "user_id": user, "status": "received", "n": i, **extra}


def test_adapter_implements_every_method_of_the_port_with_its_signature(metadata_store):
    assert isinstance(metadata_store, MetadataStore)
    assert signature_mismatches(metadata_store, MetadataStore) == []


def test_upsert_then_point_read_returns_document_with_etag(metadata_store):
    stored = metadata_store.upsert("batches", _batch(1, tags=["a"], nested={"k": 1}))
    assert stored["_etag"]
    got = metadata_store.read("batches", "b1", "alice")
    assert got["status"] == "received" and got["tags"] == ["a"] and got["nested"] == {"k": 1}
    assert got["_etag"] == stored["_etag"]


def test_read_missing_returns_none_not_a_crash(metadata_store):
    assert metadata_store.read("batches", "nope", "alice") is None
    metadata_store.upsert("batches", _batch(1))
    assert metadata_store.read("batches", "b1", "bob") is None  # same id, other partition


def test_ids_are_unique_per_partition_only(metadata_store):
    metadata_store.upsert("batches", _batch(1, user="alice", who="a"))
    metadata_store.upsert("batches", _batch(1, user="bob", who="b"))
    assert metadata_store.read("batches", "b1", "alice")["who"] == "a"
    assert metadata_store.read("batches", "b1", "bob")["who"] == "b"


def test_upsert_is_idempotent_by_id(metadata_store):
    for _ in range(3):
        metadata_store.upsert("images", {"id": "i1", "batch_id": "b1", "v": 1})
    assert len(list(metadata_store.query("images", partition_key="b1"))) == 1


def test_create_conflicts_on_existing_id(metadata_store):
    metadata_store.create("batches", _batch(1))
    with pytest.raises(Conflict):
        metadata_store.create("batches", _batch(1))


def test_etag_optimistic_concurrency(metadata_store):
    first = metadata_store.upsert("batches", _batch(1))
    second = metadata_store.replace("batches", {**first, "status": "processing"}, if_match=first["_etag"])
    assert second["_etag"] != first["_etag"]
    with pytest.raises(PreconditionFailed):
        metadata_store.replace("batches", {**first, "status": "stale"}, if_match=first["_etag"])
    with pytest.raises(PreconditionFailed):
        metadata_store.upsert("batches", {**first, "status": "stale"}, if_match=first["_etag"])
    assert metadata_store.read("batches", "b1", "alice")["status"] == "processing"


def test_update_decides_again_when_another_writer_got_in_between(metadata_store):
    """``update`` (read, change, replace if the etag is unchanged): a write by someone else between its read
    and its write makes it read and decide again, on every adapter."""
    from orchestration.ports.metadata import update

    metadata_store.upsert("batches", _batch(3))
    seen = []

    def to_retrying(doc):
        seen.append(doc["status"])
        if len(seen) == 1:  # someone else completes it after this read
            metadata_store.upsert("batches", {**doc, "status": "completed"})
        return None if doc["status"] == "completed" else {**doc, "status": "retrying"}

    assert update(metadata_store, "batches", "b3", "alice", to_retrying) is None
    assert seen == ["received", "completed"]
    assert metadata_store.read("batches", "b3", "alice")["status"] == "completed"
    stored = update(metadata_store, "batches", "b3", "alice", lambda doc: {**doc, "n": 30})
    assert stored["n"] == 30 and metadata_store.read("batches", "b3", "alice")["_etag"] == stored["_etag"]


def test_replace_missing_raises_not_found(metadata_store):
    with pytest.raises(DocumentNotFound):
        metadata_store.replace("batches", _batch(9))


def test_delete(metadata_store):
    metadata_store.upsert("batches", _batch(1))
    assert metadata_store.delete("batches", "b1", "alice") is True
    assert metadata_store.delete("batches", "b1", "alice") is False
    assert list(metadata_store.query("batches", {"id": "b1"}, partition_key="alice")) == []


def test_documents_need_id_and_partition_key(metadata_store):
    with pytest.raises(MetadataError):
        metadata_store.upsert("batches", {"id": "x"})
    with pytest.raises(MetadataError):
        metadata_store.upsert("batches", {"user_id": "alice"})
    with pytest.raises(MetadataError):
        metadata_store.upsert("nosuchcontainer", {"id": "x", "user_id": "a"})


def test_parameterized_query_filters_orders_and_limits(metadata_store):
    for i in range(6):
        metadata_store.upsert("batches", _batch(i, status="done" if i % 2 else "received", meta={"tier": i % 3}))
    metadata_store.upsert("batches", _batch(100, user="bob", status="done"))
    done = list(metadata_store.query("batches", {"status": "done"}, partition_key="alice", order_by="n"))
    assert [d["n"] for d in done] == [1, 3, 5]
    desc = list(metadata_store.query("batches", {"status": "done"}, order_by="n", descending=True, limit=2))
    assert [d["n"] for d in desc] == [100, 5]
    nested = list(metadata_store.query("batches", {"meta.tier": 0}, partition_key="alice", order_by="n"))
    assert [d["n"] for d in nested] == [0, 3]
    assert list(metadata_store.query("batches", {"status": "x' OR '1'='1"})) == []


def test_query_refuses_injection_in_field_names(metadata_store):
    with pytest.raises(ValueError):
        list(metadata_store.query("batches", {"status') OR 1=1 --": "x"}))
    with pytest.raises(ValueError):
        list(metadata_store.query("batches", order_by="n; DROP TABLE documents"))


def test_a_document_with_a_ttl_expires_after_its_last_write(metadata_store):
    """Cosmos DB's per-item time to live (container default -1): a positive ``ttl`` makes the document
    disappear from reads and queries that many seconds after its last write; others stay."""
    import time

    metadata_store.upsert("batches", _batch(1, ttl=1))
    metadata_store.upsert("batches", _batch(2))
    metadata_store.upsert("batches", _batch(3, ttl=-1))  # -1: never
    assert metadata_store.read("batches", "b1", "alice") is not None
    time.sleep(2.5)
    assert metadata_store.read("batches", "b1", "alice") is None
    assert sorted(d["id"] for d in metadata_store.query("batches", partition_key="alice")) == ["b2", "b3"]
    metadata_store.purge_expired()
    assert metadata_store.read("batches", "b2", "alice") is not None
