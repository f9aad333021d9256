"""What the web pages show, as plain functions over the ports (no Streamlit here, so they are tested
directly). Every read is scoped to one user: a batch is read with the user as its partition key, so
another user's batch id finds nothing; operators (``IMGPIPE_OPERATORS``, ``Settings.operators``) may see
everyone's statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from orchestration.domain.intake import IntakeItem, check_content, check_size
from orchestration.domain.status import batch_status
from orchestration.domain.identity import user_id_for  # noqa: F401  (the pages' import point)
from orchestration.domain.services import Services

PAGE_SIZE = 24


def is_operator(email: str | None, operators: tuple[str, ...] | list[str]) -> bool:
    allowed = {e.strip().lower() for e in operators if e.strip()}
    return bool(email) and email.lower() in allowed


@dataclass(frozen=True)
class FileCheck:
    name: str
    size: int
    ok: bool
    reason: str | None


def precheck(files: list[tuple[str, bytes]], services: Services) -> list[FileCheck]:
    """The checks intake applies, run before sending so each file's reason shows at once."""
    s = services.settings
    out = []
    for name, data in files:
        refusal = check_size(len(data), s.max_file_bytes) or check_content(data)
        out.append(FileCheck(name, len(data), refusal is None, refusal.reason if refusal else None))
    return out


def items(files: list[tuple[str, bytes]]) -> list[IntakeItem]:
    return [IntakeItem.from_bytes(name, data) for name, data in files]


def user_batches(services: Services, user_id: str, limit: int = 50) -> list[dict]:
    """The user's batches, newest first (one partition: batches are partitioned by user)."""
    return list(services.metadata.query("batches", partition_key=user_id, order_by="created_at", descending=True,
                                        limit=limit))


def batch_for_user(services: Services, user_id: str, batch_id: str) -> dict | None:
    """A batch with its images, only if it belongs to ``user_id``; None otherwise (no hint it exists)."""
    if services.metadata.read("batches", batch_id, user_id) is None:
        return None
    return batch_status(services, batch_id, user_id)


def progress(status: dict) -> tuple[int, int]:
    images = status["images"]
    return sum(1 for i in images if i["outcome"] != "pending"), len(images)


def rendition(services: Services, user_id: str, batch_id: str, path: str) -> bytes | None:
    """Bytes of a rendition, only when the path belongs to one of the user's batches."""
    status = batch_for_user(services, user_id, batch_id)
    if status is None:
        return None
    allowed = {r["path"] for i in status["images"] for r in i["renditions"]}
    return services.lake.read(path) if path in allowed else None


def image_frame(services: Services, user_id: str | None) -> pd.DataFrame:
    """One row per image document; all users' when ``user_id`` is None (operators)."""
    where = {"user_id": user_id} if user_id else None
    rows = []
    for d in services.metadata.query("images", where):
        facts = d.get("facts") or {}
        rows.append({
            "user_id": d.get("user_id"),
            "batch_id": d.get("batch_id"),
            "image_id": d.get("image_id"),
            "name": d.get("name"),
            "day": (d.get("processed_at") or "")[:10],
            "outcome": d.get("outcome"),
            "reason_code": d.get("code"),
            "format": facts.get("format") or d.get("sniffed_type"),
            "width": facts.get("width"),
            "height": facts.get("height"),
            "bytes": d.get("size"),
            "processing_ms": d.get("processing_ms"),
            "near_duplicates": len(d.get("near_duplicates") or []),
        })
    return pd.DataFrame(rows, columns=["user_id", "batch_id", "image_id", "name", "day", "outcome", "reason_code",
                                       "format", "width", "height", "bytes", "processing_ms", "near_duplicates"])


def stats(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The BI view's tables, each ready for a chart."""
    if frame.empty:
        return {}
    rejected = frame[frame["outcome"] == "rejected"]
    return {
        "images per day": frame.groupby("day").agg(images=("image_id", "count"), batches=("batch_id", "nunique")),
        "rejection reasons": rejected.groupby("reason_code").size().rename("images").to_frame(),
        "formats": frame.groupby("format").size().rename("images").to_frame(),
        "processing ms per image": frame[frame["outcome"] == "processed"][["processing_ms"]].describe().T,
        "sizes (megapixels)": (frame["width"].fillna(0) * frame["height"].fillna(0) / 1e6).round(1)
        .value_counts().sort_index().rename("images").to_frame(),
        "near-duplicates": frame[frame["near_duplicates"] > 0][["batch_id", "name", "near_duplicates"]],
    }


def parse_extra(text: str) -> dict[str, str]:
    """'key=value' lines from the upload form (blank lines ignored); errors name the line."""
    from orchestration.domain.intake import IntakeError

    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise IntakeError(f"metadata line {n} ({line.strip()[:40]!r}) is not key=value")
        out[key.strip()] = value.strip()
    return out
