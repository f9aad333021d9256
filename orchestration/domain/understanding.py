"""What each image shows, without Dagster: the work of the ``labels``, ``moderation`` and ``faces`` assets
(``assets.batch.understand_images``), their checks, their events, and the operators' review of flagged images.

Each processed image document gains one field per task, written by the run (never by the adapter):

    labels:     {labels: [{name, score}] (top 5), caption?, model: {...}, source, at}
    moderation: {scores: {category: 0..1}, decision: allow|review|flag, category, policy: {...}, model: {...},
                 review?: {action: keep|delete, by, at}, history: [earlier decisions, with their model]}
    faces:      {count, boxes: [{box: [x0, y0, x1, y1] (fractions), score}], detector, model: {...}}

``model`` is ``ModelInfo.lineage()``: name, version, sha256 of the file, code version. A task the model could
not answer for an image holds ``{error, model, ...}`` instead, so every processed image has a result.
The input is one rendition the run already made (``source_rendition``), never the source file again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable

from orchestration.domain.batches import change_image
from orchestration.ports.lake import Lake, ObjectNotFound
from orchestration.ports.metadata import MetadataStore
from orchestration.ports.results import EVENT_IMAGE_UNDERSTOOD
from orchestration.ports.understanding import (ALLOW, FLAG, REVIEW, TASKS, ImageUnderstanding, ModelInfo,
                                               ModerationPolicy)

MIN_INPUT_EDGE = 256     # the models' input (224 after their crop); the source rendition's short side should reach it
CHUNK = 64               # images per call to the adapter (which batches inference as its device likes)
UNCHECKED = "unchecked"  # the moderation decision when the model could not answer for an image
HISTORY_KEEP = 5         # earlier moderation decisions kept on the document
_PREFERRED_FORMATS = ("JPEG", "WEBP", "PNG", "AVIF")  # cheapest to decode first (JPEG decodes at reduced scale)


def policy_from(settings) -> ModerationPolicy:
    return ModerationPolicy(review=settings.moderation_review_threshold, flag=settings.moderation_flag_threshold,
                            action=settings.moderation_action)


def source_rendition(doc: dict) -> dict | None:
    """The smallest rendition whose short side reaches the models' input, in the cheapest format to decode;
    the largest there is when none does (a small source)."""
    renditions = doc.get("renditions") or []
    if not renditions:
        return None

    def cost(r):
        fmt = r.get("format") or ""
        rank = _PREFERRED_FORMATS.index(fmt) if fmt in _PREFERRED_FORMATS else len(_PREFERRED_FORMATS)
        return (r["width"] * r["height"], rank)

    adequate = [r for r in renditions if min(r["width"], r["height"]) >= MIN_INPUT_EDGE]
    if adequate:
        return min(adequate, key=cost)
    largest = max(r["width"] * r["height"] for r in renditions)
    return min((r for r in renditions if r["width"] * r["height"] == largest), key=cost)


def _fields(task: str, result: dict, model: ModelInfo, policy: ModerationPolicy, previous: dict, source: str,
            now: str) -> dict:
    out = {**result, "model": model.lineage(), "source": source, "at": now}
    if task != "moderation":
        return out
    if "error" not in result:
        decision, category = policy.decide(result.get("scores") or {})
        out.update(decision=decision, category=category, policy=policy.as_dict())
    else:
        out.update(decision=UNCHECKED, category=None)  # no verdict: shown blurred, listed for review
    before = previous.get("moderation") or {}
    history = list(before.get("history") or [])
    if before.get("review") and before.get("decision") == out.get("decision"):
        out["review"] = before["review"]  # the same verdict again (a re-run, another rendition): the review stands
    if before.get("decision"):
        same = (before["model"].get("code_version") == model.code_version
                and before.get("decision") == out.get("decision") and before.get("scores") == out.get("scores"))
        if not same:
            history.append({k: before.get(k) for k in ("decision", "category", "scores", "review", "at")}
                           | {"code_version": before["model"].get("code_version"),
                              "model": before["model"].get("model")})
    if history:
        out["history"] = history[-HISTORY_KEEP:]
    return out


@dataclass
class UnderstandReport:
    images: int = 0
    errors: list[str] = field(default_factory=list)
    decisions: dict[str, int] = field(default_factory=dict)
    faces: int = 0
    labels: dict[str, int] = field(default_factory=dict)


def understand_batch(lake: Lake, store: MetadataStore, understanding: ImageUnderstanding, batch_id: str,
                     user_id: str, tasks: Iterable[str], policy: ModerationPolicy, *,
                     on_image: Callable[[dict], None] | None = None) -> UnderstandReport:
    """Every processed image of the batch through ``understanding`` for ``tasks``, CHUNK images per call; each
    image's document is updated (etag, deleted wins) as soon as its results are in and ``on_image`` hears of
    it (its event goes out then). A rendition that is missing or unreadable is that image's error."""
    tasks = [t for t in TASKS if t in set(tasks)]
    models = understanding.models()
    report = UnderstandReport()
    docs = sorted((d for d in store.query("images", partition_key=batch_id)
                   if d.get("outcome") == "processed" and not d.get("deleted")), key=lambda d: d["image_id"])
    for start in range(0, len(docs), CHUNK):
        chunk = docs[start:start + CHUNK]
        sources, missing, payloads = {}, {}, {}
        for doc in chunk:
            r = source_rendition(doc)
            try:
                if r is None:
                    raise ObjectNotFound("(no rendition)")
                payloads[doc["image_id"]] = lake.read(r["path"])
                sources[doc["image_id"]] = r["path"]
            except ObjectNotFound:
                missing[doc["image_id"]] = "its rendition is missing from the lake"
        asked = [d["image_id"] for d in chunk if d["image_id"] in payloads]
        answered = dict(zip(asked, understanding.analyze([payloads[i] for i in asked], tasks))) if asked else {}
        now = datetime.now(timezone.utc).isoformat()
        for doc in chunk:
            image_id = doc["image_id"]
            got = {task: ({"error": missing[image_id]} if image_id in missing
                          else (answered.get(image_id) or {}).get(task) or {"error": "no answer from the model"})
                   for task in tasks}

            def change(current: dict, got=got, source=sources.get(image_id, "")) -> dict:
                # From the stored document as it is now (an operator's review recorded meanwhile stands).
                return {**current, **{task: _fields(task, got[task], models[task], policy, current, source, now)
                                      for task in tasks}}

            stored = change_image(store, batch_id, user_id, doc["id"], change)
            report.images += 1
            for task in tasks:
                if "error" in got[task]:
                    report.errors.append(f"{doc['name']} ({image_id}) {task}: {got[task]['error']}")
            if stored is None:
                continue
            decision = (stored.get("moderation") or {}).get("decision") if "moderation" in tasks else None
            if decision:
                report.decisions[decision] = report.decisions.get(decision, 0) + 1
            if "faces" in tasks:
                report.faces += (stored.get("faces") or {}).get("count", 0) or 0
            for label in ((stored.get("labels") or {}).get("labels") or [])[:1] if "labels" in tasks else []:
                report.labels[label["name"]] = report.labels.get(label["name"], 0) + 1
            if on_image:
                on_image(stored)
    return report


# -- checks -----------------------------------------------------------------------------------------

def check_results(store: MetadataStore, batch_id: str, task: str) -> tuple[int, list[str]]:
    """Every processed image has a result (or a recorded error) for ``task``, and its numbers are in range.
    Returns (images checked, problems)."""
    problems, checked = [], 0
    for doc in store.query("images", partition_key=batch_id):
        if doc.get("outcome") != "processed" or doc.get("deleted"):
            continue
        checked += 1
        where = f"{doc.get('name')} ({doc['image_id']})"
        got = doc.get(task)
        if not got:
            problems.append(f"{where}: no {task} result")
            continue
        if "error" in got:
            continue  # recorded: the image could not be read by the model, shown as such
        if not (got.get("model") or {}).get("code_version"):
            problems.append(f"{where}: {task} result without its model")
        problems += [f"{where}: {p}" for p in _out_of_range(task, got)]
    return checked, problems


def _unit(x) -> bool:
    return isinstance(x, (int, float)) and 0.0 <= x <= 1.0


def _out_of_range(task: str, got: dict) -> list[str]:
    bad = []
    if task == "labels":
        scores = [label.get("score") for label in got.get("labels") or []]
        if not all(_unit(s) for s in scores):
            bad.append(f"label scores out of 0..1: {scores}")
        if scores != sorted(scores, reverse=True) or len(scores) > 5:
            bad.append("labels not the best five, best first")
    elif task == "moderation":
        scores = got.get("scores") or {}
        if not scores or not all(_unit(s) for s in scores.values()):
            bad.append(f"moderation scores out of 0..1: {scores}")
        if got.get("decision") not in (ALLOW, REVIEW, FLAG):
            bad.append(f"unknown moderation decision {got.get('decision')!r}")
    elif task == "faces":
        boxes = got.get("boxes") or []
        if got.get("count") != len(boxes):
            bad.append(f"face count {got.get('count')} != {len(boxes)} boxes")
        for b in boxes:
            x0, y0, x1, y1 = b.get("box") or (0, 0, -1, -1)
            if not (all(_unit(v) for v in (x0, y0, x1, y1)) and x0 <= x1 and y0 <= y1 and _unit(b.get("score"))):
                bad.append(f"face box out of range: {b}")
    return bad


# -- events ---------------------------------------------------------------------------------------

def understood_event(doc: dict) -> dict | None:
    """The event that tells the page what an image shows (after its image.processed). Its id names the
    models that answered, the processing version of the rendition they looked at, the moderation decision and
    any review, so a re-run repeats it and a new model, a new verdict or a reprocessing is a new event."""
    present = [t for t in TASKS if doc.get(t)]
    if doc.get("outcome") != "processed" or not present:
        return None
    moderation = doc.get("moderation") or {}
    versions = "+".join([str(doc.get("processing_version"))]
                        + [f"{t}={(doc[t].get('model') or {}).get('code_version', '')}" for t in present]
                        + [f"decision={moderation.get('decision')}",
                           f"review={(moderation.get('review') or {}).get('action')}"])
    digest = hashlib.sha256(versions.encode()).hexdigest()[:12]
    event = {"event_id": f"{doc['batch_id']}:{doc['image_id']}:understood:{digest}", "type": EVENT_IMAGE_UNDERSTOOD,
             "batch_id": doc["batch_id"], "user_id": doc["user_id"], "image_id": doc["image_id"],
             "name": doc.get("name"), "processing_version": doc.get("processing_version")}
    if doc.get("labels"):
        got = doc["labels"]
        event["labels"] = got.get("labels") or []
        event["caption"] = got.get("caption")
    if doc.get("moderation"):
        got = doc["moderation"]
        event["moderation"] = {"decision": got.get("decision"), "category": got.get("category"),
                               "review": (got.get("review") or {}).get("action")}
    if doc.get("faces"):
        event["faces"] = {"count": doc["faces"].get("count")}
    for t in present:
        if "error" in doc[t]:
            event.setdefault("errors", {})[t] = doc[t]["error"]
    return event


# -- the operators' review ---------------------------------------------------------------------------

REVIEW_ACTIONS = ("keep", "delete")


def review_list(store: MetadataStore, *, include_reviewed: bool = False, limit: int = 200) -> list[dict]:
    """Flagged, unchecked (the model could not answer) and to-review images across users, most severe first
    (operators only: the caller checks the role)."""
    found = []
    for decision in (FLAG, REVIEW, UNCHECKED):
        for doc in store.query("images", {"moderation.decision": decision}):
            if doc.get("deleted") or (doc["moderation"].get("review") and not include_reviewed):
                continue
            found.append(doc)
    rank = {FLAG: 0, UNCHECKED: 1, REVIEW: 2}
    found.sort(key=lambda d: (rank[d["moderation"]["decision"]],
                              -max((d["moderation"].get("scores") or {0: 0}).values()), d.get("processed_at") or ""))
    return found[:limit]


def record_review(store: MetadataStore, lake: Lake, batch_id: str, user_id: str, image_id: str, action: str,
                  operator: str) -> dict | None:
    """An operator's verdict on a flagged image: ``keep`` (shown normally from now on) or ``delete`` (the
    image's renditions are soft-deleted in the lake and its document marked deleted, restorable for the lake's
    soft-delete period). Recorded on the moderation result with who and when."""
    if action not in REVIEW_ACTIONS:
        raise ValueError(f"review action must be one of {REVIEW_ACTIONS}")
    now = datetime.now(timezone.utc).isoformat()

    def change(doc: dict) -> dict | None:
        if not doc.get("moderation"):
            return None
        out = {**doc, "moderation": {**doc["moderation"], "review": {"action": action, "by": operator, "at": now}}}
        if action == "delete":
            out["deleted"] = True
            out["deleted_by_review"] = now
        return out

    stored = change_image(store, batch_id, user_id, image_id, change)
    if stored is not None and action == "delete":
        for r in stored.get("renditions") or ():
            try:
                lake.delete(r["path"])
            except ObjectNotFound:
                pass
    return stored
