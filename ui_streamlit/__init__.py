"""The Streamlit web app (upload, live results, stats) — built in its own issue. It will call
``orchestration.intake.upload_batch`` (the same code path as `imgpipe upload`) and follow the results topic."""
