"""AzureUnderstanding at the SDK boundary: the real ImageAnalysisClient and ContentSafetyClient (their pipelines:
bearer-token authentication, retry, error mapping, deserialization) over a transport that enforces the
services' rules and answers from recorded responses (tests/support/azure_ai.py,
tests/data/recorded/azure-ai/). What each result means on the port is checked against the recordings."""

from __future__ import annotations

import base64
import json

import pytest
from azure.core.credentials import AzureKeyCredential
from azure.core.pipeline.policies import RetryPolicy
from azure.core.rest import HttpRequest

from orchestration.adapters.azure.understanding import AzureUnderstanding
from orchestration.adapters.local.understanding import local_models
from orchestration.ports.understanding import (REVIEW, TASKS, TOP_LABELS, ImageUnderstanding, ModerationPolicy,
                                               UnderstandingError)
from tests.support.azure_ai import (SAFETY_ENDPOINT, SCOPE, VISION_ENDPOINT, AzureAIDouble, FakeCredential,
                                    make_image, scene_image, token_is_valid)
from tests.support.ports import signature_mismatches

ALL = list(TASKS)
SCENES = ["person-with-dog", "cat", "landscape", "boxing-match"]


@pytest.fixture
def double():
    return AzureAIDouble()


@pytest.fixture
def credential():
    return FakeCredential()


@pytest.fixture
def adapter(double, credential):
    understanding = AzureUnderstanding.from_endpoints(VISION_ENDPOINT, SAFETY_ENDPOINT, credential, transport=double)
    yield understanding
    understanding.close()


def image(double, name: str) -> bytes:
    return scene_image(double.scenes[name])


def vision_response(double, name: str) -> dict:
    return double.scenes[name]["imageanalysis"]["response"]


def test_the_adapter_implements_the_port(adapter):
    assert isinstance(adapter, ImageUnderstanding)
    assert signature_mismatches(adapter, ImageUnderstanding) == []


# -- mapping the recorded answers onto the port's shapes ---------------------------------------------

@pytest.mark.parametrize("reverse_tags", [False, True], ids=["service-order", "worst-first"])
def test_labels_are_the_five_best_tags_best_first_with_the_caption(double, adapter, reverse_tags):
    double.reverse_tags = reverse_tags  # the order of tagsResult is not documented: the adapter sorts
    results = adapter.analyze([image(double, n) for n in SCENES], ["labels"])
    for name, result in zip(SCENES, results):
        recorded = vision_response(double, name)
        best = sorted(recorded["tagsResult"]["values"], key=lambda t: -t["confidence"])[:TOP_LABELS]
        assert len(recorded["tagsResult"]["values"]) > TOP_LABELS
        assert result == {"labels": {"labels": [{"name": t["name"], "score": round(t["confidence"], 4)} for t in best],
                                     "caption": recorded["captionResult"]["text"]}}, name
    assert results[0]["labels"] == {"caption": "a man walking a dog on a leash", "labels": [
        {"name": "dog", "score": 0.9914}, {"name": "outdoor", "score": 0.9898}, {"name": "grass", "score": 0.9803},
        {"name": "person", "score": 0.9741}, {"name": "clothing", "score": 0.9608}]}


def test_moderation_scores_are_the_severity_over_six_per_category(double, adapter):
    results = adapter.analyze([image(double, n) for n in SCENES], ["moderation"])
    for name, result in zip(SCENES, results):
        recorded = double.scenes[name]["contentsafety"]["response"]["categoriesAnalysis"]
        assert result == {"moderation": {"scores": {c["category"].lower(): round(c["severity"] / 6, 4)
                                                    for c in recorded}}}, name
    boxing = results[SCENES.index("boxing-match")]["moderation"]["scores"]
    assert boxing == {"hate": 0.0, "selfharm": 0.0, "sexual": 0.3333, "violence": 0.6667}
    assert ModerationPolicy().decide(boxing) == (REVIEW, "violence")
    assert results[0]["moderation"]["scores"] == dict.fromkeys(["hate", "selfharm", "sexual", "violence"], 0.0)


def test_people_boxes_are_fractions_of_the_image_from_the_person_detector(double, adapter):
    results = adapter.analyze([image(double, n) for n in SCENES], ["faces"])
    for name, result in zip(SCENES, results):
        recorded = vision_response(double, name)
        width, height = recorded["metadata"]["width"], recorded["metadata"]["height"]
        faces = result["faces"]
        assert set(result) == {"faces"} and faces["detector"] == "person"
        # the service's weak candidates (Microsoft's own example has one at 0.27) are not people
        people = [p for p in recorded["peopleResult"]["values"] if p["confidence"] >= 0.6]
        assert faces["count"] == len(faces["boxes"]) == len(people), name
        for got, person in zip(faces["boxes"], people):
            b = person["boundingBox"]
            want = [b["x"] / width, b["y"] / height, (b["x"] + b["w"]) / width, (b["y"] + b["h"]) / height]
            assert got["box"] == pytest.approx(want, abs=1e-4), name
            assert got["score"] == pytest.approx(person["confidence"], abs=1e-4)
    dog = results[0]["faces"]["boxes"][0]
    assert dog == {"box": [0.1062, 0.0563, 0.475, 0.9765], "score": 0.9335}  # 34/320, 12/213, 152/320, 208/213
    referee = results[SCENES.index("boxing-match")]["faces"]["boxes"][2]["box"]
    assert referee[2] == 1.0  # a person cut off at the right edge ends at the edge
    assert results[SCENES.index("cat")]["faces"] == {"count": 0, "boxes": [], "detector": "person"}


@pytest.mark.parametrize("tasks, features, safety", [
    (["labels"], {"tags", "caption"}, 0),
    (["faces"], {"people"}, 0),
    (["moderation"], None, 1),
    (["labels", "moderation"], {"tags", "caption"}, 1),
    (ALL, {"tags", "caption", "people"}, 1),
])
def test_only_the_tasks_asked_and_only_the_requests_they_need(double, adapter, tasks, features, safety):
    [result] = adapter.analyze([image(double, "person-with-dog")], tasks)
    assert set(result) == set(tasks)
    vision = double.calls_to("vision")
    if features is None:
        assert vision == []
    else:
        assert len(vision) == 1 and set(vision[0].query["features"].split(",")) == features
    assert len(double.calls_to("safety")) == safety


# -- one image's problem, and the service's ---------------------------------------------------------------

@pytest.mark.parametrize("bad, vision_says, safety_says", [
    (make_image(40, 40), "image dimension", "between 50 x 50"),
    (make_image(320, 30), "image dimension", "between 50 x 50"),
    (b"not an image", "Image format is not valid", "format is not supported"),
], ids=["40x40", "320x30", "not-an-image"])
def test_an_image_the_services_refuse_is_that_images_error_and_the_others_succeed(double, adapter, bad, vision_says,
                                                                                   safety_says):
    dog, cat = image(double, "person-with-dog"), image(double, "cat")
    alone = adapter.analyze([dog, cat], ALL)
    results = adapter.analyze([dog, bad, cat], ALL)
    assert [results[0], results[2]] == alone
    assert all("error" not in r[t] for r in alone for t in ALL)
    refused = results[1]
    assert set(refused) == set(ALL) and all(set(refused[t]) == {"error"} for t in ALL)
    assert vision_says in refused["labels"]["error"] and vision_says in refused["faces"]["error"]
    assert safety_says in refused["moderation"]["error"]
    assert sorted(c.status for c in double.calls) == [200] * 8 + [400] * 2


@pytest.mark.parametrize("service, tasks", [("vision", ALL), ("vision", ["faces"]), ("safety", ["moderation"]),
                                            ("safety", ALL)])
def test_a_service_that_stays_unavailable_raises_understanding_error(double, adapter, service, tasks):
    double.outage.add(service)
    with pytest.raises(UnderstandingError, match="503"):
        adapter.analyze([image(double, "person-with-dog"), image(double, "cat")], tasks)
    calls = double.calls_to(service)
    assert len(calls) > 2 and {c.status for c in calls} == {503}  # the SDK retried before it gave up
    assert double.sleeps  # backing off through the transport (recorded, not slept)


def test_throttling_is_retried_after_retry_after_and_then_succeeds(double, adapter):
    dog = image(double, "person-with-dog")
    [expected] = adapter.analyze([dog], ALL)
    double.calls.clear()
    double.throttle.update(vision=2, safety=1)
    assert adapter.analyze([dog], ALL) == [expected]
    assert [c.status for c in double.calls_to("vision")] == [429, 429, 200]
    assert [c.status for c in double.calls_to("safety")] == [429, 200]
    assert double.sleeps == [1.0, 1.0, 1.0]  # what Retry-After said, each time


def test_throttling_past_the_sdk_retries_raises_understanding_error(double, adapter):
    double.throttle["safety"] = 100
    with pytest.raises(UnderstandingError, match="429"):
        adapter.analyze([image(double, "cat")], ["moderation"])
    policy = RetryPolicy()  # the clients' default: a status error is retried retry_status (3) times
    assert len(double.calls_to("safety")) == 1 + min(policy.total_retries, policy.status_retries)


def test_an_unreachable_service_raises_understanding_error(double, adapter):
    double.unreachable.add("vision")
    with pytest.raises(UnderstandingError):
        adapter.analyze([image(double, "cat")], ALL)


# -- authentication -----------------------------------------------------------------------------------

def test_a_bearer_token_for_cognitive_services_is_sent_and_never_a_key(double, adapter, credential):
    adapter.analyze([image(double, "person-with-dog")], ALL)
    adapter.analyze([image(double, "cat")], ALL)
    assert len(double.calls) == 4 and {c.status for c in double.calls} == {200}
    assert all(token_is_valid(c.headers.get("Authorization")) for c in double.calls)
    assert not any("Ocp-Apim-Subscription-Key" in c.headers for c in double.calls)
    assert set(credential.scopes) == {(SCOPE,)}
    assert credential.calls == 2  # one token per client, then reused until it nears expiry


class _ManagementToken(FakeCredential):
    """A credential handing out a token for another audience (Azure Resource Manager)."""

    def get_token(self, *scopes, **kwargs):
        return super().get_token("https://management.azure.com/.default", **kwargs)


@pytest.mark.parametrize("credential, status", [(AzureKeyCredential("not-a-secret"), 403), (_ManagementToken(), 401)],
                         ids=["key", "token-for-arm"])
def test_a_key_or_a_token_for_another_audience_is_refused(double, credential, status):
    understanding = AzureUnderstanding.from_endpoints(VISION_ENDPOINT, SAFETY_ENDPOINT, credential, transport=double)
    with pytest.raises(UnderstandingError, match=str(status)):
        understanding.analyze([image(double, "cat")], ALL)


# -- models -------------------------------------------------------------------------------------------

def test_models_name_the_services_and_differ_from_the_local_models(double, adapter):
    azure, local = adapter.models(), local_models(0.6)
    assert set(azure) == set(local) == set(TASKS)
    for task in TASKS:
        a, l = azure[task], local[task]
        assert a.task == task and a.version == "2023-10-01" and len(a.code_version) == 16
        assert a.name != l.name and a.version != l.version and a.code_version != l.code_version
    assert azure["labels"].code_version != azure["faces"].code_version  # different features asked
    assert "imgpipe-vision.cognitiveservices.azure.com" in azure["labels"].source
    assert "imgpipe-safety.cognitiveservices.azure.com" in azure["moderation"].source
    assert double.calls == []  # naming the models asks no service


# -- the double itself: it refuses what the services refuse (else the tests above prove little) -----------

def _send(double, service: str, *, query="api-version=2023-10-01", headers=None, body=b"", auth=True):
    host, path = ((VISION_ENDPOINT, "computervision/imageanalysis:analyze") if service == "vision"
                  else (SAFETY_ENDPOINT, "contentsafety/image:analyze"))
    headers = {"Content-Type": "application/octet-stream" if service == "vision" else "application/json",
               **({"Authorization": f"Bearer entra-token;aud={SCOPE.removesuffix('/.default')}"} if auth else {}),
               **(headers or {})}
    response = double.send(HttpRequest("POST", f"{host}{path}?{query}", headers=headers, content=body))
    return response.status_code, response.json()


def _safety_body(data: bytes) -> bytes:
    return json.dumps({"image": {"content": base64.b64encode(data).decode()}}).encode()


def test_the_double_refuses_what_the_services_refuse(double):
    dog = image(double, "person-with-dog")
    q = "api-version=2023-10-01&features="
    status, body = _send(double, "vision", query=q + "tags", body=dog)
    assert status == 200 and set(body) == {"modelVersion", "metadata", "tagsResult"}  # only what was asked
    assert _send(double, "vision", query=q + "tags", body=dog, auth=False)[0] == 401
    assert _send(double, "vision", query=q + "tags", body=dog, headers={"Ocp-Apim-Subscription-Key": "k"})[0] == 403
    assert _send(double, "vision", query="api-version=2024-02-01&features=tags", body=dog)[0] == 404
    status, body = _send(double, "vision", query=q + "tags,faces", body=dog)
    assert status == 400 and body["error"]["innererror"]["code"] == "NotSupportedVisualFeature"
    assert _send(double, "vision", query=q + "tags", body=dog, headers={"Content-Type": "image/jpeg"})[0] == 415
    status, body = _send(double, "vision", query=q + "tags", body=dog + b"\0" * (20 * 1024 * 1024))
    assert status == 400 and "20971520 bytes" in body["error"]["message"]
    status, body = _send(double, "vision", query=q + "tags", body=make_image(16001, 50, fmt="PNG"))
    assert status == 400 and body["error"]["innererror"]["code"] == "InvalidImageSize"

    assert _send(double, "safety", body=_safety_body(dog))[1]["categoriesAnalysis"]
    assert _send(double, "safety", body=b'{"image": {"content": "%%% not base64"}}')[0] == 400
    assert _send(double, "safety", body=b'{"image": {"blobUrl": "https://x/y.jpg", "content": ""}}')[0] == 400
    status, body = _send(double, "safety", body=_safety_body(dog + b"\0" * (4 * 1024 * 1024)))
    assert status == 400 and "4 MB" in body["error"]["message"]
    status, body = _send(double, "safety", body=_safety_body(make_image(7201, 60, fmt="PNG")))
    assert status == 400 and "7200" in body["error"]["message"]
    with pytest.raises(LookupError, match="no recording of a 64x64 image"):
        _send(double, "safety", body=_safety_body(make_image(64, 64)))


def test_a_request_the_service_refuses_fails_the_step_instead_of_every_image(double, adapter, monkeypatch):
    """A 400 about the request, not the image (say, captions in a region that lacks them), is not each image's
    error: the step fails with the service's reason, so the batch is retried instead of completing without
    labels."""
    import tests.support.azure_ai as double_module

    monkeypatch.setattr(double_module, "VISION_FEATURES", {f for f in double_module.VISION_FEATURES if f != "caption"})
    with pytest.raises(UnderstandingError, match="400.*caption"):
        adapter.analyze([image(double, "cat"), image(double, "person-with-dog")], ["labels"])


def test_requests_in_flight_follow_the_setting(credential):
    """IMGPIPE_UNDERSTANDING_PARALLEL requests at a time per step: enough to reach the accounts' rate limit,
    never more (a 10,000-image batch at 4 in flight would take longer than its renditions)."""
    import threading
    import time

    class Counting(AzureAIDouble):
        def __init__(self):
            super().__init__()
            self.now = self.most = self.seen = 0
            self._count = threading.Lock()
            self._three = threading.Barrier(3, timeout=10)  # the first three calls meet: 3 are in flight at once

        def send(self, request, **kwargs):
            with self._count:
                self.now += 1
                self.seen += 1
                self.most = max(self.most, self.now)
                first = self.seen <= 3
            if first:
                self._three.wait()
            time.sleep(0.005)
            try:
                return super().send(request, **kwargs)
            finally:
                with self._count:
                    self.now -= 1

    double = Counting()
    understanding = AzureUnderstanding.from_endpoints(VISION_ENDPOINT, SAFETY_ENDPOINT, credential, transport=double,
                                                      parallel=3)
    try:
        understanding.analyze([image(double, "cat")] * 12, ["labels"])
    finally:
        understanding.close()
    assert double.most == 3
