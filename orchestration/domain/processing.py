"""The work of one batch run, without Dagster: process every manifest image into renditions in the lake,
then turn the outcomes into metadata documents and Kafka events. ``assets.batch`` wraps these steps as
assets; keeping them here makes them testable on their own and keeps the asset code thin.

Idempotency: every write is keyed by (batch id, image id, rendition name) — lake paths, document ids
and event ids — so a re-executed run overwrites instead of duplicating. Resumption: a re-executed run takes
over what an earlier attempt finished under the same processing (``resumable``) and processes only the rest.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Collection, Iterable, Mapping

from assets.core import PROCESSING_VERSION, CoreConfig, library_versions, processing_version, within_distance
from assets.core.pool import Outcome, WorkerPool
from assets.core.sniff import webp_dimensions
from orchestration.domain.batches import change_batch, ensure_live
from orchestration.domain.understanding import understood_event
from orchestration.domain.manifest import BatchManifest, ManifestImage, manifest_path, outcomes_path, rendition_path
from orchestration.ports.lake import Lake
from orchestration.ports.metadata import MetadataStore
from orchestration.ports.results import EVENT_BATCH_COMPLETED, EVENT_IMAGE_PROCESSED, EVENT_IMAGE_REJECTED, ResultStream
from orchestration.ports.understanding import TASKS as UNDERSTANDING_TASKS

def load_manifest(lake: Lake, batch_id: str) -> BatchManifest:
    return BatchManifest.model_validate_json(lake.read(manifest_path(batch_id)))


def _rejected(image: ManifestImage, code: str, reason: str, seconds: float = 0.0) -> dict:
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
        "processing_ms": round(seconds * 1000, 1),
    }


def _precheck(lake: Lake, image: ManifestImage) -> dict | None:
    """Intake's refusals and missing uploads become rejections without touching a worker."""
    if image.refused is not None:
        return _rejected(image, image.refused.code, image.refused.reason)
    if not image.lake_path or not lake.exists(image.lake_path):
        return _rejected(image, "raw_missing", f"the uploaded bytes are missing from the lake ({image.lake_path})")
    return None


def _store_renditions(lake: Lake, batch_id: str, image: ManifestImage, outcome: Outcome) -> dict:
    if outcome.rejection is not None:
        return _rejected(image, outcome.rejection.code, outcome.rejection.message, outcome.seconds)
    result = outcome.image
    if image.sha256 and result.facts["sha256"] != image.sha256:
        return _rejected(image, "checksum_mismatch", "the stored bytes do not match the uploaded file's sha256",
                         outcome.seconds)
    renditions = []
    for r in result.renditions:
        path = rendition_path(batch_id, image.image_id, r.name, r.extension)
        lake.write(path, r.data, content_type=CONTENT_TYPES[r.format])
        renditions.append({"name": r.name, "format": r.format, "width": r.width, "height": r.height,
                           "bytes": len(r.data), "sha256": hashlib.sha256(r.data).hexdigest(), "path": path})
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
        "processing_ms": round(outcome.seconds * 1000, 1),
    }


@dataclass(frozen=True)
class Processing:
    """How a run processes images, as the ``processing`` resource hands it to the assets: the number of
    worker processes, the image core's configuration and where workers come from (all built from Settings;
    ``server``: an image worker server's socket, empty for a forkserver of the run's own; how a large batch is
    cut into chunks: ``plan_chunks``)."""

    workers: int
    config: CoreConfig
    server: str = ""
    fanout_min_images: int = 1000  # IMGPIPE_FANOUT_MIN_IMAGES: plan_chunks
    chunk_images: int = 250  # IMGPIPE_FANOUT_CHUNK_IMAGES


CONTENT_TYPES = {"JPEG": "image/jpeg", "WEBP": "image/webp", "AVIF": "image/avif", "PNG": "image/png"}


@dataclass
class BatchReport:
    outcomes: list[dict]
    peak_worker_rss_mb: float
    worker_restarts: int
    workers_from: str = ""
    resumed: int = 0  # outcomes taken over from an earlier attempt (``resumable``), not produced again
    bytes_written: int = 0  # the renditions this call wrote (not those of resumed outcomes)


def processing_stamp(config: CoreConfig) -> dict:
    """What an image's outcome was made under, recorded on it: the processing version (the code and the
    settings that shape the output), a digest of the whole configuration (its limits decide what is
    refused) and the image libraries. Two outcomes with the same stamp and source bytes are the same."""
    return {"processing_version": processing_version(config),
            "processing_config": hashlib.sha256(repr(config).encode()).hexdigest()[:12],
            "libraries": library_versions()}


# An outcome's fields (as process_batch makes them); an image document holds them and more.
OUTCOME_FIELDS = ("image_id", "name", "outcome", "code", "reason", "sha256", "size", "sniffed_type", "facts",
                  "renditions", "processing_ms", "processing_version", "processing_config", "libraries")


def resumable(manifest: BatchManifest, stored: Mapping[str, dict], stamp: Mapping[str, object],
              existing: Collection[str], runs: Collection[str] | None = None) -> dict[str, dict]:
    """The outcomes a retried or re-executed run of the batch takes over instead of processing the images
    again, by image id. An image's stored document (``stored``: image id → document) counts only when it is
    live (not deleted), of the manifest's bytes (sha256), made under ``stamp`` (``processing_stamp``: a
    new version, configuration or library redoes it) and finished: processed with every rendition still
    in the lake (``existing``: the paths listed under the batch's prefix) or rejected with a reason (a
    missing upload is looked for again). With ``runs`` (a forced redo and its retries) it must also have
    been written by one of those runs."""
    done = {}
    for img in manifest.images:
        doc = stored.get(img.image_id)
        if (doc is None or doc.get("deleted") or doc.get("sha256") != img.sha256
                or any(doc.get(key) != value for key, value in stamp.items())
                or (runs is not None and doc.get("dagster_run_id") not in runs)):
            continue
        paths = [r["path"] for r in doc.get("renditions") or ()]
        if ((doc.get("outcome") == "processed" and paths and all(p in existing for p in paths))
                or (doc.get("outcome") == "rejected" and doc.get("reason") and not paths
                    and doc.get("code") != "raw_missing")):
            done[img.image_id] = {key: doc.get(key) for key in OUTCOME_FIELDS}
    return done


def process_batch(lake: Lake, manifest: BatchManifest, *, workers: int, config: CoreConfig = CoreConfig(),
                  on_outcome: Callable[[dict], None] | None = None, server: str = "",
                  resume: Mapping[str, dict] | None = None) -> BatchReport:
    """All images of the batch (``process_images``), then its outcomes.json (``write_outcomes``)."""
    report = process_images(lake, manifest, None, workers=workers, config=config, on_outcome=on_outcome,
                            server=server, resume=resume)
    write_outcomes(lake, manifest.batch_id, report.outcomes, config=config)
    return report


def process_images(lake: Lake, manifest: BatchManifest, image_ids: Iterable[str] | None, *, workers: int,
                   config: CoreConfig = CoreConfig(), on_outcome: Callable[[dict], None] | None = None,
                   server: str = "", resume: Mapping[str, dict] | None = None) -> BatchReport:
    """The images ``image_ids`` of the batch (None: all; a chunk of a fanned-out batch: some) through the worker
    pool (time and memory limits per image): the one place an image is processed, whichever way the batch
    runs. The parent reads an image's bytes only when a worker is free, and writes each result to the lake as
    it arrives, so memory is bounded by the number of workers, not by the batch size. ``on_outcome`` hears of
    each image as soon as it is done (progress for people watching). ``server``: an image worker server to
    fork the workers from (``Processing.server``). ``resume``: outcomes of earlier attempts (``resumable``),
    taken as they are (no worker, no ``on_outcome``). Returns the outcomes in manifest order; writes no
    outcomes.json (``write_outcomes``)."""
    wanted = None if image_ids is None else set(image_ids)
    images = [img for img in manifest.images if wanted is None or img.image_id in wanted]
    by_id = {img.image_id: img for img in images}
    resume = {k: v for k, v in (resume or {}).items() if k in by_id}
    outcomes: dict[str, dict] = dict(resume)
    stamp = processing_stamp(config)
    tasks = []
    for img in images:
        if img.image_id in resume:
            continue
        early = _precheck(lake, img)
        if early is not None:
            early.update(stamp)
            outcomes[img.image_id] = early
            if on_outcome:
                on_outcome(early)
        else:
            tasks.append((img.image_id, lambda path=img.lake_path: lake.read(path)))
    peak, restarts, workers_from = 0.0, 0, ""
    if tasks:
        with WorkerPool(min(workers, len(tasks)), config, server=server or None) as pool:
            for outcome in pool.map(tasks):
                outcomes[outcome.key] = {**_store_renditions(lake, manifest.batch_id, by_id[outcome.key], outcome),
                                         **stamp}
                if on_outcome:
                    on_outcome(outcomes[outcome.key])
                peak = max(peak, outcome.peak_rss_mb or 0.0)
            restarts, workers_from = pool.restarts, pool.source
    written = sum(r["bytes"] for key, o in outcomes.items() if key not in resume for r in o.get("renditions") or ())
    return BatchReport([outcomes[img.image_id] for img in images], round(peak, 1), restarts, workers_from,
                       resumed=len(resume), bytes_written=written)


def write_outcomes(lake: Lake, batch_id: str, ordered: list[dict], *, config: CoreConfig = CoreConfig()) -> None:
    """The batch's outcomes.json (every image, in manifest order), then the removal of what it no longer
    names (``remove_stale_renditions``; the runs' hand-overs under ``_steps/`` stay until result_events)."""
    lake.write(
        outcomes_path(batch_id),
        json.dumps({"processing_version": processing_version(config), "images": ordered}, indent=1).encode(),
        content_type="application/json",
    )
    remove_stale_renditions(lake, batch_id, ordered)


def fans_out(manifest: BatchManifest, min_images: int) -> bool:
    """Whether the batch is large enough to run fanned out (IMGPIPE_FANOUT_MIN_IMAGES): the batch sensor's
    choice of job and the renditions step's plan of chunks follow this one rule."""
    return len(manifest.images) >= min_images


def plan_chunks(manifest: BatchManifest, *, min_images: int, chunk_images: int) -> list[list[str]]:
    """The image ids of each chunk of the batch's renditions step, in manifest order: one chunk (the whole
    batch) below ``min_images``, else chunks of ``chunk_images`` (few and long: a step per chunk costs a
    process or a pod, and thousands of dynamic steps are slow in Dagster)."""
    ids = [img.image_id for img in manifest.images]
    size = chunk_images if fans_out(manifest, min_images) else max(len(ids), 1)
    return [ids[i:i + size] for i in range(0, len(ids), size)] or [[]]


def remove_stale_renditions(lake: Lake, batch_id: str, outcomes: Iterable[dict]) -> list[str]:
    """Delete (soft, where the lake keeps deleted objects) rendition files of the batch that the current
    outcomes no longer name — after a reprocessing that dropped a format or a rendition, or an image that
    is now rejected — so the lake holds exactly one current set per image. Returns the deleted paths."""
    keep = {r["path"] for o in outcomes for r in o.get("renditions") or ()} | {outcomes_path(batch_id)}
    steps_dir = f"processed/{batch_id}/_steps/"  # (the run's hand-overs: result_events removes them)
    stale = [p for p in lake.list(f"processed/{batch_id}/") if p not in keep and not p.startswith(steps_dir)]
    for path in stale:
        lake.delete(path)
    return stale


def remove_step_outputs(lake: Lake, batch_id: str) -> int:
    """Delete what the batch's runs handed from step to step through the lake (``step_output_path``), once the
    batch is complete: kept until then, so a re-execution of any step (merge_chunks included) finds its inputs."""
    gone = list(lake.list(f"processed/{batch_id}/_steps/"))
    for path in gone:
        lake.delete(path)
    return len(gone)


def load_outcomes(lake: Lake, batch_id: str) -> list[dict]:
    return json.loads(lake.read(outcomes_path(batch_id)))["images"]


# How many earlier processings of an image its document remembers (lineage: `imgpipe lineage`).
HISTORY_KEEP = 20


def _history(previous: dict | None, run_id: str) -> list[dict]:
    """The image's processing history: the earlier document's history, plus that document itself when it
    came from another run (a reprocessing or a retry) and had a result."""
    if not previous:
        return []
    history = list(previous.get("history") or [])
    if previous.get("dagster_run_id") not in (None, run_id) and previous.get("outcome") in ("processed", "rejected"):
        history.append({
            "processing_version": previous.get("processing_version"),
            "dagster_run_id": previous.get("dagster_run_id"),
            "processed_at": previous.get("processed_at"),
            "outcome": previous.get("outcome"),
            "code": previous.get("code"),
            "renditions": [{"path": r["path"], "sha256": r.get("sha256"), "bytes": r.get("bytes")}
                           for r in previous.get("renditions") or ()],
        })
    return history[-HISTORY_KEEP:]


def add_run(runs: list[dict] | None, run_id: str, version: str) -> list[dict]:
    """The batch's list of runs that processed it (lineage), with ``run_id`` added once."""
    runs = list(runs or [])
    if not any(r.get("run_id") == run_id for r in runs):
        runs.append({"run_id": run_id, "processing_version": version,
                     "at": datetime.now(timezone.utc).isoformat()})
    return runs[-HISTORY_KEEP:]


def image_documents(manifest: BatchManifest, outcomes: Iterable[dict], run_id: str,
                    previous: dict[str, dict] | None = None) -> list[dict]:
    """The image documents for ``outcomes``; ``previous`` (image id → the stored document) carries each
    image's processing history forward."""
    now = datetime.now(timezone.utc).isoformat()
    previous = previous or {}
    libraries = library_versions()
    return [
        {
            **o,
            "id": o["image_id"],
            "type": "image",
            "batch_id": manifest.batch_id,
            "user_id": manifest.user_id,
            "user_metadata": manifest.metadata,
            "processing_version": o.get("processing_version") or PROCESSING_VERSION,
            "libraries": o.get("libraries") or libraries,
            "dagster_run_id": run_id,
            "processed_at": now,
            "processed_day": now[:10],  # the BI export's daily partition (an indexed equality filter)
            "history": _history(previous.get(o["image_id"]), run_id),
            **_understood(previous.get(o["image_id"]), o),
        }
        for o in outcomes
    ]


def _understood(previous: dict | None, outcome: dict) -> dict:
    """What the understanding assets wrote on the image's stored document (labels, moderation, faces), carried
    into the rewritten document while the image is still processed (the understanding step of the same run
    writes them anew when it runs)."""
    if not previous or outcome["outcome"] != "processed":
        return {}
    carried = {task: previous[task] for task in UNDERSTANDING_TASKS if previous.get(task)}
    if previous.get("deleted_by_review"):  # an operator removed it: a re-run does not bring it back
        carried.update(deleted=True, deleted_by_review=previous["deleted_by_review"])
    return carried


# Two images whose 64-bit pHashes differ in at most this many bits are reported as near-duplicates.
DUPLICATE_MAX_DISTANCE = 6


def find_near_duplicates(store: MetadataStore, manifest: BatchManifest, docs: list[dict]) -> None:
    """Annotate each processed document with ``near_duplicates``: images of this batch and of the same
    user's earlier batches whose pHash is within ``DUPLICATE_MAX_DISTANCE`` bits."""
    earlier = [
        d for d in store.query("images", {"user_id": manifest.user_id, "outcome": "processed"})
        if d["batch_id"] != manifest.batch_id and d.get("facts", {}).get("phash") and not d.get("deleted")
    ]
    hashed = [d for d in docs if d["outcome"] == "processed" and d["facts"].get("phash")]
    pool = hashed + earlier  # this batch's images first (the same index as in ``hashed``), then earlier ones
    found = within_distance([d["facts"]["phash"] for d in hashed], [d["facts"]["phash"] for d in pool],
                            DUPLICATE_MAX_DISTANCE)
    for n, (doc, near) in enumerate(zip(hashed, found)):
        matches = [{"batch_id": manifest.batch_id if j < len(hashed) else pool[j]["batch_id"],
                    "image_id": pool[j]["image_id"], "name": pool[j]["name"], "distance": dist}
                   for j, dist in near if j != n]
        doc["near_duplicates"] = sorted(matches, key=lambda m: (m["distance"], m["batch_id"], m["image_id"]))


def summarize(docs: Iterable[dict]) -> dict:
    docs = list(docs)
    processed = sum(1 for d in docs if d["outcome"] == "processed")
    return {"image_count": len(docs), "processed": processed, "rejected": len(docs) - processed}


def image_event(manifest: BatchManifest, doc: dict) -> dict:
    """The event telling the user about one image. Its id is deterministic — batch, image, outcome and the
    processing version — so a re-executed run repeats it exactly (and it is not sent twice, see
    ``unsent``), while a reprocessing under a new version is a new event the page shows."""
    version = doc.get("processing_version", PROCESSING_VERSION)
    kind = EVENT_IMAGE_PROCESSED if doc["outcome"] == "processed" else EVENT_IMAGE_REJECTED
    return {
        "event_id": f"{manifest.batch_id}:{doc['image_id']}:{doc['outcome']}:{version}",
        "type": kind,
        "batch_id": manifest.batch_id,
        "user_id": manifest.user_id,
        "image_id": doc["image_id"],
        "name": doc["name"],
        "outcome": doc["outcome"],
        "code": doc["code"],
        "reason": doc["reason"],
        "renditions": doc["renditions"],
        "processing_version": version,
    }


def result_events(manifest: BatchManifest, docs: list[dict]) -> list[dict]:
    """One event per image, then what each image shows (image.understood, where the understanding assets have
    written it), then one batch-complete event; ids are deterministic (consumers dedupe)."""
    events = [image_event(manifest, d) for d in docs]
    versions = sorted({e["processing_version"] for e in events}) or [PROCESSING_VERSION]
    events += [e for e in map(understood_event, docs) if e is not None]
    events.append(
        {
            "event_id": f"{manifest.batch_id}:completed:{'+'.join(versions)}",
            "type": EVENT_BATCH_COMPLETED,
            "batch_id": manifest.batch_id,
            "user_id": manifest.user_id,
            "status": "completed",
            "processing_version": versions[-1],
            **summarize(docs),
        }
    )
    return events


# The batch document lists the events the broker has acknowledged (``events_sent``): a run re-executed after a
# failure sends only what is missing, so consumers see each event once. Each is kept as a 64-bit digest of its
# id (16 hex digits, not the ~70-character id): a 10,000-image batch's two events per image then take 0.4 MB of
# the document, not 1.4 MB, under Cosmos DB's 2 MB per item. (Ids written before are still recognised.)
SENT_FIELD = "events_sent"


def sent_key(event_id: str) -> str:
    return hashlib.sha256(event_id.encode()).hexdigest()[:16]


def unsent(events: Iterable[dict], batch_doc: dict | None) -> list[dict]:
    sent = set((batch_doc or {}).get(SENT_FIELD) or ())
    return [e for e in events if sent_key(e["event_id"]) not in sent and e["event_id"] not in sent]


def record_sent(store: MetadataStore, manifest: BatchManifest, event_ids: Iterable[str], *,
                keep: set[str] | None = None, **fields) -> None:
    """Add ``event_ids`` (acknowledged by the broker) to the batch document's sent list, and set ``fields``:
    one conditional write (etag), deleted wins (``BatchDeleted``). With ``keep`` (the ids of the batch's events
    as its documents are now), what is not among them is dropped: events of an earlier processing are never
    sent again, so a reprocessed batch's list does not grow by a set per version."""
    ids = {sent_key(i) for i in event_ids}
    if not ids and not fields and keep is None:
        return
    current = None if keep is None else {sent_key(i) for i in keep} | set(keep)

    def change(doc: dict) -> dict:
        sent = set(doc.get(SENT_FIELD) or ()) | ids
        return {**doc, **fields, SENT_FIELD: sorted(sent if current is None else sent & current)}

    change_batch(store, manifest.batch_id, manifest.user_id, change)


# The delivery state of a completed batch's events, kept on its document (``imgpipe status`` shows it):
# ``events_pending`` while some event awaits the broker, with ``events_error``, ``events_attempts`` and
# ``events_pending_since``; the events sensor (sensors/events_sensor.py) sends them when the broker is back.
EVENTS_PENDING = "events_pending"


def deliver_events(store: MetadataStore, results: ResultStream, manifest: BatchManifest, *,
                   timeout_seconds: float = 30.0) -> int:
    """Send every event of the batch the broker has not acknowledged yet (image events, then
    batch.completed), rebuilt from the stored documents; on success clear the pending state. Raises the
    broker's error (the caller records it). Returns the events sent now."""
    docs = sorted((d for d in store.query("images", partition_key=manifest.batch_id) if not d.get("deleted")),
                  key=lambda d: d["image_id"])
    *image_events, completed_event = result_events(manifest, docs)
    batch_doc = ensure_live(store, manifest.batch_id, manifest.user_id) or {}
    missing = unsent(image_events, batch_doc)
    for event in missing:
        results.publish(manifest.user_id, event)
    results.flush(timeout_seconds)
    record_sent(store, manifest, [e["event_id"] for e in missing])
    announce = bool(unsent([completed_event], batch_doc))
    if announce:
        results.publish(manifest.user_id, completed_event)
        results.flush(timeout_seconds)
    record_sent(store, manifest, [completed_event["event_id"]] if announce else [],
                keep={e["event_id"] for e in (*image_events, completed_event)},
                **{EVENTS_PENDING: False, "events_error": None, "events_pending_since": None})
    return len(missing) + announce


def replay_events(store: MetadataStore, lake: Lake, results: ResultStream, *, since: datetime) -> int:
    """Publish again the events of every batch created since ``since`` that is not deleted, rebuilt from its
    documents (the store is the source of truth; events are derived from it): one per image document, and
    batch.completed once the batch is completed. For a broker that lost its log — the local one keeps it in
    memory, so a kill or a restart of the stack empties it.

    Every event is derived from a document written *before* the event is published (renditions streams
    each image's event after storing its document; result_events marks the batch completed before
    announcing it), so whatever the lost broker had acknowledged is rebuilt here, including what a run had
    not yet recorded in ``events_sent``. What a run publishes meanwhile may go out twice, never zero times;
    ids are deterministic and consumers drop the copies. Returns the events published."""
    published = 0
    cutoff = since.isoformat()
    for batch in store.query("batches", order_by="created_at"):
        if batch.get("status") == "deleted" or str(batch.get("created_at", "")) < cutoff:
            continue
        docs = sorted((d for d in store.query("images", partition_key=batch["batch_id"]) if not d.get("deleted")),
                      key=lambda d: d["image_id"])
        if not docs:
            continue  # not processed yet: its run sends everything
        try:
            manifest = load_manifest(lake, batch["batch_id"])
        except Exception:  # the raw upload is gone (lifecycle, purge): nothing to rebuild from
            continue
        events = result_events(manifest, docs)
        if batch.get("status") != "completed":
            events = events[:-1]  # batch.completed is its run's to announce
        for event in events:
            results.publish(manifest.user_id, event)
            published += 1
    results.flush()
    return published


def check_renditions(lake: Lake, batch_id: str) -> tuple[int, list[str]]:
    """Every recorded rendition is in the lake with its recorded sha256 and, from its header, its recorded
    pixel size; the smallest rendition of each image is decoded in full (the encoder's output is readable).
    Decoding every rendition again cost ~28 % of a 200-image run; this costs a read and a hash per file.
    Returns (renditions checked, problems)."""
    from PIL import Image

    problems, checked = [], 0
    for outcome in load_outcomes(lake, batch_id):
        renditions = outcome["renditions"]
        smallest = min(renditions, key=lambda r: r["width"] * r["height"]) if renditions else None
        for r in renditions:
            checked += 1
            try:
                data = lake.read(r["path"])
                if r.get("sha256") and hashlib.sha256(data).hexdigest() != r["sha256"]:
                    problems.append(f"{r['path']}: bytes differ from the recorded sha256")
                    continue
                recorded = (r["width"], r["height"])
                # A WebP's size from its header (Pillow would set up libwebp's demuxer over the whole file,
                # ~2 ms for a 2048-px rendition); anything else, and the smallest rendition, through Pillow.
                size = None if r is smallest else webp_dimensions(data)
                if size is None:
                    with Image.open(io.BytesIO(data)) as im:
                        size = im.size
                        if size == recorded and r is smallest:
                            im.load()
                if size != recorded:
                    problems.append(f"{r['path']}: {size} != recorded {recorded}")
            except Exception as exc:  # missing or unreadable: report, don't crash the check
                problems.append(f"{r['path']}: {type(exc).__name__}: {exc}")
    return checked, problems
