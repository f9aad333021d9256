"""Local Lake adapter: a directory tree under ``<data_dir>/lake``.

Writes go to a temporary file in the same directory, are fsynced and then ``os.replace``d into place,
so a reader never sees a half-written object. Soft-deleted objects move to
``<root>/.deleted/<deletion_id>/<path>`` with a small JSON record; they come back with ``restore`` and
are removed by ``purge_expired`` once their retention period is over.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

from orchestration.ports.lake import DeletedObject, LakeError, ObjectInfo, ObjectNotFound, normalize_path

_TRASH = ".deleted"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class LocalLake:
    def __init__(self, root: Path | str, *, soft_delete_days: float = 7.0, clock=_utcnow):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.retention = timedelta(days=soft_delete_days)
        self._clock = clock

    # -- helpers -------------------------------------------------------------------------------
    def _file(self, path: str) -> Path:
        return self.root / normalize_path(path)

    def local_path(self, path: str) -> Path:
        """Where the object lives on disk (for people browsing the data dir)."""
        return self._file(path)

    # -- Lake ----------------------------------------------------------------------------------
    def write(self, path: str, data: bytes, *, content_type: str | None = None) -> None:
        target = self._file(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def read(self, path: str) -> bytes:
        try:
            return self._file(path).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(path) from None

    def exists(self, path: str) -> bool:
        return self._file(path).is_file()

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self._file(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return iter(())
        found = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d != _TRASH]
            for name in filenames:
                if name.startswith(".tmp-"):
                    continue
                found.append(Path(dirpath, name).relative_to(self.root).as_posix())
        return iter(sorted(found))

    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        infos = []
        for path in self.list(prefix):
            try:
                st = self._file(path).stat()
            except FileNotFoundError:
                continue
            infos.append(ObjectInfo(path, st.st_size, datetime.fromtimestamp(st.st_mtime, timezone.utc)))
        return iter(infos)

    def delete(self, path: str) -> None:
        source = self._file(path)
        if not source.is_file():
            raise ObjectNotFound(path)
        deleted_at = self._clock()
        deletion_id = f"{int(deleted_at.timestamp() * 1_000_000):020d}-{uuid.uuid4().hex[:8]}"
        slot = self.root / _TRASH / deletion_id
        slot.mkdir(parents=True, exist_ok=True)
        # The expiry is fixed at deletion, by the retention in force then (as Azure's soft delete does).
        record = {"path": path, "deleted_at": deleted_at.isoformat(),
                  "expires_at": (deleted_at + self.retention).isoformat()}
        (slot / "record.json").write_text(json.dumps(record))
        target = slot / "object" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, target)
        except FileNotFoundError:  # deleted by another process between the check and the move
            shutil.rmtree(slot, ignore_errors=True)
            raise ObjectNotFound(path) from None
        self._prune_empty_dirs(source.parent)

    def _prune_empty_dirs(self, directory: Path) -> None:
        while directory != self.root and directory.is_dir():
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def _deleted_entries(self) -> list[tuple[Path, DeletedObject]]:
        trash = self.root / _TRASH
        if not trash.is_dir():
            return []
        entries = []
        for slot in trash.iterdir():
            try:
                record = json.loads((slot / "record.json").read_text())
            except (OSError, ValueError):
                continue
            deleted_at = datetime.fromisoformat(record["deleted_at"])
            entries.append(
                (
                    slot,
                    DeletedObject(
                        path=record["path"],
                        deletion_id=slot.name,
                        deleted_at=deleted_at,
                        expires_at=(datetime.fromisoformat(record["expires_at"]) if "expires_at" in record
                                    else deleted_at + self.retention),
                    ),
                )
            )
        entries.sort(key=lambda e: e[1].deletion_id, reverse=True)
        return entries

    def list_deleted(self, prefix: str = "") -> list[DeletedObject]:
        now = self._clock()
        return [
            obj
            for _, obj in self._deleted_entries()
            if obj.path.startswith(prefix) and obj.expires_at > now
        ]

    def restore(self, path: str, deletion_id: str | None = None) -> None:
        normalize_path(path)
        candidates = [
            (slot, obj)
            for slot, obj in self._deleted_entries()
            if obj.path == path
            and obj.expires_at > self._clock()
            and (deletion_id is None or obj.deletion_id == deletion_id)
        ]
        if not candidates:
            raise ObjectNotFound(path)
        if self.exists(path):
            raise LakeError(f"cannot restore {path!r}: a live object already exists there")
        slot, _ = candidates[0]
        target = self._file(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(slot / "object" / path, target)
        shutil.rmtree(slot, ignore_errors=True)

    def purge_expired(self, now: datetime | None = None) -> int:
        now = now or self._clock()
        purged = 0
        for slot, obj in self._deleted_entries():
            if obj.expires_at <= now:
                shutil.rmtree(slot, ignore_errors=True)
                purged += 1
        return purged
