"""Per-process and per-session objects of the web app."""

from __future__ import annotations

import streamlit as st

from orchestration.settings import load_settings
from orchestration.wiring import Services
from ui_streamlit.data import is_operator, user_id_for


@st.cache_resource(show_spinner=False)
def services() -> Services:
    """One set of adapters per app process (thread-safe: each call opens its own connection)."""
    return Services.from_settings(load_settings())


def current_user() -> str:
    return user_id_for(st.user.get("email"), st.user.get("sub"))


def current_is_operator() -> bool:
    return is_operator(st.user.get("email"))
