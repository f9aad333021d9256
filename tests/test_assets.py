"""The batch assets through Dagster's materialize, with the real local adapters and a real Kafka broker."""

from __future__ import annotations

import io
import json

import pytest
from dagster import DagsterInstance, materialize
from PIL import Image

from assets.batch import batch_asset_checks, batch_assets
from orchestration.partitions import batches_partitions
from orchestration.adapters.kafka.readers import ResultReader
from orchestration.domain.intake import IntakeItem, upload_batch
from orchestration.resources import resources_from_settings
from orchestration.devtools.sample import make_sample_batch
from orchestration.domain.status import batch_status
from orchestration import wiring
from tests.support.results import LakeFailingOn, Recorder


@pytest.fixture
def instance():
    return DagsterInstance.ephemeral()


@pytest.fixture
def uploaded(settings, tmp_path):
    services = wiring.services(settings)
    files = make_sample_batch(tmp_path / "in")
    result = upload_batch(services, [IntakeItem.from_path(p) for p in files], user_id="alice", metadata={"trip": "alps"})
    return services, result


def _run(instance, settings, batch_id, **resource_overrides):
    instance.add_dynamic_partitions(batches_partitions.name, [batch_id])
    resources = {**resources_from_settings(settings), **resource_overrides}
    return materialize(
        [*batch_assets, *batch_asset_checks], partition_key=batch_id, instance=instance, resources=resources,
        raise_on_error=False,
    )


def _events(settings, batch_id):
    reader = ResultReader(settings.kafka_bootstrap, settings.kafka_topic)
    try:
        return [e for _, e in reader.follow(
            lambda k, e: e.get("batch_id") == batch_id and e["type"] == "batch.completed", timeout_seconds=20
        ) if e.get("batch_id") == batch_id]
    finally:
        reader.close()


def test_batch_run_writes_renditions_documents_and_events(instance, settings, uploaded):
    services, upload = uploaded
    batch = upload.batch_id
    result = _run(instance, settings, batch)
    assert result.success

    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"renditions_exist_and_decode": True, "every_image_accounted_for": True,
                      "labels_complete_and_in_range": True, "moderation_complete_and_in_range": True,
                      "faces_complete_and_in_range": True}

    status = batch_status(services, batch, "alice")
    assert status["status"] == "completed"
    outcomes = {i["name"]: i for i in status["images"]}
    assert len(outcomes) == 7
    assert outcomes["truncated.jpg"]["outcome"] == "rejected" and outcomes["truncated.jpg"]["code"] == "corrupt"
    assert outcomes["not_really_a_photo.jpg"]["code"] == "unsupported_type"
    for name in ("photo_01.jpg", "photo_02.jpg", "logo_transparent.png"):
        assert outcomes[name]["outcome"] == "processed"
    # Orientation 6 (photo_02) is applied: stored 1200x1600, renditions come out 1600x1200 landscape.
    made = {(r["name"], r["format"]): r for r in outcomes["photo_02.jpg"]["renditions"]}
    assert set(made) == {(n, f) for n in ("large", "medium", "thumb") for f in ("JPEG", "WEBP")}
    assert (made["large", "JPEG"]["width"], made["large", "JPEG"]["height"]) == (1600, 1200)
    assert (made["thumb", "WEBP"]["width"], made["thumb", "WEBP"]["height"]) == (256, 192)
    for fmt in ("JPEG", "WEBP"):
        with Image.open(io.BytesIO(services.lake.read(made["thumb", fmt]["path"]))) as im:
            assert im.size == (256, 192) and im.format == fmt
            assert not im.getexif()  # metadata stripped

    doc = services.metadata.read("images", "i0002", batch)
    assert doc["user_metadata"] == {"trip": "alps"} and doc["dagster_run_id"] == result.run_id
    assert doc["sha256"] and doc["processing_version"] and doc["facts"]["orientation"] == 6
    assert len(doc["facts"]["phash"]) == 16 and doc["facts"]["blurhash"]

    events = _events(settings, batch)
    assert [e["type"] for e in events].count("batch.completed") == 1
    per_image = [e for e in events if e["type"] in ("image.processed", "image.rejected")]
    assert sorted(e["image_id"] for e in per_image) == [f"i{i:04d}" for i in range(1, 8)]
    # What each processed image shows follows its image.processed, one event per image.
    understood = [e for e in events if e["type"] == "image.understood"]
    assert sorted(e["image_id"] for e in understood) == sorted(
        i["image_id"] for i in status["images"] if i["outcome"] == "processed")
    processed_at = {e["image_id"]: n for n, e in enumerate(events) if e["type"] == "image.processed"}
    assert all(events.index(e) > processed_at[e["image_id"]] for e in understood)
    assert all(len(e["labels"]) == 5 and e["moderation"]["decision"] == "allow" for e in understood)
    assert all(e["user_id"] == "alice" for e in events)
    assert events[-1] == {**events[-1], "processed": 5, "rejected": 2, "status": "completed"}

    mats = result.asset_materializations_for_node("renditions")
    assert mats[0].metadata["processed"].value == 5 and mats[0].metadata["rejected"].value == 2


def test_reexecution_leaves_no_duplicates(instance, settings, uploaded):
    services, upload = uploaded
    batch = upload.batch_id
    assert _run(instance, settings, batch).success
    files_before = sorted(services.lake.list(f"processed/{batch}"))
    assert _run(instance, settings, batch).success
    assert sorted(services.lake.list(f"processed/{batch}")) == files_before
    assert len(list(services.metadata.query("images", partition_key=batch))) == 7
    assert len(list(services.metadata.query("batches", {"batch_id": batch}))) == 1
    events = _events(settings, batch)
    ids = [e["event_id"] for e in events]
    # Acknowledged events are not sent again: the consumer sees each of the 13 once (7 images, 5 understood,
    # batch.completed), not twice.
    assert len(ids) == len(set(ids)) == 13, sorted(ids)


def test_failed_run_can_be_reexecuted(instance, settings, uploaded):
    services, upload = uploaded
    batch = upload.batch_id
    broken = _run(instance, settings, batch, lake=LakeFailingOn(services.lake))
    assert not broken.success
    failed_steps = [e.step_key for e in broken.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failed_steps == ["renditions.merge_chunks"]  # (writing outcomes.json)
    assert len(list(services.metadata.query("images", partition_key=batch))) == 7  # earlier steps landed
    again = _run(instance, settings, batch)
    assert again.success
    assert len(list(services.metadata.query("images", partition_key=batch))) == 7
    events = _events(settings, batch)
    assert events[-1]["type"] == "batch.completed"
    assert len(events) == len({e["event_id"] for e in events}) == 13  # 7 images, 5 understood, completed


def test_each_image_event_is_sent_while_the_batch_is_processing(instance, settings, uploaded):
    """Per-image results stream from the renditions step itself (as each image is done), not after the
    whole batch: materialising only raw_images + renditions already sent all 7 image events; the
    events step then sends only batch.completed."""
    from dagster import AssetSelection

    services, upload = uploaded
    batch = upload.batch_id
    recorder = Recorder()
    instance.add_dynamic_partitions(batches_partitions.name, [batch])
    resources = {**resources_from_settings(settings), "results": recorder}
    first = materialize([*batch_assets, *batch_asset_checks], partition_key=batch, instance=instance,
                        resources=resources, selection=AssetSelection.assets("raw_images", "renditions"))
    assert first.success
    assert sorted(e["type"] for e in recorder.events) == ["image.processed"] * 5 + ["image.rejected"] * 2
    rest = materialize([*batch_assets, *batch_asset_checks], partition_key=batch, instance=instance,
                       resources=resources, selection=AssetSelection.assets("image_documents", "result_events"))
    assert rest.success
    assert [e["type"] for e in recorder.events[7:]] == ["batch.completed"]
    assert len({e["event_id"] for e in recorder.events}) == 8


def test_failed_run_marks_the_batch_failed_through_the_failure_sensor(settings, uploaded):
    from dagster import DagsterEventType, build_run_status_sensor_context, instance_for_test

    from sensors.batch_sensor import build_failure_sensor

    services, upload = uploaded
    batch = upload.batch_id
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(batches_partitions.name, [batch])
        resources = {**resources_from_settings(settings), "lake": LakeFailingOn(services.lake)}
        result = materialize([*batch_assets, *batch_asset_checks], partition_key=batch, instance=instance,
                             resources=resources, raise_on_error=False, tags={"imgpipe/user_id": "alice"})
        assert not result.success
        run = instance.get_run_by_id(result.run_id)
        [failure] = instance.get_records_for_run(result.run_id, of_type=DagsterEventType.RUN_FAILURE).records
        from orchestration.definitions import process_batch_job

        sensor_def = build_failure_sensor(process_batch_job)
        ctx = build_run_status_sensor_context(
            sensor_name="batch_failure_sensor", dagster_event=failure.event_log_entry.dagster_event,
            dagster_instance=instance, dagster_run=run,
            resources={"metadata": resources_from_settings(settings)["metadata"]},
        ).for_run_failure()
        sensor_def(ctx)
    doc = services.metadata.read("batches", batch, "alice")
    assert doc["status"] == "failed" and doc["error"] and doc["dagster_run_id"] == result.run_id


def test_near_duplicates_within_a_batch_and_across_a_users_batches(instance, settings):
    from orchestration.devtools.sample import synthetic_photo, jpeg_bytes

    services = wiring.services(settings)
    photo = synthetic_photo(900, 600, 40, "dup")
    other = synthetic_photo(900, 600, 200, "other").transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    first = upload_batch(services, [IntakeItem.from_bytes("a.jpg", jpeg_bytes(photo, quality=95)),
                                    IntakeItem.from_bytes("a_copy.jpg", jpeg_bytes(photo, quality=60)),
                                    IntakeItem.from_bytes("other.jpg", jpeg_bytes(other))], user_id="alice").batch_id
    assert _run(instance, settings, first).success
    second = upload_batch(services, [IntakeItem.from_bytes("a_small.jpg", jpeg_bytes(photo.resize((450, 300))))],
                          user_id="alice").batch_id
    assert _run(instance, settings, second).success
    stranger = upload_batch(services, [IntakeItem.from_bytes("same.jpg", jpeg_bytes(photo))], user_id="bob").batch_id
    assert _run(instance, settings, stranger).success

    def dups(batch, image_id):
        return [(d["batch_id"], d["image_id"]) for d in services.metadata.read("images", image_id, batch)["near_duplicates"]]

    assert dups(first, "i0001") == [(first, "i0002")]
    assert dups(first, "i0003") == []
    assert set(dups(second, "i0001")) == {(first, "i0001"), (first, "i0002")}
    assert dups(stranger, "i0001") == []  # another user's images are never compared


def test_image_documents_appear_while_the_batch_is_processing(instance, settings, uploaded):
    """After the renditions step alone, each image already has its document (the web page and
    `imgpipe status` fill up as images finish); the batch is still 'processing' until announced."""
    from assets.batch import raw_images, renditions

    services, upload = uploaded
    batch = upload.batch_id
    instance.add_dynamic_partitions(batches_partitions.name, [batch])
    result = materialize([raw_images, renditions], partition_key=batch, instance=instance,
                         resources=resources_from_settings(settings))
    assert result.success
    status = batch_status(services, batch, "alice")
    assert status["status"] == "processing"
    assert sorted(i["outcome"] for i in status["images"]) == ["processed"] * 5 + ["rejected"] * 2


def test_the_rendition_check_catches_edited_and_broken_renditions(instance, settings, uploaded):
    from orchestration.domain import processing

    services, upload = uploaded
    batch = upload.batch_id
    assert _run(instance, settings, batch).success
    checked, problems = processing.check_renditions(services.lake, batch)
    assert checked == 30 and problems == []  # 5 processed images x 3 sizes x 2 formats
    outcome = next(o for o in processing.load_outcomes(services.lake, batch) if o["renditions"])
    large = next(r for r in outcome["renditions"] if r["name"] == "large")
    thumb = next(r for r in outcome["renditions"] if r["name"] == "thumb" and r["format"] == "JPEG")
    services.lake.write(large["path"], services.lake.read(large["path"])[:-10] + b"edited ok!")  # bytes changed
    thumb_bytes = services.lake.read(thumb["path"])
    services.lake.write(thumb["path"], thumb_bytes[: len(thumb_bytes) // 2])  # truncated
    # A WebP rendition (its size read from its header) whose recorded size is not its size.
    from orchestration.domain.manifest import outcomes_path

    stored = json.loads(services.lake.read(outcomes_path(batch)))
    medium = next(r for o in stored["images"] if o["image_id"] == outcome["image_id"] for r in o["renditions"]
                  if r["name"] == "medium" and r["format"] == "WEBP")
    medium["width"] += 1
    services.lake.write(outcomes_path(batch), json.dumps(stored).encode())
    checked, problems = processing.check_renditions(services.lake, batch)
    assert any(large["path"] in p and "sha256" in p for p in problems)
    assert any(thumb["path"] in p for p in problems)
    assert any(medium["path"] in p and f"!= recorded ({medium['width']}, {medium['height']})" in p for p in problems)
    assert len(problems) == 3, problems


def test_a_broker_that_lost_its_log_gets_every_event_back_from_the_documents(instance, settings, uploaded, tmp_path):
    """The local broker keeps its log in memory: after it restarts, `imgpipe dev` publishes every event again,
    rebuilt from the documents — the same events as the run sent, batch.completed last (consumers dedupe by
    id) — including those a run had not yet recorded as acknowledged; nothing for a deleted batch or one
    created before the window, and no batch.completed for a batch whose run is still going."""
    from datetime import datetime, timedelta, timezone

    from orchestration.domain.processing import SENT_FIELD, replay_events
    from orchestration.domain.retention import delete_batch

    services, upload = uploaded
    sent = Recorder()
    assert _run(instance, settings, upload.batch_id, results=sent).success
    assert len(sent.events) == 13
    deleted = upload_batch(services, [IntakeItem.from_path(p) for p in make_sample_batch(tmp_path / "d")],
                           user_id="bob").batch_id
    assert _run(instance, settings, deleted, results=Recorder()).success
    delete_batch(services, deleted, "bob", deleted_by="bob")
    waiting = upload_batch(services, [IntakeItem.from_path(p) for p in make_sample_batch(tmp_path / "n")],
                           user_id="carol").batch_id  # received, no run yet: nothing to give back
    week_ago = datetime.now(timezone.utc) - timedelta(days=7)

    replayed = Recorder()
    assert replay_events(services.metadata, services.lake, replayed, since=week_ago) == 13
    by_id = lambda events: sorted(events, key=lambda e: e["event_id"])  # noqa: E731
    assert by_id(replayed.events) == by_id(sent.events)
    assert replayed.events[-1]["type"] == "batch.completed"
    assert waiting not in {e["batch_id"] for e in replayed.events}

    # A run still going (killed with the broker, say): the events of the images it stored, acknowledged or
    # not (the run's own record of them, events_sent, may lag behind the broker), and no batch.completed.
    doc = services.metadata.read("batches", upload.batch_id, "alice")
    services.metadata.upsert("batches", {**doc, "status": "processing", SENT_FIELD: []})
    midway = Recorder()
    assert replay_events(services.metadata, services.lake, midway, since=week_ago) == 12
    assert {e["type"] for e in midway.events} == {"image.processed", "image.rejected", "image.understood"}
    # Batches created before the window are left out.
    assert replay_events(services.metadata, services.lake, Recorder(),
                         since=datetime.now(timezone.utc) + timedelta(minutes=1)) == 0


def test_one_understanding_asset_is_redone_alone_and_renditions_stay(instance, settings, uploaded, monkeypatch):
    """A new face model: materialising just ``faces`` (what `imgpipe reprocess --asset faces` backfills)
    rewrites the faces results under the new model's version and touches nothing else — no rendition file,
    no other result, no processing-version change."""
    from dagster import AssetSelection

    from orchestration import operate
    from orchestration.settings import load_settings

    services, upload = uploaded
    batch = upload.batch_id
    assert _run(instance, settings, batch).success
    before = {d["id"]: d for d in services.metadata.query("images", partition_key=batch)}
    files = {p: services.lake.read(p) for p in services.lake.list(f"processed/{batch}/")}
    stricter = load_settings(**{**settings.model_dump(), "face_min_score": 0.97})
    again = materialize([*batch_assets, *batch_asset_checks], partition_key=batch, instance=instance,
                        resources={**resources_from_settings(stricter), "results": Recorder()},
                        selection=AssetSelection.assets("faces"))
    assert again.success
    assert {m.asset_key.to_user_string() for m in again.get_asset_materialization_events()
            for m in [m.event_specific_data.materialization]} == {"faces"}
    after = {d["id"]: d for d in services.metadata.query("images", partition_key=batch)}
    assert {p: services.lake.read(p) for p in services.lake.list(f"processed/{batch}/")} == files
    processed = [i for i, d in before.items() if d["outcome"] == "processed"]
    for image_id in processed:
        old, new = before[image_id], after[image_id]
        assert new["faces"]["model"]["settings"]["min_score"] == 0.97 != old["faces"]["model"]["settings"]["min_score"]
        assert new["faces"]["model"]["code_version"] != old["faces"]["model"]["code_version"]
        for key in ("labels", "moderation", "renditions", "processing_version", "dagster_run_id"):
            assert new[key] == old[key], key

    # The backfill `reprocess --asset faces` submits selects that asset alone.
    sent = []

    def fake_graphql(s, query, variables, **kw):
        sent.append(variables)
        if "partitionKeys" in query:
            return {"assetNodeOrError": {"partitionKeys": [batch]}}
        return {"launchPartitionBackfill": {"__typename": "LaunchBackfillSuccess", "backfillId": "bf1"}}

    monkeypatch.setattr(operate, "graphql", fake_graphql)
    assert operate.submit_reprocess(settings, [batch], asset="faces") == "bf1"
    assert sent[-1]["params"]["assetSelection"] == [{"path": ["faces"]}]
    assert operate.submit_reprocess(settings, [batch]) == "bf1"
    assert {"path": ["labels"]} in sent[-1]["params"]["assetSelection"] and len(sent[-1]["params"]["assetSelection"]) == 7
    with pytest.raises(operate.OperateError):
        operate.submit_reprocess(settings, [batch], asset="renditions")


def test_with_understanding_off_batches_complete_without_it(instance, settings, uploaded):
    """IMGPIPE_UNDERSTANDING=off: the understanding assets record that they are off, write nothing, send no
    image.understood event, and their checks pass; the batch completes as before."""
    from orchestration.settings import load_settings

    services, upload = uploaded
    off = load_settings(**{**settings.model_dump(), "understanding": "off"})
    recorder = Recorder()
    instance.add_dynamic_partitions(batches_partitions.name, [upload.batch_id])
    result = materialize([*batch_assets, *batch_asset_checks], partition_key=upload.batch_id, instance=instance,
                         resources={**resources_from_settings(off), "results": recorder})
    assert result.success
    [labels] = [m for m in result.asset_materializations_for_node("understand_images")
                if m.asset_key.to_user_string() == "labels"]
    assert labels.metadata["understanding"].value.startswith("off")
    assert not any(e["type"] == "image.understood" for e in recorder.events)
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["labels_complete_and_in_range"] and checks["faces_complete_and_in_range"]
    assert batch_status(services, upload.batch_id, "alice")["status"] == "completed"
    for doc in services.metadata.query("images", partition_key=upload.batch_id):
        assert not {"labels", "moderation", "faces"} & set(doc)


def test_understood_events_of_a_reprocess_wait_for_the_broker_like_the_others(instance, settings, uploaded):
    """`reprocess --asset faces` with the broker down: result_events does not run in that backfill, so the
    understanding step itself hands the new events to the events sensor (events_pending), and the sensor's
    delivery sends them once the broker is back."""
    from dagster import AssetSelection

    from orchestration.domain.processing import deliver_events, load_manifest
    from orchestration.settings import load_settings
    from tests.support.results import BrokerDown

    services, upload = uploaded
    batch = upload.batch_id
    assert _run(instance, settings, batch, results=Recorder()).success
    assert not services.metadata.read("batches", batch, "alice").get("events_pending")
    stricter = load_settings(**{**settings.model_dump(), "face_min_score": 0.97})
    down = materialize([*batch_assets, *batch_asset_checks], partition_key=batch, instance=instance,
                       resources={**resources_from_settings(stricter), "results": BrokerDown()},
                       selection=AssetSelection.assets("faces"))
    assert down.success
    assert services.metadata.read("batches", batch, "alice")["events_pending"]
    back = Recorder()
    assert deliver_events(services.metadata, back, load_manifest(services.lake, batch)) == 5  # the new ones
    assert {e["type"] for e in back.events} == {"image.understood"}


def test_the_sent_list_holds_short_digests_and_only_the_current_processings_events(instance, settings, uploaded):
    """The batch document's record of acknowledged events stays small enough for a 10,000-image batch under
    Cosmos DB's 2 MB per item: 16 hex digits per event, and after a reprocessing under another version only
    that version's events (each still sent once, the old ones never again)."""
    from orchestration.domain.processing import SENT_FIELD, deliver_events, load_manifest, sent_key
    from orchestration.settings import load_settings

    services, upload = uploaded
    batch = upload.batch_id
    first = Recorder()
    assert _run(instance, settings, batch, results=first).success
    sent = services.metadata.read("batches", batch, "alice")[SENT_FIELD]
    ids = {e["event_id"] for e in first.events}
    assert sorted(sent) == sorted({sent_key(i) for i in ids}) and all(len(k) == 16 for k in sent)
    assert deliver_events(services.metadata, Recorder(), load_manifest(services.lake, batch)) == 0  # all known

    other = load_settings(**{**settings.model_dump(), "webp_method": (settings.webp_method + 1) % 7})
    again = Recorder()
    assert _run(instance, other, batch, results=again).success
    now = set(services.metadata.read("batches", batch, "alice")[SENT_FIELD])
    assert now == {sent_key(e["event_id"]) for e in again.events}  # the first processing's are gone
    assert len([e for e in again.events if e["type"] == "batch.completed"]) == 1
