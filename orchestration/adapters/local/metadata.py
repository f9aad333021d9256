"""Local MetadataStore adapter: documents as JSON text in one SQLite table.

Queries use ``json_extract`` with bound parameters, which gives the same answers as the Cosmos DB
query the Azure adapter sends for the same filters.

Time to live, as Cosmos DB has it (the container's default TTL is -1: items live until they say
otherwise): a document with a positive ``ttl`` (seconds) expires ``ttl`` seconds after its last write
(``_ts``, seconds since the epoch, set on every write) — it is gone from ``read`` and ``query`` at once
and removed from the file by ``purge_expired`` (Cosmos DB deletes it in the background).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping

from orchestration.adapters.local.sqlite import connect, init_db
from orchestration.ports.metadata import (
    PARTITION_KEYS,
    Conflict,
    DocumentNotFound,
    MetadataError,
    PreconditionFailed,
    check_field,
    partition_value,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    container TEXT NOT NULL,
    pk        TEXT NOT NULL,
    id        TEXT NOT NULL,
    etag      TEXT NOT NULL,
    body      TEXT NOT NULL,
    PRIMARY KEY (container, pk, id)
);
"""


class SqliteMetadataStore:
    def __init__(self, path: Path | str, *, clock=time.time):
        self.path = Path(path)
        self._clock = clock
        init_db(self.path, _SCHEMA)

    def _stored(self, doc: Mapping[str, Any], etag: str) -> tuple[dict, str]:
        body = {k: v for k, v in doc.items() if k not in ("_etag", "_ts")}
        body["_etag"] = etag
        body["_ts"] = int(self._clock())
        return body, json.dumps(body, sort_keys=True, default=str)

    def _live(self, body: dict, now: float | None = None) -> bool:
        ttl = body.get("ttl")
        if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or ttl <= 0:
            return True
        return (now if now is not None else self._clock()) < body.get("_ts", 0) + ttl

    def purge_expired(self, now: float | None = None) -> int:
        """Remove documents whose ``ttl`` ran out; returns how many (Cosmos DB does this itself)."""
        now = self._clock() if now is None else now
        with connect(self.path, immediate=True) as conn:
            rows = conn.execute("SELECT container, pk, id, body FROM documents "
                                "WHERE json_extract(body, '$.ttl') > 0").fetchall()
            gone = [(r["container"], r["pk"], r["id"]) for r in rows if not self._live(json.loads(r["body"]), now)]
            conn.executemany("DELETE FROM documents WHERE container=? AND pk=? AND id=?", gone)
        return len(gone)

    def _write(self, container: str, doc: Mapping[str, Any], *, mode: str, if_match: str | None) -> dict:
        pk = partition_value(container, doc)
        etag = f'"{uuid.uuid4()}"'
        body, text = self._stored(doc, etag)
        with connect(self.path, immediate=True) as conn:
            row = conn.execute(
                "SELECT etag FROM documents WHERE container=? AND pk=? AND id=?", (container, pk, doc["id"])
            ).fetchone()
            if mode == "create" and row is not None:
                raise Conflict(f"{container}/{pk}/{doc['id']} already exists")
            if mode == "replace" and row is None:
                raise DocumentNotFound(f"{container}/{pk}/{doc['id']}")
            if if_match is not None and (row is None or row["etag"] != if_match):
                raise PreconditionFailed(f"{container}/{pk}/{doc['id']}: etag {if_match} is stale")
            conn.execute(
                "INSERT INTO documents(container, pk, id, etag, body) VALUES (?,?,?,?,?) "
                "ON CONFLICT(container, pk, id) DO UPDATE SET etag=excluded.etag, body=excluded.body",
                (container, pk, doc["id"], etag, text),
            )
        return body

    def create(self, container: str, doc: Mapping[str, Any]) -> dict:
        return self._write(container, doc, mode="create", if_match=None)

    def upsert(self, container: str, doc: Mapping[str, Any], *, if_match: str | None = None) -> dict:
        return self._write(container, doc, mode="upsert", if_match=if_match)

    def replace(self, container: str, doc: Mapping[str, Any], *, if_match: str | None = None) -> dict:
        return self._write(container, doc, mode="replace", if_match=if_match)

    def read(self, container: str, id: str, partition_key: str) -> dict | None:
        if container not in PARTITION_KEYS:
            raise MetadataError(f"unknown container {container!r}")
        with connect(self.path) as conn:
            row = conn.execute(
                "SELECT body FROM documents WHERE container=? AND pk=? AND id=?", (container, partition_key, id)
            ).fetchone()
        body = json.loads(row["body"]) if row else None
        return body if body is not None and self._live(body) else None

    def delete(self, container: str, id: str, partition_key: str) -> bool:
        with connect(self.path, immediate=True) as conn:
            cur = conn.execute(
                "DELETE FROM documents WHERE container=? AND pk=? AND id=?", (container, partition_key, id)
            )
        return cur.rowcount > 0

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
        if container not in PARTITION_KEYS:
            raise MetadataError(f"unknown container {container!r}")
        sql = ["SELECT body FROM documents WHERE container = ?"]
        params: list[Any] = [container]
        if partition_key is not None:
            sql.append("AND pk = ?")
            params.append(partition_key)
        for field, value in (where or {}).items():
            expr = f"json_extract(body, '$.{check_field(field)}')"
            if value is None:
                sql.append(f"AND {expr} IS NULL")
            elif isinstance(value, (str, int, float, bool)):
                sql.append(f"AND {expr} = ?")
                params.append(value)
            else:
                raise TypeError(f"filter value for {field!r} must be a scalar, got {type(value).__name__}")
        if order_by:
            sql.append(f"ORDER BY json_extract(body, '$.{check_field(order_by)}') {'DESC' if descending else 'ASC'}, id")
        if limit is not None:
            sql.append("LIMIT ?")
            params.append(int(limit))
        with connect(self.path) as conn:
            rows = conn.execute(" ".join(sql), params).fetchall()
        now = self._clock()
        return iter([b for b in (json.loads(r["body"]) for r in rows) if self._live(b, now)])
