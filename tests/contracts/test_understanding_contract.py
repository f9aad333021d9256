"""Contract of the ImageUnderstanding port (orchestration/ports/understanding.py), once per adapter: the local
models (LocalUnderstanding, real onnxruntime/LiteRT models) and Azure AI Vision + Content Safety
(AzureUnderstanding, its real SDK clients over the recording transport of tests/support/azure_ai.py, which
answers by image size: the three images here have the sizes of three recorded scenes).

What the adapters share is checked, not what they see: the shapes of the results, one result per image
and task asked, one bad image failing alone, and the models behind each task."""

from __future__ import annotations

import pytest

from orchestration.ports.understanding import TASKS, TOP_LABELS, ImageUnderstanding, ModelInfo
from tests.support.azure_ai import load_recordings, make_image
from tests.support.ports import signature_mismatches

pytestmark = pytest.mark.contract

# The sizes of three recorded scenes (person-with-dog, cat, landscape), each a ≤ 320 px rendition.
SIZES = [(320, 213), (240, 320), (320, 180)]
TASK_SETS = [list(TASKS), ["labels"], ["moderation"], ["faces"], ["faces", "labels"]]


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [make_image(w, h, seed=i) for i, (w, h) in enumerate(SIZES)]


@pytest.fixture(scope="module", params=["local", "azure-recorded"])
def understanding(request):
    if request.param == "local":
        from orchestration.adapters.local.understanding import LocalUnderstanding

        adapter = LocalUnderstanding(threads=1)
    else:
        from orchestration.adapters.azure.understanding import AzureUnderstanding
        from tests.support.azure_ai import SAFETY_ENDPOINT, VISION_ENDPOINT, AzureAIDouble, FakeCredential

        recorded = {(s["image"]["width"], s["image"]["height"]) for s in load_recordings().values()}
        assert set(SIZES) <= recorded, "every contract image needs a recording of its size"
        adapter = AzureUnderstanding.from_endpoints(VISION_ENDPOINT, SAFETY_ENDPOINT, FakeCredential(),
                                                    transport=AzureAIDouble())
    yield adapter
    adapter.close()


def _fraction(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0


def assert_result_shape(task: str, result: dict) -> None:
    """One task's result for a readable image, in the port's shape."""
    assert "error" not in result, result
    if task == "labels":
        assert set(result) <= {"labels", "caption"} and "labels" in result
        labels = result["labels"]
        assert isinstance(labels, list) and len(labels) <= TOP_LABELS
        for label in labels:
            assert set(label) == {"name", "score"} and isinstance(label["name"], str) and label["name"]
            assert _fraction(label["score"])
        scores = [label["score"] for label in labels]
        assert scores == sorted(scores, reverse=True), "labels best first"
        assert isinstance(result.get("caption", ""), str)
    elif task == "moderation":
        assert set(result) == {"scores"} and isinstance(result["scores"], dict) and result["scores"]
        for category, score in result["scores"].items():
            assert isinstance(category, str) and category and _fraction(score)
    elif task == "faces":
        assert set(result) == {"count", "boxes", "detector"} and result["detector"] in ("face", "person")
        assert isinstance(result["count"], int) and result["count"] == len(result["boxes"])
        for found in result["boxes"]:
            assert set(found) == {"box", "score"} and _fraction(found["score"])
            box = found["box"]
            assert len(box) == 4 and all(_fraction(v) for v in box)
            x0, y0, x1, y1 = box
            assert x0 <= x1 and y0 <= y1
    else:
        raise AssertionError(f"no such task: {task}")


def test_the_adapter_implements_the_port(understanding):
    assert isinstance(understanding, ImageUnderstanding)
    assert signature_mismatches(understanding, ImageUnderstanding) == []


@pytest.mark.parametrize("tasks", TASK_SETS, ids=["+".join(t) for t in TASK_SETS])
def test_every_image_gets_every_task_asked_and_only_those(understanding, images, tasks):
    results = understanding.analyze(images, tasks)
    assert isinstance(results, list) and len(results) == len(images)
    for result in results:
        assert set(result) == set(tasks)
        for task in tasks:
            assert_result_shape(task, result[task])


@pytest.mark.parametrize("tasks", TASK_SETS, ids=["+".join(t) for t in TASK_SETS])
def test_an_unreadable_image_is_an_error_for_each_task_and_the_others_are_answered(understanding, images, tasks):
    results = understanding.analyze([images[0], b"not an image", images[1], images[2]], tasks)
    assert len(results) == 4
    bad = results[1]
    assert set(bad) == set(tasks)
    for task in tasks:
        assert set(bad[task]) == {"error"} and isinstance(bad[task]["error"], str) and bad[task]["error"]
    for result in results[:1] + results[2:]:
        assert set(result) == set(tasks)
        for task in tasks:
            assert_result_shape(task, result[task])


def test_results_follow_the_order_of_the_images(understanding, images):
    """Where the unreadable image is, its errors are: whatever the adapter runs in parallel."""
    for position in range(len(images) + 1):
        batch = images[:position] + [b"not an image"] + images[position:]
        results = understanding.analyze(batch, ["labels"])
        assert all(set(r) == {"labels"} for r in results)
        assert ["error" in r["labels"] for r in results] == [i == position for i in range(len(batch))]


def test_no_images_no_results(understanding):
    assert understanding.analyze([], list(TASKS)) == []


def test_models_name_what_answers_each_task(understanding):
    models = understanding.models()
    assert set(models) == set(TASKS)
    for task, info in models.items():
        assert isinstance(info, ModelInfo) and info.task == task
        assert info.name and info.version and info.source
        assert isinstance(info.code_version, str) and len(info.code_version) == 16
        assert info.lineage()["code_version"] == info.code_version
    assert models == understanding.models()  # stable: the assets' code versions come from it
