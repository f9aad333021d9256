"""The web app's page logic through Streamlit's AppTest. A signed-in person is faked with ``at.user`` holding
the claims of their ID token, as Streamlit's own sign-in stores them."""

from __future__ import annotations

import time

import re
from pathlib import Path

import pandas as pd
import pytest
import streamlit as st
from dagster import DagsterInstance, materialize
from streamlit.testing.v1 import AppTest

from assets.batch import batch_asset_checks, batch_assets
from orchestration import wiring
from orchestration.devtools.sample import jpeg_bytes, synthetic_photo
from orchestration.domain.identity import opaque_user_id
from orchestration.domain.intake import IntakeItem, upload_batch
from orchestration.partitions import batches_partitions
from orchestration.resources import resources_from_settings
from orchestration.settings import load_settings
from ui_streamlit import data

APP = str(Path(__file__).resolve().parents[1] / "ui_streamlit" / "app.py")
JPEG = jpeg_bytes(synthetic_photo(320, 240, 10, "ui"))
ISS = "https://login.example.test"


def person(sub: str, email: str | None = None, *, iss: str = ISS, **claims) -> dict:
    return {"iss": iss, "sub": sub, "email": email if email is not None else sub, "email_verified": True, **claims}


# Two people whose e-mails the old mapping (lower-case, [^a-z0-9_.@-] → '-') turned into one user id.
ALICE_PLUS = person("alice+x@example.com")
ALICE_DASH = person("alice-x@example.com")
OPS = person("ops@example.com", roles=["imgpipe.operator"])


def uid(p: dict) -> str:
    return opaque_user_id(p["iss"], p["sub"])


@pytest.fixture(autouse=True)
def _no_magic(monkeypatch):
    """The app runs with `runner.magicEnabled` off, as `imgpipe dev` and the AKS Deployment start it
    (orchestration/devtools/webstack.py says why). With magic on, every page compile calls ast.parse, which on
    CPython 3.11 fails at random when another thread parses at the same time (this suite failed once that way)."""
    from streamlit import config
    before = config.get_option("runner.magicEnabled")
    config.set_option("runner.magicEnabled", False)
    yield
    config.set_option("runner.magicEnabled", before)


@pytest.fixture
def env(monkeypatch, settings):
    for key, value in {"IMGPIPE_DATA_DIR": str(settings.data_dir), "IMGPIPE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                       "IMGPIPE_KAFKA_TOPIC": settings.kafka_topic, "IMGPIPE_OIDC_ISSUERS": ISS}.items():
        monkeypatch.setenv(key, value)
    st.cache_resource.clear()
    st.cache_data.clear()
    yield wiring.services(settings)
    st.cache_resource.clear()


def _app(who: dict | None, page: str | None = None, **query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30)
    if who:
        at.user = {"is_logged_in": True, "iat": int(time.time()), **who}  # signed in just now, unless said
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    if page:
        at.switch_page(page).run()
    return at


def test_no_page_is_compiled_with_magic(env, monkeypatch):
    """Every page compiles without Streamlit's magic (see _no_magic) and still renders: nothing relied on it."""
    from streamlit.runtime.scriptrunner import magic

    used = []
    real = magic.add_magic
    monkeypatch.setattr(magic, "add_magic", lambda code, path: used.append(path) or real(code, path))
    for page in ("views/upload.py", "views/results.py", "views/stats.py"):
        at = _app(ALICE_PLUS, page)
        assert not at.exception, (page, at.exception)
        assert at.title or at.header or at.subheader or at.markdown, page
    assert used == []


def _button(at, label):
    return next(b for b in at.button if b.label == label)


def _send_button(at):
    """The form's button: it names what it sends ("Upload 2 image(s)"), unlike the Upload page's link."""
    [button] = [b for b in at.button if b.label.startswith("Upload ") or b.label == "Upload batch"]
    return button


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
    at = _app(ALICE_PLUS)
    at.file_uploader(key="files-0").set_value([("good.jpg", JPEG, "image/jpeg"), ("notes.jpg", b"just text", "image/jpeg")]).run()
    assert any("notes" in e.value and "text/plain" in e.value for e in at.error)
    assert "**1** of 2 file(s) will be processed." in [m.value for m in at.markdown]
    at.text_input[0].input("Alps")
    at.text_input[1].input("snow, trip")
    at.text_area[1].input("camera=phone")
    _send_button(at).click().run()
    [success] = at.success
    batch_id = success.value.split("**")[1]
    doc = env.metadata.read("batches", batch_id, uid(ALICE_PLUS))  # stored under the opaque id
    assert doc["metadata"] == {"title": "Alps", "tags": "snow,trip", "camera": "phone"}
    assert [i["name"] for i in doc["images"]] == ["good.jpg", "notes.jpg"]
    assert env.queue.active_message_count() == 1


def test_after_an_upload_the_results_page_still_shows_every_batch(env):
    """An upload opens its batch first on the Results page; it does not narrow the page to that batch for the
    rest of the session."""
    earlier = upload_batch(env, [IntakeItem.from_bytes("a.jpg", JPEG)], user_id=uid(ALICE_PLUS),
                           metadata={"title": "Earlier"}).batch_id
    at = _app(ALICE_PLUS, "views/results.py")
    assert any("Earlier" in e.label for e in at.expander)
    at.switch_page("views/upload.py").run()
    at.file_uploader(key="files-0").set_value([("new.jpg", JPEG, "image/jpeg")]).run()
    at.text_input[0].input("Newest")
    _send_button(at).click().run()
    assert at.success
    at.switch_page("views/results.py").run()
    labels = [e.label for e in at.expander if not e.label.startswith("Recently deleted")]
    assert len(labels) == 2 and "Newest" in labels[0] and "Earlier" in labels[1], (labels, earlier)


def test_bad_metadata_is_reported_not_sent(env):
    at = _app(ALICE_PLUS)
    at.file_uploader(key="files-0").set_value([("good.jpg", JPEG, "image/jpeg")]).run()
    at.text_input[0].input("Kept")
    at.text_area[1].input("camera=phone\nno equals sign here")
    _send_button(at).click().run()
    # Said under the field it is about (inside the form, after it), naming the line; what was typed stays.
    [error] = at.error
    assert error.value.startswith("More metadata: metadata line 2") and "key=value" in error.value
    assert at.text_input[0].value == "Kept" and at.text_area[1].value.startswith("camera=phone")
    assert env.queue.active_message_count() == 0


def test_results_show_own_batches_only(env, settings):
    mine = upload_batch(env, [IntakeItem.from_bytes("a.jpg", JPEG), IntakeItem.from_bytes("b.txt", b"words")],
                        user_id=uid(ALICE_PLUS), metadata={"title": "Holiday"}).batch_id
    _process(settings, mine)
    at = _app(ALICE_PLUS, "views/results.py")
    assert any(e.label.startswith("**Holiday**") for e in at.expander)
    assert any("completed · 1 processed · 1 rejected · 2/2 done" in c.value for c in at.caption)
    assert any(e.label.endswith("— completed · 1 processed · 1 rejected") for e in at.expander)  # failures show
    assert any("b\\.txt" in e.value and "rejected" in e.value for e in at.error)
    assert len(at.get("image")) == 1  # the processed image's thumbnail in the gallery
    assert at.get("image")[0].proto.imgs[0].alt.startswith("a.jpg")  # what a screen reader says
    # One download per image (a choice of 3 sizes x (JPEG, WebP) and the original) and one ZIP for the batch.
    [one, whole] = at.get("download_button")
    assert one.proto.label == "Download large" and whole.proto.label == "Download large JPEG as ZIP (1 file)"
    [pick, zip_pick] = [s for s in at.selectbox if s.key in (f"pick-{mine}-i0001", f"zip-pick-{mine}")]
    assert len(pick.options) == 7 and "original" in pick.options[-1]
    assert sorted(zip_pick.options[:6]) == ["large JPEG", "large WEBP", "medium JPEG", "medium WEBP", "thumb JPEG",
                                            "thumb WEBP"] and zip_pick.options[6:] == ["all renditions", "originals"]

    other = _app(ALICE_DASH, "views/results.py")
    assert any("No batches yet" in i.value for i in other.info)
    prying = _app(ALICE_DASH, "views/results.py", batch=mine)
    assert any("No such batch" in i.value for i in prying.info)
    assert not any("Holiday" in e.label for e in prying.expander)


def test_colliding_emails_are_different_people_everywhere(env, settings):
    """alice+x@ and alice-x@ were one user id under the e-mail mapping; now neither sees the other's batch,
    renditions (downloads), statistics or live events."""
    assert uid(ALICE_PLUS) != uid(ALICE_DASH)
    before = time.time()
    batch = upload_batch(env, [IntakeItem.from_bytes("a.jpg", JPEG)], user_id=uid(ALICE_PLUS),
                         metadata={"title": "Private"}).batch_id
    _process(settings, batch)
    status = data.batch_for_user(env, uid(ALICE_PLUS), batch)
    path = status["images"][0]["renditions"][0]["path"]
    assert data.rendition(env, uid(ALICE_PLUS), batch, path)  # the owner downloads it...
    assert data.batch_for_user(env, uid(ALICE_DASH), batch) is None  # ...the other sees no batch
    assert data.rendition(env, uid(ALICE_DASH), batch, path) is None  # and gets no bytes
    assert data.image_frame(env, uid(ALICE_DASH)).empty  # and no statistics rows
    stats = _app(ALICE_DASH, "views/stats.py")
    assert any("No processed images yet" in i.value for i in stats.info)

    from orchestration.wiring import build_user_follower

    follower = build_user_follower(settings, uid(ALICE_DASH), since=before)
    try:
        assert follower.connected
        assert follower.poll(timeout_ms=2000) == []  # alice+x's events are not delivered to alice-x
    finally:
        follower.close()
    own = build_user_follower(settings, uid(ALICE_PLUS), since=before)
    try:
        events = []
        for _ in range(10):
            events += own.poll(timeout_ms=500)
            if any(e["type"] == "batch.completed" for e in events):
                break
        assert {e["batch_id"] for e in events} == {batch}
    finally:
        own.close()


def test_an_email_claim_grants_nothing(env, settings):
    """Someone who presents alice's e-mail — from a provider that is not accepted, or as another account of
    an accepted one, verified or not — gets nothing of alice's."""
    batch = upload_batch(env, [IntakeItem.from_bytes("a.jpg", JPEG)], user_id=uid(ALICE_PLUS),
                         metadata={"title": "Private"}).batch_id
    elsewhere = _app(person(ALICE_PLUS["sub"], ALICE_PLUS["email"], iss="https://evil.example"), "views/results.py")
    assert any("not accepted" in e.value for e in elsewhere.error)
    assert not elsewhere.expander and not elsewhere.get("file_uploader")
    impostor = person("someone-else", ALICE_PLUS["email"], email_verified=False)
    at = _app(impostor, "views/results.py", batch=batch)
    assert any("No such batch" in i.value for i in at.info)
    no_mail = _app(person("no-mail-user", ""), "views/results.py")
    assert any("No batches yet" in i.value for i in no_mail.info)  # signed in as themselves, nobody else


def test_results_page_says_when_kafka_is_down(env, monkeypatch):
    monkeypatch.setenv("IMGPIPE_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    st.cache_resource.clear()
    upload_batch(env, [IntakeItem.from_bytes("a.jpg", JPEG)], user_id=uid(ALICE_PLUS))
    at = _app(ALICE_PLUS, "views/results.py")
    assert any("Live updates are paused" in w.value for w in at.warning)
    shown = " ".join(str(e.value) for e in [*at.warning, *at.error, *at.caption, *at.markdown])
    assert "127.0.0.1:1" not in shown and "Kafka" not in shown  # the address and the error stay in the log
    assert any("0/1 done" in c.value for c in at.caption)  # stored state still shown


def test_a_busy_store_gives_a_short_message_and_a_retry_never_a_traceback(env, settings, monkeypatch):
    """The store locked (SQLite's 'database is locked' after its busy timeout): each part of the page that
    reads it says so in a sentence with a Retry button; no exception text, no server path; the rest of the
    page (navigation, sign-out) renders; Retry after the lock shows the batches."""
    import sqlite3

    from orchestration.adapters.local.metadata import SqliteMetadataStore

    batch = upload_batch(env, [IntakeItem.from_bytes("a.jpg", JPEG)], user_id=uid(ALICE_PLUS),
                         metadata={"title": "Locked"}).batch_id
    real_query = SqliteMetadataStore.query

    def locked(self, *args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(SqliteMetadataStore, "query", locked)
    at = _app(ALICE_PLUS, "views/results.py")
    assert not at.exception
    texts = " ".join(str(e.value) for e in [*at.warning, *at.error, *at.markdown, *at.caption])
    assert "cannot be shown right now" in texts and "Your batches" in texts
    assert "OperationalError" not in texts and "database is locked" not in texts and "/" + "work" not in texts
    assert any(b.label == "Sign out" for b in at.sidebar.button)  # the rest of the page is there
    stats = _app(ALICE_PLUS, "views/stats.py")
    assert not stats.exception and any("Statistics cannot be shown" in w.value for w in stats.warning)

    monkeypatch.setattr(SqliteMetadataStore, "query", real_query)  # the lock is gone
    _button(at, "Retry").click().run()
    assert not at.exception and any("Locked" in e.label for e in at.expander), batch


def test_a_missing_rendition_shows_a_placeholder(env, settings):
    batch = upload_batch(env, [IntakeItem.from_bytes("a.jpg", JPEG)], user_id=uid(ALICE_PLUS)).batch_id
    _process(settings, batch)
    for path in list(env.lake.list(f"processed/{batch}/")):
        if "/thumb." in path:
            env.lake.delete(path)
    at = _app(ALICE_PLUS, "views/results.py")
    assert not at.exception
    assert any("preview unavailable" in i.value for i in at.info)


def test_the_operator_role_lapses_until_the_person_signs_in_again(env, settings):
    """A token issued more than IMGPIPE_OPERATOR_RECHECK_MINUTES ago no longer makes an operator (the role may
    have been removed at the provider since): statistics of their own only, and a note to sign in again."""
    upload_batch(env, [IntakeItem.from_bytes("a.jpg", JPEG)], user_id=uid(ALICE_PLUS))
    stale = _app({**OPS, "iat": int(time.time()) - 16 * 60}, "views/stats.py")
    assert not stale.exception and "all users" not in stale.title[0].value
    assert any("Sign out and in again" in i.value for i in stale.sidebar.info)
    fresh = _app(OPS, "views/stats.py")
    assert "all users" in fresh.title[0].value


def test_stats_everyone_only_with_the_operator_role(env, settings):
    a = upload_batch(env, [IntakeItem.from_bytes("a.jpg", JPEG)], user_id=uid(ALICE_PLUS)).batch_id
    b = upload_batch(env, [IntakeItem.from_bytes("b.jpg", JPEG)], user_id=uid(ALICE_DASH)).batch_id
    _process(settings, a)
    _process(settings, b)
    at = _app(ALICE_PLUS, "views/stats.py")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics.pop("Median (p50)").endswith(" ms") and metrics.pop("Slowest 5 % from (p95)").endswith(" ms")
    assert metrics == {"Batches": "1", "Images": "1", "Rejected": "0", "With near-duplicates": "0",
                       "Flagged by moderation": "0.0%", "Images with faces": "0"}
    ops = _app(OPS, "views/stats.py")
    assert {m.label: m.value for m in ops.metric}["Images"] == "2"
    assert "all users" in ops.title[0].value
    # The operator's e-mail without the role, or the role in another claim, is an ordinary user.
    for lookalike in (person("ops@example.com"), person("ops@example.com", groups=["imgpipe.operator"]),
                      person("ops2", "ops@example.com", roles=["imgpipe.viewer"])):
        plain = _app(lookalike, "views/stats.py")
        assert "all users" not in plain.title[0].value


def test_user_text_is_shown_as_text(env, settings):
    """Titles, file names and reasons carry Markdown and HTML an attacker chose; the page shows them literally."""
    evil_title = "[click me](https://evil.example) **urgent** <img src=x onerror=alert(1)> :material/home:"
    batch = upload_batch(env, [IntakeItem.from_bytes("[x](https://evil.example).jpg", b"text, not an image"),
                               IntakeItem.from_bytes("fine.jpg", JPEG)],
                         user_id=uid(ALICE_PLUS), metadata={"title": evil_title}).batch_id
    _process(settings, batch)
    at = _app(ALICE_PLUS, "views/results.py")
    [label] = [e.label for e in at.expander if not e.label.startswith("Recently deleted")]
    unescaped = re.compile(r"(?<!\\)(\]\(|<img|:material)")  # a link, an HTML tag or an icon code, live
    assert not unescaped.search(label)
    assert "\\[click me\\]\\(https" in label and "\\<img" in label  # escaped: shown as typed
    assert any("evil" in e.value for e in at.error) and not any(unescaped.search(e.value) for e in at.error)


def test_plain_leaves_no_icon_code_no_autolink_and_no_markup_for_markdown_to_find():
    """Streamlit makes icons of ":material/…:" and ":emoji:" codes, and GFM links bare e-mail addresses and
    URLs, after backslash escapes are resolved; plain() breaks each pattern with an invisible word joiner, so
    the text shows as typed (the browser test checks the rendered page)."""
    shown = data.plain("ask ann@example.com :material/home: :smile: www.evil.example **b** <i>x</i>\nline")
    resolved = re.sub(r"\\(.)", r"\1", shown)  # what Markdown makes of the escapes
    assert "ann@example.com" not in resolved and "ann@\u2060example.com" in resolved
    assert ":material/home:" not in resolved and ":smile:" not in resolved and "www." not in resolved
    assert resolved.replace("\u2060", "") == "ask ann@example.com :material/home: :smile: www.evil.example **b** <i>x</i> line"
    assert "\n" not in shown


def test_a_batch_id_from_the_url_is_checked_before_any_read(env, monkeypatch):
    reads = []
    original = type(env.metadata).read
    monkeypatch.setattr(type(env.metadata), "read", lambda self, *a, **k: reads.append(a) or original(self, *a, **k))
    at = _app(ALICE_PLUS, "views/results.py", batch="../../batches/other' OR 1=1")
    assert any("No such batch" in i.value for i in at.info)
    assert not any("other'" in str(a) for a in reads)


def test_csv_export_neutralises_formulas():
    import csv
    import io

    frame = pd.DataFrame({"name": ['=HYPERLINK("http://evil")', "+1", "-2", "@SUM(A1)", "\tTAB", "ok.jpg"],
                          "bytes": [1, 2, 3, 4, 5, -6]})
    rows = list(csv.reader(io.StringIO(data.csv_bytes(frame).decode())))[1:]
    names = [r[0] for r in rows]
    assert names == ["'=HYPERLINK(\"http://evil\")", "'+1", "'-2", "'@SUM(A1)", "'\tTAB", "ok.jpg"]
    assert rows[-1][1] == "-6"  # numbers stay numbers



class _Counter:
    def __init__(self):
        self.calls = 0


def _count(monkeypatch, port, names) -> _Counter:
    """Count the calls of ``names`` on every adapter of ``port``'s class (the page builds its own, from
    the environment, through the per-process registry)."""
    counter = _Counter()
    for name in names:
        original = getattr(type(port), name)

        def counted(self, *a, _original=original, **kw):
            counter.calls += 1
            return _original(self, *a, **kw)
        monkeypatch.setattr(type(port), name, counted)
    return counter


@pytest.mark.parametrize("images", [2, 24])
def test_a_results_refresh_costs_the_same_however_many_images_are_shown(env, settings, monkeypatch, images):
    """Once the page is shown, a refresh with no new event reads nothing from the store or the lake —
    for 2 images as for 24 (it used to re-read every batch and every rendition of every shown image:
    ~31 store calls per 2 s). An event for a batch re-reads that batch only."""
    photos = [IntakeItem.from_bytes(f"p{i}.jpg", jpeg_bytes(synthetic_photo(64, 48, i * 10, str(i))))
              for i in range(images)]
    batch = upload_batch(env, photos, user_id=uid(ALICE_PLUS), metadata={"title": "Counted"}).batch_id
    _process(settings, batch)
    metadata = _count(monkeypatch, env.metadata, ["read", "query"])
    lake = _count(monkeypatch, env.lake, ["read", "list"])
    at = _app(ALICE_PLUS, "views/results.py")
    assert any("Counted" in e.label for e in at.expander)
    assert metadata.calls > 0  # the first view reads the batch
    first_lake = lake.calls
    metadata.calls = lake.calls = 0
    for _ in range(3):
        at.run()
    assert metadata.calls == 0 and lake.calls == 0, (metadata.calls, lake.calls)
    assert first_lake <= images  # one thumbnail read per processed image, downloads read only on click


def test_delete_from_the_page_hides_the_batch_and_restore_brings_it_back(env, settings):
    batch = upload_batch(env, [IntakeItem.from_bytes("a.jpg", JPEG)], user_id=uid(ALICE_PLUS),
                         metadata={"title": "Binned"}).batch_id
    _process(settings, batch)
    at = _app(ALICE_PLUS, "views/results.py")
    assert any("Binned" in e.label for e in at.expander)
    _button(at, "Move to trash").click().run()  # the second click, in the Delete box
    assert any("Moved" in s.value and "restore it until" in s.value for s in at.success)
    assert not any("Binned" in e.label for e in at.expander)
    assert any(e.label == "Recently deleted (1)" for e in at.expander)
    _button(at, "Undo").click().run()  # the snackbar's Undo
    assert any(f"Restored {batch}" in s.value.replace("\\", "") for s in at.success)
    assert any("Binned" in e.label for e in at.expander) and any(e.label == "Recently deleted (0)" for e in at.expander)
    _button(at, "Move to trash").click().run()
    assert data.batch_for_user(env, uid(ALICE_PLUS), batch) is None
    other = _app(ALICE_DASH, "views/results.py")  # someone else: nothing to see or restore
    assert any(e.label == "Recently deleted (0)" for e in other.expander)
    ops = _app(OPS, "views/results.py")  # an operator sees everyone's
    assert any("all users (1)" in e.label for e in ops.expander)
    _button(at, "Restore").click().run()
    assert any(f"Restored {batch}" in s.value.replace("\\", "") for s in at.success)  # shown as plain text
    assert any("Binned" in e.label for e in at.expander)
    assert data.batch_for_user(env, uid(ALICE_PLUS), batch)["status"] == "completed"


# -- what images show ----------------------------------------------------------------------------------------

def _cat_jpeg() -> bytes:
    import io

    from PIL import Image
    from skimage import data as samples

    out = io.BytesIO()
    Image.fromarray(samples.chelsea()).save(out, "JPEG", quality=90)
    return out.getvalue()


def _flag(env, batch_id: str, image_id: str = "i0001", **moderation) -> None:
    """Moderation's verdict on an image as a model would have given it (benign photos score low)."""
    from orchestration.domain.batches import change_image

    doc = env.metadata.read("images", image_id, batch_id)
    change_image(env.metadata, batch_id, doc["user_id"], image_id, lambda d: {
        **d, "moderation": {**d["moderation"], "scores": {"sexual": 0.93}, "decision": "flag",
                            "category": "sexual", **moderation}})


def test_labels_show_under_each_image_and_search_finds_only_ones_own(env, settings):
    pytest.importorskip("skimage")
    mine = upload_batch(env, [IntakeItem.from_bytes("kitty.jpg", _cat_jpeg())], user_id=uid(ALICE_PLUS),
                        metadata={"title": "Pets"}).batch_id
    theirs = upload_batch(env, [IntakeItem.from_bytes("their-cat.jpg", _cat_jpeg())], user_id=uid(ALICE_DASH)).batch_id
    _process(settings, mine)
    _process(settings, theirs)
    at = _app(ALICE_PLUS, "views/results.py")
    assert any("cat" in c.value and "%" in c.value for c in at.caption), [c.value for c in at.caption]
    at.text_input(key="label-search").set_value("CAT").run()
    assert any(c.value == "1 image(s)" for c in at.caption), [c.value for c in at.caption]
    assert not any("their" in (getattr(i, "caption", "") or "") for i in at.get("image"))
    at.text_input(key="label-search").set_value("submarine").run()
    assert any("None of your images" in c.value for c in at.caption)
    assert data.find_by_label(env, uid(ALICE_DASH), "cat")[0]["batch_id"] == theirs  # theirs is theirs alone


def test_a_flagged_image_is_blurred_until_shown_or_withheld_until_kept(env, settings, monkeypatch):
    batch = upload_batch(env, [IntakeItem.from_bytes("a.jpg", JPEG)], user_id=uid(ALICE_PLUS)).batch_id
    _process(settings, batch)
    _flag(env, batch, policy={"action": "blur", "review": 0.4, "flag": 0.8})
    thumb = next(p for p in env.lake.list(f"processed/{batch}/") if p.endswith("thumb.jpg"))
    clear = env.lake.read(thumb)
    at = _app(ALICE_PLUS, "views/results.py")
    [img] = at.get("image")
    assert "flagged by moderation" in img.proto.imgs[0].caption
    shown = at.button(key=f"btn-gallery-show-{batch}-i0001-flag")
    shown.click().run()
    assert any("flagged" not in i.proto.imgs[0].caption for i in at.get("image"))

    # withhold (the setting now, whatever it was when the image was judged): no picture and no downloads until
    # an operator keeps it, and the rendition is refused server-side too.
    monkeypatch.setenv("IMGPIPE_MODERATION_ACTION", "withhold")
    st.cache_resource.clear()
    st.cache_data.clear()
    held = _app(ALICE_PLUS, "views/results.py")
    assert not held.get("image") and any("held for moderation" in i.value for i in held.info)
    assert not held.get("download_button")
    assert clear and data.rendition(wiring.services(load_settings()), uid(ALICE_PLUS), batch, thumb) is None

    # The operators' review list has it; a person without the role gets nothing from the page.
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        _app(ALICE_DASH, "views/review.py")  # not even listed without the role (and the page checks it again)
    ops = _app(OPS, "views/review.py")
    assert any("1 image(s) wait for review" in m.value for m in ops.markdown), [m.value for m in ops.markdown]
    ops.button(key=f"keep-{batch}-i0001").click().run()
    assert any("kept" in s.value for s in ops.success)
    doc = env.metadata.read("images", "i0001", batch)
    assert doc["moderation"]["review"]["action"] == "keep" and doc["moderation"]["review"]["by"] == uid(OPS)
    st.cache_data.clear()
    st.cache_resource.clear()
    kept = _app(ALICE_PLUS, "views/results.py")
    assert kept.get("image") and not any("flagged" in i.proto.imgs[0].caption for i in kept.get("image"))


def test_an_operator_deletes_a_flagged_image_from_the_review_list(env, settings):
    batch = upload_batch(env, [IntakeItem.from_bytes("a.jpg", JPEG)], user_id=uid(ALICE_PLUS)).batch_id
    _process(settings, batch)
    _flag(env, batch, policy={"action": "blur", "review": 0.4, "flag": 0.8})
    ops = _app(OPS, "views/review.py")
    ops.button(key=f"delete-{batch}-i0001").click().run()
    assert any("deleted" in s.value for s in ops.success)
    assert not list(env.lake.list(f"processed/{batch}/i0001/"))  # renditions soft-deleted
    assert env.metadata.read("images", "i0001", batch)["deleted"]
    again = _app(OPS, "views/review.py")
    assert any("Nothing waits for review" in s.value for s in again.success)


def test_a_flagged_image_found_by_search_is_blurred_there_too(env, settings):
    pytest.importorskip("skimage")
    batch = upload_batch(env, [IntakeItem.from_bytes("kitty.jpg", _cat_jpeg())], user_id=uid(ALICE_PLUS)).batch_id
    _process(settings, batch)
    _flag(env, batch)
    at = _app(ALICE_PLUS, "views/results.py")
    at.text_input(key="label-search").set_value("cat").run()
    assert not at.exception and not any("cannot be shown" in w.value for w in at.warning)
    captions = [i.proto.imgs[0].caption for i in at.get("image")]
    assert len(captions) == 2 and all("flagged by moderation" in c for c in captions), captions  # gallery + search


def test_after_an_upload_the_form_is_empty_and_the_same_files_are_flagged(env):
    """A second click cannot send the same batch again: after success the form starts empty (Upload is
    disabled until files are chosen) with "Uploaded as …" and a link; choosing the same files again says they
    went up minutes ago as that batch."""
    at = _app(ALICE_PLUS)
    at.file_uploader(key="files-0").set_value([("good.jpg", JPEG, "image/jpeg")]).run()
    at.text_input[0].input("Once")
    _send_button(at).click().run()
    [success] = at.success
    assert success.value.startswith("Uploaded as batch **b-")
    batch_id = success.value.split("**")[1]
    assert _send_button(at).disabled and at.text_input[0].value == ""  # an empty form
    assert env.queue.active_message_count() == 1
    at.file_uploader(key="files-1").set_value([("same-again.jpg", JPEG, "image/jpeg")]).run()
    assert any(f"uploaded just now as batch {batch_id}" in w.value for w in at.warning), [w.value for w in at.warning]


def test_an_upload_with_nothing_acceptable_cannot_be_sent(env):
    at = _app(ALICE_PLUS)
    at.file_uploader(key="files-0").set_value([("notes.jpg", b"just text", "image/jpeg")]).run()
    assert any("None of these files can be processed" in w.value for w in at.warning)
    assert _send_button(at).disabled
    assert env.queue.active_message_count() == 0


def test_details_say_when_where_and_how_big_and_show_the_persons_metadata(env, settings):
    from orchestration.devtools.sample import make_sample_batch

    files = {p.name: p for p in make_sample_batch(Path(env.settings.data_dir) / "in")}
    batch = upload_batch(env, [IntakeItem.from_path(files["photo_01.jpg"]), IntakeItem.from_path(files["logo_transparent.png"])],
                         user_id=uid(ALICE_PLUS), metadata={"title": "Trip", "description": "by the lake",
                                                            "camera": "phone"}).batch_id
    _process(settings, batch)
    at = _app(ALICE_PLUS, "views/results.py")
    captions = [c.value for c in at.caption]
    assert any("by the lake" in c and "phone" in c and "description" in c for c in captions), captions
    assert any(re.search(r"\d+×\d+ JPEG · \d+ KB", c) for c in captions), captions
    images = {i.proto.imgs[0].caption: i for i in at.get("image")}
    assert any("transparent" in c for c in images), list(images)  # shown over a checkerboard, not white


def test_a_transparent_picture_is_shown_over_a_checkerboard():
    import io

    from PIL import Image

    clear = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    clear.paste((200, 0, 0, 255), (8, 8, 24, 24))
    out = io.BytesIO()
    clear.save(out, "PNG")
    with Image.open(io.BytesIO(data.on_checkerboard(out.getvalue()))) as im:
        px = im.convert("RGB")
        assert px.getpixel((0, 0)) == (204, 204, 204) and px.getpixel((8, 0)) == (255, 255, 255)  # the board
        assert px.getpixel((16, 16)) == (200, 0, 0)  # the picture over it


def test_an_operator_opens_any_batch_read_only_and_it_is_logged(env, settings, caplog):
    import logging

    batch = upload_batch(env, [IntakeItem.from_bytes("a.jpg", JPEG)], user_id=uid(ALICE_PLUS),
                         metadata={"title": "Help me"}).batch_id
    _process(settings, batch)
    nosy = _app(ALICE_DASH, "views/results.py", batch=batch)  # not an operator: nothing
    assert any("No such batch" in i.value for i in nosy.info) and not nosy.get("image")
    with caplog.at_level(logging.INFO, logger="imgpipe.web"):
        ops = _app(OPS, "views/results.py", batch=batch)
    assert any("Help me" in e.label for e in ops.expander) and ops.get("image")
    assert any("Read-only" in i.value for i in ops.info)
    assert not [b for b in ops.button if b.label == "Move to trash"]  # nothing to change
    assert "originals" not in ops.selectbox(key=f"zip-pick-{batch}").options  # the person's own files stay theirs
    assert any(f"operator access: {uid(OPS)} opened batch {batch} of user {uid(ALICE_PLUS)}" in r.getMessage()
               for r in caplog.records)


def test_operators_see_who_a_batch_belongs_to_by_name_beside_the_id(env):
    """The statistics table and CSV give operators each person's display name (as they signed in) beside the
    opaque user id; a person's own statistics have no such column."""
    upload_batch(env, [IntakeItem.from_bytes("a.jpg", JPEG)], user_id=uid(ALICE_PLUS), owner_name="alice+x@example.com")
    upload_batch(env, [IntakeItem.from_bytes("b.jpg", JPEG)], user_id="script-7")  # a script's: no name
    _process(env.settings, next(iter(env.metadata.query("batches", {"user_id": "script-7"})))["batch_id"])
    _process(env.settings, next(iter(env.metadata.query("batches", {"user_id": uid(ALICE_PLUS)})))["batch_id"])
    everyone = data.readable(data.image_frame(env, None))
    assert dict(zip(everyone["user id"], everyone["person"])) == {uid(ALICE_PLUS): "alice+x@example.com",
                                                                   "script-7": ""}
    assert "person" not in data.readable(data.image_frame(env, uid(ALICE_PLUS))).columns


def test_statistics_read_at_a_glance():
    """One name per format (never a MIME type beside JPEG), sizes in bands, p50/p95, the file name first."""
    frame = pd.DataFrame([
        {"user_id": "u-1", "batch_id": "b", "image_id": f"i{n}", "name": f"f{n}.jpg", "day": "2026-12-05",
         "outcome": outcome, "reason_code": None if outcome == "processed" else "unsupported_type", "format": fmt,
         "width": w, "height": h, "bytes": 1, "processing_ms": ms, "near_duplicates": 0, "top_label": None,
         "moderation": None, "faces": None}
        for n, (outcome, fmt, w, h, ms) in enumerate([
            ("processed", "JPEG", 4032, 3024, 400.0), ("processed", "JPEG", 640, 480, 100.0),
            ("processed", "PNG", 2000, 1000, 200.0), ("rejected", "text/plain", None, None, None),
            ("rejected", "image/jpeg", None, None, None)])])
    tables = data.stats(frame)
    assert dict(tables["formats"]["images"]) == {"JPEG": 3, "PNG": 1, "text": 1}
    assert dict(tables["sizes"]["images"]) == {"under 1 MP": 1, "1–4 MP": 1, "4–8 MP": 0, "8–16 MP": 1,
                                               "16–32 MP": 0, "32 MP and more": 0}
    assert tables["processing ms"].iloc[0]["p50"] == 200.0
    assert list(data.readable(frame).columns)[:2] == ["file", "outcome"] and data.readable(frame).columns[-1] == "user id"


def test_a_new_batch_arriving_does_not_collapse_the_one_being_viewed(env, settings):
    first = upload_batch(env, [IntakeItem.from_bytes("a.jpg", JPEG)], user_id=uid(ALICE_PLUS),
                         metadata={"title": "Viewing"}).batch_id
    _process(settings, first)
    at = _app(ALICE_PLUS, "views/results.py")
    viewing = lambda: next(e for e in at.expander if "Viewing" in e.label)  # noqa: E731
    assert viewing().proto.expanded and at.get("image")
    newer = upload_batch(env, [IntakeItem.from_bytes("b.jpg", JPEG)], user_id=uid(ALICE_PLUS),
                         metadata={"title": "Arrived"}).batch_id
    _process(settings, newer)
    follower = at.session_state["follower"]
    follower.poll = lambda: [{"batch_id": newer}]  # its event arrives (from the user's Kafka partition)
    at.run()
    arrived = next(e for e in at.expander if "Arrived" in e.label)
    assert viewing().proto.expanded and not arrived.proto.expanded  # the one being looked at stays open
    assert len(at.get("image")) == 1  # its gallery too; the new one waits, collapsed, below it (nothing moves)
    assert [e.label.split("**")[1] for e in at.expander if "**" in e.label] == ["Viewing", "Arrived"]


def _status_of(names: list[str], *, withheld: int | None = None) -> dict:
    """A batch status as ``batch_for_user`` gives it: processed images with two renditions each."""
    images = []
    for n, name in enumerate(names):
        moderation = {"decision": "flag", "review": "delete"} if n == withheld else {"decision": "allow"}
        images.append({"image_id": f"i{n:04d}", "name": name, "outcome": "processed", "size": 1000 + n,
                       "moderation": moderation, "renditions": [
                           {"name": "large", "format": "JPEG", "path": f"processed/b/i{n:04d}/large.jpg", "bytes": 500},
                           {"name": "thumb", "format": "WEBP", "path": f"processed/b/i{n:04d}/thumb.webp", "bytes": 50}]})
    return {"batch_id": "b", "user_id": "u", "status": "completed", "images": images}


def test_zip_names_stay_inside_the_folder_and_never_collide(settings):
    """Every name once as Windows, macOS and Linux see it (case, Unicode form, trailing dots), never the ZIP's
    own report, never out of the folder, a long name keeps its extension; withheld images are not in it."""
    import unicodedata

    names = ["a.jpg", "a.jpg", "a-2.jpg", "A.JPG", "a.jpg.", "../../etc/passwd", "C:\\\\evil.jpg", "MISSING.txt",
             unicodedata.normalize("NFD", "café.jpg"), unicodedata.normalize("NFC", "café.jpg"), "x" * 300 + ".jpeg",
             "secret.jpg"]
    status = _status_of(names, withheld=len(names) - 1)
    got = [name for name, _, _ in data.download_entries(status, settings, data.ORIGINALS)]
    assert len(got) == len(names) - 1 and "secret.jpg" not in got  # (the withheld one is not offered)
    folded = [unicodedata.normalize("NFC", g).lower().rstrip(". ") for g in got]
    assert len(set(folded)) == len(folded) and "missing.txt" not in folded, got
    assert all("/" not in g and "\\" not in g and not g.startswith(".") and ":" not in g for g in got), got
    assert got[:3] == ["a.jpg", "a-2.jpg", "a-2-2.jpg"] and got[5] == "passwd"
    assert got[-1].endswith(".jpeg") and len(got[-1]) == 180
    renditions = data.download_entries(status, settings, "all renditions")
    assert len(renditions) == 2 * (len(names) - 1) and sum(size for *_, size in renditions) == 550 * (len(names) - 1)


def test_a_zip_too_large_for_the_web_app_is_refused_with_the_reason(env, settings, monkeypatch):
    big = settings.model_copy(update={"max_zip_bytes": 1000})
    entries = data.download_entries(_status_of(["a.jpg", "b.jpg"]), big, "large JPEG")
    assert data.zip_too_large(entries, big.max_zip_bytes) is None  # 2 × 500 bytes
    assert "choose one rendition" in data.zip_too_large(data.download_entries(_status_of(["a.jpg", "b.jpg"]), big,
                                                                              "all renditions"), 1000)
    batch = upload_batch(env, [IntakeItem.from_bytes("a.jpg", JPEG)], user_id=uid(ALICE_PLUS)).batch_id
    _process(settings, batch)
    monkeypatch.setenv("IMGPIPE_MAX_ZIP_BYTES", "1000")  # (read when the app first builds its settings)
    at = _app(ALICE_PLUS, "views/results.py")
    at.selectbox(key=f"zip-pick-{batch}").set_value("originals").run()
    assert any("more than one download may hold" in w.value for w in at.warning)
    assert not [b for b in at.get("download_button") if "ZIP" in b.proto.label]


def test_a_download_checks_the_batch_when_clicked_not_when_the_page_was_drawn(env, settings):
    """An image an operator deleted in review after the page was drawn is not downloadable from that page
    (neither its renditions nor its original), though the page's copy still lists it; the other image is."""
    from orchestration.domain.manifest import raw_path

    batch = upload_batch(env, [IntakeItem.from_bytes("a.jpg", JPEG), IntakeItem.from_bytes("b.jpg", JPEG)],
                         user_id=uid(ALICE_PLUS)).batch_id
    _process(settings, batch)
    from orchestration.domain.understanding import record_review

    _flag(env, batch, "i0001")  # (shown blurred: the page offers its downloads)
    drawn = data.batch_for_user(env, uid(ALICE_PLUS), batch)
    assert data.servable_paths(drawn, settings, originals=True) >= {raw_path(batch, "i0001")}
    assert record_review(env.metadata, env.lake, batch, uid(ALICE_PLUS), "i0001", "delete", "ops")
    read = data.fresh_reader(env, drawn, originals=True)
    gone, kept = (next(i for i in drawn["images"] if i["image_id"] == k) for k in ("i0001", "i0002"))
    assert read(raw_path(batch, "i0001")) is None and read(gone["renditions"][0]["path"]) is None
    assert read(raw_path(batch, "i0002")) == JPEG and read(kept["renditions"][0]["path"])
    assert data.fresh_reader(env, drawn, originals=False)(raw_path(batch, "i0002")) is None  # operators: no originals
