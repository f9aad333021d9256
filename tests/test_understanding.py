"""Image understanding: the real local models on photos whose content is known (scikit-image's sample photos),
the model files' pins, and the Dagster-free work of the understanding assets (orchestration.domain.understanding)."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from assets.core.understand import mobilenet
from assets.core.understand.engine import LocalModels
from assets.core.understand.models import MODEL_FILES, ModelFile, ModelMissing
from orchestration.adapters.local.understanding import LocalUnderstanding
from orchestration.domain import understanding as understand
from orchestration.ports.understanding import FLAG, REVIEW, ModelInfo, ModerationPolicy

skimage_data = pytest.importorskip("skimage.data")


def _jpeg(array: np.ndarray, edge: int = 1024) -> bytes:
    im = Image.fromarray(array).convert("RGB")
    im.thumbnail((edge, edge))
    out = io.BytesIO()
    im.save(out, "JPEG", quality=85)
    return out.getvalue()


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    return {name: _jpeg(getattr(skimage_data, name)()) for name in ("chelsea", "coffee", "camera", "rocket",
                                                                     "astronaut")}


@pytest.fixture(scope="module")
def answers(photos):
    models = LocalUnderstanding(threads=1)
    return dict(zip(photos, models.analyze(list(photos.values()), ["labels", "moderation", "faces"])))


@pytest.mark.parametrize("photo, expected", [
    ("chelsea", {"tabby", "tiger cat", "Egyptian cat"}),         # a cat
    ("coffee", {"espresso", "cup", "coffee mug"}),              # a cup of coffee
    ("camera", {"tripod", "reflex camera", "Polaroid camera"}),  # a photographer behind a camera on a tripod
    ("rocket", {"space shuttle", "missile", "projectile"}),      # a rocket on its launch pad
])
def test_the_expected_class_is_among_the_top_five_labels(answers, photo, expected):
    labels = answers[photo]["labels"]["labels"]
    names = [label["name"] for label in labels]
    assert len(labels) == 5 and expected & set(names), names
    scores = [label["score"] for label in labels]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)


def test_faces_are_found_in_photos_of_people_and_not_elsewhere(answers):
    for photo in ("astronaut", "camera"):  # one face each
        faces = answers[photo]["faces"]
        assert faces["count"] == 1 and faces["detector"] == "face", (photo, faces)
        x0, y0, x1, y1 = faces["boxes"][0]["box"]
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    for photo in ("chelsea", "coffee", "rocket"):  # a cat's face is not a face
        assert answers[photo]["faces"] == {"count": 0, "boxes": [], "detector": "face"}, photo
    # The astronaut's face is in the upper middle of the picture.
    x0, y0, x1, y1 = answers["astronaut"]["faces"]["boxes"][0]["box"]
    assert 0.3 < (x0 + x1) / 2 < 0.7 and (y0 + y1) / 2 < 0.5


def test_benign_photos_get_low_moderation_scores(answers):
    policy = ModerationPolicy()
    for photo, got in answers.items():
        assert set(got["moderation"]["scores"]) == {"sexual"}
        assert got["moderation"]["scores"]["sexual"] < 0.1, photo
        assert policy.decide(got["moderation"]["scores"]) == ("allow", None)


def test_an_unreadable_image_is_its_own_error_and_the_others_are_answered(photos):
    got = LocalUnderstanding(threads=1).analyze([b"not an image", photos["coffee"]], ["labels", "faces"])
    assert set(got[0]) == {"labels", "faces"} and all("unreadable" in r["error"] for r in got[0].values())
    assert "labels" in got[1]["labels"] and set(got[1]) == {"labels", "faces"}  # only the tasks asked


def test_a_rendition_too_large_for_understanding_is_refused_before_decoding():
    big = Image.new("RGB", (5000, 4000))
    out = io.BytesIO()
    big.save(out, "PNG")
    got = LocalModels(threads=1).analyze([out.getvalue()], ["moderation"])
    assert "larger than a rendition" in got[0]["moderation"]["error"]


def test_model_files_are_checked_against_their_pinned_sha256(tmp_path):
    labels = MODEL_FILES["labels"]
    wrong = ModelFile(**{**labels.__dict__, "sha256": "0" * 64})
    with pytest.raises(ModelMissing, match="refusing to load it"):
        wrong.read_verified()
    missing = ModelFile(**{**labels.__dict__, "package": "no_such_model_package"})
    with pytest.raises(ModelMissing, match="requirements-models.txt"):
        missing.path()
    for model in MODEL_FILES.values():  # the installed files are the pinned ones
        assert model.read_verified()


def test_the_weights_reader_runs_no_code_from_the_file():
    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError):
        mobilenet.load_legacy_state_dict(pickle.dumps(Evil(), protocol=2))


# -- the work of the assets, without Dagster -----------------------------------------------------------------


def test_the_input_is_the_smallest_rendition_that_covers_the_models_input():
    doc = {"renditions": [
        {"name": "large", "format": "WEBP", "width": 2048, "height": 1365, "path": "l.webp"},
        {"name": "medium", "format": "WEBP", "width": 1024, "height": 683, "path": "m.webp"},
        {"name": "medium", "format": "JPEG", "width": 1024, "height": 683, "path": "m.jpg"},
        {"name": "thumb", "format": "JPEG", "width": 256, "height": 171, "path": "t.jpg"},  # short side < 224
    ]}
    assert understand.source_rendition(doc)["path"] == "m.jpg"
    small = {"renditions": [{"name": "thumb", "format": "WEBP", "width": 120, "height": 80, "path": "t.webp"}]}
    assert understand.source_rendition(small)["path"] == "t.webp"  # a small source: the largest there is
    assert understand.source_rendition({"renditions": []}) is None


def test_moderation_decisions_follow_the_thresholds_and_keep_their_history():
    policy = ModerationPolicy(review=0.4, flag=0.8)
    assert policy.decide({"sexual": 0.39}) == ("allow", None)
    assert policy.decide({"sexual": 0.4, "violence": 0.1}) == (REVIEW, "sexual")
    assert policy.decide({"hate": 0.1, "violence": 0.9}) == (FLAG, "violence")
    with pytest.raises(ValueError):
        ModerationPolicy(review=0.9, flag=0.5)
    v1 = ModelInfo(task="moderation", name="m", version="1", sha256="a" * 64)
    v2 = ModelInfo(task="moderation", name="m", version="2", sha256="b" * 64)
    first = understand._fields("moderation", {"scores": {"sexual": 0.9}}, v1, policy, {}, "p", "t1")
    assert first["decision"] == FLAG and first["model"]["code_version"] == v1.code_version
    reviewed = {"moderation": {**first, "review": {"action": "keep", "by": "ops", "at": "t2"}}}
    # The same model and verdict again (a re-run): the operator's review stands.
    again = understand._fields("moderation", {"scores": {"sexual": 0.9}}, v1, policy, reviewed, "p", "t3")
    assert again["review"]["action"] == "keep" and "history" not in again
    # Slightly other scores for the same verdict (new renditions, another device): the review still stands.
    close = understand._fields("moderation", {"scores": {"sexual": 0.8912}}, v1, policy, reviewed, "p", "t3")
    assert close["decision"] == FLAG and close["review"]["action"] == "keep"
    # No answer from the model: no verdict, "unchecked" (blurred for the owner, on the review list).
    failed = understand._fields("moderation", {"error": "unreadable rendition"}, v1, policy, {}, "p", "t3")
    assert failed["decision"] == "unchecked" and "policy" not in failed
    # A new model: a new decision to review, the old one (with its model and review) kept for comparison.
    newer = understand._fields("moderation", {"scores": {"sexual": 0.5}}, v2, policy, reviewed, "p", "t4")
    assert newer["decision"] == REVIEW and "review" not in newer
    assert newer["history"] == [{"decision": FLAG, "category": "sexual", "scores": {"sexual": 0.9},
                                 "review": {"action": "keep", "by": "ops", "at": "t2"}, "at": "t1",
                                 "code_version": v1.code_version, "model": "m"}]


def test_checks_find_missing_results_and_numbers_out_of_range():
    class Store:
        def __init__(self, docs):
            self.docs = docs

        def query(self, container, where=None, partition_key=None, **kw):
            return list(self.docs)

    model = {"model": {"code_version": "x"}}
    docs = [
        {"image_id": "i1", "name": "a.jpg", "outcome": "processed",
         "labels": {"labels": [{"name": "cat", "score": 0.2}, {"name": "dog", "score": 0.7}], **model},
         "faces": {"count": 2, "boxes": [{"box": [0.1, 0.1, 0.05, 0.3], "score": 0.9}], **model},
         "moderation": {"scores": {"sexual": 1.5}, "decision": "allow", **model}},
        {"image_id": "i2", "name": "b.jpg", "outcome": "processed"},
        {"image_id": "i3", "name": "c.jpg", "outcome": "processed", "labels": {"error": "unreadable", **model},
         "faces": {"count": 0, "boxes": [], **model}, "moderation": {"scores": {"sexual": 0.0}, "decision": "allow",
                                                                       **model}},
        {"image_id": "i4", "name": "d.jpg", "outcome": "rejected"},
    ]
    store = Store(docs)
    checked, problems = understand.check_results(store, "b", "labels")
    assert checked == 3 and any("not the best five" in p for p in problems) and any("i2" in p for p in problems)
    assert not any("i3" in p for p in problems)  # a recorded error is a result
    _, problems = understand.check_results(store, "b", "faces")
    assert any("count 2 != 1" in p for p in problems) and any("out of range" in p for p in problems)
    _, problems = understand.check_results(store, "b", "moderation")
    assert any("out of 0..1" in p for p in problems)


def test_the_understood_event_is_a_new_event_for_a_new_model():
    doc = {"batch_id": "b", "user_id": "u", "image_id": "i1", "name": "a.jpg", "outcome": "processed",
           "labels": {"labels": [{"name": "cat", "score": 0.9}], "model": {"code_version": "v1"}},
           "moderation": {"scores": {"sexual": 0.9}, "decision": FLAG, "category": "sexual",
                          "policy": {"action": "blur"}, "model": {"code_version": "m1"}}}
    event = understand.understood_event(doc)
    assert event["type"] == "image.understood" and event["labels"] == [{"name": "cat", "score": 0.9}]
    assert event["moderation"] == {"decision": FLAG, "category": "sexual", "review": None}
    assert understand.understood_event(doc)["event_id"] == event["event_id"]  # a re-run repeats it
    newer = {**doc, "labels": {**doc["labels"], "model": {"code_version": "v2"}}}
    assert understand.understood_event(newer)["event_id"] != event["event_id"]
    # A new verdict (new thresholds) or an operator's review is news for the page too.
    allowed = {**doc, "moderation": {**doc["moderation"], "decision": "allow"}}
    kept = {**doc, "moderation": {**doc["moderation"], "review": {"action": "keep"}}}
    ids = {understand.understood_event(d)["event_id"] for d in (doc, allowed, kept)}
    assert len(ids) == 3
    assert understand.understood_event({**doc, "outcome": "rejected"}) is None


def test_imgpipe_status_says_what_each_image_shows():
    from orchestration.cli import _what_it_shows
    from orchestration.domain.status import understanding_summary

    doc = {"labels": {"labels": [{"name": "tabby", "score": 0.72}, {"name": "tiger cat", "score": 0.15},
                                 {"name": "Egyptian cat", "score": 0.13}, {"name": "lynx", "score": 0.0}]},
           "faces": {"count": 1}, "moderation": {"decision": FLAG, "category": "sexual", "policy": {"action": "blur"},
                                                 "review": {"action": "keep"}}}
    assert _what_it_shows(understanding_summary(doc)) == (
        "tabby 72%, tiger cat 15%, Egyptian cat 13% · 1 face · moderation: flag (sexual), reviewed: keep")
    assert _what_it_shows(understanding_summary({})) == ""  # not looked at yet: nothing said


class _Settings:
    def __init__(self, understanding="local", moderation_action="blur"):
        self.understanding, self.moderation_action = understanding, moderation_action


@pytest.mark.parametrize("moderation, understanding, action, batch, expected", [
    ({"decision": "allow"}, "local", "blur", "completed", "plain"),
    ({"decision": "review"}, "local", "blur", "completed", "plain"),  # for operators to look at; shown
    ({"decision": "flag"}, "local", "blur", "completed", "blurred"),
    ({"decision": "flag"}, "local", "withhold", "completed", "withheld"),
    ({"decision": "flag"}, "off", "blur", "completed", "blurred"),   # turning moderation off shows no flagged image
    ({"decision": "flag", "review": "keep"}, "local", "withhold", "completed", "plain"),
    ({"decision": "allow", "review": "delete"}, "local", "blur", "completed", "withheld"),  # removed stays removed
    (None, "local", "blur", "processing", "checking"),
    (None, "local", "blur", "failed", "unchecked"),     # the check never ran: fails closed
    (None, "local", "withhold", "processing", "withheld"),
    ({"decision": "unchecked", "error": "x"}, "local", "blur", "completed", "unchecked"),
    (None, "off", "blur", "completed", "plain"),         # never checked, moderation off
])
def test_a_picture_is_shown_clear_only_when_moderation_let_it(moderation, understanding, action, batch, expected):
    from ui_streamlit.data import shown_as

    assert shown_as({"moderation": moderation}, _Settings(understanding, action), batch) == expected


def test_an_image_an_operator_removed_stays_removed_when_its_batch_runs_again():
    from orchestration.domain.processing import _understood

    removed = {"moderation": {"decision": "flag", "review": {"action": "delete"}}, "deleted": True,
               "deleted_by_review": "t"}
    carried = _understood(removed, {"outcome": "processed"})
    assert carried["deleted"] and carried["moderation"]["review"]["action"] == "delete"


@pytest.mark.parametrize("size, expected", [
    ((1024, 768), (341, 256)),     # a photo: ~320 px long edge
    ((2048, 512), (1024, 256)),    # a panorama keeps its short side
    ((8000, 500), (1024, 64)),     # ... up to 1024 px long
    ((200, 150), (200, 150)),      # never upscaled
])
def test_the_models_input_keeps_enough_of_wide_images(size, expected):
    assert LocalModels.input_size(*size) == expected


def test_reprocess_changed_selects_by_model_and_thresholds_not_by_the_display_action(monkeypatch):
    """`reprocess --changed --asset moderation` picks a batch whose verdicts came from another model or other
    thresholds; a new IMGPIPE_MODERATION_ACTION changes no verdict (pages apply it when they show an image)."""
    from orchestration import operate

    version, _ = operate.current_understanding("moderation")
    monkeypatch.setattr(operate, "current_understanding", lambda task: (version, {"review": 0.4, "flag": 0.8}))

    class Store:
        def __init__(self, policy, code=version):
            self.doc = {"outcome": "processed", "moderation": {"decision": "allow", "model": {"code_version": code},
                                                              "policy": policy}}

        def query(self, *a, **k):
            return [self.doc]

    class Services:
        def __init__(self, store):
            self.metadata = store

    current = operate.current_understanding("moderation")
    same = Services(Store({"review": 0.4, "flag": 0.8, "action": "withhold"}))
    assert not operate._batch_has_other_version(same, "b", "moderation", current)
    other_threshold = Services(Store({"review": 0.4, "flag": 0.7, "action": "blur"}))
    assert operate._batch_has_other_version(other_threshold, "b", "moderation", current)
    other_model = Services(Store({"review": 0.4, "flag": 0.8}, code="older"))
    assert operate._batch_has_other_version(other_model, "b", "moderation", current)

