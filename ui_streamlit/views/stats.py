"""Statistics (the BI view) from the metadata store: the user's own, or everyone's for operators."""

import pandas as pd
import streamlit as st

from ui_streamlit import data, guard
from ui_streamlit.session import current_is_operator, current_user, services

svc = services()
everyone = current_is_operator()
st.title("Statistics" + (" — all users" if everyone else ""))


@st.cache_data(ttl=30, show_spinner="Reading the metadata store ...")
def _frame(scope: str | None):
    return data.image_frame(svc, scope)


frame = None
with guard.part("Statistics", key="stats"):
    frame = _frame(None if everyone else current_user())
if frame is None:
    st.stop()
if frame.empty:
    st.info("No processed images yet.")
    st.stop()

with st.container(horizontal=True):  # four in a row on a desktop, two by two on a phone
    for label, value in [("Batches", frame["batch_id"].nunique()), ("Images", len(frame)),
                         ("Rejected", int((frame["outcome"] == "rejected").sum())),
                         ("With near-duplicates", int((frame["near_duplicates"] > 0).sum()))]:
        st.metric(label, value, width=160)

tables = data.stats(frame)
left, right = st.columns(2)
left.header("Images per day")
left.bar_chart(tables["images per day"]["images"])
right.header("Rejection reasons")
if tables["rejection reasons"].empty:
    right.write("None.")
else:
    right.bar_chart(tables["rejection reasons"])
left.header("Formats")
left.bar_chart(tables["formats"], horizontal=True)
right.header("Image sizes")
right.bar_chart(tables["sizes"])
if not tables["top labels"].empty:
    st.header("What the images show")
    left, right = st.columns(2)
    left.caption("Most frequent top label")
    left.bar_chart(tables["top labels"], horizontal=True)
    judged = frame["moderation"].notna().sum()
    flagged = int((frame["moderation"] == "flag").sum())
    right.metric("Flagged by moderation", f"{flagged / judged:.1%}" if judged else "–",
                 help=f"{flagged} of {judged} images checked")
    right.metric("Images with faces", int((frame["faces"].fillna(0) > 0).sum()))
st.header("Processing time per image")
p = tables["processing ms"].iloc[0]
m1, m2 = st.columns(2)
m1.metric("Median (p50)", f"{p['p50']:.0f} ms" if pd.notna(p["p50"]) else "–")
m2.metric("Slowest 5 % from (p95)", f"{p['p95']:.0f} ms" if pd.notna(p["p95"]) else "–")
if len(tables["processing ms per day"]) > 1:
    st.line_chart(tables["processing ms per day"])
st.header("All images")
st.dataframe(data.readable(frame), hide_index=True)
st.download_button("Download CSV", data.csv_bytes(frame), file_name="imgpipe-images.csv", mime="text/csv")
