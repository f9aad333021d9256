"""Moderation review (operators only): the images moderation flagged or put up for review, across users, most
severe first. An operator keeps an image (its owner then sees it normally) or deletes it (its renditions are
soft-deleted in the lake). Every action is recorded on the image with who and when, and logged."""

import streamlit as st

from orchestration.domain import understanding as understand
from ui_streamlit import data, guard
from ui_streamlit.session import current_is_operator, current_user, services

svc = services()
st.title("Moderation review")
if not current_is_operator():  # checked on every run, not only when the page was listed
    st.info("This page is for operators.", icon=":material/lock:")
    st.stop()
operator = current_user()


@st.cache_data(ttl=600, show_spinner=False, max_entries=500)
def _blurred(path: str) -> bytes:
    return data.blurred(svc.lake.read(path))


def _act(doc: dict, action: str) -> None:
    if not current_is_operator():  # (the role may have lapsed since the page drew)
        st.session_state["review-flash"] = ("error", "Reviewing needs the operator role; sign in again.")
        return
    try:
        understand.record_review(svc.metadata, svc.lake, doc["batch_id"], doc["user_id"], doc["image_id"], action,
                                 operator)
    except Exception:  # noqa: BLE001 - busy store: nothing was changed that a retry would not redo
        guard.log.warning("review %s of %s/%s failed", action, doc["batch_id"], doc["image_id"], exc_info=True)
        st.session_state["review-flash"] = ("error", "The review could not be saved right now; try again.")
        return
    guard.log.info("operator %s: %s %s/%s (moderation review)", operator, action, doc["batch_id"], doc["image_id"])
    st.session_state["review-flash"] = ("success", f"{doc['name']}: {'kept' if action == 'keep' else 'deleted'}.")


flash = st.session_state.pop("review-flash", None)
if flash:
    (st.success if flash[0] == "success" else st.error)(data.plain(flash[1]))

items = None
with guard.part("Review list", key="review"):
    items = understand.review_list(svc.metadata)
if items is None:
    st.stop()
policy = svc.settings
st.caption(f"Flagged at a score ≥ {policy.moderation_flag_threshold:g}, listed for review at ≥ "
           f"{policy.moderation_review_threshold:g}; flagged images are "
           f"{'blurred' if policy.moderation_action == 'blur' else 'withheld'} for their owners until kept.")
if not items:
    st.success("Nothing waits for review.", icon=":material/task_alt:")
    st.stop()
st.write(f"{len(items)} image(s) wait for review.")
for doc in items:
    m = doc["moderation"]
    thumb = next((r for r in doc.get("renditions") or () if r["name"] == "thumb" and r.get("format") == "JPEG"), None)
    key = f"review-show-{doc['batch_id']}-{doc['image_id']}"
    left, right = st.columns([1, 3])
    with left:
        if thumb is None:
            st.caption("(no preview)")
        elif st.session_state.get(key):
            st.image(svc.lake.read(thumb["path"]), caption=data.plain(doc["name"]), alt=data.alt_text(doc))
            guard.log.info("operator %s viewed %s/%s (moderation review)", operator, doc["batch_id"], doc["image_id"])
        else:
            st.image(_blurred(thumb["path"]), caption=data.plain(doc["name"]), alt=data.alt_text(doc) + ", blurred")
            st.button("Show", key=f"btn-{key}", on_click=lambda k=key: st.session_state.__setitem__(k, True),
                      icon=":material/visibility:")
    with right:
        scores = ", ".join(f"{k} {v:.2f}" for k, v in sorted((m.get("scores") or {}).items(), key=lambda kv: -kv[1]))
        model = m.get("model") or {}
        st.write(f"**{m['decision']}** ({data.plain(m.get('category') or '')}) · {data.plain(scores)}")
        st.caption(data.plain(f"user {doc['user_id']} · batch {doc['batch_id']} · {doc['image_id']} · model "
                              f"{model.get('model')} {model.get('version')} ({model.get('code_version')}) · "
                              f"{(m.get('at') or '')[:16].replace('T', ' ')}"))
        a, b = st.columns(2)
        a.button("Keep", key=f"keep-{doc['batch_id']}-{doc['image_id']}", on_click=_act, args=(doc, "keep"),
                 icon=":material/check:", help="Its owner sees it normally from now on.")
        b.button("Delete", key=f"delete-{doc['batch_id']}-{doc['image_id']}", on_click=_act, args=(doc, "delete"),
                 icon=":material/delete:", help="Its renditions are soft-deleted in the lake.")
    st.divider()
