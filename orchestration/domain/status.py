"""`imgpipe status`: a batch's state and each image's outcome, from the metadata store."""

from __future__ import annotations

from orchestration.domain.services import Services


class BatchNotFound(LookupError):
    pass


def batch_status(services: Services, batch_id: str, user_id: str | None = None) -> dict:
    """``{batch_id, user_id, status, error, images: [{image_id, name, outcome, reason, code, renditions}]}``.

    ``user_id`` is the partition key; without it the batch is looked up by id across partitions.
    Images not yet processed show outcome 'pending' (or 'rejected' when intake refused them).
    """
    store = services.metadata
    if user_id:
        doc = store.read("batches", batch_id, user_id)
    else:
        doc = next(iter(store.query("batches", {"id": batch_id}, limit=1)), None)
    if doc is None:
        raise BatchNotFound(f"no batch {batch_id!r}" + (f" for user {user_id!r}" if user_id else ""))
    processed = {d["image_id"]: d for d in store.query("images", partition_key=batch_id)}
    images = []
    for entry in doc.get("images", []):
        d = processed.get(entry["image_id"])
        if d is not None:
            images.append(
                {
                    "image_id": d["image_id"],
                    "name": d["name"],
                    "outcome": d["outcome"],
                    "code": d.get("code"),
                    "reason": d.get("reason"),
                    "near_duplicates": d.get("near_duplicates", []),
                    "facts": {k: (d.get("facts") or {}).get(k)
                              for k in ("format", "width", "height", "phash", "exif", "has_alpha")},
                    "size": d.get("size"),
                    **understanding_summary(d),
                    "renditions": [
                        {"name": r["name"], "format": r.get("format"), "width": r["width"], "height": r["height"],
                         "path": r["path"], "bytes": r.get("bytes")}
                        for r in d.get("renditions", [])
                    ],
                }
            )
        else:
            refused = entry.get("refused")
            images.append(
                {
                    "image_id": entry["image_id"],
                    "name": entry["name"],
                    "outcome": "rejected" if refused else "pending",
                    "code": refused["code"] if refused else None,
                    "reason": refused["reason"] if refused else None,
                    "near_duplicates": [],
                    "facts": {},
                    "size": entry.get("size"),
                    **understanding_summary({}),
                    "renditions": [],
                }
            )
    return {
        "batch_id": batch_id,
        "user_id": doc["user_id"],
        "status": doc.get("status"),
        "error": doc.get("error"),
        "created_at": doc.get("created_at"),
        "metadata": doc.get("metadata", {}),
        "dagster_run_id": doc.get("dagster_run_id"),
        "events": events_state(doc),
        "images": images,
    }


def understanding_summary(doc: dict) -> dict:
    """What the pages need of an image's understanding results: ``labels`` (name, score; [] when none yet),
    ``caption``, ``moderation`` (decision, category, the operator's review, the error; None while not checked
    yet) and ``faces`` (the count; None while not looked at)."""
    labels = doc.get("labels") or {}
    moderation = doc.get("moderation") or None
    if moderation is not None:
        moderation = {"decision": moderation.get("decision"), "category": moderation.get("category"),
                      "review": (moderation.get("review") or {}).get("action"), "error": moderation.get("error")}
    faces = doc.get("faces") or {}
    return {"labels": labels.get("labels") or [], "caption": labels.get("caption"), "moderation": moderation,
            "faces": faces.get("count")}


def events_state(doc: dict) -> dict:
    """Where the batch's events stand: ``delivered``, ``pending`` (the broker has not acknowledged them yet;
    the events sensor keeps trying), ``given up`` (after IMGPIPE_EVENTS_RETRY_MAX_HOURS), or ``not yet``
    (the batch has not completed)."""
    if doc.get("events_pending"):
        state = "pending"
    elif doc.get("status") != "completed":
        state = "not yet"
    elif (doc.get("events_error") or "").startswith("given up"):
        state = "given up"
    else:
        state = "delivered"
    return {"state": state, "since": doc.get("events_pending_since"), "attempts": int(doc.get("events_attempts") or 0),
            "error": doc.get("events_error") if state in ("pending", "given up") else None}
