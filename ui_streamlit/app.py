"""imgpipe web app: sign in, upload batches, watch results arrive, statistics.

    streamlit run ui_streamlit/app.py     (`imgpipe dev` starts it with a local OIDC provider)

Sign-in is Streamlit's own OIDC (st.login): Microsoft Entra ID in Azure, a local mock provider on a
laptop — the same code either way (settings in .streamlit/secrets.toml, see docs/web-app.md)."""

import streamlit as st

st.set_page_config(page_title="imgpipe", page_icon=":frame_with_picture:", layout="wide")

if not st.user.get("is_logged_in", False):
    st.title("imgpipe")
    st.write("Upload batches of images and watch them come back resized, oriented and described.")
    st.button("Sign in", type="primary", on_click=st.login)
    st.stop()

from ui_streamlit.data import plain  # noqa: E402
from ui_streamlit.session import identity, settings  # noqa: E402

me = identity()  # stops here, with the reason, for a token from a provider that is not accepted
with st.sidebar:
    st.caption(f"Signed in as **{plain(me.display)}**" + (" · operator" if me.operator else ""))
    if me.operator_lapsed:
        st.info("Operator access is confirmed with the identity provider at each sign-in and lasts "
                f"{settings().operator_recheck_minutes:g} minutes. Sign out and in again to use it.",
                icon=":material/admin_panel_settings:")
    st.button("Sign out", on_click=st.logout)

pages = [
    st.Page("views/upload.py", title="Upload", icon=":material/upload:", default=True),
    st.Page("views/results.py", title="Results", icon=":material/photo_library:"),
    st.Page("views/stats.py", title="Stats", icon=":material/bar_chart:"),
]
if me.operator and settings().understanding != "off":
    pages.append(st.Page("views/review.py", title="Review", icon=":material/policy:"))
page = st.navigation(pages)
page.run()
