"""Batch assets, one dynamic partition per batch:

    raw_images ──► renditions ──┬──────────────────────► image_documents ──► result_events
    (lake: raw/)   (lake: processed/)                    (metadata store)   (Kafka)
                                └► labels, moderation, faces ┘
                                   (understand_images: models on a small rendition → image documents, events)

Each asset writes to outside storage through a port and yields a MaterializeResult with metadata, so
any step can be re-executed on its own (from the UI, a backfill or "re-execute from failure") and reads
what the previous step left in the lake or the metadata store. Deleted wins
(``orchestration.domain.batches``): a step that finds its batch deleted stops, trashes what the run wrote
and yields nothing, so the steps after it are skipped and the run ends without writing more. The work itself lives in
``orchestration.domain.processing``; images change only in ``assets.core``.
"""


import functools
from datetime import datetime, timezone

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetSpec,
    Backoff,
    DynamicOut,
    DynamicOutput,
    In,
    MaterializeResult,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    Output,
    ResourceParam,
    RetryPolicy,
    asset,
    asset_check,
    graph_asset,
    multi_asset,
    op,
)

from orchestration.domain import processing as steps  # the Dagster-free work of each asset
from orchestration.domain import retention
from orchestration.domain import understanding as understand
from orchestration.domain.batches import (DELETED, BatchDeleted, change_batch, ensure_live, set_batch, write_image,
                                          write_images)
from orchestration.domain.processing import Processing
from assets.core import processing_version
from orchestration.partitions import REPROCESS_TAG, batches_partitions
from orchestration.resources import STEP_IO
from orchestration.ports.lake import Lake
from orchestration.ports.metadata import MetadataStore
from orchestration.ports.results import ResultStream
from orchestration.ports.understanding import TASKS, ImageUnderstanding
from orchestration.settings import load_settings
from orchestration.wiring import understanding_models

# The ports, as resources hand them over (orchestration/resources.py builds them from Settings).
LakePort = ResourceParam[Lake]
MetadataPort = ResourceParam[MetadataStore]
ResultsPort = ResourceParam[ResultStream]
ProcessingParam = ResourceParam[Processing]
UnderstandingPort = ResourceParam[ImageUnderstanding | None]

_GROUP = "batch"

# The renditions asset's code version: the image code's version plus a digest of the configuration that
# shapes its output, from the same settings the processing resource is built from. When either changes,
# the Dagster UI shows every batch partition made otherwise as changed ("code version"), and a backfill
# of the selection (or `imgpipe reprocess`) redoes them.
_SETTINGS = load_settings()
# What the UI shows as each asset's storage: the active profile's, not Azure's whatever runs.
LAKE_KIND = {"local": "file", "emulated": "azurite", "azure": "adls"}[_SETTINGS.profile]
STORE_KIND = {"local": "sqlite", "emulated": "cosmosdb", "azure": "cosmosdb"}[_SETTINGS.profile]
PROCESSING_CODE_VERSION = processing_version(_SETTINGS.core_config())

# Each understanding asset's code version comes from its model (file sha256, version, thresholds) and, for
# moderation, the policy's thresholds: a new model marks only its own asset changed in the UI, and
# `imgpipe reprocess --asset labels` redoes just that one.
UNDERSTANDING_MODELS = understanding_models(_SETTINGS)
MODERATION_POLICY = understand.policy_from(_SETTINGS)


def understanding_code_version(task: str) -> str:
    model = UNDERSTANDING_MODELS.get(task)
    if model is None:
        return "off"
    extra = f"-{MODERATION_POLICY.review}-{MODERATION_POLICY.flag}" if task == "moderation" else ""
    return f"{model.code_version}{extra}"


def stops_when_deleted(step):
    """Deleted wins, for a batch asset or op (a generator): when the step fails because its batch was deleted —
    a writer refused (``BatchDeleted``) or an upload it was reading went to the trash — it trashes what the
    run wrote after the delete and ends without output, so the steps after it are skipped and the run
    neither fails nor retries. Any other failure is the step's own."""

    @functools.wraps(step)
    def guarded(context: AssetExecutionContext, *args, **kwargs):
        try:
            yield from step(context, *args, **kwargs)
        except Exception:
            store, lake = kwargs["metadata"], kwargs["lake"]
            found = list(store.query("batches", {"batch_id": context.partition_key}, limit=1))
            if not found or found[0].get("status") != DELETED:
                raise
            try:
                swept = retention.sweep(lake, store, found[0])
            except Exception as exc:  # noqa: BLE001 - the deletion sensor sweeps again once this run has ended
                swept = f"not yet ({type(exc).__name__}: {exc}); the deletion sensor will"
            context.log.warning(f"batch {context.partition_key} was deleted at {found[0].get('deleted_at')}: "
                                f"stopping; moved to the trash what this run wrote since: {swept}")

    return guarded


@asset(
    partitions_def=batches_partitions,
    group_name=_GROUP,
    code_version="1",
    kinds={LAKE_KIND},
    output_required=False,
    description="The batch's uploaded files as intake stored them in the lake (claim check), checked "
    "against the manifest's sha256.",
)
@stops_when_deleted
def raw_images(context: AssetExecutionContext, lake: LakePort, metadata: MetadataPort):
    batch_id = context.partition_key
    manifest = steps.load_manifest(lake, batch_id)
    listed = set(lake.list(f"raw/{batch_id}/"))  # one listing (a few pages), not a request per image
    stored = [img for img in manifest.images if img.lake_path and img.lake_path in listed]
    set_batch(metadata, batch_id, manifest.user_id, status="processing", dagster_run_id=context.run.run_id)
    yield MaterializeResult(
        metadata={
            "user_id": manifest.user_id,
            "images": len(manifest.images),
            "stored": len(stored),
            "refused_at_intake": sum(1 for img in manifest.images if img.refused),
            "bytes": sum(img.size for img in stored),
            "manifest": MetadataValue.path(f"raw/{batch_id}/manifest.json"),
        }
    )


def _forced_redo_runs(context: AssetExecutionContext, stored: dict[str, dict]) -> set[str] | None:
    """None for a run that may take over any earlier attempt's finished images (a retry, a re-execution, a
    run of a restored batch). A reprocess (``REPROCESS_TAG``, which its retries inherit) redoes the batch:
    of the runs that wrote ``stored``, only its own (the run and its re-executions) count."""
    run = context.run
    if REPROCESS_TAG not in run.tags:
        return None
    root = run.root_run_id or run.run_id
    writers = {d.get("dagster_run_id") for d in stored.values()} - {None}
    return {w for w in writers if (r := context.instance.get_run_by_id(w)) and (r.root_run_id or r.run_id) == root}


# -- renditions: a graph of three ops ------------------------------------------------------------
# plan_chunks cuts the batch into chunks (one chunk below IMGPIPE_FANOUT_MIN_IMAGES), render_chunk is mapped
# over them (a failed chunk is retried alone; re-execution from failure redoes only failed chunks), and
# merge_chunks writes outcomes.json and the asset's materialization. The same graph runs in one process
# (process_batch) or fanned out, a step per chunk (process_batch_fanout: processes locally, pods on AKS);
# values cross steps through the lake (orchestration.resources.LakeStepIOManager).

CHUNK_POOL = "imgpipe-chunks"  # the concurrency pool of chunk steps (a limit across runs, set on AKS)
CHUNK_RETRY = RetryPolicy(max_retries=2, delay=2, backoff=Backoff.EXPONENTIAL)


@op(ins={"raw_images": In(Nothing)}, out=DynamicOut(list, io_manager_key=STEP_IO, is_required=False),
    description="The batch's chunks: the image ids of each, a few hundred per chunk (one chunk for a batch below "
    "IMGPIPE_FANOUT_MIN_IMAGES).")
@stops_when_deleted
def plan_chunks(context: OpExecutionContext, lake: LakePort, metadata: MetadataPort, processing: ProcessingParam):
    manifest = steps.load_manifest(lake, context.partition_key)
    ensure_live(metadata, manifest.batch_id, manifest.user_id)
    chunks = steps.plan_chunks(manifest, min_images=processing.fanout_min_images,
                               chunk_images=processing.chunk_images)
    for number, image_ids in enumerate(chunks):
        yield DynamicOutput(image_ids, mapping_key=f"c{number:04d}")


@op(out=Out(dict, io_manager_key=STEP_IO, is_required=False), retry_policy=CHUNK_RETRY, pool=CHUNK_POOL,
    description="Renditions of one chunk's images (the same processing as any batch), each image's document "
    "and event streamed as it is done.")
@stops_when_deleted
def render_chunk(context: OpExecutionContext, image_ids: list, lake: LakePort, metadata: MetadataPort,
                 processing: ProcessingParam, results: ResultsPort):
    report = render_images(context, image_ids, lake, metadata, processing, results)
    yield Output({"outcomes": report.outcomes, "peak_worker_rss_mb": report.peak_worker_rss_mb,
                  "worker_restarts": report.worker_restarts, "image_workers_from": report.workers_from,
                  "resumed": report.resumed, "bytes_written": report.bytes_written})


def render_images(context: OpExecutionContext, image_ids: list[str] | None, lake: Lake, store: MetadataStore,
                  processing: Processing, results: ResultStream) -> steps.BatchReport:
    """Renditions of the batch's images ``image_ids`` (None: all): ``steps.process_images`` with each image's
    document and event out as soon as it is done."""
    manifest = steps.load_manifest(lake, context.partition_key)
    batch_doc = ensure_live(store, manifest.batch_id, manifest.user_id)
    # The stored documents (one query), whose history each new document carries forward, and what an
    # earlier attempt already finished under this processing (a retry redoes only the rest).
    previous = {d["id"]: d for d in store.query("images", partition_key=manifest.batch_id)}
    resume = steps.resumable(manifest, previous, steps.processing_stamp(processing.config),
                             set(lake.list(f"processed/{manifest.batch_id}/")) if previous else set(),
                             runs=_forced_redo_runs(context, previous))
    streamed: list[str] = []
    streaming = True

    def progress(outcome: dict) -> None:
        # Each image's document and event as soon as it is done, so the user's page shows each result
        # while the batch is still running; image_documents rewrites the documents complete
        # (near-duplicates) by the same ids. Streaming is best effort: with the broker down the images
        # are still processed, and result_events sends whatever was not acknowledged. A deleted batch
        # raises BatchDeleted here, which stops the pool.
        nonlocal streaming
        doc = steps.image_documents(manifest, [outcome], context.run.run_id, previous)[0]
        write_image(store, doc)
        if streaming:
            # (not again what the broker acknowledged in an earlier attempt)
            for event in steps.unsent([steps.image_event(manifest, doc)], batch_doc):
                try:
                    results.publish(manifest.user_id, event)
                    streamed.append(event["event_id"])
                except Exception as exc:  # noqa: BLE001 - any broker failure: stop streaming, result_events retries
                    streaming = False
                    context.log.warning(f"results not streamed per image (result_events will send them): {exc}")

    try:
        return steps.process_images(lake, manifest, image_ids, workers=processing.workers,
                                    config=processing.config, on_outcome=progress, server=processing.server,
                                    resume=resume)
    finally:  # (also when the step fails: a retry then does not send these again)
        if streamed and streaming:
            try:
                results.flush()
            except Exception as exc:  # noqa: BLE001
                context.log.warning(f"per-image events not acknowledged (result_events will send them): {exc}")
            else:
                steps.record_sent(store, manifest, streamed)


@op(out=Out(Nothing, is_required=False), description="The batch's outcomes.json from its chunks, and the "
    "renditions materialization (counts, sizes, workers).")
@stops_when_deleted
def merge_chunks(context: OpExecutionContext, chunks: list, lake: LakePort, metadata: MetadataPort,
                 processing: ProcessingParam):
    manifest = steps.load_manifest(lake, context.partition_key)
    ensure_live(metadata, manifest.batch_id, manifest.user_id)
    by_id = {o["image_id"]: o for chunk in chunks for o in chunk["outcomes"]}
    outcomes = [by_id[img.image_id] for img in manifest.images]
    steps.write_outcomes(lake, manifest.batch_id, outcomes, config=processing.config)
    rejected = [o for o in outcomes if o["outcome"] == "rejected"]
    for o in rejected:
        context.log.warning(f"{o['name']} ({o['image_id']}) rejected: {o['code']}: {o['reason']}")
    times = sorted(o["processing_ms"] for o in outcomes if o["outcome"] == "processed") or [0.0]
    yield Output(None, metadata={
        "processed": len(outcomes) - len(rejected),
        "rejected": len(rejected),
        "resumed": sum(c["resumed"] for c in chunks),  # finished by an earlier attempt of the batch, taken over
        "images_this_run": len(outcomes) - sum(c["resumed"] for c in chunks),  # the rest: done by this run
        "rejection_codes": MetadataValue.json(sorted({o["code"] for o in rejected})),
        "renditions": sum(len(o["renditions"]) for o in outcomes),
        "bytes_written": sum(c["bytes_written"] for c in chunks),  # by this run
        "median_ms_per_image": times[len(times) // 2],
        "workers": processing.workers,
        "chunks": len(chunks),
        "peak_worker_rss_mb": max((c["peak_worker_rss_mb"] for c in chunks), default=0.0),
        "worker_restarts": sum(c["worker_restarts"] for c in chunks),
        "image_workers_from": ", ".join(sorted({c["image_workers_from"] for c in chunks} - {""})),
        "processing_version": PROCESSING_CODE_VERSION,
    })


@graph_asset(
    partitions_def=batches_partitions,
    ins={"raw_images": AssetIn("raw_images", dagster_type=Nothing)},
    group_name=_GROUP,
    code_version=PROCESSING_CODE_VERSION,
    kinds={"pillow", LAKE_KIND},
    description="Resized renditions of every image (auto-oriented, sRGB, metadata stripped); a bad image "
    "becomes a rejection with a reason and never fails the batch. Made in chunks (one for a batch below "
    "IMGPIPE_FANOUT_MIN_IMAGES), merged into the batch's outcomes.",
)
def renditions(raw_images):
    return merge_chunks(plan_chunks(raw_images).map(render_chunk).collect())


_UNDERSTANDING_DESCRIPTIONS = {
    "labels": "What each processed image shows: the top-5 labels with scores (ImageNet-1k classes locally: objects, "
              "animals, scenes, not people; Azure AI Vision tags and a caption in Azure), on its image document.",
    "moderation": "Moderation scores (0..1) of each processed image and the decision from the thresholds in "
                  "Settings (allow / review / flag), recorded with the model's version; flagged images go to the "
                  "operators' review list.",
    "faces": "Faces found in each processed image (count and boxes; people in Azure), on its image document.",
}


@multi_asset(
    name="understand_images",
    specs=[AssetSpec(task, deps=[renditions], group_name=_GROUP, code_version=understanding_code_version(task),
                     kinds={"onnx"} if _SETTINGS.understanding == "local" else {"azure"}, skippable=True,
                     description=_UNDERSTANDING_DESCRIPTIONS[task]) for task in TASKS],
    partitions_def=batches_partitions,
    can_subset=True,
)
@stops_when_deleted
def understand_images(context: AssetExecutionContext, lake: LakePort, metadata: MetadataPort, results: ResultsPort,
                      understanding: UnderstandingPort):
    """One step for the three tasks selected (a reprocess of one redoes only it): one small rendition of each
    processed image is decoded once and given to every selected model. Each image's document and
    image.understood event go out as soon as its results are in, after its image.processed."""
    tasks = [t for t in TASKS if AssetKey(t) in context.selected_asset_keys]
    batch_id = context.partition_key
    if understanding is None:
        for task in tasks:
            yield MaterializeResult(asset_key=task, metadata={"understanding": "off (IMGPIPE_UNDERSTANDING)"})
        return
    manifest = steps.load_manifest(lake, batch_id)
    batch_doc = ensure_live(metadata, batch_id, manifest.user_id)
    streamed: list[str] = []
    streaming = True

    def on_image(doc: dict) -> None:
        nonlocal streaming
        event = understand.understood_event(doc)
        if not streaming or event is None or not steps.unsent([event], batch_doc):
            return
        try:
            results.publish(manifest.user_id, event)
            streamed.append(event["event_id"])
        except Exception as exc:  # noqa: BLE001 - any broker failure: result_events / the events sensor send it
            streaming = False
            context.log.warning(f"understanding not streamed per image (result_events will send it): {exc}")

    try:
        report = understand.understand_batch(lake, metadata, understanding, batch_id, manifest.user_id, tasks,
                                             MODERATION_POLICY, on_image=on_image)
    finally:
        if streamed and streaming:
            try:
                results.flush()
            except Exception as exc:  # noqa: BLE001
                streaming = False
                context.log.warning(f"understood events not acknowledged (result_events will send them): {exc}")
            else:
                steps.record_sent(metadata, manifest, streamed)
    if not streaming:
        # A batch completed earlier (this is a reprocess of understanding alone: result_events does not run)
        # hands its unsent events to the events sensor, as result_events does when the broker is down.
        now = datetime.now(timezone.utc).isoformat()
        change_batch(metadata, batch_id, manifest.user_id, lambda doc: None if doc.get("status") != "completed" else {
            **doc, steps.EVENTS_PENDING: True, "events_pending_since": doc.get("events_pending_since") or now,
            "events_error": "the broker did not take the understood events"})
    for error in report.errors[:20]:
        context.log.warning(error)
    models = understanding.models()
    for task in tasks:
        extra = {}
        if task == "moderation":
            extra = {"decisions": MetadataValue.json(report.decisions), "policy": MetadataValue.json(
                MODERATION_POLICY.as_dict())}
        elif task == "faces":
            extra = {"faces_found": report.faces}
        elif task == "labels":
            extra = {"top_labels": MetadataValue.json(dict(sorted(report.labels.items(), key=lambda kv: -kv[1])[:10]))}
        yield MaterializeResult(asset_key=task, metadata={
            "images": report.images, "errors": sum(1 for e in report.errors if f" {task}: " in e),
            "model": models[task].name, "model_version": models[task].version,
            "model_sha256": models[task].sha256 or "(service)", "model_source": models[task].source, **extra})


@asset(
    partitions_def=batches_partitions,
    deps=[renditions, *(AssetKey(t) for t in TASKS)],
    group_name=_GROUP,
    code_version="1",
    kinds={STORE_KIND},
    output_required=False,
    description="One document per image (facts, renditions, outcome, lineage) and the batch document, "
    "upserted by id so a re-run overwrites.",
)
@stops_when_deleted
def image_documents(context: AssetExecutionContext, lake: LakePort, metadata: MetadataPort):
    lake_client, store = lake, metadata
    manifest = steps.load_manifest(lake_client, context.partition_key)
    ensure_live(store, manifest.batch_id, manifest.user_id)
    stored = {d["id"]: d for d in store.query("images", partition_key=manifest.batch_id)}
    docs = steps.image_documents(manifest, steps.load_outcomes(lake_client, manifest.batch_id),
                                 context.run.run_id, stored)
    steps.find_near_duplicates(store, manifest, docs)
    summary = steps.summarize(docs)
    run_id = context.run.run_id
    write_images(store, docs)
    # Still 'processing': the batch is 'completed' once its checks have passed (result_events).
    change_batch(store, manifest.batch_id, manifest.user_id, lambda batch_doc: {
        **batch_doc, "status": "processing", "error": None, "dagster_run_id": run_id,
        "processing_version": PROCESSING_CODE_VERSION,
        "runs": steps.add_run(batch_doc.get("runs"), run_id, PROCESSING_CODE_VERSION), **summary})
    duplicates = sum(1 for d in docs if d.get("near_duplicates"))
    yield MaterializeResult(metadata={**summary, "images_with_near_duplicates": duplicates})


@asset(
    partitions_def=batches_partitions,
    deps=[image_documents],
    group_name=_GROUP,
    code_version="1",
    kinds={"kafka"},
    output_required=False,
    description="Marks the batch 'completed', then sends the events of its images and batch.completed on the "
    "results topic, keyed by user. A broker outage does not fail the batch: what is not acknowledged is "
    "kept as pending and the events sensor sends it when the broker is back.",
)
@stops_when_deleted
def result_events(context: AssetExecutionContext, lake: LakePort, metadata: MetadataPort, results: ResultsPort):
    lake_client, store = lake, metadata
    manifest = steps.load_manifest(lake_client, context.partition_key)
    now = datetime.now(timezone.utc).isoformat()
    # The batch is completed before it is announced, so a consumer reacting to batch.completed reads the
    # final state; delivering the events does not decide the batch's fate.
    change_batch(store, manifest.batch_id, manifest.user_id, lambda doc: {
        **doc, "status": "completed", "error": None, "completed_at": now, steps.EVENTS_PENDING: True,
        "events_pending_since": doc.get("events_pending_since") or now, "events_attempts": 0,
        "events_last_attempt": None})
    try:
        sent, error = steps.deliver_events(store, results, manifest), None
    except BatchDeleted:
        raise
    except Exception as exc:  # noqa: BLE001 - any broker failure: kept as pending, the events sensor retries
        sent, error = 0, f"{type(exc).__name__}: {exc}"[:1000]
        context.log.warning(f"events of batch {manifest.batch_id} not delivered (kept; the events sensor "
                            f"sends them when the broker is back): {error}")
        set_batch(store, manifest.batch_id, manifest.user_id, events_error=error)
    steps.remove_step_outputs(lake_client, manifest.batch_id)
    yield MaterializeResult(metadata={"events_sent_now": sent, "delivered": error is None,
                                      "delivery_error": error or "",
                                      "topic": getattr(results, "topic", ""), "key": manifest.user_id})


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


def _understanding_check(task: str):
    @asset_check(asset=AssetKey(task), name=f"{task}_complete_and_in_range", blocking=False,
                 description=f"Every processed image has a {task} result (or the reason it has none) with its "
                 "model recorded, and every score is within 0..1 (boxes inside the image).")
    def check(context, metadata: MetadataPort, understanding: UnderstandingPort) -> AssetCheckResult:
        if understanding is None:
            return AssetCheckResult(passed=True, metadata={"understanding": "off"})
        checked, problems = understand.check_results(metadata, context.partition_key, task)
        return AssetCheckResult(passed=not problems, severity=AssetCheckSeverity.ERROR,
                                metadata={"images_checked": checked, "problems": MetadataValue.json(problems[:50])})

    return check


batch_assets = [raw_images, renditions, understand_images, image_documents, result_events]
batch_asset_checks = [renditions_exist_and_decode, every_image_accounted_for,
                      *(_understanding_check(t) for t in TASKS)]
