"""The web app's page logic through Streamlit's AppTest (a signed-in user is faked with ``at.user``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
from dagster import DagsterInstance, materialize
from streamlit.testing.v1 import AppTest

from assets.batch import batch_asset_checks, batch_assets
from orchestration.partitions import batches_partitions
from orchestration.domain.intake import IntakeItem, upload_batch
from orchestration.resources import resources_from_settings
from orchestration.devtools.sample import synthetic_photo, jpeg_bytes
from orchestration import wiring

APP = str(Path(__file__).resolve().parents[1] / "ui_streamlit" / "app.py")
JPEG = jpeg_bytes(synthetic_photo(320, 240, 10, "ui"))


@pytest.fixture
def env(monkeypatch, settings):
    for key, value in {"IMGPIPE_DATA_DIR": str(settings.data_dir), "IMGPIPE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                       "IMGPIPE_KAFKA_TOPIC": settings.kafka_topic}.items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    st.cache_data.clear()
    yield wiring.services(settings)
    st.cache_resource.clear()


def _app(email: str | None, page: str | None = None, **query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30)
    if email:
        at.user = {"is_logged_in": True, "email": email, "sub": email}
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    if page:
        at.switch_page(page).run()
    return at


def _button(at, label):
    return next(b for b in at.button if b.label == label)


def _process(settings, batch_id):
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(batches_partitions.name, [batch_id])
    assert materialize([*batch_assets, *batch_asset_checks], partition_key=batch_id, instance=instance,
                       resources=resources_from_settings(settings)).success


def test_signed_out_visitor_only_sees_sign_in(env):
    at = _app(None)
    assert [b.label for b in at.button] == ["Sign in"]
    assert not at.get("file_uploader")


def test_upload_shows_per_file_reasons_and_sends_through_intake(env):
    at = _app("alice@example.com")
    at.file_uploader(key="files").set_value([("good.jpg", JPEG, "image/jpeg"), ("notes.jpg", b"just text", "image/jpeg")]).run()
    assert any("notes.jpg" in e.value and "text/plain" in e.value for e in at.error)
    assert "**1** of 2 file(s) will be processed." in [m.value for m in at.markdown]
    at.text_input[0].input("Alps")
    at.text_input[1].input("snow, trip")
    at.text_area[1].input("camera=phone")
    _button(at, "Upload").click().run()
    [success] = at.success
    batch_id = success.value.split("**")[1]
    doc = env.metadata.read("batches", batch_id, "alice@example.com")
    assert doc["metadata"] == {"title": "Alps", "tags": "snow,trip", "camera": "phone"}
    assert [i["name"] for i in doc["images"]] == ["good.jpg", "notes.jpg"]
    assert env.queue.active_message_count() == 1


def test_bad_metadata_is_reported_not_sent(env):
    at = _app("alice@example.com")
    at.file_uploader(key="files").set_value([("good.jpg", JPEG, "image/jpeg")]).run()
    at.text_area[1].input("no equals sign here")
    _button(at, "Upload").click().run()
    assert any("key=value" in e.value for e in at.error)
    assert env.queue.active_message_count() == 0


def test_results_show_own_batches_only(env, settings):
    mine = upload_batch(env, [IntakeItem.from_bytes("a.jpg", JPEG), IntakeItem.from_bytes("b.txt", b"words")],
                        user_id="alice@example.com", metadata={"title": "Holiday"}).batch_id
    _process(settings, mine)
    at = _app("alice@example.com", "views/results.py")
    assert any(e.label.startswith("**Holiday**") for e in at.expander)
    assert any("2/2 images" in c.value for c in at.caption)
    assert any("b.txt" in e.value and "rejected" in e.value for e in at.error)
    assert len(at.get("image")) == 1  # the processed image's thumbnail in the gallery
    assert len(at.get("download_button")) == 6  # 3 sizes x (JPEG, WebP)

    other = _app("bob@example.com", "views/results.py")
    assert any("No batches yet" in i.value for i in other.info)
    prying = _app("bob@example.com", "views/results.py", batch=mine)
    assert any("No such batch" in i.value for i in prying.info)
    assert not any("Holiday" in e.label for e in prying.expander)


def test_results_page_says_when_kafka_is_down(env, monkeypatch):
    monkeypatch.setenv("IMGPIPE_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    st.cache_resource.clear()
    upload_batch(env, [IntakeItem.from_bytes("a.jpg", JPEG)], user_id="alice@example.com")
    at = _app("alice@example.com", "views/results.py")
    assert any("Kafka" in w.value and "not reachable" in w.value for w in at.warning)
    assert any("0/1 images" in c.value for c in at.caption)  # stored state still shown


def test_stats_scope_user_and_operator(env, settings, monkeypatch):
    a = upload_batch(env, [IntakeItem.from_bytes("a.jpg", JPEG)], user_id="alice@example.com").batch_id
    b = upload_batch(env, [IntakeItem.from_bytes("b.txt", b"text")], user_id="bob@example.com").batch_id
    _process(settings, a)
    _process(settings, b)
    at = _app("alice@example.com", "views/stats.py")
    assert {m.label: m.value for m in at.metric} == {"Batches": "1", "Images": "1", "Rejected": "0",
                                                       "With near-duplicates": "0"}
    monkeypatch.setenv("IMGPIPE_OPERATORS", "ops@example.com")
    st.cache_resource.clear()  # settings are read once per app process
    ops = _app("ops@example.com", "views/stats.py")
    assert {m.label: m.value for m in ops.metric}["Images"] == "2"
    assert "all users" in ops.title[0].value
