"""Per-process and per-session objects of the web app."""

from __future__ import annotations

import streamlit as st

from orchestration.domain.services import Services
from orchestration.settings import Settings, load_settings
from orchestration.wiring import CLIENTS
from ui_streamlit.data import is_operator, user_id_for


@st.cache_resource(show_spinner=False)
def settings() -> Settings:
    return load_settings()


@st.cache_resource(show_spinner=False)
def services() -> Services:
    """One set of clients per app process, shared by every session (created on first use, closed when
    the process exits; see orchestration/wiring.py). The adapters are safe to share between threads."""
    return CLIENTS.services(settings())


def current_user() -> str:
    return user_id_for(st.user.get("email"), st.user.get("sub"))


def current_is_operator() -> bool:
    return is_operator(st.user.get("email"), settings().operators)
