"""The events sensor: a completed batch's events reach the user even when the broker was down.

Delivering events does not decide a batch's fate: ``result_events`` marks the batch completed, then
tries to send; what the broker does not acknowledge stays recorded on the batch document as pending
(``events_pending``, with the error and since when — `imgpipe status` shows it). This sensor sends them:
each pending batch is tried again with a growing pause (30 s doubling up to 10 min) until the broker
acknowledges, and only the events it has not acknowledged go out (``events_sent``); after
``IMGPIPE_EVENTS_RETRY_MAX_HOURS`` without success the batch's events are given up, with the reason kept.
When one batch's send fails the broker is down for all, so the tick stops there.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from dagster import DefaultSensorStatus, ResourceParam, SensorEvaluationContext, SkipReason, sensor

from orchestration.domain import processing as steps
from orchestration.domain.batches import BatchDeleted, change_batch
from orchestration.ports.lake import Lake, ObjectNotFound
from orchestration.ports.metadata import MetadataStore
from orchestration.ports.results import ResultStream
from orchestration.settings import load_settings

# A batch whose run marked it pending this recently is left to the run (it may be sending right now).
GRACE_SECONDS = 45.0
FIRST_PAUSE, LONGEST_PAUSE = 30.0, 600.0
PER_TICK = 20


def _ts(iso: str | None) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp() if iso else 0.0
    except ValueError:
        return 0.0


def deliver_pending(context: SensorEvaluationContext, metadata: MetadataStore, lake: Lake, results: ResultStream,
                    *, give_up_hours: float, now: float | None = None, timeout_seconds: float = 10.0) -> dict[str, int]:
    """One pass; returns counts (``delivered``, ``failed``, ``given_up``, ``waiting``)."""
    now = time.time() if now is None else now
    counts = {"delivered": 0, "failed": 0, "given_up": 0, "waiting": 0}
    stamp = datetime.fromtimestamp(now, timezone.utc).isoformat()
    pending = metadata.query("batches", {"status": "completed", steps.EVENTS_PENDING: True}, limit=PER_TICK)
    for doc in list(pending):
        batch_id, user_id = doc["batch_id"], doc["user_id"]
        since = _ts(doc.get("events_pending_since"))
        attempts = int(doc.get("events_attempts") or 0)
        pause = min(FIRST_PAUSE * 2 ** max(attempts - 1, 0), LONGEST_PAUSE) if attempts else GRACE_SECONDS
        if now - max(since, _ts(doc.get("events_last_attempt"))) < pause:
            counts["waiting"] += 1
            continue
        try:
            try:
                manifest = steps.load_manifest(lake, batch_id)
            except ObjectNotFound:
                change_batch(metadata, batch_id, user_id, lambda d: {
                    **d, steps.EVENTS_PENDING: False, "events_error": "given up: the batch's manifest is gone"})
                counts["given_up"] += 1
                continue
            try:
                steps.deliver_events(metadata, results, manifest, timeout_seconds=timeout_seconds)
                counts["delivered"] += 1
                context.log.info(f"batch {batch_id}: pending events delivered (after {attempts + 1} attempt(s))")
                continue
            except BatchDeleted:
                raise
            except Exception as exc:  # noqa: BLE001 - the broker is still away
                error = f"{type(exc).__name__}: {exc}"[:1000]
            give_up = now - since > give_up_hours * 3600
            change_batch(metadata, batch_id, user_id, lambda d: {
                **d, "events_attempts": attempts + 1, "events_last_attempt": stamp,
                "events_error": (f"given up after {give_up_hours:g} h: " if give_up else "") + error,
                **({steps.EVENTS_PENDING: False} if give_up else {})})
            counts["given_up" if give_up else "failed"] += 1
            context.log.warning(f"batch {batch_id}: events still not delivered ({error})")
            break  # the broker is down for every batch: try the others next tick
        except BatchDeleted:
            continue
    return counts


def build_events_sensor(*, settings=None):
    settings = settings or load_settings()

    @sensor(
        name="events_sensor",
        minimum_interval_seconds=15,
        default_status=DefaultSensorStatus.RUNNING,
        description="Sends the events of completed batches that the broker did not acknowledge when their run "
        "ended (a broker outage), with growing pauses; gives up after IMGPIPE_EVENTS_RETRY_MAX_HOURS.",
    )
    def events_sensor(context: SensorEvaluationContext, metadata: ResourceParam[MetadataStore],
                      lake: ResourceParam[Lake], results: ResourceParam[ResultStream]):
        counts = deliver_pending(context, metadata, lake, results, give_up_hours=settings.events_retry_max_hours)
        return SkipReason(", ".join(f"{v} {k}" for k, v in counts.items()))

    return events_sensor
