"""Upload page: files + metadata → the same intake function as `imgpipe upload`."""

import streamlit as st

from assets.core.sniff import ACCEPTED_FORMATS
from orchestration.domain.intake import IntakeError, upload_batch
from ui_streamlit import data, guard
from ui_streamlit.session import current_user, identity, services

svc = services()
limits = svc.settings
st.title("Upload a batch")
st.caption(f"Up to {limits.max_files_per_batch} images, {limits.max_file_bytes // (1024 * 1024)} MB each: "
           f"{ACCEPTED_FORMATS}. Camera RAW, JPEG XL and videos are not accepted (export a JPEG or HEIC).")

# After a successful upload the form starts empty (new widget keys), so a second click cannot send the same
# batch again; what was uploaded is said above it, with a link.
round_ = st.session_state.setdefault("upload-round", 0)
done = st.session_state.get("upload-done")
if done:
    st.success(f"Uploaded as batch **{done['batch_id']}**: {done['queued']} image(s) queued, {done['refused']} "
               "refused.", icon=":material/check_circle:")
    st.page_link("views/results.py", label="See its results", icon=":material/photo_library:",
                 query_params={"batch": done["batch_id"]})

uploaded = st.file_uploader("Images", accept_multiple_files=True, key=f"files-{round_}")
files = list(uploaded or [])  # Streamlit's UploadedFile objects: read only when stored, never copied whole
checks = data.precheck(files, svc)
too_many = len(files) > limits.max_files_per_batch
ok = sum(c.ok for c in checks)
if files:
    st.write(f"**{ok}** of {len(files)} file(s) will be processed.")
    refused = [c for c in checks if not c.ok]
    for c in refused:
        st.error(f"{data.plain(c.name)}: {data.plain(c.reason)}", icon=":material/block:")
    if too_many:
        st.error(f"{len(files)} files; a batch holds at most {limits.max_files_per_batch}.")
    if not ok:
        st.warning("None of these files can be processed, so there is nothing to upload.", icon=":material/block:")
    again = data.recently_uploaded(st.session_state.get("upload-recent", []), files)
    if again:
        st.warning(f"{again['count']} of these file(s) were uploaded {again['ago']} as batch {again['batch_id']}. "
                   "Uploading them again makes a second batch.", icon=":material/content_copy:")

with st.form("batch"):
    title = st.text_input("Title", max_chars=200, key=f"title-{round_}")
    description = st.text_area("Description", max_chars=2000, key=f"description-{round_}")
    tags = st.text_input("Tags", max_chars=500, help="Comma-separated", key=f"tags-{round_}")
    extra = st.text_area("More metadata", max_chars=4000, help="One key=value per line", key=f"extra-{round_}")
    bad_extra = st.session_state.pop("upload-bad-extra", None)
    if bad_extra:  # said under the field it is about, which keeps what was typed
        st.error(f"More metadata: {data.plain(bad_extra)}", icon=":material/edit_note:")
    send = st.form_submit_button(f"Upload {ok} image(s)" if ok else "Upload batch", type="primary",
                                 disabled=not files or too_many or not ok)

if send:
    meta = {k: v for k, v in {"title": title.strip(), "description": description.strip(),
                               "tags": ",".join(t.strip() for t in tags.split(",") if t.strip())}.items() if v}
    try:
        meta.update(data.parse_extra(extra))
    except IntakeError as exc:
        st.session_state["upload-bad-extra"] = str(exc)
        st.rerun()
    try:
        bar = st.progress(0.0, text="Storing files ...")
        result = upload_batch(
            svc, data.items(files), user_id=current_user(), metadata=meta, owner_name=identity().display,
            progress=lambda done, total, name: bar.progress(done / total if total else 1.0,
                                                            text=f"Stored {done} of {total} {data.plain(name)}"),
        )
    except IntakeError as exc:
        st.error(data.plain(exc))
    except Exception:  # noqa: BLE001 - a busy lake or store: said plainly, details in the log
        guard.log.warning("upload failed", exc_info=True)
        st.error("The upload could not be stored right now (the data store is busy or unreachable). Nothing was "
                 "queued; try again in a moment.")
    else:
        bar.progress(1.0, text="Stored")
        # The Results page reads the user's batches again (this one, the newest, opens first); it is not
        # narrowed to this batch for the rest of the session.
        st.session_state.pop(f"results-view-{current_user()}", None)
        if not result.queued:
            st.warning(f"Batch **{result.batch_id}** is stored, but the queue did not take it yet; it will be "
                       "handed over again automatically — no need to upload it again.")
        st.session_state["upload-done"] = {"batch_id": result.batch_id, "queued": len(result.accepted),
                                           "refused": len(result.refused)}
        st.session_state["upload-recent"] = data.remember_upload(st.session_state.get("upload-recent", []), files,
                                                                 result.batch_id)
        st.session_state["upload-round"] = round_ + 1  # an empty form: the same click cannot send it twice
        st.rerun()
