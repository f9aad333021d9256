"""The Streamlit web app: sign-in, upload (through ``orchestration.domain.intake.upload_batch``, the same
code path as `imgpipe upload`), live results and statistics.

``app.py`` is the entry point (`streamlit run ui_streamlit/app.py`), ``views/`` the pages, ``data.py`` what
the pages show as plain functions over the ports (tested without Streamlit), ``session.py`` the per-process
clients (``st.cache_resource``) and the signed-in user. Kafka is read through the adapter's
``UserEventFollower``; nothing here talks to a service directly."""
