"""Lake port: the data lake that holds raw uploads and processed renditions (ADLS Gen2 in Azure).

Modelled on ADLS Gen2 / Blob semantics so the Azure adapter is a thin mapping:
- objects are addressed by a '/'-separated path inside one file system (container);
- ``write`` replaces the whole object atomically (readers see the old or the new bytes, never a mix);
- ``delete`` is a *soft* delete: the object disappears from ``read``/``list``/``exists`` but can be
  ``restore``d until the retention period (7 days by default, set on the account in Azure) runs out,
  after which ``purge_expired`` (the service itself in Azure) removes it for good.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Iterator, Protocol, runtime_checkable


class LakeError(Exception):
    """Base class of the lake's errors."""


class ObjectNotFound(LakeError, KeyError):
    def __init__(self, path: str):
        super().__init__(path)
        self.path = path

    def __str__(self) -> str:
        return f"no object at lake path {self.path!r}"


class InvalidPath(LakeError, ValueError):
    pass


@dataclass(frozen=True)
class ObjectInfo:
    path: str
    size: int
    modified_at: datetime  # last write (the blob's Last-Modified), timezone-aware


@dataclass(frozen=True)
class DeletedObject:
    path: str
    deletion_id: str
    deleted_at: datetime
    expires_at: datetime


# A segment never starts with "." (the local adapter keeps its own bookkeeping in dot-folders).
_SEGMENT = re.compile(r"^[A-Za-z0-9_=@+-][A-Za-z0-9._=@+-]*$")


def normalize_path(path: str) -> str:
    """Validate an object path: relative, '/'-separated, no '.'/'..' segments, no odd characters.

    Paths are built by the pipeline from ids it generated, never from user file names, so anything
    else is a programming error (or an attack) and is refused.
    """
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        raise InvalidPath(f"invalid lake path {path!r}: must be a non-empty relative '/'-separated path")
    segments = path.split("/")
    for seg in segments:
        if seg in ("", ".", "..") or not _SEGMENT.fullmatch(seg):
            raise InvalidPath(f"invalid lake path {path!r}: bad segment {seg!r}")
    return path


@runtime_checkable
class Lake(Protocol):
    def write(self, path: str, data: bytes, *, content_type: str | None = None) -> None:
        """Create or atomically replace the object at ``path``."""

    def read(self, path: str) -> bytes:
        """The object's bytes; ``ObjectNotFound`` when there is none."""

    def exists(self, path: str) -> bool: ...

    def list(self, prefix: str = "") -> Iterator[str]:
        """Paths of live objects under ``prefix`` (a directory path or ''), recursively, sorted."""

    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Like ``list``, with each object's size and last-modified time (lifecycle rules use the age)."""

    def delete(self, path: str) -> None:
        """Soft-delete the object; ``ObjectNotFound`` when there is none."""

    def list_deleted(self, prefix: str = "") -> list[DeletedObject]:
        """Soft-deleted objects still inside their retention period, newest first."""

    def restore(self, path: str, deletion_id: str | None = None) -> None:
        """Bring back a soft-deleted object (the newest deletion unless ``deletion_id`` says which).

        Raises ``ObjectNotFound`` when there is nothing to restore and ``LakeError`` when a live
        object already sits at ``path``.
        """

    def purge_expired(self, now: datetime | None = None) -> int:
        """Remove soft-deleted objects whose retention ran out; returns how many."""
