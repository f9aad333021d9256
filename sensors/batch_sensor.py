"""The batch sensor: turns queue messages into one Dagster run per batch.

Design — nothing lost, nothing run twice
-----------------------------------------
The queue gives *at-least-once* delivery (peek-lock); Dagster gives *at-most-once* run creation per
``run_key``. Together they give exactly one run per batch:

1. On each tick the sensor drains the Signal (cheap). Only when it saw a signal, when the previous
   tick left a backlog, or when the safety-net interval has passed does it ``receive`` from the queue
   (peek-lock: the message stays on the queue, locked for ``lock_duration``).
2. Each message is validated against ``BatchManifest``. An invalid one is dead-lettered at once with
   reason ``InvalidManifest`` and the validation error as description (``imgpipe dead-letters`` shows
   it; the batch document, when one can be found, gets status 'invalid' with the same reason).
3. A valid message whose batch already has a run (tag ``dagster/run_key`` = batch id) is completed:
   it is a redelivery after a crash further down.
4. Otherwise the tick returns ``RunRequest(run_key=batch_id, partition_key=batch_id)`` plus the request
   to add the dynamic partition, and remembers the message's lock in the cursor. It does *not* complete
   the message yet: Dagster creates the run only after the tick returns. The run is tagged with its size
   band (``size_tags``; on Kubernetes also its pod's resources, node pool and image workers).
5. The next tick completes every remembered message whose run now exists.

Settlement across ticks (why step 5 works on Service Bus)
----------------------------------------------------------
Service Bus settles a peek-locked message only through the receiver that received it. The queue the
sensor gets is the code-server process's one shared client (``orchestration.wiring.CLIENTS``, handed out
by the ``queue`` resource), so the receiver of step 1 in one tick is the receiver of step 5 in the next:
the lock does outlive the tick, on purpose, because the run exists only after the tick returns. When that
receiver is gone (the code server restarted, the lock expired, the link was recycled) the adapter raises
``MessageLockLost``; the message is then delivered again after its lock expires and step 3 completes it
in the same tick that received it. So a lost receiver costs one lock duration of delay, never a second
run and never a lost batch.

Crash points (each tested in tests/test_sensor.py):
- dies after ``receive`` but before the tick returns: nothing was created; the lock expires, the message
  is delivered again and step 4 requests the run.
- dies after the tick returned but before Dagster created the run (the cursor is not saved either): the
  same as above.
- dies after the run was created but before the message was completed: the message comes back after its
  lock expires; step 3 sees the run and completes it. Should the run be requested again anyway, Dagster
  skips a ``run_key`` it has seen, so there is still one run.
- a message that keeps failing (e.g. the sensor cannot create runs at all) is dead-lettered by the queue
  after ``max_delivery_count`` deliveries — kept, with a reason, never dropped.

Timing: ``minimum_interval_seconds`` (``IMGPIPE_SENSOR_INTERVAL_SECONDS``, default 1 s) bounds the delay
from upload to run request; the sensor is cheap per tick because it only lists the signal directory
unless there is work. The safety-net poll (default 30 s) covers a lost signal.
"""


import json
import time
from datetime import datetime, timezone

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunStatusSensorContext,
    RunRequest,
    ResourceParam,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    run_status_sensor,
    sensor,
)
from pydantic import ValidationError

from orchestration.domain.batches import DELETED, BatchDeleted, change_batch, parse_run_key, set_batch
from orchestration.domain.manifest import BatchManifest, display_name
from orchestration.domain.processing import fans_out
from orchestration.domain.sizing import batch_load, choose_band
from orchestration.partitions import batches_partitions
from orchestration.ports.metadata import MetadataStore
from orchestration.ports.queue import BatchQueue, MessageLockLost, ReceivedMessage
from orchestration.ports.signal import Signal
from orchestration.settings import Settings, SizeBand, env_var, load_settings

# Messages received per tick. Dagster's sensor daemon starts a round of ticks every 5 s at most (every 1 s
# under the local stack's dev tuning), and a burst of uploads waits for ticks: 100 per tick drains a burst
# of 50 simultaneous uploads in one; their locks (60 s) outlast creating 100 runs from 4 threads.
RECEIVE_BATCH = 100
INVALID_MANIFEST = "InvalidManifest"
RUN_KEY_TAG = "dagster/run_key"
SIZE_BAND_TAG = "imgpipe/size-band"
K8S_CONFIG_TAG = "dagster-k8s/config"  # dagster-k8s's per-run Kubernetes config, merged over runK8sConfig
FANOUT_BAND = "fanout"  # the size-band tag of a fanned-out run
POOL_LABEL = "imgpipe.io/pool"  # node label of a pool; its taint is imgpipe.io/<pool>=true:NoSchedule (deploy/azure)


def k8s_config(band: SizeBand) -> dict:
    """A size band as the run's ``dagster-k8s/config``: the container's resources and image workers
    (``IMGPIPE_WORKERS``: a container's ``env`` wins over the settings ConfigMap), and the node pool. Deep-merged
    by the K8sRunLauncher over the Helm values' runK8sConfig. Sizes and placement only: nothing secret."""
    config: dict = {"container_config": {"resources": {"requests": band.requests, "limits": band.limits},
                                         "env": [{"name": env_var("workers"), "value": str(band.workers)}]}}
    if band.pool:
        config["pod_spec_config"] = {
            "nodeSelector": {POOL_LABEL: band.pool},
            "tolerations": [{"key": f"imgpipe.io/{band.pool}", "operator": "Equal", "value": "true",
                             "effect": "NoSchedule"}],
        }
    return config


def step_k8s_config(settings: Settings) -> dict:
    """The pods of a fanned-out run's steps (k8s_job_executor's ``step_k8s_config``, over the run launcher's
    runK8sConfig): sized by the band of a chunk's images (IMGPIPE_FANOUT_CHUNK_IMAGES), on its node pool."""
    return k8s_config(choose_band(settings.run_size_bands, settings.fanout_chunk_images, 0))


def size_tags(manifest: BatchManifest, settings: Settings) -> dict[str, str]:
    """The run's size band; on Kubernetes (``IMGPIPE_RUN_LAUNCHER=k8s``) also its pod's config. Locally the
    band is for reading only: runs are processes of the machine, with its IMGPIPE_WORKERS. A fanned-out run's
    own pod only coordinates its step pods (``step_k8s_config``): the smallest band."""
    if fans_out(manifest, settings.fanout_min_images):
        band = settings.run_size_bands[0]
        tags = {SIZE_BAND_TAG: FANOUT_BAND}
    else:
        band = choose_band(settings.run_size_bands, *batch_load(manifest))
        tags = {SIZE_BAND_TAG: band.name}
    if settings.run_launcher == "k8s":
        tags[K8S_CONFIG_TAG] = json.dumps(k8s_config(band), separators=(",", ":"))
    return tags


def _run_exists(context: SensorEvaluationContext, batch_id: str) -> bool:
    return bool(context.instance.get_run_records(filters=RunsFilter(tags={RUN_KEY_TAG: batch_id}), limit=1))


def _encode(msg: ReceivedMessage) -> dict:
    return {
        "message_id": msg.message_id,
        "sequence_number": msg.sequence_number,
        "delivery_count": msg.delivery_count,
        "enqueued_at": msg.enqueued_at.timestamp(),
        "locked_until": msg.locked_until.timestamp(),
        "lock_token": msg.lock_token,
    }


def _decode(d: dict) -> ReceivedMessage:
    return ReceivedMessage(
        message_id=d["message_id"],
        body=b"",
        sequence_number=d["sequence_number"],
        delivery_count=d["delivery_count"],
        enqueued_at=datetime.fromtimestamp(d["enqueued_at"], timezone.utc),
        locked_until=datetime.fromtimestamp(d["locked_until"], timezone.utc),
        lock_token=d["lock_token"],
    )


def _mark_invalid(store: MetadataStore, body: bytes, description: str) -> None:
    """Best effort: if the broken message still names a batch we know, record why it will not run."""
    try:
        raw = json.loads(body)
        set_batch(store, str(raw["batch_id"]), str(raw["user_id"]), status="invalid",
                  error=f"{INVALID_MANIFEST}: {description}")
    except Exception:  # not JSON, no such batch, deleted (deleted wins): nothing to record
        return


def evaluate_batch_sensor(
    context: SensorEvaluationContext,
    queue: BatchQueue,
    signal: Signal,
    metadata: MetadataStore,
    *,
    safety_poll_seconds: float,
    now: float | None = None,
    settings: Settings | None = None,
    jobs: tuple[str, str] | None = None,
) -> SensorResult | SkipReason:
    """One tick (the module's docstring). ``jobs``: (the job of a batch, the job of a batch that fans out) when
    the sensor targets both; None: the sensor's one job runs every batch."""
    now = time.time() if now is None else now
    state = json.loads(context.cursor) if context.cursor else {}
    pending: list[dict] = state.get("pending", [])
    q = queue

    # Step 5: complete messages whose runs were created after the previous tick.
    still_pending = []
    for entry in pending:
        msg = _decode(entry)
        if _run_exists(context, msg.message_id):
            try:
                q.complete(msg)
            except MessageLockLost as exc:
                context.log.info(f"{msg.message_id} not completed ({exc}); its redelivery will be completed")
        elif entry["locked_until"] > now:
            still_pending.append(entry)
    pending = still_pending

    signals = signal.drain()
    due = now - state.get("last_receive", 0.0) >= safety_poll_seconds
    if not (signals or state.get("backlog") or due):
        return SensorResult(cursor=json.dumps({**state, "pending": pending}), skip_reason="no new batches signalled")

    settings = settings or load_settings()
    run_requests, new_partitions = [], []
    received = q.receive(max_messages=RECEIVE_BATCH)
    for msg in received:
        try:
            manifest = BatchManifest.model_validate_json(msg.body)
            batch_id, _generation = parse_run_key(msg.message_id)
            if manifest.batch_id != batch_id:
                raise ValueError(f"manifest batch_id {manifest.batch_id!r} != message_id {msg.message_id!r}")
        except (ValidationError, ValueError) as exc:
            description = str(exc)[:4000]
            context.log.warning(f"dead-lettering message {msg.message_id!r}: {INVALID_MANIFEST}: {description}")
            q.dead_letter(msg, reason=INVALID_MANIFEST, description=description)
            _mark_invalid(metadata, msg.body, description)
            continue
        if _run_exists(context, msg.message_id):  # redelivery after a crash: the run is there
            q.complete(msg)
            continue
        doc = metadata.read("batches", manifest.batch_id, manifest.user_id)
        if doc is not None and doc.get("status") == DELETED:  # deleted while queued: nothing is launched
            context.log.info(f"{msg.message_id}: batch deleted at {doc.get('deleted_at')}; no run")
            q.complete(msg)
            continue
        if doc is not None and parse_run_key(msg.message_id)[1] != int(doc.get("generation") or 0):
            # a message of an earlier generation (the batch was deleted and restored since): only the
            # current one may start a run
            context.log.info(f"{msg.message_id}: not the batch's current generation; no run")
            q.complete(msg)
            continue
        new_partitions.append(manifest.batch_id)
        run_requests.append(
            RunRequest(
                run_key=msg.message_id,  # the batch id (a restored batch's next generation: <id>~n)
                job_name=jobs[fans_out(manifest, settings.fanout_min_images)] if jobs else None,
                partition_key=manifest.batch_id,
                tags={**run_tags(manifest, doc), **size_tags(manifest, settings)},
            )
        )
        pending.append(_encode(msg))

    cursor = json.dumps(
        {"pending": pending, "last_receive": now, "backlog": len(received) >= RECEIVE_BATCH}
    )
    return SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[batches_partitions.build_add_request(new_partitions)] if new_partitions else [],
        cursor=cursor,
        skip_reason=None if run_requests else f"received {len(received)} message(s), no new batch",
    )


def run_tags(manifest: BatchManifest, doc: dict | None) -> dict[str, str]:
    """What an operator sees of a run in the Dagster UI beside its batch id: the owner (id and display name)
    and the batch's title, as the person typed them but one printable line and short (the UI is for operators
    only; titles and names are not secrets). ``doc`` is the batch document, when the store had it."""
    tags = {"imgpipe/user_id": manifest.user_id, "imgpipe/images": str(len(manifest.images))}
    title = display_name(manifest.metadata.get("title") or "")
    owner = display_name((doc or {}).get("owner_name") or "")
    return {**tags, **({"imgpipe/title": title} if title else {}), **({"imgpipe/owner": owner} if owner else {})}


def build_batch_sensor(job, *, fanout_job=None, settings=None, interval_seconds: int | None = None,
                       safety_poll_seconds: float | None = None):
    """The batch sensor of ``job``; with ``fanout_job``, a batch of IMGPIPE_FANOUT_MIN_IMAGES images or more
    runs that one instead (the same assets, one run and one partition per batch either way)."""
    settings = settings or load_settings()
    interval = interval_seconds or settings.sensor_interval_seconds
    safety = safety_poll_seconds or settings.sensor_safety_poll_seconds
    jobs = (job.name, fanout_job.name) if fanout_job is not None else None

    @sensor(
        name="batch_sensor",
        jobs=[job, fanout_job] if fanout_job is not None else [job],
        minimum_interval_seconds=interval,
        default_status=DefaultSensorStatus.RUNNING,
        description="Receives batch manifests from the queue (woken by the signal, with a safety-net poll) "
        "and requests one run per batch (run_key = batch id).",
    )
    def batch_sensor(
        context: SensorEvaluationContext,
        queue: ResourceParam[BatchQueue],
        signal: ResourceParam[Signal],
        metadata: ResourceParam[MetadataStore],
    ):
        return evaluate_batch_sensor(context, queue, signal, metadata, safety_poll_seconds=safety,
                                     settings=settings, jobs=jobs)

    return batch_sensor


def _run_batch(run, store: MetadataStore) -> tuple[str | None, str | None]:
    """(batch id, its user) of a batch run. A backfill (reprocess) run carries no user tag: the batch's owner
    is looked up."""
    batch_id, user_id = run.tags.get("dagster/partition"), run.tags.get("imgpipe/user_id")
    if batch_id and not user_id:
        found = list(store.query("batches", {"batch_id": batch_id}, limit=1))
        user_id = found[0]["user_id"] if found else None
    return batch_id, user_id


def build_failure_sensor(job):
    @run_failure_sensor(
        name="batch_failure_sensor",
        monitored_jobs=None,  # every job of the code location: batch runs and backfill (reprocess) runs
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=5,
        description="When a batch run fails: marks the batch 'retrying' while run retries remain (the daemon "
        "re-executes it from failure; writes are idempotent), 'failed' with the error once they are spent.",
    )
    def batch_failure_sensor(context: RunFailureSensorContext, metadata: ResourceParam[MetadataStore]):
        run = context.dagster_run
        store = metadata
        batch_id, user_id = _run_batch(run, store)
        if not batch_id or not user_id:
            return
        message = (context.failure_event.message or "run failed")[:2000]
        attempt = int(run.tags.get("dagster/retry_number", "0") or 0)
        instance = context.instance
        allowed = int(run.tags.get("dagster/max_retries", instance.run_retries_max_retries)
                      if instance.run_retries_enabled else 0)
        if attempt < allowed:
            change = {"status": "retrying", "error": f"attempt {attempt + 1} of {allowed + 1} failed: {message}"}
        else:
            change = {"status": "failed", "error": message}

        def mark(doc: dict) -> dict | None:
            # A sensor tick can come after the retry already completed the batch, or while it completes it:
            # never undo a completion. The write is conditional on the document read here (its etag), so a
            # completion that lands between this read and the write makes it read and decide again; and a
            # deleted batch stays deleted (deleted wins).
            if doc.get("status") == "completed":
                return None
            return {**doc, **change, "dagster_run_id": run.run_id}

        try:
            change_batch(store, batch_id, user_id, mark)
        except BatchDeleted:
            context.log.info(f"batch {batch_id} is deleted; its failed run changes nothing")

    return batch_failure_sensor


def build_cancel_sensor(job):
    """A batch run cancelled other than by deleting its batch (the Terminate button in the Dagster UI, say)
    leaves the batch neither completed nor failed: it would hold its user's in-flight slot for good. This
    ends it 'failed' with the reason, so the person sees it and `imgpipe reprocess` can run it again. A
    deleted batch stays deleted, a completed one completed (the same conditional write as the failure
    sensor's)."""

    @run_status_sensor(
        run_status=DagsterRunStatus.CANCELED,
        name="batch_cancel_sensor",
        monitored_jobs=None,
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=5,
        description="When a batch run is cancelled (not by deleting the batch): marks the batch 'failed' with "
        "the reason, freeing its user's slot; `imgpipe reprocess` runs it again.",
    )
    def batch_cancel_sensor(context: RunStatusSensorContext, metadata: ResourceParam[MetadataStore]):
        run = context.dagster_run
        batch_id, user_id = _run_batch(run, metadata)
        if not batch_id or not user_id:
            return

        generation = parse_run_key(run.tags.get(RUN_KEY_TAG) or batch_id)[1]

        def mark(doc: dict) -> dict | None:
            # (a run of an earlier generation — cancelled when its batch was deleted, read after a restore —
            # says nothing about the batch now)
            if doc.get("status") == "completed" or generation != int(doc.get("generation") or 0):
                return None
            return {**doc, "status": "failed", "dagster_run_id": run.run_id,
                    "error": f"its run {run.run_id} was cancelled; `imgpipe reprocess {batch_id}` runs it again"}

        try:
            change_batch(metadata, batch_id, user_id, mark)
        except BatchDeleted:
            context.log.info(f"batch {batch_id} is deleted; its cancelled run changes nothing")

    return batch_cancel_sensor
