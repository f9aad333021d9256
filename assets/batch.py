"""Batch assets, one dynamic partition per batch:

    raw_images ──► renditions ──► image_documents ──► result_events
    (lake: raw/)   (lake: processed/)  (metadata store)   (Kafka)

Each asset writes to outside storage through a port and returns a MaterializeResult with metadata, so
any step can be re-executed on its own (from the UI, a backfill or "re-execute from failure") and reads
what the previous step left in the lake or the metadata store. The work itself lives in
``orchestration.domain.processing``; images change only in ``assets.core``.
"""


from datetime import datetime, timezone

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    ResourceParam,
    asset,
    asset_check,
)

from orchestration.domain import processing as steps  # the Dagster-free work of each asset
from orchestration.domain.processing import Processing
from assets.core import processing_version
from orchestration.partitions import batches_partitions
from orchestration.ports.lake import Lake
from orchestration.ports.metadata import MetadataStore
from orchestration.ports.results import ResultStream
from orchestration.settings import load_settings

# The ports, as resources hand them over (orchestration/resources.py builds them from Settings).
LakePort = ResourceParam[Lake]
MetadataPort = ResourceParam[MetadataStore]
ResultsPort = ResourceParam[ResultStream]
ProcessingParam = ResourceParam[Processing]

_GROUP = "batch"

# The renditions asset's code version: the image code's version plus a digest of the configuration that
# shapes its output, from the same settings the processing resource is built from. When either changes,
# the Dagster UI shows every batch partition made otherwise as changed ("code version"), and a backfill
# of the selection (or `imgpipe reprocess`) redoes them.
PROCESSING_CODE_VERSION = processing_version(load_settings().core_config())


@asset(
    partitions_def=batches_partitions,
    group_name=_GROUP,
    code_version="1",
    kinds={"adls"},
    description="The batch's uploaded files as intake stored them in the lake (claim check), checked "
    "against the manifest's sha256.",
)
def raw_images(context: AssetExecutionContext, lake: LakePort, metadata: MetadataPort) -> MaterializeResult:
    batch_id = context.partition_key
    store, lake_client = metadata, lake
    manifest = steps.load_manifest(lake_client, batch_id)
    stored = [img for img in manifest.images if img.lake_path and lake_client.exists(img.lake_path)]
    doc = store.read("batches", batch_id, manifest.user_id) or {}
    if doc:
        store.upsert("batches", {**doc, "status": "processing", "dagster_run_id": context.run.run_id})
    return MaterializeResult(
        metadata={
            "user_id": manifest.user_id,
            "images": len(manifest.images),
            "stored": len(stored),
            "refused_at_intake": sum(1 for img in manifest.images if img.refused),
            "bytes": sum(img.size for img in stored),
            "manifest": MetadataValue.path(f"raw/{batch_id}/manifest.json"),
        }
    )


@asset(
    partitions_def=batches_partitions,
    deps=[raw_images],
    group_name=_GROUP,
    code_version=PROCESSING_CODE_VERSION,
    kinds={"pillow", "adls"},
    description="Resized renditions of every image (auto-oriented, sRGB, metadata stripped); a bad image "
    "becomes a rejection with a reason and never fails the batch.",
)
def renditions(
    context: AssetExecutionContext, lake: LakePort, metadata: MetadataPort, processing: ProcessingParam,
    results: ResultsPort,
) -> MaterializeResult:
    lake_client, store = lake, metadata
    manifest = steps.load_manifest(lake_client, context.partition_key)
    workers = processing.workers
    batch_doc = store.read("batches", manifest.batch_id, manifest.user_id)
    # The stored documents (one query), whose history each new document carries forward.
    previous = {d["id"]: d for d in store.query("images", partition_key=manifest.batch_id)}
    streamed: list[str] = []
    streaming = True

    def progress(outcome: dict) -> None:
        # Each image's document and event as soon as it is done, so the user's page shows each result
        # while the batch is still running; image_documents rewrites the documents complete
        # (near-duplicates) by the same ids. Streaming is best effort: with the broker down the images
        # are still processed, and result_events (retried with the run) sends whatever was not acknowledged.
        nonlocal streaming
        doc = steps.image_documents(manifest, [outcome], context.run.run_id, previous)[0]
        store.upsert("images", doc)
        if streaming:
            # (not again what the broker acknowledged in an earlier attempt)
            for event in steps.unsent([steps.image_event(manifest, doc)], batch_doc):
                try:
                    results.publish(manifest.user_id, event)
                    streamed.append(event["event_id"])
                except Exception as exc:  # noqa: BLE001 - any broker failure: stop streaming, result_events retries
                    streaming = False
                    context.log.warning(f"results not streamed per image (result_events will send them): {exc}")

    report = steps.process_batch(lake_client, manifest, workers=workers, config=processing.config,
                                      on_outcome=progress, server=processing.server)
    if streamed and streaming:
        try:
            results.flush()
            steps.record_sent(store, manifest, streamed)
        except Exception as exc:  # noqa: BLE001
            context.log.warning(f"per-image events not acknowledged (result_events will send them): {exc}")
    outcomes = report.outcomes
    rejected = [o for o in outcomes if o["outcome"] == "rejected"]
    for o in rejected:
        context.log.warning(f"{o['name']} ({o['image_id']}) rejected: {o['code']}: {o['reason']}")
    times = sorted(o["processing_ms"] for o in outcomes if o["outcome"] == "processed") or [0.0]
    return MaterializeResult(
        metadata={
            "processed": len(outcomes) - len(rejected),
            "rejected": len(rejected),
            "rejection_codes": MetadataValue.json(sorted({o["code"] for o in rejected})),
            "renditions": sum(len(o["renditions"]) for o in outcomes),
            "bytes_written": sum(r["bytes"] for o in outcomes for r in o["renditions"]),
            "median_ms_per_image": times[len(times) // 2],
            "workers": workers,
            "peak_worker_rss_mb": report.peak_worker_rss_mb,
            "worker_restarts": report.worker_restarts,
            "image_workers_from": report.workers_from,
            "processing_version": PROCESSING_CODE_VERSION,
        }
    )


@asset(
    partitions_def=batches_partitions,
    deps=[renditions],
    group_name=_GROUP,
    code_version="1",
    kinds={"cosmosdb"},
    description="One document per image (facts, renditions, outcome, lineage) and the batch document, "
    "upserted by id so a re-run overwrites.",
)
def image_documents(
    context: AssetExecutionContext, lake: LakePort, metadata: MetadataPort
) -> MaterializeResult:
    lake_client, store = lake, metadata
    manifest = steps.load_manifest(lake_client, context.partition_key)
    stored = {d["id"]: d for d in store.query("images", partition_key=manifest.batch_id)}
    docs = steps.image_documents(manifest, steps.load_outcomes(lake_client, manifest.batch_id),
                                      context.run.run_id, stored)
    steps.find_near_duplicates(store, manifest, docs)
    for doc in docs:
        store.upsert("images", doc)
    summary = steps.summarize(docs)
    batch_doc = store.read("batches", manifest.batch_id, manifest.user_id) or {}
    # Still 'processing': the batch is 'completed' once result_events has told the user.
    store.upsert(
        "batches",
        {
            **batch_doc,
            "id": manifest.batch_id,
            "batch_id": manifest.batch_id,
            "user_id": manifest.user_id,
            "status": "processing",
            "error": None,
            "dagster_run_id": context.run.run_id,
            "processing_version": PROCESSING_CODE_VERSION,
            "runs": steps.add_run(batch_doc.get("runs"), context.run.run_id, PROCESSING_CODE_VERSION),
            **summary,
        },
    )
    duplicates = sum(1 for d in docs if d.get("near_duplicates"))
    return MaterializeResult(metadata={**summary, "images_with_near_duplicates": duplicates})


@asset(
    partitions_def=batches_partitions,
    deps=[image_documents],
    group_name=_GROUP,
    code_version="1",
    kinds={"kafka"},
    description="Events on the results topic, keyed by user: one per image, then batch.completed; "
    "marks the batch document 'completed'.",
)
def result_events(
    context: AssetExecutionContext, lake: LakePort, metadata: MetadataPort, results: ResultsPort
) -> MaterializeResult:
    lake_client, store = lake, metadata
    manifest = steps.load_manifest(lake_client, context.partition_key)
    docs = sorted(store.query("images", partition_key=manifest.batch_id), key=lambda d: d["image_id"])
    *image_events, completed_event = steps.result_events(manifest, docs)
    # Only what the broker has not acknowledged before (streamed by renditions, or sent by an earlier
    # attempt of this step) goes out; the rest would reach consumers twice.
    batch_doc = store.read("batches", manifest.batch_id, manifest.user_id) or {}
    missing = steps.unsent(image_events, batch_doc)
    # The producer is the process's shared client (closed when the run worker exits), not ours to close.
    for event in missing:
        results.publish(manifest.user_id, event)
    results.flush()
    steps.record_sent(store, manifest, [e["event_id"] for e in missing])
    # Mark the batch completed before announcing it, so a consumer reacting to batch.completed
    # reads the final state. If the announcement fails the run fails, and the failure sensor marks
    # the batch 'failed' (then 'retrying') until a re-execution completes it.
    batch_doc = store.read("batches", manifest.batch_id, manifest.user_id) or {}
    store.upsert("batches", {**batch_doc, "status": "completed", "error": None,
                             "completed_at": datetime.now(timezone.utc).isoformat()})
    sent_completed = not steps.unsent([completed_event], batch_doc)
    if not sent_completed:
        results.publish(manifest.user_id, completed_event)
        results.flush()
        steps.record_sent(store, manifest, [completed_event["event_id"]])
    return MaterializeResult(metadata={"events": len(image_events) + 1,
                                       "events_sent_now": len(missing) + (not sent_completed),
                                       "topic": getattr(results, "topic", ""),
                                       "key": manifest.user_id})


# -- asset checks ---------------------------------------------------------------------------------


@asset_check(asset=renditions, blocking=True, description="Every rendition recorded exists in the lake with "
             "its recorded sha256 and pixel size (from the header); the smallest of each image decodes in full.")
def renditions_exist_and_decode(context, lake: LakePort) -> AssetCheckResult:
    checked, problems = steps.check_renditions(lake, context.partition_key)
    return AssetCheckResult(
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        metadata={"renditions_checked": checked, "problems": MetadataValue.json(problems[:50])},
    )


@asset_check(asset=image_documents, blocking=True, description="Every manifest image has a document that is "
             "either processed (with renditions) or rejected with a reason.")
def every_image_accounted_for(context, lake: LakePort, metadata: MetadataPort) -> AssetCheckResult:
    manifest = steps.load_manifest(lake, context.partition_key)
    docs = {d["image_id"]: d for d in metadata.query("images", partition_key=manifest.batch_id)}
    problems = []
    for img in manifest.images:
        doc = docs.get(img.image_id)
        if doc is None:
            problems.append(f"{img.image_id} ({img.name}): no document")
        elif doc["outcome"] == "processed" and not doc["renditions"]:
            problems.append(f"{img.image_id} ({img.name}): processed but no renditions")
        elif doc["outcome"] == "rejected" and not doc.get("reason"):
            problems.append(f"{img.image_id} ({img.name}): rejected without a reason")
        elif doc["outcome"] not in ("processed", "rejected"):
            problems.append(f"{img.image_id} ({img.name}): unknown outcome {doc['outcome']!r}")
    return AssetCheckResult(
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        metadata={"images": len(manifest.images), "problems": MetadataValue.json(problems[:50])},
    )


batch_assets = [raw_images, renditions, image_documents, result_events]
batch_asset_checks = [renditions_exist_and_decode, every_image_accounted_for]
