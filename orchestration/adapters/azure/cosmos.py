"""Cosmos DB adapter of the MetadataStore port (azure-cosmos). Azure is touched here.

- Database and containers are created if missing, partitioned as ``PARTITION_KEYS`` says: ``batches``
  by ``/user_id`` (a user's batches: one partition), ``images`` by ``/batch_id`` (a batch's images: one
  partition; the near-duplicate lookup over a user's images is the one cross-partition query, and it
  filters on ``user_id`` so it can use the index).
- Etags: every write returns the new ``_etag``; ``if_match`` becomes ``match_condition=IfNotModified``
  (HTTP 412 → ``PreconditionFailed``).
- Queries are always parameterized (``@p0``, ``@p1`` …); field paths are validated identifiers. Only
  forms that both a real account and cosmosdb-server answer are used: WHERE equality, IS_DEFINED/IS_NULL,
  single-field ORDER BY, TOP. The SDK pages through results; we iterate lazily.
- 429 (request rate too large): the SDK retries, honouring the service's ``x-ms-retry-after-ms``, up
  to ``throttle_retries`` times and ``throttle_max_wait_seconds`` in all.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

from azure.core import MatchConditions
from azure.cosmos import CosmosClient, PartitionKey
from azure.cosmos.exceptions import CosmosAccessConditionFailedError, CosmosHttpResponseError, CosmosResourceExistsError, CosmosResourceNotFoundError

from orchestration.ports.metadata import (
    PARTITION_KEYS,
    Conflict,
    DocumentNotFound,
    MetadataError,
    PreconditionFailed,
    check_field,
    partition_value,
)

_SYSTEM = ("_rid", "_self", "_attachments", "_ts")


def _clean(doc: Mapping[str, Any]) -> dict:
    return {k: v for k, v in doc.items() if k not in _SYSTEM}


def build_query(
    where: Mapping[str, Any] | None,
    order_by: str | None,
    descending: bool,
    limit: int | None,
    partition: tuple[str, str] | None = None,
) -> tuple[str, list[dict]]:
    """The Cosmos SQL text and its parameters for the port's query subset. A single-partition query
    also filters on the partition key field itself: redundant for Cosmos DB, required by cosmosdb-server."""
    params: list[dict] = []
    clauses = []
    if partition is not None:
        clauses.append(f"c.{check_field(partition[0])} = @pk")
        params.append({"name": "@pk", "value": partition[1]})
    for i, (field, value) in enumerate((where or {}).items()):
        path = f"c.{check_field(field)}"
        if value is None:
            clauses.append(f"(NOT IS_DEFINED({path}) OR IS_NULL({path}))")
        elif isinstance(value, (str, int, float, bool)):
            clauses.append(f"{path} = @p{i}")
            params.append({"name": f"@p{i}", "value": value})
        else:
            raise TypeError(f"filter value for {field!r} must be a scalar, got {type(value).__name__}")
    top = ""
    if limit is not None:
        top = "TOP @limit "
        params.append({"name": "@limit", "value": int(limit)})
    sql = f"SELECT {top}* FROM c"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    if order_by:
        sql += f" ORDER BY c.{check_field(order_by)} {'DESC' if descending else 'ASC'}"
    return sql, params


class CosmosMetadataStore:
    def __init__(
        self,
        endpoint: str,
        credential: Any,
        *,
        database: str = "imgpipe",
        connection_verify: bool = True,
        throttle_retries: int = 9,
        throttle_max_wait_seconds: int = 30,
        **client_options: Any,
    ):
        self._client = CosmosClient(
            endpoint,
            credential=credential,
            connection_verify=connection_verify,
            retry_throttle_total=throttle_retries,
            retry_throttle_backoff_max=throttle_max_wait_seconds,
            **client_options,
        )
        db = self._client.create_database_if_not_exists(database)
        self._containers = {
            # default_ttl=-1: items never expire unless they carry a positive ``ttl`` (a deleted batch's
            # documents do: they expire when the restore period ends). The ARM template sets the same.
            name: db.create_container_if_not_exists(name, partition_key=PartitionKey(path=f"/{field}"),
                                                    default_ttl=-1)
            for name, field in PARTITION_KEYS.items()
        }

    def purge_expired(self, now: float | None = None) -> int:
        """Nothing to do: Cosmos DB deletes expired items (per-item ``ttl``) itself, in the background."""
        return 0

    def _container(self, name: str):
        try:
            return self._containers[name]
        except KeyError:
            raise MetadataError(f"unknown container {name!r} (known: {sorted(PARTITION_KEYS)})") from None

    @staticmethod
    def _body(doc: Mapping[str, Any]) -> dict:
        return {k: v for k, v in doc.items() if k != "_etag" and k not in _SYSTEM}

    def create(self, container: str, doc: Mapping[str, Any]) -> dict:
        partition_value(container, doc)
        try:
            return _clean(self._container(container).create_item(self._body(doc)))
        except CosmosResourceExistsError:
            raise Conflict(f"{container}/{doc['id']} already exists") from None

    def upsert(self, container: str, doc: Mapping[str, Any], *, if_match: str | None = None) -> dict:
        partition_value(container, doc)
        c = self._container(container)
        if if_match is not None:
            # An upsert with a condition is a replace of the version the caller read.
            return self.replace(container, doc, if_match=if_match)
        return _clean(c.upsert_item(self._body(doc)))

    def replace(self, container: str, doc: Mapping[str, Any], *, if_match: str | None = None) -> dict:
        partition_value(container, doc)
        kwargs = {"etag": if_match, "match_condition": MatchConditions.IfNotModified} if if_match else {}
        try:
            return _clean(self._container(container).replace_item(doc["id"], self._body(doc), **kwargs))
        except CosmosAccessConditionFailedError:
            raise PreconditionFailed(f"{container}/{doc['id']}: etag {if_match} is stale") from None
        except CosmosResourceNotFoundError:
            if if_match:
                raise PreconditionFailed(f"{container}/{doc['id']}: no such document for etag {if_match}") from None
            raise DocumentNotFound(f"{container}/{doc['id']}") from None

    def read(self, container: str, id: str, partition_key: str) -> dict | None:
        try:
            return _clean(self._container(container).read_item(item=id, partition_key=partition_key))
        except CosmosResourceNotFoundError:
            return None

    def delete(self, container: str, id: str, partition_key: str) -> bool:
        try:
            self._container(container).delete_item(item=id, partition_key=partition_key)
            return True
        except CosmosResourceNotFoundError:
            return False

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
        c = self._container(container)
        partition = (PARTITION_KEYS[container], partition_key) if partition_key is not None else None
        sql, params = build_query(where, order_by, descending, limit, partition)
        kwargs: dict = {"parameters": params}
        if partition_key is not None:
            kwargs["partition_key"] = partition_key
        else:
            kwargs["enable_cross_partition_query"] = True
        try:
            for doc in c.query_items(sql, **kwargs):
                yield _clean(doc)
        except CosmosHttpResponseError as exc:
            raise MetadataError(f"query on {container!r} failed: {exc.message}") from exc
