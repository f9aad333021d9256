"""One part of a page at a time: when the metadata store or the lake is busy or unreachable, that part shows a
short message and a Retry button — never a traceback, never a server path or an internal address — and the
rest of the page still renders. The details go to the app's log for operators.

Streamlit's own control flow (``st.stop``, ``st.rerun``) derives from BaseException and passes through."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import streamlit as st

log = logging.getLogger("imgpipe.web")

UNAVAILABLE = "{what} cannot be shown right now: the data store is busy or unreachable. Try again in a moment."


@contextmanager
def part(what: str, *, key: str) -> Iterator[None]:
    """Run one part of a page (``what``: its name for people, "Your batches"; ``key``: unique on the page)."""
    try:
        # Words while a busy store makes a person wait (Streamlit shows a spinner only after half a second).
        with st.spinner(f"Reading {what.lower()} …", show_time=True):
            yield
    except Exception:  # noqa: BLE001 - any failure of a dependency: a short message here, details in the log
        log.warning("web page part %r failed", what, exc_info=True)
        st.warning(UNAVAILABLE.format(what=what), icon=":material/cloud_off:")
        st.button("Retry", key=f"retry-{key}", icon=":material/refresh:")


def live_updates_paused() -> str:
    """What a person reads when the results stream cannot be followed (the reason stays in the log)."""
    return "Live updates are paused (the results stream is not reachable); showing what is stored, read again every few seconds."
