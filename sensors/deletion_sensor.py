"""The deletion sensor: a batch deleted while queued or running stops, and nothing its runs wrote survives.

``imgpipe delete`` and the web app mark the batch deleted (``cleanup_pending`` when it had not finished);
from then on every writer refuses to write for it (deleted wins, ``orchestration.domain.batches``) and its
runs stop at their next write. This sensor closes the rest, for each such batch:
1. runs of the batch still queued or in progress (any run of its partition: the first, a retry, a
   backfill) are terminated through the Dagster webserver's GraphQL API (``terminateRuns``, the UI's
   Terminate) — a queued run is cancelled before it starts;
2. once none is left, whatever they wrote after the delete is swept into the trash
   (``retention.sweep``: documents expire with the batch's restore period, lake objects are soft
   deleted), and ``cleanup_pending`` is cleared.
A termination the webserver cannot accept now is asked again next tick; a run that ignores it still stops
at its next write, so the sweep always comes.

It also records each deletion and restore on the batch's partitions (``note_partitions``): an asset
observation with ``state: deleted`` (who, when, restorable until) or ``state: restored``, so a deleted batch
does not read as plain "Materialized" in the Dagster UI while its lineage stays for audit.
"""

from __future__ import annotations

import json
from typing import Callable, Sequence

from dagster import (
    AssetKey,
    AssetObservation,
    DagsterRunStatus,
    DefaultSensorStatus,
    ResourceParam,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from orchestration.adapters.dagster_webserver import terminate_runs
from orchestration.domain import retention
from orchestration.domain.batches import DELETED
from orchestration.ports.lake import Lake
from orchestration.ports.metadata import MetadataStore, update
from orchestration.settings import load_settings

PARTITION_TAG = "dagster/partition"
NOT_FINISHED = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
                DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
PER_TICK = 50


def stop_deleted(context: SensorEvaluationContext, metadata: MetadataStore, lake: Lake,
                 terminate: Callable[[list[str]], dict[str, str]]) -> dict[str, int]:
    """One pass; returns counts (``stopping``: batches whose runs were asked to stop; ``swept``)."""
    counts = {"stopping": 0, "swept": 0}
    for doc in list(metadata.query("batches", {"status": DELETED, "cleanup_pending": True}, limit=PER_TICK)):
        batch_id = doc["batch_id"]
        live = context.instance.get_run_records(filters=RunsFilter(tags={PARTITION_TAG: batch_id},
                                                                   statuses=NOT_FINISHED))
        if live:
            counts["stopping"] += 1
            ask = [r.dagster_run.run_id for r in live if r.dagster_run.status != DagsterRunStatus.CANCELING]
            try:
                refused = {k: v for k, v in terminate(ask).items() if v}
            except Exception as exc:  # noqa: BLE001 - asked again next tick; the run stops at its next write anyway
                refused = {run_id: f"{type(exc).__name__}: {exc}" for run_id in ask}
            for run_id, reason in refused.items():
                context.log.warning(f"batch {batch_id}: run {run_id} not terminated yet: {reason}")
            continue
        swept = retention.sweep(lake, metadata, doc)
        update(metadata, "batches", batch_id, doc["user_id"],
               lambda d: {**d, "cleanup_pending": False} if d.get("status") == DELETED else None)
        context.log.info(f"batch {batch_id}: its runs have stopped; swept into the trash: {swept}")
        counts["swept"] += 1
    return counts


def note_partitions(metadata: MetadataStore, asset_keys: Sequence[AssetKey], noted: list[list[str]]
                    ) -> tuple[list[AssetObservation], list[list[str]]]:
    """The observations that record deletes and restores on the batches' partitions, and what to clear next tick.

    ``noted`` (from the cursor) are the ``[batch_id, user_id, state, at]`` whose observations the last tick
    returned: Dagster has stored them with that tick, so their marks are cleared now, and only now, and only
    if the mark is still that change (``at``: when the batch was deleted or restored), so a delete, Undo and
    delete again within one tick is recorded in full. A crash in between records a change twice, never not
    at all."""
    def when(doc: dict, state: str) -> str | None:
        return doc.get("deleted_at" if state == DELETED else "restored_at")

    for batch_id, user_id, state, at in noted:
        update(metadata, "batches", batch_id, user_id,
               lambda d, state=state, at=at: {k: v for k, v in d.items() if k != retention.PARTITION_NOTE}
               if d.get(retention.PARTITION_NOTE) == state and when(d, state) == at else None)
    done = {tuple(n) for n in noted}
    events, now_noted = [], []
    for state in (DELETED, "restored"):
        for doc in metadata.query("batches", {retention.PARTITION_NOTE: state}, limit=PER_TICK):
            change = [doc["batch_id"], doc["user_id"], state, when(doc, state)]
            if tuple(change) in done:
                continue
            about = ({"state": state, "deleted_at": doc.get("deleted_at"), "deleted_by": doc.get("deleted_by"),
                      "restorable_until": doc.get("restorable_until")} if state == DELETED
                     else {"state": state, "restored_at": doc.get("restored_at")})
            events += [AssetObservation(asset_key=key, partition=doc["batch_id"],
                                        metadata={k: v for k, v in about.items() if v},
                                        description=f"batch {state}")
                       for key in asset_keys]
            now_noted.append(change)
    return events, now_noted


def build_deletion_sensor(*, settings=None, asset_keys: Sequence[AssetKey] = ()):
    settings = settings or load_settings()

    @sensor(
        name="deletion_sensor",
        minimum_interval_seconds=5,
        default_status=DefaultSensorStatus.RUNNING,
        description="Terminates the queued or running runs of a deleted batch and sweeps what they wrote after "
        "the delete into the trash (deleted wins).",
    )
    def deletion_sensor(context: SensorEvaluationContext, metadata: ResourceParam[MetadataStore],
                        lake: ResourceParam[Lake]):
        counts = stop_deleted(context, metadata, lake, lambda ids: terminate_runs(settings.dagster_api_url or settings.dagster_ui_url, ids))
        events, noted = note_partitions(metadata, asset_keys, json.loads(context.cursor or "[]"))
        counts["noted on partitions"] = len(noted)
        return SensorResult(asset_events=events, cursor=json.dumps(noted),
                            skip_reason=", ".join(f"{v} {k}" for k, v in counts.items()))

    return deletion_sensor
