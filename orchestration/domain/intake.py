"""Intake — where a batch enters the system. Used by `imgpipe upload` and the web app's upload page.

For each file: sniff its type from its bytes, refuse what is too large, empty or not a supported
image (with the file's name and the reason), and store the raw bytes of everything not over the size
cap in the lake under the batch (claim check). Then write the manifest to the lake, record the batch
document (status 'received') and send the manifest on the queue with ``message_id = batch_id`` (so a
retried send is dropped as a duplicate). Returns at once; the processing happens in a Dagster run.

Refused files stay in the manifest with their reason, so the run records them as rejected images and
the user sees every file of the batch in its status — nothing a user sent disappears silently. Their bytes
are not kept: the name, size, sha256, sniffed type and reason are all a user needs to see why (and the
file is still theirs).

Per-user limits (``IMGPIPE_MAX_BATCHES_IN_FLIGHT``, ``IMGPIPE_MAX_BYTES_PER_DAY``) are checked and taken
in one atomic step (``orchestration.domain.quota``) before anything is written, for the web app and the
CLI alike; a user over a limit gets ``QuotaExceeded`` naming it, and nothing of theirs is stored or lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Mapping

from assets.core.sniff import sniff_type, type_refusal
from orchestration.domain import quota
from orchestration.domain.batches import set_batch
from orchestration.domain.manifest import (
    META_KEY_PATTERN,
    USER_ID_PATTERN,
    BatchManifest,
    ManifestImage,
    Refusal,
    manifest_path,
    display_name,
    raw_path,
)
from orchestration.domain.services import Services


class IntakeError(ValueError):
    """The batch as a whole cannot be accepted (bad user id, bad metadata, no files, ...)."""


class QuotaExceeded(IntakeError):
    """The user is over one of the per-user limits; the message names it and when it frees up."""


@dataclass(frozen=True)
class IntakeItem:
    """One file offered for upload; ``read`` is only called when the file is within the size cap."""

    name: str
    size: int
    read: Callable[[], bytes]

    @classmethod
    def from_bytes(cls, name: str, data: bytes) -> "IntakeItem":
        return cls(name=name, size=len(data), read=lambda: data)

    @classmethod
    def from_path(cls, path: Path) -> "IntakeItem":
        return cls(name=path.name, size=path.stat().st_size, read=path.read_bytes)


@dataclass(frozen=True)
class FileReport:
    name: str
    image_id: str
    accepted: bool
    sniffed_type: str
    size: int
    code: str | None = None
    reason: str | None = None


@dataclass
class UploadResult:
    batch_id: str
    files: list[FileReport] = field(default_factory=list)
    sent: bool = True            # False: the queue dropped it as a duplicate of a send inside the window
    queued: bool = True          # False: the send failed; the reconciler will hand the batch to the queue
    queue_error: str | None = None

    @property
    def accepted(self) -> list[FileReport]:
        return [f for f in self.files if f.accepted]

    @property
    def refused(self) -> list[FileReport]:
        return [f for f in self.files if not f.accepted]


def new_batch_id(now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return f"b-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


def _kind(path: Path) -> str:
    """What a path is, in words, for a message about why it was not taken."""
    try:
        mode = path.lstat().st_mode
    except OSError:
        return "no such file or directory"
    import stat

    for test, name in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISLNK, "a broken symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files given directly, plus the regular files inside given directories (recursively, sorted,
    hidden files skipped). Inside a directory, symbolic links that lead out of it are not followed (a link
    to a file within it is taken once, as that file). A path that is not a regular file or directory is
    an error naming it and what it is."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            root = path.resolve()
            seen: set[Path] = set()
            for child in sorted(path.rglob("*")):  # rglob does not descend into symlinked directories
                rel = child.relative_to(path)
                if any(part.startswith(".") for part in rel.parts):
                    continue
                real = child.resolve()
                if not real.is_relative_to(root) or not real.is_file() or real in seen:
                    continue  # a link out of the directory, a pipe or device, or a file already taken
                seen.add(real)
                out.append(child)
        elif path.is_file():
            out.append(path)
        else:
            raise IntakeError(f"{path}: {_kind(path)}; give image files or directories")
    return out


def parse_metadata(pairs: Iterable[str]) -> dict[str, str]:
    """``key=value`` strings from the command line into a dict."""
    meta: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise IntakeError(f"metadata {pair!r} is not key=value")
        meta[key.strip()] = value
    return meta


def validate_metadata(meta: Mapping[str, str], max_bytes: int) -> dict[str, str]:
    clean: dict[str, str] = {}
    for key, value in meta.items():
        if not re.fullmatch(META_KEY_PATTERN, key):
            raise IntakeError(f"metadata key {key!r} must be 1-64 letters, digits, '_', '.', '-'")
        if not isinstance(value, str):
            raise IntakeError(f"metadata value of {key!r} must be text")
        clean[key] = value
    size = len(json.dumps(clean).encode())
    if size > max_bytes:
        raise IntakeError(f"metadata is {size} bytes; the limit is {max_bytes} bytes")
    return clean


def _display_name(name: str) -> str:
    """The user's file name for display: the last path component, control characters removed."""
    base = re.split(r"[\\/]", name)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return (base or "unnamed")[:255]


def check_size(size: int, max_bytes: int) -> Refusal | None:
    if size > max_bytes:
        return Refusal(code="file_too_large", reason=f"{size:,} bytes exceeds the {max_bytes:,}-byte limit per file")
    return None


def check_content(data: bytes) -> Refusal | None:
    """Intake's content check (the web app runs the same one before sending): the type from the bytes, with a
    reason that says what a refused file is (camera RAW, video, JPEG XL, …) and what to do."""
    if not data:
        return Refusal(code="empty_file", reason="the file is empty")
    refused = type_refusal(data)
    return Refusal(code=refused[0], reason=refused[1]) if refused else None


def upload_batch(
    services: Services,
    items: Iterable[IntakeItem],
    *,
    user_id: str,
    metadata: Mapping[str, str] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    owner_name: str | None = None,
) -> UploadResult:
    """Store, record and queue one batch. ``owner_name`` is how the person is shown to operators (their
    sign-in name or e-mail): display only, never used to decide who may see what (``user_id`` does)."""
    settings = services.settings
    if not isinstance(user_id, str) or not re.fullmatch(USER_ID_PATTERN, user_id):
        raise IntakeError(f"user id {user_id!r} must be 1-128 letters, digits, '_', '.', '@', '-'")
    meta = validate_metadata(metadata or {}, settings.max_metadata_bytes)
    items = list(items)
    if not items:
        raise IntakeError("a batch needs at least one file")
    if len(items) > settings.max_files_per_batch:
        raise IntakeError(f"{len(items)} files; a batch holds at most {settings.max_files_per_batch}")
    record = batch_record_bytes([item.name for item in items], meta)
    if record > BATCH_RECORD_LIMIT:
        fits = int(len(items) * BATCH_RECORD_LIMIT / record)
        raise IntakeError(f"{len(items)} files make a batch record of about {record / 1e6:.1f} MB; the metadata "
                          f"store keeps at most {BATCH_RECORD_LIMIT / 1e6:.1f} MB per record: upload them as "
                          f"batches of up to about {fits} files")
    offered = sum(item.size for item in items if item.size <= settings.max_file_bytes)
    batch_id = new_batch_id()
    try:  # checked and taken in one step (orchestration/domain/quota.py): concurrent uploads cannot pass it
        quota.reserve(services, user_id, batch_id, offered)
    except quota.QuotaExceeded as exc:
        raise QuotaExceeded(str(exc)) from None
    try:
        return _store_batch(services, items, batch_id, user_id, meta, progress, display_name(owner_name or ""))
    except BaseException:
        try:
            if services.metadata.read("batches", batch_id, user_id) is None:  # never recorded: give it back
                quota.release(services, user_id, batch_id)
        except Exception:  # noqa: BLE001 - the store is away: the reservation lapses after quota.ORPHAN_AFTER
            pass
        raise


# Cosmos DB keeps at most 2 MB per item. A batch's document lists its files (about 100 bytes each besides the
# name) and the digests of the events sent for it (2 per image, 19 bytes each, for the current processing and,
# while a reprocessing runs, the one before): what would not fit is refused here, before anything is stored.
BATCH_RECORD_LIMIT = 2_000_000  # (of 2 MiB: room for the rest of the document)


def batch_record_bytes(names: list[str], metadata: Mapping[str, str]) -> int:
    """The most the batch's document may grow to (see BATCH_RECORD_LIMIT)."""
    return 2_000 + len(json.dumps(dict(metadata))) + sum(
        100 + len(json.dumps(_display_name(n))) + 2 * 2 * 19 for n in names)


class NothingAcceptable(IntakeError):
    """No file of the upload is an image we accept: nothing is queued. ``files`` says why for each."""

    def __init__(self, message: str, files: list):
        super().__init__(message)
        self.files = files


def _store_batch(services: Services, items: list, batch_id: str, user_id: str, meta: dict,
                 progress: Callable[[int, int, str], None] | None, owner: str) -> UploadResult:
    settings = services.settings
    offered = sum(item.size for item in items if item.size <= settings.max_file_bytes)
    result = UploadResult(batch_id=batch_id)
    stored = 0
    entries: list[ManifestImage] = []
    for index, item in enumerate(items, start=1):
        image_id = f"i{index:04d}"
        name = _display_name(item.name)
        if progress:
            progress(index - 1, len(items), name)
        refused: Refusal | None = check_size(item.size, settings.max_file_bytes)
        sha = lake_path = None
        mime = "unknown"
        if refused is None:
            try:
                data = item.read()
            except OSError as exc:
                data = None
                refused = Refusal(code="unreadable", reason=f"could not read the file: {exc.strerror or exc}")
            if data is not None:
                mime = sniff_type(data[:64])
                sha = hashlib.sha256(data).hexdigest()
                refused = check_content(data)
                if refused is None:  # only images are kept; a refusal records why, not the bytes
                    lake_path = raw_path(batch_id, image_id)
                    services.lake.write(lake_path, data, content_type="application/octet-stream")
                    stored += len(data)
            data = None  # one file's bytes in memory at a time
        entries.append(
            ManifestImage(
                image_id=image_id, name=name, size=item.size, sha256=sha, sniffed_type=mime,
                lake_path=lake_path, refused=refused,
            )
        )
        result.files.append(
            FileReport(
                name=name, image_id=image_id, accepted=refused is None, sniffed_type=mime, size=item.size,
                code=refused.code if refused else None, reason=refused.reason if refused else None,
            )
        )
    if progress:
        progress(len(items), len(items), "")
    if not any(f.accepted for f in result.files):
        # Nothing to process: refused as a whole, before anything is recorded or queued (nothing was stored).
        reasons = "; ".join(f"{f.name}: {f.reason}" for f in result.files[:5])
        more = f" (and {len(result.files) - 5} more)" if len(result.files) > 5 else ""
        raise NothingAcceptable(f"none of the {len(result.files)} file(s) can be processed — {reasons}{more}",
                                result.files)

    manifest = BatchManifest(
        batch_id=batch_id, user_id=user_id, created_at=datetime.now(timezone.utc), metadata=meta, images=entries
    )
    body = manifest.model_dump_json().encode()
    doc = {**batch_document(manifest), "bytes": offered, "stored_bytes": stored, **({"owner_name": owner} if owner else {})}
    try:
        services.lake.write(manifest_path(batch_id), body, content_type="application/json")
        services.metadata.upsert("batches", doc)
    except Exception as exc:  # a busy or unreachable store: the user is told, the CLI shows no traceback
        raise IntakeError(f"could not record batch {batch_id}: the metadata store is busy or unreachable "
                          f"({type(exc).__name__}); nothing was queued "
                          f"— try again") from exc
    try:
        result.sent = services.queue.send(body, message_id=batch_id, application_properties={"user_id": user_id})
    except Exception as exc:
        # The batch is stored (files, manifest, document) but not on the queue. The reconciler
        # (sensors/reconcile_sensor.py) re-sends it; the queue's duplicate detection and the run key keep
        # it to one run even if this send did reach the queue after all.
        result.queued, result.queue_error = False, f"{type(exc).__name__}: {exc}"
        try:
            set_batch(services.metadata, batch_id, user_id, queue_error=result.queue_error[:1000])
        except Exception:
            pass  # deleted meanwhile, or the store is busy: the reconciler finds a 'received' batch either way
    return result


def batch_document(manifest: BatchManifest) -> dict:
    """The batch document as intake records it (status 'received'); the run updates it."""
    return {
        "id": manifest.batch_id,
        "type": "batch",
        "user_id": manifest.user_id,
        "batch_id": manifest.batch_id,
        "status": "received",
        "created_at": manifest.created_at.isoformat(),
        "metadata": manifest.metadata,
        "image_count": len(manifest.images),
        "images": [
            {
                "image_id": img.image_id,
                "name": img.name,
                "size": img.size,
                "sniffed_type": img.sniffed_type,
                "refused": img.refused.model_dump() if img.refused else None,
            }
            for img in manifest.images
        ],
    }
