"""Results page: the user's batches, live. The metadata store says what there is; the user's Kafka
partition says when to look again (``UserEventFollower`` in orchestration/adapters/kafka/)."""

import time

import streamlit as st

from ui_streamlit import data, guard
from orchestration.domain import retention
from orchestration.domain.manifest import raw_path
from orchestration.wiring import build_user_follower
from ui_streamlit.session import current_is_operator, current_user, services

svc = services()
user = current_user()
st.title("Your results")

if st.session_state.get("follower_user") != user:  # one Kafka follower per browser session and user
    if "follower" in st.session_state:
        st.session_state["follower"].close()
    st.session_state["follower"] = build_user_follower(svc.settings, user)
    st.session_state["follower_user"] = user
follower = st.session_state["follower"]

asked = st.query_params.get("batch")
selected = data.valid_batch_id(asked)  # a link to one batch (?batch=…) shows that batch alone
if asked and not selected:
    st.info("No such batch among yours.")
    st.stop()
if selected:
    st.page_link("views/results.py", label="All your batches", icon=":material/photo_library:", query_params={})


@st.cache_data(ttl=600, show_spinner=False, max_entries=2000)
def _lake_bytes(path: str) -> bytes:
    return svc.lake.read(path)


def _owned_bytes(status: dict, path: str) -> bytes | None:
    """A thumbnail's bytes, only if ``path`` is one of this batch's renditions and its image is not withheld by
    moderation (None otherwise, or when the lake cannot give it now: the caller shows a placeholder).
    ``status`` came from ``data.batch_for_user`` for the signed-in user, so it is theirs: no further metadata
    reads. (Downloads check the batch again when clicked: ``_fresh_reader``.)"""
    if path not in data.servable_paths(status, svc.settings):
        return None
    try:
        return _lake_bytes(path)
    except Exception:  # noqa: BLE001 - missing (deleted meanwhile) or the lake is unreachable
        guard.log.warning("rendition %s could not be read", path, exc_info=True)
        return None


@st.cache_data(ttl=600, show_spinner=False, max_entries=2000)
def _blurred_bytes(path: str) -> bytes:
    return data.blurred(svc.lake.read(path))


def _readable(path: str) -> bytes | None:
    try:
        return _lake_bytes(path)
    except Exception:  # noqa: BLE001 - missing (deleted meanwhile) or the lake is unreachable: a placeholder
        guard.log.warning("rendition %s could not be read", path, exc_info=True)
        return None


def _reveal(key: str) -> None:
    st.session_state[key] = True


_WHY = {"blurred": "flagged by moderation", "checking": "being checked",
        "unchecked": "not checked by moderation"}


def _reveal_key(batch_id: str, img: dict) -> str:
    """Session state that says the person asked to see this picture: per verdict, so a Show given while it
    was being checked does not carry over to a flag."""
    return f"show-{batch_id}-{img['image_id']}-{(img.get('moderation') or {}).get('decision')}"


def _picture(img: dict, path: str | None, read, how: str, key: str, where: str) -> None:
    """The thumbnail as moderation allows: clear, blurred behind a Show button (flagged, or no verdict), or
    withheld. ``read()`` gives the clear bytes; it is called only when they are to be sent to the browser."""
    name = data.plain(img["name"])
    alt = data.alt_text(img)
    if how == "withheld":
        removed = (img.get("moderation") or {}).get("review") == "delete"
        st.info(f"{name}: " + ("removed after an operator's review" if removed else "held for moderation"),
                icon=":material/visibility_off:")
    elif not path:
        st.info(f"{name}: preview unavailable", icon=":material/hide_image:")
    elif how in _WHY and not st.session_state.get(key):
        try:
            st.image(_blurred_bytes(path), caption=f"{name} · {_WHY[how]}", alt=f"{alt}, blurred: {_WHY[how]}")
        except Exception:  # noqa: BLE001 - missing (deleted meanwhile) or the lake is unreachable
            st.info(f"{name}: preview unavailable", icon=":material/hide_image:")
            return
        st.button("Show", key=f"btn-{where}-{key}", on_click=_reveal, args=(key,), icon=":material/visibility:",
                  help="Show the picture unblurred (only to you).")
    else:
        clear = read()
        if clear:
            st.image(data.on_checkerboard(clear) if (img.get("facts") or {}).get("has_alpha") else clear,
                     caption=name + (" · transparent" if (img.get("facts") or {}).get("has_alpha") else ""), alt=alt)
        else:
            st.info(f"{name}: preview unavailable", icon=":material/hide_image:")


def _gallery(status: dict) -> None:
    images = status["images"]
    rejected = [i for i in images if i["outcome"] == "rejected"]
    if rejected:
        show = st.segmented_control("Show", ["All", "Processed", f"Rejected ({len(rejected)})"], default="All",
                                    key=f"filter-{status['batch_id']}", label_visibility="collapsed")
        if show == "Processed":
            images = [i for i in images if i["outcome"] != "rejected"]
        elif show and show.startswith("Rejected"):
            images = rejected
        else:  # every image, the rejections grouped after the rest
            images = [i for i in images if i["outcome"] != "rejected"] + rejected
    pages = max(1, -(-len(images) // data.PAGE_SIZE))
    page = st.selectbox("Page", range(1, pages + 1), key=f"page-{status['batch_id']}",
                        format_func=lambda p: f"Page {p} of {pages} ({len(images)} images)") if pages > 1 else 1
    shown = images[(page - 1) * data.PAGE_SIZE: page * data.PAGE_SIZE]
    # Cards of a fixed width in a row that wraps: 2 per row on a phone, 6 or more on a desktop.
    with st.container(horizontal=True, gap="small"):
        for img in shown:
            with st.container(width=CARD_WIDTH):
                _card(status, img)


CARD_WIDTH = 144


def _card(status: dict, img: dict) -> None:
    if img["outcome"] == "rejected":
        st.error(f"**{data.plain(img['name'])}** rejected: {data.plain(img['reason'])}", icon=":material/block:")
        return
    if img["outcome"] != "processed":
        st.info(f"{data.plain(img['name'])}: waiting", icon=":material/hourglass_empty:")
        return
    wanted = "WEBP" if (img.get("facts") or {}).get("has_alpha") else "JPEG"  # WebP keeps transparency
    thumb = next((r for r in img["renditions"] if r["name"] == "thumb" and r["format"] == wanted), None) \
        or next((r for r in img["renditions"] if r["name"] == "thumb"), None)
    path = thumb and thumb["path"]
    how = data.shown_as(img, svc.settings, status["status"])
    _picture(img, path, lambda p=path: _owned_bytes(status, p), how, _reveal_key(status["batch_id"], img), "gallery")
    if img.get("labels"):
        st.caption(data.plain(data.label_line(img)))
    with st.popover("Details", width="stretch"):
        _details(status, img, how)


def _details(status: dict, img: dict, how: str) -> None:
    f = img.get("facts") or {}
    st.caption(data.plain(data.details_line(img)))
    st.caption(data.plain(f"pHash {f.get('phash')}"))
    if img.get("labels"):
        st.caption(data.plain("Labels: " + data.label_line(img, top=5)))
    if img.get("caption"):
        st.caption(data.plain(f"Caption: {img['caption']}"))
    if img.get("faces") is not None:
        st.caption(f"Faces found: {int(img['faces'])}")
    moderation = img.get("moderation") or {}
    if moderation.get("decision"):
        st.caption(data.plain(f"Moderation: {moderation['decision']}"
                              + (f" ({moderation['category']})" if moderation.get("category") else "")
                              + (f", reviewed: {moderation['review']}" if moderation.get("review") else "")))
    if img.get("near_duplicates"):
        d = img["near_duplicates"][0]
        st.write(f"Near-duplicate of **{data.plain(d['name'])}** ({d['batch_id']}, distance {d['distance']})")
    if how == "withheld":
        st.caption("Downloads are available once an operator has reviewed this image.")
        return
    # One choice and one button (not a button per size): the bytes are read when it is clicked.
    options = [(r["name"], f"{r['name']} {r['width']}×{r['height']} {r['format']}", r["path"]) for r in img["renditions"]]
    if not status.get("read_only_for"):
        options.append(("original", f"original, as uploaded ({data.format_name(f.get('format'))})",
                        raw_path(status["batch_id"], img["image_id"])))
    key = f"{status['batch_id']}-{img['image_id']}"
    picked = st.selectbox("File", options, format_func=lambda o: data.plain(o[1]), key=f"pick-{key}")
    stem = data.safe_name(img["name"]).rpartition(".")[0] or "image"
    name = data.safe_name(img["name"]) if picked[0] == "original" else f"{stem}_{picked[0]}.{picked[2].rsplit('.', 1)[-1]}"
    st.download_button(f"Download {picked[0]}", data=lambda path=picked[2]: _fresh_reader(status)(path) or b"",
                       file_name=name, key=f"dl-{key}", icon=":material/download:", on_click="ignore")


def _fresh_reader(status: dict):
    return data.fresh_reader(svc, status, originals=not status.get("read_only_for"),
                             on_error=lambda path: guard.log.warning("download of %s failed", path, exc_info=True))


def _downloads(status: dict) -> None:
    """The batch's files as one ZIP (the owner's renditions, or originals), made when the button is clicked."""
    choices = data.download_choices(status, svc.settings)
    if not choices:
        st.caption("Nothing to download yet.")
        return
    mine = not status.get("read_only_for")
    if not mine:
        choices = [c for c in choices if c != data.ORIGINALS]
    choice = st.selectbox("Files", choices, key=f"zip-pick-{status['batch_id']}")
    entries = data.download_entries(status, svc.settings, choice, originals=mine)
    too_large = data.zip_too_large(entries, svc.settings.max_zip_bytes)
    if too_large:
        st.warning(too_large, icon=":material/folder_zip:")
        return
    title = data.safe_name((status.get("metadata") or {}).get("title") or status["batch_id"])
    st.download_button(
        f"Download {choice} as ZIP ({len(entries)} file{'' if len(entries) == 1 else 's'})",
        data=lambda: data.write_zip(entries, _fresh_reader(status)),
        file_name=f"{title}-{choice.replace(' ', '-')}.zip", mime="application/zip", on_click="ignore",
        key=f"zip-{status['batch_id']}", icon=":material/folder_zip:")


def _search() -> None:
    """Find the user's images by what they show, across all their batches."""
    text = st.text_input("Find your images by label", placeholder="e.g. cat, espresso, tripod, beach",
                         key="label-search", max_chars=60)
    if not text.strip():
        return
    with guard.part("Search", key="search"):
        found = data.find_by_label(svc, user, text)
        if not found:
            st.caption(data.plain(f"None of your images has a label with “{text.strip()}”."))
            return
        st.caption(f"{len(found)} image(s)")
        cols = st.columns(6)
        for n, hit in enumerate(found):
            with cols[n % 6]:
                path = hit["thumb"]  # the user's own document's rendition (find_by_label read only theirs)
                how = data.shown_as(hit, svc.settings, hit["batch_status"])
                _picture(hit, path, lambda p=path: _readable(p) if how != "withheld" else None, how,
                         _reveal_key(hit["batch_id"], hit), "search")
                st.caption(data.plain(f"{hit['label']} {hit['score']:.0%}"))
                st.page_link("views/results.py", label="Open batch", query_params={"batch": hit["batch_id"]})


def _forget(batch_id: str) -> None:
    st.session_state.pop(f"deleted-{user}", None)
    view = st.session_state.get(f"results-view-{user}")
    if view:
        view["ids"] = None
        view["statuses"].pop(batch_id, None)


def _delete(batch_id: str) -> None:
    try:
        doc = retention.delete_batch(svc, batch_id, user, deleted_by=user)
    except retention.RetentionError as exc:
        st.session_state["results-flash"] = ("error", str(exc))
        return
    except Exception:  # noqa: BLE001 - the store or the lake is busy: nothing changed that a retry would not redo
        guard.log.warning("delete of %s failed", batch_id, exc_info=True)
        st.session_state["results-flash"] = ("error", f"{batch_id} could not be deleted right now (the data store "
                                                      "is busy or unreachable); try again in a moment.")
        return
    _forget(batch_id)
    st.session_state["results-rerun-app"] = True  # the counts and the message outside this part change too
    st.session_state["results-undo"] = batch_id
    st.session_state["results-flash"] = ("success", f"Moved {batch_id} to the trash. You can restore it until "
                                                    f"{doc['restorable_until'][:10]} under Recently deleted.")


def _restore(batch_id: str, owner: str | None) -> None:
    if owner is None and not current_is_operator():  # (the operator role may have lapsed since the page drew)
        st.session_state["results-flash"] = ("error", "Restoring other users' batches needs the operator role; "
                                                      "sign in again.")
        return
    try:
        doc = retention.restore_batch(svc, batch_id, owner)
    except retention.RetentionError as exc:
        st.session_state["results-flash"] = ("error", str(exc))
        return
    except Exception:  # noqa: BLE001
        guard.log.warning("restore of %s failed", batch_id, exc_info=True)
        st.session_state["results-flash"] = ("error", f"{batch_id} could not be restored right now (the data store "
                                                      "is busy or unreachable); try again in a moment.")
        return
    _forget(batch_id)
    st.session_state["results-flash"] = ("warning" if doc["missing"] else "success",
                                         f"Restored {batch_id}: {retention.restore_outcome(doc)}.")


# A whole-page run shows what a delete changed; only a run of the live part alone has to ask for one (_live).
st.session_state.pop("results-rerun-app", None)
flash = st.session_state.pop("results-flash", None)
undo = st.session_state.pop("results-undo", None)
if flash:
    {"success": st.success, "warning": st.warning}.get(flash[0], st.error)(data.plain(flash[1]))
    if undo:
        st.button("Undo", key=f"undo-{undo}", icon=":material/undo:", on_click=_restore, args=(undo, user),
                  help="Restore the batch you just deleted.")


# What the page has read from the store, per session and user. A refresh re-reads only what an event
# says changed (or, with live updates down, everything shown every STALE_AFTER seconds): the cost of
# a refresh does not grow with the number of batches or images shown.
STALE_AFTER = 10.0


@st.fragment(run_every=2)
def live() -> None:
    with guard.part("Your batches", key="live"):
        _live()


def _live() -> None:
    if st.session_state.pop("results-rerun-app", False):
        st.rerun(scope="app")  # a delete from inside this part: the whole page, with its message and counts
    fresh = follower.poll()
    view = st.session_state.setdefault(f"results-view-{user}", {"ids": None, "statuses": {}, "read_at": 0.0})
    changed = {e.get("batch_id") for e in fresh}
    stale = bool(follower.error) and time.monotonic() - view["read_at"] >= STALE_AFTER
    if follower.error:
        guard.log.warning("live updates: %s", follower.error)  # the address and the exception: log only
        st.warning(guard.live_updates_paused(), icon=":material/cloud_off:")
    elif fresh:  # (said in place: a toast is a dialog without a name to a screen reader, and covers the page)
        view["news"] = f"{len(fresh)} new result(s) at {time.strftime('%H:%M:%S')}"
    if selected:
        ids = [selected]
    else:
        if view["ids"] is None or stale or (changed - set(view["ids"])):
            view["ids"] = data.keep_order(view["ids"], [b["id"] for b in data.user_batches(svc, user, limit=10)])
        ids = view["ids"]
    statuses = view["statuses"]
    for batch_id in ids:
        if batch_id not in statuses or batch_id in changed or stale:
            statuses[batch_id] = data.batch_for_user(svc, user, batch_id)
            if statuses[batch_id] is None and selected and current_is_operator():  # helping its owner
                statuses[batch_id] = data.batch_for_operator(svc, batch_id, operator=user)
    if stale or view["read_at"] == 0.0:
        view["read_at"] = time.monotonic()
    if selected and statuses.get(selected) is None:
        st.info("No such batch among yours.")
        return
    batches = [statuses[b] for b in ids if statuses.get(b) is not None]
    if not batches:
        st.info("No batches yet. Upload some images first.")
        return
    # The batch open when the page first showed (the selected or the newest) stays the open one, whatever
    # arrives later: a new batch does not collapse or move what is being looked at.
    opened = view.setdefault("open", set())
    if not opened:
        opened.add(batches[0]["batch_id"])
    # Always one line here (it never appears or vanishes, so nothing below it moves).
    st.caption(view.get("news") or "Live: new results appear here as they come.")
    for status in batches:
        _batch(status, is_open=status["batch_id"] in opened)


def _batch(status: dict, *, is_open: bool) -> None:
    done, total = data.progress(status)
    title = data.plain(status["metadata"].get("title") or status["batch_id"])
    counts = data.counts_line(status)
    # The open batch shows its gallery; the others show their progress and build their content only when
    # opened (one tap), so the page stays fast however many batches the user has. A stable key keeps each
    # one's state as its label changes.
    box = st.expander(f"**{title}** — {counts}", expanded=is_open, key=f"batch-{status['batch_id']}",
                      on_change="rerun")
    if not box.open:
        return
    with box:
        st.caption(f"{status['batch_id']} · {counts} · {done}/{total} done")
        if status.get("read_only_for"):
            owner = data.plain(status.get("owner_name") or "this user")
            st.info(f"Read-only: {owner}'s batch (user {status['user_id']}), opened with the operator role (logged).",
                    icon=":material/admin_panel_settings:")
        extra = {k: v for k, v in (status.get("metadata") or {}).items() if k != "title"}
        if extra:  # the person's own metadata, as they typed it
            st.caption(data.plain(" · ".join(f"{k}: {v}" for k, v in extra.items())))
        st.progress(done / total if total else 1.0)
        if status.get("error"):
            st.error(data.plain(status["error"]))
        _gallery(status)
        # Downloads on the left, Delete on the right, below the images: far from the control that opens the
        # batch, and two clicks (the second in a box of its own), so a batch sliding up under the pointer is
        # never deleted by the click meant for the one before.
        with st.container(horizontal=True, horizontal_alignment="distribute"):
            with st.popover("Download …", icon=":material/download:"):
                _downloads(status)
            if not status.get("read_only_for"):
                with st.popover("Delete batch …", icon=":material/delete:"):
                    st.write(f"Move **{title}** to the trash? You can restore it for "
                             f"{svc.settings.lake_soft_delete_days:g} days under Recently deleted.")
                    st.button("Move to trash", key=f"del-{status['batch_id']}", type="primary",
                              on_click=_delete, args=(status["batch_id"],))


if svc.settings.understanding != "off":
    _search()
live()


def _deleted_list(docs: list[dict], *, for_operator: bool) -> None:
    for d in docs:
        title = data.plain((d.get("metadata") or {}).get("title") or d["batch_id"])
        who = (f" · {data.plain(d.get('owner_name') or 'user')} ({data.plain(d['user_id'])})" if for_operator
               else "")
        st.write(f"**{title}** ({d['batch_id']}{who}) — deleted {d['deleted_at'][:16].replace('T', ' ')}, "
                 f"restorable until {d['restorable_until'][:10]}")
        st.button("Restore", key=f"restore-{d['batch_id']}", icon=":material/restore_from_trash:",
                  on_click=_restore, args=(d["batch_id"], None if for_operator else user))


# Read once per session (and after this session deletes or restores), not on every rerun.
with guard.part("Recently deleted", key="deleted"):
    if f"deleted-{user}" not in st.session_state:
        st.session_state[f"deleted-{user}"] = (
            retention.recently_deleted(svc, user),
            [d for d in retention.recently_deleted(svc, None) if d["user_id"] != user] if current_is_operator() else [])
mine, everyone = st.session_state.get(f"deleted-{user}", ([], []))
with st.expander(f"Recently deleted ({len(mine)})"):
    if not mine:
        st.caption("Nothing deleted recently.")
    _deleted_list(mine, for_operator=False)
if current_is_operator():
    with st.expander(f"Recently deleted, all users ({len(everyone)}) — operators"):
        _deleted_list(everyone, for_operator=True)
