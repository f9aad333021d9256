"""What the web pages show, as plain functions over the ports (no Streamlit here, so they are tested
directly). Every read is scoped to one user: a batch is read with the user as its partition key, so
another user's batch id finds nothing; operators (a role in the token, see orchestration/domain/identity.py)
may see everyone's statistics. User-supplied text is rendered as text (``plain``), exported cells are
neutralised (``csv_bytes``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

from orchestration.domain.intake import IntakeItem, check_content, check_size
from orchestration.domain.manifest import BATCH_ID_PATTERN, raw_path
from orchestration.domain.status import batch_status, understanding_summary
from orchestration.domain.services import Services

PAGE_SIZE = 24


# Characters that Streamlit's Markdown gives a meaning to (emphasis, links, headings, tables, HTML, LaTeX,
# emoji/icon shortcodes). Escaped with a backslash, they show as themselves.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~:$])")


# GitHub-flavoured Markdown also turns bare URLs ("https://…", "www.…") into links, escapes or not; an
# invisible word joiner (U+2060) after the scheme or "www" keeps them plain text.
_AUTOLINK = re.compile(r"(?i)(https?|ftp|mailto|www)(?=[:.])")


# Streamlit turns ":material/name:" and ":emoji:" codes into icons, and GitHub-flavoured Markdown turns
# "name@host.tld" into a mailto: link, *after* backslash escapes are resolved: an escaped colon or at sign
# still forms them. A word joiner (U+2060, invisible) after every ':' and '@' breaks both patterns.
_BREAK_AFTER = re.compile(r"([:@])")


def plain(text: object) -> str:
    """User-supplied text, safe to put where Streamlit renders Markdown (labels, st.error, captions, progress
    texts): every character shows as itself — no links (web or e-mail), no images, no HTML, no icons, no
    formatting — and newlines become spaces. The one way user text reaches a page."""
    flat = _AUTOLINK.sub("\\1\u2060", " ".join(str(text).split()))
    escaped = _MARKDOWN_SPECIAL.sub(r"\\\1", flat)
    return _BREAK_AFTER.sub("\\1\u2060", escaped)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """The frame as CSV with every text cell that a spreadsheet would run as a formula made inert (a
    leading apostrophe, as OWASP recommends)."""
    safe = frame.copy()
    for column in safe.columns:
        if not pd.api.types.is_numeric_dtype(safe[column]):
            safe[column] = safe[column].map(
                lambda v: "'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v)
    return safe.to_csv(index=False).encode("utf-8")


def valid_batch_id(value: object) -> str | None:
    """A batch id from the URL, or None when it is not one (it never reaches the store then)."""
    return value if isinstance(value, str) and re.fullmatch(BATCH_ID_PATTERN, value) else None


@dataclass(frozen=True)
class FileCheck:
    name: str
    size: int
    ok: bool
    reason: str | None


def precheck(files: list, services: Services) -> list[FileCheck]:
    """The checks intake applies, run before sending so each file's reason shows at once. ``files`` are
    uploaded files (``name``, ``size`` and ``getbuffer()``, as Streamlit's UploadedFile has); they are looked
    at in place (the first bytes, and a TIFF's tags, which tell a camera RAW), nothing is copied."""
    s = services.settings
    out = []
    for f in files:
        refusal = check_size(f.size, s.max_file_bytes) or check_content(f.getbuffer())
        out.append(FileCheck(f.name, f.size, refusal is None, refusal.reason if refusal else None))
    return out


RECENT_MINUTES = 30


def _digest(f) -> str:
    import hashlib

    return hashlib.sha256(f.getbuffer()).hexdigest()


def remember_upload(recent: list[dict], files: list, batch_id: str, now: float | None = None) -> list[dict]:
    """The session's recent uploads (sha256 of each file, batch, when), the last RECENT_MINUTES only."""
    import time

    now = time.time() if now is None else now
    kept = [r for r in recent if now - r["at"] < RECENT_MINUTES * 60]
    return kept + [{"batch_id": batch_id, "at": now, "sha256": sorted({_digest(f) for f in files})}]


def recently_uploaded(recent: list[dict], files: list, now: float | None = None) -> dict | None:
    """Whether some of ``files`` (by sha256) went up in this session in the last RECENT_MINUTES:
    ``{batch_id, count, ago}`` of the latest such upload, or None."""
    import time

    if not files or not recent:
        return None
    now = time.time() if now is None else now
    mine = {_digest(f) for f in files}
    for r in reversed(recent):
        same = mine & set(r["sha256"])
        if same and now - r["at"] < RECENT_MINUTES * 60:
            minutes = int((now - r["at"]) // 60)
            return {"batch_id": r["batch_id"], "count": len(same),
                    "ago": "just now" if minutes < 1 else f"{minutes} minute(s) ago"}
    return None


def items(files: list) -> list[IntakeItem]:
    """Intake items that read each file's bytes only when intake stores it (one file at a time)."""
    return [IntakeItem(name=f.name, size=f.size, read=f.getvalue) for f in files]


def user_batches(services: Services, user_id: str, limit: int = 50) -> list[dict]:
    """The user's batches, newest first (one partition: batches are partitioned by user)."""
    docs = services.metadata.query("batches", partition_key=user_id, order_by="created_at", descending=True,
                                   limit=limit + 20)
    return [d for d in docs if d.get("status") != "deleted"][:limit]  # a deleted batch is gone from pages at once


def batch_for_user(services: Services, user_id: str, batch_id: str) -> dict | None:
    """A batch with its images, only if it belongs to ``user_id``; None otherwise (no hint it exists)."""
    doc = services.metadata.read("batches", batch_id, user_id)
    if doc is None or doc.get("status") == "deleted":
        return None
    return batch_status(services, batch_id, user_id)


def batch_for_operator(services: Services, batch_id: str, *, operator: str) -> dict | None:
    """Any user's batch (not deleted), for an operator helping them: read-only, and the access is logged with
    who and which batch. The caller checks the operator role first."""
    import logging

    found = next(iter(services.metadata.query("batches", {"batch_id": batch_id}, limit=1)), None)
    if found is None or found.get("status") == "deleted":
        return None
    logging.getLogger("imgpipe.web").info("operator access: %s opened batch %s of user %s (read-only)", operator,
                                          batch_id, found["user_id"])
    return {**batch_status(services, batch_id, found["user_id"]), "read_only_for": operator,
            "owner_name": found.get("owner_name")}


def keep_order(shown: list[str] | None, newest_first: list[str]) -> list[str]:
    """The batches to show, in the order the page already shows them: what arrived since goes below, so nothing
    the person is looking at moves (or closes) when a batch arrives. The first read is newest first."""
    if shown is None:
        return newest_first
    return [b for b in shown if b in newest_first] + [b for b in reversed(newest_first) if b not in shown]


def counts_line(status: dict) -> str:
    """'completed · 32 processed · 2 rejected' (failures are never hidden in a full bar)."""
    images = status["images"]
    processed = sum(1 for i in images if i["outcome"] == "processed")
    rejected = sum(1 for i in images if i["outcome"] == "rejected")
    waiting = len(images) - processed - rejected
    parts = [status["status"], f"{processed} processed"] + ([f"{rejected} rejected"] if rejected else []) + (
        [f"{waiting} waiting"] if waiting else [])
    return " · ".join(parts)


def progress(status: dict) -> tuple[int, int]:
    images = status["images"]
    return sum(1 for i in images if i["outcome"] != "pending"), len(images)


def rendition(services: Services, user_id: str, batch_id: str, path: str) -> bytes | None:
    """Bytes of a rendition, only when the path belongs to one of the user's batches and its image is not
    withheld by moderation."""
    status = batch_for_user(services, user_id, batch_id)
    if status is None:
        return None
    return services.lake.read(path) if path in servable_paths(status, services.settings) else None


# -- what images show (labels, moderation) -------------------------------------------------------------------

def label_line(img: dict, top: int = 3) -> str:
    """'tabby 72% · tiger cat 15% · Egyptian cat 13%' (plain text: label names come from a model or a service)."""
    return " · ".join(f"{label['name']} {label['score']:.0%}" for label in (img.get("labels") or [])[:top])


def alt_text(img: dict) -> str:
    """What a screen reader says for a picture: its file name and what it shows (its top labels)."""
    found = img.get("labels") or []
    found = found.get("labels") or [] if isinstance(found, dict) else found  # an image document's, or a summary's
    labels = ", ".join(label["name"] for label in found[:3])
    return f"{img['name']}" + (f": {labels}" if labels else "")


RUNNING = ("received", "processing", "retrying")


def shown_as(img: dict, settings, batch_status: str) -> str:
    """How a processed image's picture may be shown to its owner. Fails closed: a picture is shown clear only
    when moderation allowed it (or put it up for review), an operator kept it, or moderation is off and never
    looked at it.

    - ``plain``;
    - ``blurred``: flagged (IMGPIPE_MODERATION_ACTION=blur), blurred until the person clicks Show;
    - ``checking`` / ``unchecked``: no verdict yet while the batch runs, or none at all (the check failed or
      never ran while moderation is on): blurred the same way;
    - ``withheld``: not shown, nor downloadable: flagged, checking or unchecked under ``withhold``, or removed
      by an operator's review (whatever runs later).

    The action is the one in the settings now, not the one when the image was judged."""
    moderation = img.get("moderation") or None
    withhold = settings.moderation_action == "withhold"
    review = (moderation or {}).get("review")
    if review == "delete":
        return "withheld"
    if review == "keep":
        return "plain"
    decision = (moderation or {}).get("decision")
    if decision == "flag":
        return "withheld" if withhold else "blurred"
    if decision in ("allow", "review"):
        return "plain"
    if moderation is None and settings.understanding == "off":
        return "plain"
    if withhold:
        return "withheld"
    return "checking" if batch_status in RUNNING and moderation is None else "unchecked"


def servable_paths(status: dict, settings, *, originals: bool = False) -> set[str]:
    """The rendition paths of a batch (from ``batch_for_user``: the user's own) whose bytes may be sent to its
    owner: every rendition of every image that is not withheld; with ``originals``, those images' files as
    uploaded too (never for an operator's read-only view)."""
    shown = [i for i in status["images"] if i["renditions"] and shown_as(i, settings, status["status"]) != "withheld"]
    return {r["path"] for i in shown for r in i["renditions"]} | (
        {raw_path(status["batch_id"], i["image_id"]) for i in shown} if originals else set())


# -- downloads -----------------------------------------------------------------------------------------------
ORIGINALS = "originals"


def download_choices(status: dict, settings) -> list[str]:
    """What a batch's owner can download as one ZIP: each rendition (name and format) its servable images have,
    then every rendition, then the originals as uploaded."""
    servable = servable_paths(status, settings)
    kinds = dict.fromkeys(f"{r['name']} {r['format']}" for i in status["images"] for r in i["renditions"]
                          if r["path"] in servable)
    return [*kinds, *(["all renditions"] if len(kinds) > 1 else []), *([ORIGINALS] if servable else [])]


def safe_name(name: str, limit: int = 180) -> str:
    """A file name that stays inside the folder it is unpacked into: the last path component, printable, no
    leading dots, no trailing dots or spaces (Windows drops them), NFC; a long name loses the end of its stem,
    never its extension."""
    import unicodedata

    base = re.split(r"[\\/]", unicodedata.normalize("NFC", str(name)))[-1]
    base = "".join(c for c in base if c.isprintable() and c not in ':*?"<>|').strip().lstrip(".").rstrip(". ")
    stem, dot, ext = base.rpartition(".")
    if dot and len(ext) <= 10:
        return f"{stem[:limit - len(ext) - 1]}.{ext}" if stem else (base[:limit] or "image")
    return base[:limit] or "image"


ZIP_REPORT = "MISSING.txt"  # inside a ZIP: what the lake could not give when it was made


def download_entries(status: dict, settings, choice: str, *, originals: bool = True) -> list[tuple[str, str, int]]:
    """``(name in the ZIP, lake path, bytes)`` for ``choice`` (one of ``download_choices``), only servable
    images' (never a withheld one). Each name once, as Windows, macOS and Linux all see it (case, Unicode form,
    trailing dots): two photos both called IMG_1.JPG become IMG_1.JPG and IMG_1-2.JPG, and a third called
    IMG_1-2.JPG becomes IMG_1-2-2.JPG. ``originals=False`` (an operator's read-only view) leaves the uploaded
    files out."""
    servable = servable_paths(status, settings)
    picked: list[tuple[str, str, int]] = []
    for img in status["images"]:
        rends = [r for r in img["renditions"] if r["path"] in servable]
        if not rends:
            continue
        stem = safe_name(img["name"]).rpartition(".")[0] or safe_name(img["name"])
        if choice == ORIGINALS:
            if originals:
                picked.append((safe_name(img["name"]), raw_path(status["batch_id"], img["image_id"]),
                               int(img.get("size") or 0)))
            continue
        for r in rends:
            if choice in ("all renditions", f"{r['name']} {r['format']}"):
                picked.append((f"{stem}_{r['name']}.{r['path'].rsplit('.', 1)[-1]}", r["path"], int(r.get("bytes") or 0)))
    used = {ZIP_REPORT.lower()}
    unique = []
    for name, path, size in picked:
        stem, dot, ext = name.rpartition(".")
        stem, dot = (stem, dot) if dot else (name, "")
        candidate, n = name, 1
        while candidate.lower() in used:
            n += 1
            candidate = f"{stem}-{n}{dot}{ext if dot else ''}"
        used.add(candidate.lower())
        unique.append((candidate, path, size))
    return unique


def fresh_reader(services: Services, status: dict, *, originals: bool, on_error=None):
    """``read(path)`` for a download, checked against the batch as the store has it now, not as the page read it
    (seconds or minutes ago: an operator may have deleted an image in review since), the servable set worked
    out once for all the files; each read straight from the lake (large files stay out of the page's cache).
    ``read`` gives None for a path not servable now, or one the lake cannot give (``on_error(path)`` hears of
    it)."""
    now = batch_for_user(services, status["user_id"], status["batch_id"])
    allowed = servable_paths(now, services.settings, originals=originals) if now else set()

    def read(path: str) -> bytes | None:
        if path not in allowed:
            return None
        try:
            return services.lake.read(path)
        except Exception:  # noqa: BLE001 - gone meanwhile, or the lake is unreachable
            if on_error:
                on_error(path)
            return None
    return read


def zip_too_large(entries: list[tuple[str, str, int]], limit: int) -> str | None:
    """Why these files cannot be one download (None when they can): the web app builds a ZIP in memory, so it
    keeps each under ``limit`` bytes (IMGPIPE_MAX_ZIP_BYTES)."""
    total = sum(size for _, _, size in entries)
    if total <= limit:
        return None
    return (f"{total / 1e6:,.0f} MB is more than one download may hold ({limit / 1e6:,.0f} MB): choose one "
            "rendition, or download images one at a time.")


def write_zip(entries: list[tuple[str, str, int]], read, *, spool_bytes: int = 64 * 1024 * 1024) -> bytes:
    """The files as one ZIP, read one at a time with ``read(path)`` (bytes, or None when the lake cannot give
    it now: listed in MISSING.txt inside the ZIP instead of failing the download). Stored, not recompressed
    (JPEG, WebP and AVIF are compressed already); spooled to disk past ``spool_bytes`` while it is made.
    Returned as bytes: Streamlit's download hands the browser a whole file from memory, never a stream."""
    import tempfile
    import zipfile

    out = tempfile.SpooledTemporaryFile(max_size=spool_bytes)
    missing = []
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, path, _size in entries:
            blob = read(path)
            if blob is None:
                missing.append(name)
                continue
            z.writestr(name, blob)
        if missing:
            z.writestr(ZIP_REPORT, "Not available when this ZIP was made (try again later):\n"
                       + "\n".join(missing) + "\n")
    out.seek(0)
    with out:
        return out.read()


def on_checkerboard(image: bytes, cell: int = 8) -> bytes:
    """A picture with transparency, over a grey checkerboard (as image editors show it), as PNG: on a white page
    a transparent logo would otherwise look like white paper."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(image)) as im:
        rgba = im.convert("RGBA")
    board = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    dark = Image.new("RGBA", (cell, cell), (204, 204, 204, 255))
    for y in range(0, rgba.height, cell):
        for x in range((y // cell) % 2 * cell, rgba.width, 2 * cell):
            board.paste(dark, (x, y))
    board.alpha_composite(rgba)
    out = io.BytesIO()
    board.convert("RGB").save(out, "PNG")
    return out.getvalue()


def details_line(img: dict) -> str:
    """'taken 2024-07-01 10:00 · Canon EOS R5 · 4032×3024 JPEG · 3.1 MB' from the image's facts."""
    f = img.get("facts") or {}
    exif = f.get("exif") or {}
    parts = []
    if exif.get("captured_at"):
        taken = str(exif["captured_at"]).replace(":", "-", 2)[:16]
        parts.append(f"taken {taken}")
    camera = " ".join(dict.fromkeys(filter(None, [exif.get("camera_make"), exif.get("camera_model")])))
    if camera:
        parts.append(camera)
    if f.get("width"):
        parts.append(f"{f['width']}×{f['height']} {f.get('format') or ''}".strip())
    if img.get("size"):
        parts.append(f"{img['size'] / 1e6:.1f} MB" if img["size"] >= 100_000 else f"{img['size'] / 1e3:.0f} KB")
    return " · ".join(parts)


def blurred(image: bytes, radius: int = 18) -> bytes:
    """The picture blurred beyond recognition, made on the server: the browser never gets the clear bytes until
    the person asks for them."""
    import io

    from PIL import Image, ImageFilter

    with Image.open(io.BytesIO(image)) as im:
        small = im.convert("RGB")
        small.thumbnail((64, 64))
        out = small.resize(im.size, Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(radius))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=70)
    return buf.getvalue()


def find_by_label(services: Services, user_id: str, text: str, limit: int = 48) -> list[dict]:
    """The user's processed images (every batch of theirs, not deleted) with a label containing ``text``
    (case-insensitive), best score first: ``{batch_id, image_id, name, label, score, thumb, moderation}``. One
    query, on the user's own documents only (``thumb`` is that document's own rendition path: the caller may
    read it for this user without another ownership check, after ``shown_as``)."""
    needle = " ".join(text.lower().split())
    if not needle:
        return []
    live = {b["batch_id"]: b.get("status") for b in user_batches(services, user_id, limit=1000)}
    found = []
    for d in services.metadata.query("images", {"user_id": user_id, "outcome": "processed"}):
        if d.get("deleted") or d.get("batch_id") not in live:
            continue
        for label in (d.get("labels") or {}).get("labels") or []:
            if needle in label["name"].lower():
                thumb = next((r for r in d.get("renditions") or () if r["name"] == "thumb" and r.get("format") == "JPEG"),
                             None)
                found.append({"batch_id": d["batch_id"], "image_id": d["image_id"], "name": d.get("name"),
                              "label": label["name"], "score": label["score"], "thumb": thumb and thumb["path"],
                              "batch_status": live[d["batch_id"]],
                              "moderation": understanding_summary(d)["moderation"]})
                break
    return sorted(found, key=lambda f: -f["score"])[:limit]


def image_frame(services: Services, user_id: str | None) -> pd.DataFrame:
    """One row per image document; all users' when ``user_id`` is None (operators)."""
    where = {"user_id": user_id} if user_id else None
    # For operators, each person's display name (as they signed in) beside the opaque id.
    owners = {} if user_id else {d["batch_id"]: d.get("owner_name") for d in services.metadata.query("batches")}
    rows = []
    for d in services.metadata.query("images", where):
        if d.get("deleted"):
            continue
        facts = d.get("facts") or {}
        rows.append({
            "user_id": d.get("user_id"),
            "owner": owners.get(d.get("batch_id")),
            "batch_id": d.get("batch_id"),
            "image_id": d.get("image_id"),
            "name": d.get("name"),
            "day": (d.get("processed_at") or "")[:10],
            "outcome": d.get("outcome"),
            "reason_code": d.get("code"),
            "format": facts.get("format") or d.get("sniffed_type"),
            "width": facts.get("width"),
            "height": facts.get("height"),
            "bytes": d.get("size"),
            "processing_ms": d.get("processing_ms"),
            "near_duplicates": len(d.get("near_duplicates") or []),
            "top_label": ((d.get("labels") or {}).get("labels") or [{}])[0].get("name"),
            "moderation": (d.get("moderation") or {}).get("decision"),
            "faces": (d.get("faces") or {}).get("count"),
        })
    return pd.DataFrame(rows, columns=["user_id", "owner", "batch_id", "image_id", "name", "day", "outcome", "reason_code",
                                       "format", "width", "height", "bytes", "processing_ms", "near_duplicates",
                                       "top_label", "moderation", "faces"])


_FORMAT_NAMES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WebP", "image/gif": "GIF",
                 "image/tiff": "TIFF", "image/bmp": "BMP", "image/avif": "AVIF", "image/heic": "HEIC",
                 "image/heif": "HEIF", "text/plain": "text", "application/octet-stream": "unknown",
                 "video/mp4": "video", "video/quicktime": "video"}
SIZE_BINS = [0, 1, 4, 8, 16, 32, float("inf")]
SIZE_LABELS = ["under 1 MP", "1–4 MP", "4–8 MP", "8–16 MP", "16–32 MP", "32 MP and more"]


def format_name(value: object) -> str:
    """One name per format, whether the row has the decoder's ('JPEG') or only the sniffed MIME type."""
    if not isinstance(value, str) or not value:
        return "unknown"
    return _FORMAT_NAMES.get(value.lower(), value.split("/")[-1].upper() if "/" in value else value.upper())


def stats(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The statistics page's tables, each ready for a chart a person reads at a glance."""
    if frame.empty:
        return {}
    rejected = frame[frame["outcome"] == "rejected"]
    processed = frame[frame["outcome"] == "processed"]
    megapixels = processed["width"].fillna(0) * processed["height"].fillna(0) / 1e6
    sizes = pd.cut(megapixels, SIZE_BINS, labels=SIZE_LABELS, right=False).value_counts().reindex(SIZE_LABELS,
                                                                                                  fill_value=0)
    times = processed["processing_ms"].dropna()
    return {
        "images per day": frame.groupby("day").agg(images=("image_id", "count"), batches=("batch_id", "nunique")),
        "rejection reasons": rejected.groupby("reason_code").size().rename("images").to_frame(),
        "formats": frame["format"].map(format_name).value_counts().rename("images").to_frame(),
        "sizes": sizes.rename("images").to_frame(),
        "processing ms": pd.DataFrame({"p50": [times.quantile(0.5) if len(times) else None],
                                       "p95": [times.quantile(0.95) if len(times) else None]}),
        "processing ms per day": processed.groupby("day")["processing_ms"].median().rename("median ms").to_frame(),
        "near-duplicates": frame[frame["near_duplicates"] > 0][["batch_id", "name", "near_duplicates"]],
        "top labels": frame.dropna(subset=["top_label"]).groupby("top_label").size().rename("images")
        .sort_values(ascending=False).head(15).to_frame(),
        "moderation": frame.dropna(subset=["moderation"]).groupby("moderation").size().rename("images").to_frame(),
    }


def readable(frame: pd.DataFrame) -> pd.DataFrame:
    """The image table as a person reads it: file name first, human column names, the opaque user id last."""
    order = ["name", "outcome", "reason_code", "format", "width", "height", "bytes", "processing_ms", "top_label",
             "moderation", "faces", "near_duplicates", "day", "batch_id", "image_id", "owner", "user_id"]
    out = frame[[c for c in order if c in frame.columns and (c != "owner" or frame[c].notna().any())]].copy()
    out["format"] = out["format"].map(format_name)
    if "owner" in out.columns:
        out["owner"] = out["owner"].fillna("")  # (a script's upload has no display name)
    return out.rename(columns={"name": "file", "reason_code": "why rejected", "processing_ms": "ms", "top_label":
                               "shows", "near_duplicates": "near-duplicates", "batch_id": "batch", "image_id": "image",
                               "owner": "person", "user_id": "user id"})


def parse_extra(text: str) -> dict[str, str]:
    """'key=value' lines from the upload form (blank lines ignored); errors name the line."""
    from orchestration.domain.intake import IntakeError

    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise IntakeError(f"metadata line {n} ({line.strip()[:40]!r}) is not key=value")
        out[key.strip()] = value.strip()
    return out
