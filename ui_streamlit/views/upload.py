"""Upload page: files + metadata → the same intake function as `imgpipe upload`."""

import streamlit as st

from assets.core.sniff import ACCEPTED_FORMATS
from orchestration.domain.intake import IntakeError, upload_batch
from ui_streamlit import data, guard
from ui_streamlit.session import current_user, services

svc = services()
limits = svc.settings
st.title("Upload a batch")
st.caption(f"Up to {limits.max_files_per_batch} images, {limits.max_file_bytes // (1024 * 1024)} MB each: "
           f"{ACCEPTED_FORMATS}. Camera RAW, JPEG XL and videos are not accepted (export a JPEG or HEIC).")

uploaded = st.file_uploader("Images", accept_multiple_files=True, key="files")
files = list(uploaded or [])  # Streamlit's UploadedFile objects: read only when stored, never copied whole
checks = data.precheck(files, svc)
too_many = len(files) > limits.max_files_per_batch
if files:
    ok = sum(c.ok for c in checks)
    st.write(f"**{ok}** of {len(files)} file(s) will be processed.")
    refused = [c for c in checks if not c.ok]
    for c in refused:
        st.error(f"{data.plain(c.name)}: {data.plain(c.reason)}", icon=":material/block:")
    if too_many:
        st.error(f"{len(files)} files; a batch holds at most {limits.max_files_per_batch}.")

with st.form("batch"):
    title = st.text_input("Title", max_chars=200)
    description = st.text_area("Description", max_chars=2000)
    tags = st.text_input("Tags", max_chars=500, help="Comma-separated")
    extra = st.text_area("More metadata", max_chars=4000, help="One key=value per line")
    send = st.form_submit_button("Upload", type="primary", disabled=not files or too_many)

if send:
    meta = {k: v for k, v in {"title": title.strip(), "description": description.strip(),
                               "tags": ",".join(t.strip() for t in tags.split(",") if t.strip())}.items() if v}
    try:
        meta.update(data.parse_extra(extra))
        bar = st.progress(0.0, text="Storing files ...")
        result = upload_batch(
            svc, data.items(files), user_id=current_user(), metadata=meta,
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
        st.success(f"Batch **{result.batch_id}** received: {len(result.accepted)} image(s) queued, "
                   f"{len(result.refused)} refused.")
        st.page_link("views/results.py", label="See its results", icon=":material/photo_library:")
