"""Operators' commands behind `imgpipe reprocess` and `imgpipe lineage` (the same things an operator does
in the Dagster UI: a backfill of selected batch partitions, and the lineage of one image).

- ``reprocess``: selects batches (by id, by upload date, or those whose documents carry another
  processing version than the code location's now) and submits ONE Dagster asset backfill of the batch
  assets for them. The daemon runs it like a backfill started in the UI (one run per batch, under the
  run queue's limits); it shows in the UI's Backfills tab. Re-running a batch overwrites its renditions
  and documents by id and sends only events it has not sent (new version → new event ids).
- ``lineage``: reads the batch document, the manifest in the lake and the image documents, and returns
  the whole chain for each image (see ``lineage``).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Iterable

from orchestration.domain.manifest import manifest_path
from orchestration.domain.services import Services
from orchestration.settings import Settings


class OperateError(Exception):
    """A mistake an operator can fix (unknown batch, nothing selected); printed without a traceback."""


def current_processing_version() -> str:
    from assets.batch import PROCESSING_CODE_VERSION

    return PROCESSING_CODE_VERSION


def select_batches(services: Services, batch_ids: Iterable[str] = (), *, since: datetime | None = None,
                   changed: bool = False) -> list[str]:
    """Batch ids to reprocess: those named (each must exist), else every batch uploaded at or after
    ``since`` and/or (``changed``) processed under another processing version. Never the ones that were
    never queued or whose manifest was invalid (they have nothing to reprocess)."""
    named = list(dict.fromkeys(batch_ids))
    if named:
        found = {d["batch_id"] for b in named for d in services.metadata.query("batches", {"batch_id": b})}
        missing = [b for b in named if b not in found]
        if missing:
            raise OperateError(f"no such batch: {', '.join(missing)}")
        return named
    if since is None and not changed:
        raise OperateError("say which batches: BATCH ids, --since DATE or --changed")
    version = current_processing_version() if changed else None
    chosen = []
    for d in services.metadata.query("batches", None):
        if d.get("status") in ("invalid", "deleted") or not d.get("images"):
            continue
        if since is not None and d.get("created_at", "") < since.isoformat():
            continue
        if changed and d.get("processing_version") == version:
            continue
        chosen.append(d["batch_id"])
    return sorted(chosen)


def submit_reprocess(settings: Settings, batch_ids: list[str], *, reason: str = "") -> str:
    """One asset backfill of the batch assets for ``batch_ids`` on the stack's Dagster instance; returns
    its id (the UI shows it under Backfills; `dagster/backfill` tags its runs)."""
    from dagster import DagsterInstance
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    from orchestration.definitions import defs
    from orchestration.partitions import batches_partitions

    if not batch_ids:
        raise OperateError("no batch selected: nothing to reprocess")
    graph = defs.resolve_asset_graph()
    keys = [k for k in graph.get_all_asset_keys()
            if graph.get(k).partitions_def == batches_partitions]
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        known = set(instance.get_dynamic_partitions(batches_partitions.name))
        unknown = [b for b in batch_ids if b not in known]
        if unknown:  # a batch that never reached a run has no partition yet
            instance.add_dynamic_partitions(batches_partitions.name, unknown)
        backfill = PartitionBackfill.from_asset_partitions(
            backfill_id=make_new_backfill_id(),
            asset_graph=graph,
            partition_names=batch_ids,
            asset_selection=keys,
            backfill_timestamp=time.time(),
            tags={"imgpipe/reprocess": "cli"},
            dynamic_partitions_store=instance,
            all_partitions=False,
            title=f"imgpipe reprocess: {len(batch_ids)} batch(es)",
            description=reason or "submitted by `imgpipe reprocess`",
            run_config=None,
        )
        instance.add_backfill(backfill)
        return backfill.backfill_id


def dagster_ui_url(settings: Settings) -> str:
    return (settings.dagster_ui_url or f"http://127.0.0.1:{settings.webserver_port}").rstrip("/")


def lineage(services: Services, settings: Settings, batch_id: str, image_id: str | None = None) -> dict:
    """The chain of one batch (or one of its images): who uploaded it and when, each image's source
    sha256 and raw path, the run and its Dagster UI link, the processing version and image library
    versions, every rendition with path, size and sha256, the near-duplicate links, and every earlier
    processing (history) and run of the batch."""
    [batch] = list(services.metadata.query("batches", {"batch_id": batch_id}))[:1] or [None]
    if batch is None:
        raise OperateError(f"no such batch: {batch_id}")
    ui = dagster_ui_url(settings)
    try:
        import json

        manifest = json.loads(services.lake.read(manifest_path(batch_id)))
    except Exception:  # noqa: BLE001 - a deleted or missing manifest is shown as such
        manifest = {"images": []}
    raw = {i["image_id"]: i for i in manifest.get("images", [])}
    images = []
    for doc in sorted(services.metadata.query("images", partition_key=batch_id), key=lambda d: d["image_id"]):
        if image_id and doc["image_id"] != image_id:
            continue
        src = raw.get(doc["image_id"], {})
        run_id = doc.get("dagster_run_id")
        images.append({
            "image_id": doc["image_id"],
            "name": doc.get("name"),
            "source": {"sha256": doc.get("sha256") or src.get("sha256"), "bytes": doc.get("size"),
                       "raw_path": src.get("lake_path"), "sniffed_type": doc.get("sniffed_type")},
            "outcome": doc.get("outcome"), "code": doc.get("code"), "reason": doc.get("reason"),
            "processed_at": doc.get("processed_at"),
            "run": {"run_id": run_id, "url": f"{ui}/runs/{run_id}" if run_id else None},
            "processing_version": doc.get("processing_version"),
            "libraries": doc.get("libraries"),
            "renditions": [{k: r.get(k) for k in ("name", "format", "width", "height", "path", "bytes", "sha256")}
                           for r in doc.get("renditions") or ()],
            "near_duplicates": doc.get("near_duplicates") or [],
            "history": doc.get("history") or [],
        })
    if image_id and not images:
        raise OperateError(f"batch {batch_id} has no image {image_id}")
    return {
        "batch_id": batch_id,
        "uploaded_by": batch.get("user_id"),
        "uploaded_at": batch.get("created_at"),
        "status": batch.get("status"),
        "user_metadata": batch.get("metadata"),
        "processing_version": batch.get("processing_version"),
        "runs": [{**r, "url": f"{ui}/runs/{r['run_id']}"} for r in batch.get("runs") or ()],
        "images": images,
    }
