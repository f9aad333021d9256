"""The intake reconciler: batches that were stored but never reached a run are handed to the queue again.

A batch is stuck when its document has been ``received`` for longer than ``IMGPIPE_RECONCILE_AFTER_SECONDS``
and no run carries its run key — the upload's queue send failed (the user was told, with the batch id,
that it would be retried), or its message was lost or dead-lettered after ``MaxDeliveryCountExceeded``.
Each attempt re-sends the manifest stored in the lake with ``message_id = batch id``: the queue's duplicate
detection drops it when the first send did get through inside the window, and the batch sensor's
``run_key`` allows one run per batch whatever arrives twice. After ``IMGPIPE_RECONCILE_MAX_ATTEMPTS`` the
batch ends ``failed`` with the reason, so nothing stays stuck and nothing needs a human to notice.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from dagster import DefaultSensorStatus, ResourceParam, RunsFilter, SensorEvaluationContext, SkipReason, sensor

from orchestration.domain.batches import BatchDeleted, change_batch, run_key
from orchestration.domain.manifest import manifest_path
from orchestration.ports.lake import Lake, ObjectNotFound
from orchestration.ports.metadata import MetadataStore
from orchestration.ports.queue import BatchQueue
from orchestration.settings import load_settings

RUN_KEY_TAG = "dagster/run_key"


def _age_seconds(iso: str | None, now: float) -> float:
    if not iso:
        return float("inf")
    try:
        return now - datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return float("inf")


def reconcile(context: SensorEvaluationContext, metadata: MetadataStore, lake: Lake, queue: BatchQueue, *,
              after_seconds: float, max_attempts: int, now: float | None = None) -> dict[str, int]:
    """One pass; returns counts of what it did (``requeued``, ``failed``, ``waiting``)."""
    now = time.time() if now is None else now
    counts = {"requeued": 0, "failed": 0, "waiting": 0}
    for doc in list(metadata.query("batches", {"status": "received"})):
        batch_id = doc["batch_id"]
        last = doc.get("requeued_at") or doc.get("created_at")
        if _age_seconds(last, now) < after_seconds:
            counts["waiting"] += 1
            continue
        key = run_key(batch_id, int(doc.get("generation") or 0))
        if context.instance.get_run_records(filters=RunsFilter(tags={RUN_KEY_TAG: key}), limit=1):
            continue  # it has a run; the run moves the document on
        attempts = int(doc.get("requeue_attempts") or 0)
        reason = doc.get("queue_error") or "no run was started for it"
        user_id = doc["user_id"]

        def still_received(fields: dict):
            # Conditional on the version read, and only while the batch is still waiting: a run that
            # started meanwhile, or a delete (deleted wins), is never overwritten.
            return lambda d: {**d, **fields} if d.get("status") == "received" else None

        try:
            if attempts >= max_attempts:
                change_batch(metadata, batch_id, user_id, still_received({
                    "status": "failed", "error": f"never reached a run after {attempts} re-sends to the queue: {reason}"}))
                context.log.warning(f"batch {batch_id}: failed after {attempts} re-sends ({reason})")
                counts["failed"] += 1
                continue
            try:
                body = lake.read(manifest_path(batch_id))
            except ObjectNotFound:
                change_batch(metadata, batch_id, user_id, still_received({
                    "status": "failed", "error": "its manifest is missing from the lake"}))
                counts["failed"] += 1
                continue
            stamp = datetime.fromtimestamp(now, timezone.utc).isoformat()
            try:
                queue.send(body, message_id=key, application_properties={"user_id": user_id})
                fields = {"queue_error": None}
            except Exception as exc:  # still failing: counted, tried again later
                fields = {"queue_error": f"{type(exc).__name__}: {exc}"[:1000]}
            change_batch(metadata, batch_id, user_id,
                         still_received({**fields, "requeue_attempts": attempts + 1, "requeued_at": stamp}))
        except BatchDeleted:
            continue
        context.log.info(f"batch {batch_id}: handed to the queue again (attempt {attempts + 1}/{max_attempts})")
        counts["requeued"] += 1
    return counts


def build_reconcile_sensor(*, settings=None):
    settings = settings or load_settings()

    @sensor(
        name="intake_reconciler",
        minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description="Hands batches stuck in 'received' without a run back to the queue (idempotent: duplicate "
        "detection + run_key); after a bounded number of attempts marks them 'failed' with the reason.",
    )
    def intake_reconciler(context: SensorEvaluationContext, metadata: ResourceParam[MetadataStore],
                          lake: ResourceParam[Lake], queue: ResourceParam[BatchQueue]):
        counts = reconcile(context, metadata, lake, queue, after_seconds=settings.reconcile_after_seconds,
                           max_attempts=settings.reconcile_max_attempts)
        return SkipReason(", ".join(f"{v} {k}" for k, v in counts.items()))

    return intake_reconciler
