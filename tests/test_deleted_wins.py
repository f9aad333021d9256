"""Deleting a batch that is queued or running sticks ("deleted wins"), restore puts an unfinished batch back
in the queue and it completes; a broker outage never fails a processed batch (the events sensor delivers
later). Real assets, real local adapters, runs through Dagster's materialize and the real sensors."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from dagster import DagsterRunStatus, build_sensor_context, instance_for_test, materialize

from assets.batch import batch_asset_checks, batch_assets
from orchestration import wiring
from orchestration.devtools.sample import jpeg_bytes, synthetic_photo
from orchestration.domain import retention
from orchestration.domain.batches import BatchDeleted, change_batch, parse_run_key, run_key
from orchestration.domain.intake import IntakeItem, upload_batch
from orchestration.domain.status import batch_status
from orchestration.partitions import batches_partitions
from orchestration.resources import resources_from_settings
from orchestration.settings import load_settings
from sensors.batch_sensor import build_failure_sensor, evaluate_batch_sensor
from sensors.deletion_sensor import build_deletion_sensor, stop_deleted
from sensors.events_sensor import deliver_pending
from tests.support.dagster_internals import create_run_for_test
from tests.support.results import BrokerDown

N = 6


class Recorder:
    """A ResultStream that records what it was given; ``on_publish`` runs before each event is kept."""

    def __init__(self, on_publish=None):
        self.events: list[dict] = []
        self.on_publish = on_publish

    def publish(self, key, event):
        if self.on_publish:
            self.on_publish(event)
        self.events.append(dict(event))

    def flush(self, timeout_seconds=30.0):
        pass

    def close(self):
        pass


@pytest.fixture
def instance():
    with instance_for_test() as inst:
        yield inst


@pytest.fixture
def batch(offline_settings):
    services = wiring.services(offline_settings)
    photos = [IntakeItem.from_bytes(f"p{i}.jpg", jpeg_bytes(synthetic_photo(320, 240, i * 40, str(i)))) for i in range(N)]
    return services, upload_batch(services, photos, user_id="ann").batch_id


def _run(instance, settings, batch_id, results, **tags):
    instance.add_dynamic_partitions(batches_partitions.name, [batch_id])
    resources = {**resources_from_settings(settings), "results": results}
    return materialize([*batch_assets, *batch_asset_checks], partition_key=batch_id, instance=instance,
                       resources=resources, raise_on_error=False, tags=tags)


def _live_objects(services, batch_id):
    return [p for prefix in (f"raw/{batch_id}/", f"processed/{batch_id}/") for p in services.lake.list(prefix)]


ASSETS = {"raw_images", "renditions", "image_documents", "result_events"}


def _steps(result, kind):
    """The batch assets with steps with events of ``kind`` (their asset checks left out; renditions' steps are
    its graph's ops, renditions.plan_chunks etc.)."""
    return sorted({e.step_key.split(".")[0] for e in result.all_events
                   if e.event_type_value == kind and e.step_key and e.step_key.split(".")[0] in ASSETS})


def test_a_batch_deleted_while_its_run_processes_stops_and_nothing_written_after_survives(
        instance, offline_settings, batch):
    services, batch_id = batch
    # The person deletes the batch from the page as the run streams its 3rd result.
    def delete_at_third(event):
        if len(recorder.events) == 2:
            retention.delete_batch(services, batch_id, "ann", deleted_by="ann")
    recorder = Recorder(delete_at_third)
    result = _run(instance, offline_settings, batch_id, recorder, **{"dagster/run_key": batch_id})

    assert result.success  # the run stops: no failure, so no retry and no failure sensor
    # (the chunk that saw the delete ended without output: renditions' merge step and everything after are skipped)
    assert _steps(result, "STEP_SKIPPED") == ["image_documents", "renditions", "result_events"]
    assert "renditions.merge_chunks" in {e.step_key for e in result.all_events if e.event_type_value == "STEP_SKIPPED"}
    assert len(recorder.events) < N  # it did not go on to process the whole batch
    doc = services.metadata.read("batches", batch_id, "ann")
    assert doc["status"] == "deleted" and doc["status_before_delete"] == "processing"
    images = list(services.metadata.query("images", partition_key=batch_id))
    assert images and all(d.get("deleted") and 0 < d["ttl"] <= 7 * 86400 for d in images)  # in the trash
    assert _live_objects(services, batch_id) == []  # renditions written after the delete were trashed too
    assert [d["batch_id"] for d in retention.recently_deleted(services, "ann")] == [batch_id]

    # Not while its run is being stopped; once the deletion sensor has seen it stop (and swept), restore
    # puts it back in the queue under its next run key; the sensor requests that run; it completes.
    with pytest.raises(retention.RetentionError, match="still stopping"):
        retention.restore_batch(services, batch_id, "ann")
    assert stop_deleted(build_sensor_context(instance=instance), services.metadata, services.lake,
                        lambda ids: {})["swept"] == 1
    restored = retention.restore_batch(services, batch_id, "ann")
    assert restored["status"] == "received" and restored["generation"] == 1 and restored["missing"] == []
    ctx = build_sensor_context(instance=instance)
    tick = evaluate_batch_sensor(ctx, services.queue, wiring.CLIENTS.signal(offline_settings), services.metadata,
                                 safety_poll_seconds=0)
    assert [r.run_key for r in tick.run_requests] == [run_key(batch_id, 1)] == [f"{batch_id}~1"]
    again = _run(instance, offline_settings, batch_id, Recorder(), **{"dagster/run_key": f"{batch_id}~1"})
    assert again.success
    status = batch_status(services, batch_id, "ann")
    assert status["status"] == "completed" and [i["outcome"] for i in status["images"]] == ["processed"] * N
    assert not any(d.get("deleted") for d in services.metadata.query("images", partition_key=batch_id))


def test_a_batch_deleted_while_queued_gets_no_run_and_a_run_that_starts_anyway_writes_nothing(
        instance, offline_settings, batch):
    services, batch_id = batch
    retention.delete_batch(services, batch_id, "ann", deleted_by="ann")
    ctx = build_sensor_context(instance=instance)
    tick = evaluate_batch_sensor(ctx, services.queue, wiring.CLIENTS.signal(offline_settings), services.metadata,
                                 safety_poll_seconds=0)
    assert tick.run_requests == []  # nothing launched for a deleted batch (and its message is settled)
    assert services.queue.receive(max_messages=10) == []

    # A run that was already queued when the delete came and starts anyway: it stops at its first step.
    result = _run(instance, offline_settings, batch_id, Recorder())
    assert result.success and _steps(result, "STEP_SKIPPED") == ["image_documents", "renditions", "result_events"]
    assert list(services.metadata.query("images", partition_key=batch_id)) == []
    assert services.metadata.read("batches", batch_id, "ann")["status"] == "deleted"
    stop_deleted(ctx, services.metadata, services.lake, lambda ids: {})
    assert retention.restore_batch(services, batch_id, "ann")["status"] == "received"


def test_no_writer_undoes_a_delete(instance, offline_settings, batch):
    """The failure sensor, the reconciler's path and the run's status writes all refuse a deleted batch."""
    services, batch_id = batch
    result = _run(instance, offline_settings, batch_id, Recorder())
    retention.delete_batch(services, batch_id, "ann", deleted_by="ann")
    with pytest.raises(BatchDeleted):
        change_batch(services.metadata, batch_id, "ann", lambda d: {**d, "status": "completed"})

    from dagster import DagsterEventType, build_run_status_sensor_context
    from orchestration.definitions import process_batch_job

    failing = _run(instance, offline_settings, batch_id, Recorder(), **{"imgpipe/user_id": "ann"})
    assert failing.success  # (deleted: it stops; the failure sensor is fed the earlier run's record instead)
    run = instance.get_run_by_id(result.run_id)
    [event] = instance.get_records_for_run(result.run_id, of_type=DagsterEventType.RUN_SUCCESS).records
    ctx = build_run_status_sensor_context(
        sensor_name="batch_failure_sensor", dagster_event=event.event_log_entry.dagster_event, dagster_instance=instance,
        dagster_run=run, resources={"metadata": services.metadata}).for_run_failure()
    build_failure_sensor(process_batch_job)(ctx)
    assert services.metadata.read("batches", batch_id, "ann")["status"] == "deleted"


def test_the_deletion_sensor_terminates_the_runs_of_a_deleted_batch_then_sweeps(instance, offline_settings, batch):
    services, batch_id = batch
    queued = create_run_for_test(instance, job_name="process_batch", status=DagsterRunStatus.STARTED,
                                 tags={"dagster/partition": batch_id, "dagster/run_key": batch_id})
    create_run_for_test(instance, job_name="process_batch", status=DagsterRunStatus.SUCCESS,
                        tags={"dagster/partition": "b-other"})
    retention.delete_batch(services, batch_id, "ann", deleted_by="ann")
    # A write that landed after the delete's own sweep (a run between its check and its write).
    services.lake.write(f"processed/{batch_id}/late.webp", b"late")
    asked: list[list[str]] = []
    ctx = build_sensor_context(instance=instance)
    assert stop_deleted(ctx, services.metadata, services.lake, lambda ids: asked.append(ids) or {}) == \
        {"stopping": 1, "swept": 0}
    assert asked == [[queued.run_id]]
    assert services.lake.exists(f"processed/{batch_id}/late.webp")  # not while a run may still write

    instance.report_run_canceled(queued)  # what the run coordinator does with the termination
    assert stop_deleted(ctx, services.metadata, services.lake, lambda ids: asked.append(ids) or {}) == \
        {"stopping": 0, "swept": 1}
    assert not services.lake.exists(f"processed/{batch_id}/late.webp")
    assert services.lake.list_deleted(f"processed/{batch_id}/late.webp")  # in the trash, restorable
    assert services.metadata.read("batches", batch_id, "ann")["cleanup_pending"] is False
    assert stop_deleted(ctx, services.metadata, services.lake, lambda ids: {}) == {"stopping": 0, "swept": 0}


def test_the_deletion_sensor_records_a_delete_and_a_restore_on_the_batch_partitions(instance, offline_settings,
                                                                                    batch):
    """The Dagster UI does not show a deleted batch as plain "Materialized": each of its partitions gets an
    observation saying who deleted it and until when it can be restored, and another when it is restored.
    Each is recorded once: the mark is cleared on the tick after Dagster stored the observations."""
    from dagster import AssetKey

    services, batch_id = batch
    keys = [AssetKey("renditions"), AssetKey("image_documents")]
    sensor = build_deletion_sensor(settings=offline_settings, asset_keys=keys)

    def tick(cursor):
        ctx = build_sensor_context(instance=instance, cursor=cursor,
                                   resources={"metadata": services.metadata, "lake": services.lake})
        return sensor(ctx)

    assert tick(None).asset_events == []  # nothing deleted: nothing to say
    retention.delete_batch(services, batch_id, "ann", deleted_by="ann")
    first = tick(None)
    assert sorted((e.asset_key.path[0], e.partition) for e in first.asset_events) == \
        [("image_documents", batch_id), ("renditions", batch_id)]
    about = first.asset_events[0].metadata
    assert about["state"].value == "deleted" and about["deleted_by"].value == "ann"
    assert about["restorable_until"].value.startswith(str((datetime.now(timezone.utc) + timedelta(days=7)).date()))
    second = tick(first.cursor)
    assert second.asset_events == []  # said once; the mark is cleared now that Dagster has stored it
    assert retention.PARTITION_NOTE not in services.metadata.read("batches", batch_id, "ann")

    retention.restore_batch(services, batch_id, "ann")
    third = tick(second.cursor)
    assert {e.metadata["state"].value for e in third.asset_events} == {"restored"} and len(third.asset_events) == 2
    assert tick(third.cursor).asset_events == []

    # Delete, Undo and delete again (by an operator) between two ticks: the last delete is recorded, by its
    # own author and time, though the tick clears the delete it recorded before.
    retention.delete_batch(services, batch_id, "ann", deleted_by="ann")
    fourth = tick(None)
    retention.restore_batch(services, batch_id, "ann")
    again = retention.delete_batch(services, batch_id, None, deleted_by="ops")
    fifth = tick(fourth.cursor)
    assert {(e.metadata["state"].value, e.metadata["deleted_by"].value) for e in fifth.asset_events} == {
        ("deleted", "ops")} and fifth.asset_events[0].metadata["deleted_at"].value == again["deleted_at"]
    assert tick(fifth.cursor).asset_events == []


def test_run_keys_of_later_generations():
    assert run_key("b-1", 0) == "b-1" and parse_run_key("b-1") == ("b-1", 0)
    assert parse_run_key(run_key("b-1", 3)) == ("b-1", 3)
    with pytest.raises(ValueError):
        parse_run_key("b-1~x")


def test_a_broker_outage_does_not_fail_a_processed_batch_and_its_events_arrive_later(instance, offline_settings, batch):
    services, batch_id = batch
    result = _run(instance, offline_settings, batch_id, BrokerDown())
    assert result.success
    status = batch_status(services, batch_id, "ann")
    assert status["status"] == "completed"
    assert status["events"]["state"] == "pending" and "not reachable" in status["events"]["error"]

    ctx = build_sensor_context(instance=instance)
    later = datetime.now(timezone.utc) + timedelta(minutes=1)
    counts = deliver_pending(ctx, services.metadata, services.lake, BrokerDown(), give_up_hours=24,
                             now=later.timestamp())
    assert counts["failed"] == 1
    assert batch_status(services, batch_id, "ann")["events"]["attempts"] == 1
    back = Recorder()
    assert deliver_pending(ctx, services.metadata, services.lake, back, give_up_hours=24,
                           now=later.timestamp() + 5)["waiting"] == 1  # a pause between attempts
    assert deliver_pending(ctx, services.metadata, services.lake, back, give_up_hours=24,
                           now=later.timestamp() + 60)["delivered"] == 1
    assert [e["type"] for e in back.events] == ["image.processed"] * N + ["image.understood"] * N + ["batch.completed"]
    assert batch_status(services, batch_id, "ann")["events"]["state"] == "delivered"
    assert deliver_pending(ctx, services.metadata, services.lake, back, give_up_hours=24,
                           now=later.timestamp() + 3600) == {"delivered": 0, "failed": 0, "given_up": 0, "waiting": 0}


def test_undeliverable_events_are_given_up_after_the_bound(instance, offline_settings, batch):
    services, batch_id = batch
    assert _run(instance, offline_settings, batch_id, BrokerDown()).success
    ctx = build_sensor_context(instance=instance)
    far = (datetime.now(timezone.utc) + timedelta(hours=25)).timestamp()
    assert deliver_pending(ctx, services.metadata, services.lake, BrokerDown(), give_up_hours=24, now=far)["given_up"] == 1
    events = batch_status(services, batch_id, "ann")["events"]
    assert events["state"] == "given up" and "not reachable" in events["error"]


def test_restore_says_what_could_not_be_restored_and_keeps_the_retention_of_the_delete(offline_settings, batch):
    from orchestration.adapters.local.lake import LocalLake
    from orchestration.domain.services import Services

    services, batch_id = batch
    t0 = datetime.now(timezone.utc)
    retention.delete_batch(services, batch_id, "ann", deleted_by="ann", now=t0)
    # The retention setting is shortened after the delete: what was deleted keeps the 7 days it was given.
    short = LocalLake(offline_settings.lake_dir, soft_delete_days=1)
    assert short.purge_expired(t0 + timedelta(days=2)) == 0
    # Past the lake's own retention (its objects purged), the batch document can still be restored: it says so.
    assert short.purge_expired(t0 + timedelta(days=8)) == N + 1
    with instance_for_test() as instance:  # (its deletion sensor pass: no run to stop)
        stop_deleted(build_sensor_context(instance=instance), services.metadata, short, lambda ids: {})
    restored = retention.restore_batch(Services(services.settings, short, services.metadata, services.queue),
                                       batch_id, "ann", now=t0 + timedelta(days=6))
    assert f"raw/{batch_id}/manifest.json" in restored["missing"] and len(restored["missing"]) == N + 1
    assert restored["status"] == "failed" and "could not be restored" in retention.restore_outcome(restored)


def test_a_message_of_an_earlier_generation_starts_no_run(instance, offline_settings, batch):
    """Deleted and restored while its first message still waited on the queue: both messages arrive, only the
    current generation's becomes a run."""
    services, batch_id = batch
    retention.delete_batch(services, batch_id, "ann", deleted_by="ann")
    stop_deleted(build_sensor_context(instance=instance), services.metadata, services.lake, lambda ids: {})
    assert retention.restore_batch(services, batch_id, "ann")["generation"] == 1
    tick = evaluate_batch_sensor(build_sensor_context(instance=instance), services.queue,
                                 wiring.CLIENTS.signal(offline_settings), services.metadata, safety_poll_seconds=0)
    assert [r.run_key for r in tick.run_requests] == [f"{batch_id}~1"]


def test_a_restored_batch_takes_a_slot_of_the_users_quota_again(tmp_path):
    services = wiring.services(load_settings(data_dir=tmp_path, max_batches_in_flight=1))
    photo = IntakeItem.from_bytes("a.jpg", jpeg_bytes(synthetic_photo(64, 48, 0, "q")))
    first = upload_batch(services, [photo], user_id="ann").batch_id
    retention.delete_batch(services, first, "ann", deleted_by="ann")  # frees its slot...
    with instance_for_test() as instance:
        stop_deleted(build_sensor_context(instance=instance), services.metadata, services.lake, lambda ids: {})
    upload_batch(services, [photo], user_id="ann")  # ...which a new upload takes
    with pytest.raises(retention.RetentionError, match="IMGPIPE_MAX_BATCHES_IN_FLIGHT"):
        retention.restore_batch(services, first, "ann")  # so the deleted one cannot go back in flight now


def test_a_run_cancelled_in_the_dagster_ui_ends_its_batch_failed_and_frees_the_slot(instance, offline_settings, batch):
    from dagster import DagsterEventType, build_run_status_sensor_context

    from orchestration.definitions import process_batch_job
    from sensors.batch_sensor import build_cancel_sensor

    services, batch_id = batch
    change_batch(services.metadata, batch_id, "ann", lambda d: {**d, "status": "processing"})

    def cancel_and_tell_the_sensor():
        run = create_run_for_test(instance, job_name="process_batch", status=DagsterRunStatus.STARTED,
                                  tags={"dagster/partition": batch_id, "imgpipe/user_id": "ann"})
        instance.report_run_canceled(run)
        [event] = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.RUN_CANCELED).records
        ctx = build_run_status_sensor_context(
            sensor_name="batch_cancel_sensor", dagster_event=event.event_log_entry.dagster_event,
            dagster_instance=instance, dagster_run=instance.get_run_by_id(run.run_id),
            resources={"metadata": services.metadata})
        build_cancel_sensor(process_batch_job)(ctx)

    cancel_and_tell_the_sensor()
    doc = services.metadata.read("batches", batch_id, "ann")
    assert doc["status"] == "failed" and "was cancelled" in doc["error"] and "imgpipe reprocess" in doc["error"]
    change_batch(services.metadata, batch_id, "ann", lambda d: {**d, "status": "processing"})  # reprocessed
    retention.delete_batch(services, batch_id, "ann", deleted_by="ann")
    cancel_and_tell_the_sensor()  # a run of a deleted batch cancelled (by the deletion sensor): still deleted
    assert services.metadata.read("batches", batch_id, "ann")["status"] == "deleted"
    stop_deleted(build_sensor_context(instance=instance), services.metadata, services.lake, lambda ids: {})
    retention.restore_batch(services, batch_id, "ann")
    cancel_and_tell_the_sensor()  # that cancellation read only after the restore: generation 0, not the current
    assert services.metadata.read("batches", batch_id, "ann")["status"] == "received"


def test_two_sweeps_racing_over_the_same_object_both_end_quietly(tmp_path, monkeypatch):
    """The run's own sweep and the deletion sensor's can reach one object at once: the one that loses the race
    hears ObjectNotFound (which a sweep skips), not FileNotFoundError (which failed the run's step)."""
    from pathlib import Path

    from orchestration.adapters.local.lake import LocalLake
    from orchestration.ports.lake import ObjectNotFound

    lake = LocalLake(tmp_path / "lake")
    lake.write("processed/b/i1/thumb.jpg", b"x")
    real_is_file = Path.is_file
    lake.delete("processed/b/i1/thumb.jpg")  # the other sweep got there first...
    monkeypatch.setattr(Path, "is_file", lambda self: True if self.name == "thumb.jpg" else real_is_file(self))
    with pytest.raises(ObjectNotFound):  # ...after this one had looked
        lake.delete("processed/b/i1/thumb.jpg")
    assert len(lake.list_deleted("processed/b/")) == 1  # no empty trash entry left behind


def test_documents_written_in_parallel_stop_when_the_batch_is_deleted(offline_settings, batch):
    """image_documents writes many documents at a time (two round trips each); a delete in the middle stops
    what has not started, raises BatchDeleted, and leaves each written document in the trash."""
    from orchestration.domain.batches import write_images

    services, batch_id = batch

    class Deleting:
        def __init__(self, store, at):
            self.store, self.at, self.upserts = store, at, 0

        def upsert(self, container, doc):
            self.upserts += 1
            if self.upserts == self.at:
                retention.delete_batch(services, batch_id, "ann", deleted_by="ann")
            return self.store.upsert(container, doc)

        def __getattr__(self, name):
            return getattr(self.store, name)

    docs = [{"id": f"x{n:04d}", "image_id": f"x{n:04d}", "batch_id": batch_id, "user_id": "ann", "outcome": "processed"}
            for n in range(200)]
    write_images(services.metadata, docs[:50])
    assert len([d for d in services.metadata.query("images", partition_key=batch_id) if d["id"].startswith("x")]) == 50
    store = Deleting(services.metadata, at=10)
    with pytest.raises(BatchDeleted):
        write_images(store, docs, parallel=4)
    assert store.upserts < 40  # not the other 160+: what had not started was cancelled
    written = [d for d in services.metadata.query("images", partition_key=batch_id) if d["id"].startswith("x")]
    assert written and all(d.get("deleted") for d in written)
