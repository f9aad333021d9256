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

from datetime import datetime
from typing import Iterable

from orchestration.adapters import dagster_webserver as webserver
from orchestration.domain.manifest import manifest_path
from orchestration.domain.services import Services
from orchestration.settings import Settings


class OperateError(Exception):
    """A mistake an operator can fix (unknown batch, nothing selected); printed without a traceback."""


class BatchMissing(OperateError):
    """No batch with that id (the CLI's "no such batch", exit code 4)."""


def current_processing_version() -> str:
    from assets.batch import PROCESSING_CODE_VERSION

    return PROCESSING_CODE_VERSION


# What `imgpipe reprocess --asset` may name: the renditions and everything after them (the default), or one of
# the understanding assets alone (a new model: renditions, documents and other results are left as they are).
REPROCESS_ASSETS = ("all", "labels", "moderation", "faces")


def current_understanding(task: str) -> tuple[str, dict | None]:
    """(the code version of the model behind ``task`` now, the moderation thresholds now, for moderation)."""
    from assets.batch import MODERATION_POLICY, UNDERSTANDING_MODELS

    model = UNDERSTANDING_MODELS.get(task)
    # The thresholds decide the verdict; the action (blur or withhold) is applied when a page shows the image.
    policy = {"review": MODERATION_POLICY.review, "flag": MODERATION_POLICY.flag} if task == "moderation" else None
    return (model.code_version if model else "off"), policy


def _batch_has_other_version(services: Services, batch_id: str, task: str, current: tuple[str, dict | None]) -> bool:
    version, policy = current
    for doc in services.metadata.query("images", partition_key=batch_id):
        if doc.get("outcome") != "processed" or doc.get("deleted"):
            continue
        got = doc.get(task) or {}
        if (got.get("model") or {}).get("code_version") != version:
            return True
        if policy is not None and "error" not in got and {k: (got.get("policy") or {}).get(k) for k in policy} != policy:
            return True
    return False


def select_batches(services: Services, batch_ids: Iterable[str] = (), *, since: datetime | None = None,
                   changed: bool = False, asset: str = "all") -> list[str]:
    """Batch ids to reprocess: those named (each must exist), else every batch uploaded at or after
    ``since`` and/or (``changed``) processed under another processing version — or, with ``asset`` one of the
    understanding assets, whose images carry another model's results for it. Never the ones that were
    never queued or whose manifest was invalid (they have nothing to reprocess)."""
    named = list(dict.fromkeys(batch_ids))
    if named:
        found = {d["batch_id"] for b in named for d in services.metadata.query("batches", {"batch_id": b})}
        missing = [b for b in named if b not in found]
        if missing:
            raise BatchMissing(f"no such batch: {', '.join(missing)}")
        return named
    if since is None and not changed:
        raise OperateError("say which batches: BATCH ids, --since DATE or --changed")
    task = None if asset == "all" else asset
    version = (current_understanding(task) if task else current_processing_version()) if changed else None
    chosen = []
    for d in services.metadata.query("batches", None):
        if d.get("status") in ("invalid", "deleted") or not d.get("images"):
            continue
        if since is not None and d.get("created_at", "") < since.isoformat():
            continue
        if changed and not task and d.get("processing_version") == version:
            continue
        if changed and task and not _batch_has_other_version(services, d["batch_id"], task, version):
            continue
        chosen.append(d["batch_id"])
    return sorted(chosen)


KNOWN_PARTITIONS = """
query ($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) { ... on AssetNode { partitionKeys } }
}"""

ADD_PARTITION = """
mutation ($repo: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $repo, partitionsDefName: $name, partitionKey: $key) {
    __typename
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}"""

LAUNCH_BACKFILL = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on InvalidSubsetError { message }
  }
}"""

# The code location and repository a `Definitions` object is served as (workspace.yaml, the Helm values).
REPOSITORY = {"repositoryLocationName": "imgpipe", "repositoryName": "__repository__"}


def graphql(settings: Settings, query: str, variables: dict, *, timeout: float = 60.0) -> dict:
    """One request to the Dagster webserver's GraphQL API (the interface the UI itself uses)."""
    try:
        return webserver.graphql(settings.dagster_api_url or dagster_ui_url(settings), query, variables, timeout=timeout)
    except webserver.WebserverError as exc:
        raise OperateError(str(exc)) from None


def submit_reprocess(settings: Settings, batch_ids: list[str], *, reason: str = "", asset: str = "all") -> str:
    """One asset backfill of the batch assets (or, with ``asset``, of that understanding asset alone) for
    ``batch_ids``, submitted through the Dagster webserver's
    GraphQL API (``launchPartitionBackfill``, as the UI's "Materialize" dialog does); returns its id (the UI
    shows it under Backfills; ``dagster/backfill`` tags its runs). A batch that never reached a run has no
    partition yet: the missing ones are added first (``addDynamicPartition``)."""
    from orchestration.definitions import defs
    from orchestration.partitions import REPROCESS_TAG, batches_partitions

    if not batch_ids:
        raise OperateError("no batch selected: nothing to reprocess")
    graph = defs.resolve_asset_graph()
    if asset not in REPROCESS_ASSETS:
        raise OperateError(f"--asset {asset!r}: one of {', '.join(REPROCESS_ASSETS)}")
    keys = [{"path": list(k.path)} for k in graph.get_all_asset_keys()
            if graph.get(k).partitions_def == batches_partitions and (asset == "all" or k.path == [asset])]
    known = set(graphql(settings, KNOWN_PARTITIONS, {"path": keys[0]["path"]})["assetNodeOrError"]
                .get("partitionKeys") or ())
    for batch_id in [b for b in batch_ids if b not in known]:
        added = graphql(settings, ADD_PARTITION, {"repo": REPOSITORY, "name": batches_partitions.name,
                                                  "key": batch_id})["addDynamicPartition"]
        if added["__typename"] not in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"):
            raise OperateError(f"could not add partition {batch_id}: {added.get('message', added['__typename'])}")
    params = {
        "partitionNames": list(batch_ids),
        "assetSelection": keys,
        "tags": [{"key": REPROCESS_TAG, "value": "cli"}],
        "title": f"imgpipe reprocess{'' if asset == 'all' else ' --asset ' + asset}: {len(batch_ids)} batch(es)",
        "description": reason or "submitted by `imgpipe reprocess`",
    }
    result = graphql(settings, LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise OperateError(f"the backfill was refused: {result.get('message', result['__typename'])}")
    return result["backfillId"]


def dagster_ui_url(settings: Settings) -> str:
    return settings.dagster_ui_url.rstrip("/")


def _understanding_lineage(doc: dict) -> dict:
    """Per understanding task: the result in short and the model that gave it (name, version, sha256, code
    version), the rendition it looked at and when; for moderation the decision, the policy and any review."""
    out = {}
    for task in ("labels", "moderation", "faces"):
        got = doc.get(task)
        if not got:
            continue
        entry = {"model": got.get("model"), "source": got.get("source"), "at": got.get("at")}
        if "error" in got:
            entry["error"] = got["error"]
        elif task == "labels":
            entry["labels"] = [f"{label['name']} {label['score']:.2f}" for label in got.get("labels") or []]
        elif task == "moderation":
            entry.update({k: got.get(k) for k in ("decision", "category", "scores", "policy", "review", "history")
                          if got.get(k) is not None})
        else:
            entry["count"] = got.get("count")
        out[task] = entry
    return out


def lineage(services: Services, settings: Settings, batch_id: str, image_id: str | None = None) -> dict:
    """The chain of one batch (or one of its images): who uploaded it and when, each image's source
    sha256 and raw path, the run and its Dagster UI link, the processing version and image library
    versions, every rendition with path, size and sha256, the near-duplicate links, and every earlier
    processing (history) and run of the batch."""
    [batch] = list(services.metadata.query("batches", {"batch_id": batch_id}))[:1] or [None]
    if batch is None:
        raise BatchMissing(f"no such batch: {batch_id}")
    ui = dagster_ui_url(settings)
    try:
        import json

        manifest = json.loads(services.lake.read(manifest_path(batch_id)))
    except Exception:  # noqa: BLE001 - a deleted or missing manifest is shown as such
        manifest = {"images": []}
    raw = {i["image_id"]: i for i in manifest.get("images", [])}
    docs = sorted(services.metadata.query("images", partition_key=batch_id), key=lambda d: d["image_id"])
    if image_id and not any(d["image_id"] == image_id for d in docs):
        # a file name as the person knows it (IMG_4102.JPG) instead of the image id
        named = [d["image_id"] for d in docs if d.get("name") == image_id] or [
            d["image_id"] for d in docs if str(d.get("name", "")).lower() == image_id.lower()]
        if len(named) > 1:
            raise OperateError(f"batch {batch_id} has {len(named)} images named {image_id!r}: "
                               f"{', '.join(named)}; give one of these ids")
        image_id = named[0] if named else image_id
    images = []
    for doc in docs:
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
            "understanding": _understanding_lineage(doc),
            "history": doc.get("history") or [],
        })
    if image_id and not images:
        raise OperateError(f"batch {batch_id} has no image with the id or file name {image_id!r}")
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
