"""ADLS Gen2 adapter of the Lake port. Azure is touched here.

Object operations use the Blob API (azure-storage-blob): it works unchanged on ADLS Gen2 accounts
(hierarchical namespace) and on Azurite, so the same code is tested locally. Soft delete and restore
use the service's own soft-delete feature, whose retention (7 days) is set on the account by the
infrastructure code:
- flat-namespace accounts (and Blob soft delete): ``list_blobs(include=["deleted"])`` + ``undelete_blob``;
- hierarchical-namespace accounts (``hns=True``): the DFS API, ``list_deleted_paths`` and
  ``_undelete_path`` with the deletion id, because blob undelete is not available there.
Azurite implements neither (its undelete answers "not implemented"), so those operations are tested
against a real account only (tests skip with that reason otherwise). The service purges expired
soft-deleted objects by itself: ``purge_expired`` has nothing to do and returns 0.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContentSettings

from orchestration.ports.lake import DeletedObject, LakeError, ObjectInfo, ObjectNotFound, normalize_path


class AzureLake:
    def __init__(
        self,
        service: BlobServiceClient,
        container: str,
        *,
        hns: bool = False,
        datalake_service: Any = None,
        soft_delete_days: float = 7.0,
    ):
        self._container = service.get_container_client(container)
        self._hns = hns
        self._fs = datalake_service.get_file_system_client(container) if datalake_service is not None else None
        self.retention = timedelta(days=soft_delete_days)
        try:
            self._container.create_container()
        except ResourceExistsError:
            pass

    @classmethod
    def from_settings(cls, *, container: str, connection_string: str | None = None, account_url: str | None = None,
                      hns: bool = False, soft_delete_days: float = 7.0) -> "AzureLake":
        """A connection string (Azurite, or keys) or an account URL with DefaultAzureCredential."""
        if connection_string:
            service = BlobServiceClient.from_connection_string(connection_string)
            datalake = None
            if hns:
                from azure.storage.filedatalake import DataLakeServiceClient

                datalake = DataLakeServiceClient.from_connection_string(connection_string)
        elif account_url:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
            service = BlobServiceClient(account_url, credential=credential)
            datalake = None
            if hns:
                from azure.storage.filedatalake import DataLakeServiceClient

                datalake = DataLakeServiceClient(account_url.replace(".blob.", ".dfs."), credential=credential)
        else:
            raise LakeError("the Azure lake needs a connection string or an account URL")
        return cls(service, container, hns=hns, datalake_service=datalake, soft_delete_days=soft_delete_days)

    def write(self, path: str, data: bytes, *, content_type: str | None = None) -> None:
        settings = ContentSettings(content_type=content_type) if content_type else None
        # A single Put Blob (or a block list committed at the end for big objects): readers see the old
        # or the new object, never a mix.
        self._container.upload_blob(normalize_path(path), data, overwrite=True, content_settings=settings)

    def read(self, path: str) -> bytes:
        try:
            return self._container.download_blob(normalize_path(path)).readall()
        except ResourceNotFoundError:
            raise ObjectNotFound(path) from None

    def exists(self, path: str) -> bool:
        return self._container.get_blob_client(normalize_path(path)).exists()

    def list(self, prefix: str = "") -> Iterator[str]:
        start = normalize_path(prefix.rstrip("/")) + "/" if prefix.strip("/") else None
        names = []
        for blob in self._container.list_blobs(name_starts_with=start, include=["metadata"]):
            if (blob.metadata or {}).get("hdi_isfolder") == "true":  # ADLS Gen2 directories
                continue
            names.append(blob.name)
        return iter(sorted(names))

    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        start = normalize_path(prefix.rstrip("/")) + "/" if prefix.strip("/") else None
        infos = [ObjectInfo(b.name, b.size, b.last_modified)
                 for b in self._container.list_blobs(name_starts_with=start, include=["metadata"])
                 if (b.metadata or {}).get("hdi_isfolder") != "true"]
        return iter(sorted(infos, key=lambda i: i.path))

    def delete(self, path: str) -> None:
        try:
            self._container.delete_blob(normalize_path(path))
        except ResourceNotFoundError:
            raise ObjectNotFound(path) from None

    def list_deleted(self, prefix: str = "") -> list[DeletedObject]:
        now = datetime.now(timezone.utc)
        out = []
        if self._hns and self._fs is not None:
            for p in self._fs.list_deleted_paths(path_prefix=prefix or None):
                deleted_at = p.deleted_time
                remaining = timedelta(days=p.remaining_retention_days or 0)
                out.append(DeletedObject(p.name, p.deletion_id, deleted_at, now + remaining))
        else:
            for b in self._container.list_blobs(name_starts_with=prefix or None, include=["deleted"]):
                if not b.deleted:
                    continue
                deleted_at = b.deleted_time or now
                remaining = timedelta(days=b.remaining_retention_days) if b.remaining_retention_days else self.retention
                out.append(DeletedObject(b.name, b.version_id or deleted_at.isoformat(), deleted_at, now + remaining))
        return sorted(out, key=lambda d: d.deleted_at, reverse=True)

    def restore(self, path: str, deletion_id: str | None = None) -> None:
        normalize_path(path)
        if self.exists(path):
            raise LakeError(f"cannot restore {path!r}: a live object already exists there")
        candidates = [d for d in self.list_deleted(path) if d.path == path
                      and (deletion_id is None or d.deletion_id == deletion_id)]
        if not candidates:
            raise ObjectNotFound(path)
        if self._hns and self._fs is not None:
            self._fs._undelete_path(path, candidates[0].deletion_id)  # the SDK's documented sample API
        else:
            self._container.get_blob_client(path).undelete_blob()

    def purge_expired(self, now: datetime | None = None) -> int:
        return 0  # the storage service purges soft-deleted data after its retention period
