"""The work of one batch run, without Dagster: process every manifest image into renditions in the lake,
then turn the outcomes into metadata documents and Kafka events. ``assets.batch`` wraps these steps as
assets; keeping them here makes them testable on their own and keeps the asset code thin.

Idempotency: every write is keyed by (batch id, image id, rendition name) — lake paths, document ids
and event ids — so a re-executed run overwrites instead of duplicating.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Iterable

from assets.core import DEFAULT_RENDITIONS, PROCESSING_VERSION, ImageRejected, Limits, process_image
from orchestration.manifest import BatchManifest, ManifestImage, manifest_path, outcomes_path, rendition_path
from orchestration.ports.lake import Lake, ObjectNotFound
from orchestration.ports.results import EVENT_BATCH_COMPLETED, EVENT_IMAGE_PROCESSED, EVENT_IMAGE_REJECTED

log = logging.getLogger(__name__)


def load_manifest(lake: Lake, batch_id: str) -> BatchManifest:
    return BatchManifest.model_validate_json(lake.read(manifest_path(batch_id)))


def _rejected(image: ManifestImage, code: str, reason: str, started: float) -> dict:
    return {
        "image_id": image.image_id,
        "name": image.name,
        "outcome": "rejected",
        "code": code,
        "reason": reason,
        "sha256": image.sha256,
        "size": image.size,
        "sniffed_type": image.sniffed_type,
        "facts": {},
        "renditions": [],
        "processing_ms": round((time.perf_counter() - started) * 1000, 1),
    }


def process_one(lake: Lake, batch_id: str, image: ManifestImage, limits: Limits) -> dict:
    """Process one image into its renditions in the lake. Never raises for bad input: the outcome is
    'processed' or 'rejected' with a code and a reason."""
    started = time.perf_counter()
    if image.refused is not None:
        return _rejected(image, image.refused.code, image.refused.reason, started)
    try:
        data = lake.read(image.lake_path)
    except ObjectNotFound:
        return _rejected(image, "raw_missing", f"the uploaded bytes are missing from the lake ({image.lake_path})", started)
    if image.sha256 and hashlib.sha256(data).hexdigest() != image.sha256:
        return _rejected(image, "checksum_mismatch", "the stored bytes do not match the uploaded file's sha256", started)
    try:
        result = process_image(data, DEFAULT_RENDITIONS, limits)
    except ImageRejected as exc:
        return _rejected(image, exc.code, exc.message, started)
    except Exception as exc:  # a decoder bug must not fail the batch; record it as this image's rejection
        log.exception("unexpected error processing %s/%s", batch_id, image.image_id)
        return _rejected(image, "processing_error", f"{type(exc).__name__}: {exc}", started)
    renditions = []
    for r in result.renditions:
        path = rendition_path(batch_id, image.image_id, r.name, r.extension)
        lake.write(path, r.data, content_type=f"image/{r.extension.replace('jpg', 'jpeg')}")
        renditions.append(
            {"name": r.name, "width": r.width, "height": r.height, "format": r.format, "bytes": len(r.data), "path": path}
        )
    return {
        "image_id": image.image_id,
        "name": image.name,
        "outcome": "processed",
        "code": None,
        "reason": None,
        "sha256": image.sha256,
        "size": image.size,
        "sniffed_type": image.sniffed_type,
        "facts": result.facts,
        "renditions": renditions,
        "processing_ms": round((time.perf_counter() - started) * 1000, 1),
    }


def process_batch(lake: Lake, manifest: BatchManifest, *, workers: int, limits: Limits = Limits()) -> list[dict]:
    """All images of the batch, ``workers`` at a time. Each worker reads its own image's bytes, so
    memory is bounded by the number of workers, not by the batch size. Writes outcomes.json."""
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="imgpipe-image") as pool:
        outcomes = list(pool.map(lambda img: process_one(lake, manifest.batch_id, img, limits), manifest.images))
    lake.write(
        outcomes_path(manifest.batch_id),
        json.dumps({"processing_version": PROCESSING_VERSION, "images": outcomes}, indent=1).encode(),
        content_type="application/json",
    )
    return outcomes


def load_outcomes(lake: Lake, batch_id: str) -> list[dict]:
    return json.loads(lake.read(outcomes_path(batch_id)))["images"]


def image_documents(manifest: BatchManifest, outcomes: Iterable[dict], run_id: str) -> list[dict]:
    now = datetime.now(timezone.utc).isoformat()
    return [
        {
            **o,
            "id": o["image_id"],
            "type": "image",
            "batch_id": manifest.batch_id,
            "user_id": manifest.user_id,
            "user_metadata": manifest.metadata,
            "processing_version": PROCESSING_VERSION,
            "dagster_run_id": run_id,
            "processed_at": now,
        }
        for o in outcomes
    ]


def summarize(docs: Iterable[dict]) -> dict:
    docs = list(docs)
    processed = sum(1 for d in docs if d["outcome"] == "processed")
    return {"image_count": len(docs), "processed": processed, "rejected": len(docs) - processed}


def result_events(manifest: BatchManifest, docs: list[dict]) -> list[dict]:
    """One event per image, then one batch-complete event; ids are deterministic (consumers dedupe)."""
    events = []
    for d in docs:
        kind = EVENT_IMAGE_PROCESSED if d["outcome"] == "processed" else EVENT_IMAGE_REJECTED
        events.append(
            {
                "event_id": f"{manifest.batch_id}:{d['image_id']}:{d['outcome']}",
                "type": kind,
                "batch_id": manifest.batch_id,
                "user_id": manifest.user_id,
                "image_id": d["image_id"],
                "name": d["name"],
                "outcome": d["outcome"],
                "code": d["code"],
                "reason": d["reason"],
                "renditions": d["renditions"],
            }
        )
    events.append(
        {
            "event_id": f"{manifest.batch_id}:completed",
            "type": EVENT_BATCH_COMPLETED,
            "batch_id": manifest.batch_id,
            "user_id": manifest.user_id,
            "status": "completed",
            **summarize(docs),
        }
    )
    return events
