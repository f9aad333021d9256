"""Per-process and per-session objects of the web app: the shared clients and the signed-in identity."""

from __future__ import annotations

import streamlit as st

from orchestration.domain.identity import Identity, IdentityRefused, identify
from orchestration.domain.services import Services
from orchestration.settings import Settings, load_settings
from orchestration.wiring import CLIENTS


@st.cache_resource(show_spinner=False)
def settings() -> Settings:
    return load_settings()


@st.cache_resource(show_spinner=False)
def services() -> Services:
    """One set of clients per app process, shared by every session (created on first use, closed when
    the process exits; see orchestration/wiring.py). The adapters are safe to share between threads."""
    return CLIENTS.services(settings())


def identity() -> Identity:
    """Who is signed in, from the identity provider's token (never from an e-mail). A token that does not
    identify an accepted account stops the page with the reason; nothing is read for it."""
    s = settings()
    try:
        return identify(dict(st.user.to_dict()) if hasattr(st.user, "to_dict") else dict(st.user),
                        issuers=s.oidc_issuers, operator_claim=s.operator_claim, operator_role=s.operator_role,
                        operator_max_age_seconds=s.operator_recheck_minutes * 60)
    except IdentityRefused as exc:
        st.error(f"You are signed in, but {exc}.", icon=":material/lock:")
        st.button("Sign out", on_click=st.logout, key="refused-sign-out")
        st.stop()
        raise  # not reached: st.stop() ends the script run


def current_user() -> str:
    return identity().user_id


def current_is_operator() -> bool:
    return identity().operator
