"""The batch sensor, including every crash point named in its docstring.

A "crash" is simulated the way the daemon experiences it: the tick's result (runs to create, new cursor)
is thrown away, and the next tick starts from the last saved cursor."""

from __future__ import annotations

import json
import time

import pytest
from dagster import DagsterInstance, SensorResult, build_sensor_context, instance_for_test
from tests.support.batches import manifest_of
from tests.support.dagster_internals import create_run_for_test

from orchestration.domain.intake import IntakeItem, upload_batch
from orchestration.devtools.sample import synthetic_photo, jpeg_bytes
from orchestration import wiring
from orchestration.domain.services import Services
from sensors.batch_sensor import INVALID_MANIFEST, evaluate_batch_sensor

LOCK = 1.0


@pytest.fixture
def instance():
    with instance_for_test() as inst:
        yield inst


@pytest.fixture
def res(offline_settings):
    """The ports the sensor gets, as the resources hand them over (the process's shared clients)."""
    s = offline_settings.model_copy(update={"queue_lock_seconds": LOCK})
    return {"queue": wiring.CLIENTS.queue(s), "signal": wiring.CLIENTS.signal(s), "metadata": wiring.CLIENTS.metadata(s)}


def _tick(instance: DagsterInstance, res, cursor=None, *, safety=30.0, now=None, settings=None):
    ctx = build_sensor_context(instance=instance, cursor=cursor)
    return evaluate_batch_sensor(ctx, res["queue"], res["signal"], res["metadata"], safety_poll_seconds=safety, now=now,
                                 settings=settings)


def _upload(services: Services, user="alice"):
    return upload_batch(services, [IntakeItem.from_bytes("a.jpg", jpeg_bytes(synthetic_photo(64, 48, 0, "a")))], user_id=user)


def _create_run(instance, batch_id):
    """What Dagster does with the tick's RunRequest."""
    create_run_for_test(instance, job_name="process_batch", tags={"dagster/run_key": batch_id, "dagster/partition": batch_id})


def test_signalled_batch_becomes_one_run_request_and_message_completes_after_run_exists(instance, res, services):
    batch = _upload(services).batch_id
    result = _tick(instance, res)
    assert isinstance(result, SensorResult)
    [req] = result.run_requests
    assert req.run_key == batch and req.partition_key == batch
    assert req.tags["imgpipe/user_id"] == "alice"
    [add] = result.dynamic_partitions_requests
    assert list(add.partition_keys) == [batch] and add.partitions_def_name == "batches"
    assert services.queue.active_message_count() == 1  # not completed before the run exists

    _create_run(instance, batch)
    second = _tick(instance, res, result.cursor)
    assert not second.run_requests
    assert services.queue.active_message_count() == 0
    assert json.loads(second.cursor)["pending"] == []


def test_the_run_says_whose_batch_it_is_and_its_title_for_operators(instance, res, services):
    """Runs and partitions in the Dagster UI show more than a batch id: the owner's display name (as they
    signed in) and the title, each one printable line, short; no tag for what is not known."""
    photo = [IntakeItem.from_bytes("a.jpg", jpeg_bytes(synthetic_photo(64, 48, 0, "a")))]
    upload_batch(services, photo, user_id="u-123", owner_name="Ann Example <ann@example.com>",
                 metadata={"title": "Holiday\n\x1b[31m" + "x" * 300})
    upload_batch(services, photo, user_id="u-456")  # a script's upload: no title, no display name
    requests = sorted(_tick(instance, res).run_requests, key=lambda r: r.tags["imgpipe/user_id"])
    assert requests[0].tags["imgpipe/owner"] == "Ann Example <ann@example.com>"
    title = requests[0].tags["imgpipe/title"]
    assert title.startswith("Holiday [31mxxx") and len(title) == 120 and title.isprintable()
    assert "imgpipe/owner" not in requests[1].tags and "imgpipe/title" not in requests[1].tags


def test_no_signal_means_no_receive_until_safety_poll(instance, res, services):
    first = _tick(instance, res, now=1000.0)  # nothing yet; records the receive time
    services.queue.send(b"{}", message_id="quiet")  # the local queue raises the signal on send...
    res["signal"].drain()  # ...drop it, to model a lost Event Grid notification
    quiet = _tick(instance, res, first.cursor, now=1010.0)
    assert not quiet.run_requests and quiet.skip_reason and "no new batches" in str(quiet.skip_reason)
    assert services.queue.active_message_count() == 1 and not services.queue.peek_dead_letter()
    due = _tick(instance, res, quiet.cursor, now=1031.0)  # the safety-net poll receives it
    assert not due.run_requests
    [dl] = services.queue.peek_dead_letter()
    assert dl.reason == INVALID_MANIFEST


def test_crash_after_receive_before_tick_returns(instance, res, services):
    batch = _upload(services).batch_id
    _tick(instance, res)  # received and locked, then the daemon dies: result and cursor lost
    assert _tick(instance, res).run_requests == []  # still locked: no second request meanwhile
    time.sleep(LOCK + 0.1)
    res["signal"].notify()
    retry = _tick(instance, res)
    [req] = retry.run_requests
    assert req.run_key == batch
    _create_run(instance, batch)
    _tick(instance, res, retry.cursor)
    assert services.queue.active_message_count() == 0
    assert len(instance.get_run_records()) == 1


def test_crash_after_run_created_before_message_completed(instance, res, services):
    batch = _upload(services).batch_id
    first = _tick(instance, res)
    assert [r.run_key for r in first.run_requests] == [batch]
    _create_run(instance, batch)  # Dagster created the run, then the daemon died before saving the cursor
    time.sleep(LOCK + 0.1)
    after = _tick(instance, res, None, safety=0.01)  # cursor lost; safety poll receives the redelivery
    assert after.run_requests == []  # the run exists: no second run requested
    assert services.queue.active_message_count() == 0  # and the redelivered message is completed
    assert len(instance.get_run_records()) == 1


def test_lock_lost_before_completion_is_harmless(instance, res, services):
    batch = _upload(services).batch_id
    first = _tick(instance, res)
    _create_run(instance, batch)
    time.sleep(LOCK + 0.1)  # the next tick comes too late to complete with this lock
    late = _tick(instance, res, first.cursor, safety=0.01)
    assert late.run_requests == []
    assert services.queue.active_message_count() == 0  # completed through the redelivery path


def test_invalid_manifest_is_dead_lettered_with_reason_and_batch_marked(instance, res, services):
    batch = _upload(services).batch_id
    [msg] = services.queue.receive()
    services.queue.complete(msg)  # replace the good message with a broken one for the same batch
    broken = json.loads(msg.body)
    broken["images"][0]["sha256"] = "not-a-hash"
    services.queue.send(json.dumps(broken).encode(), message_id=batch + "-x")
    result = _tick(instance, res)
    assert not result.run_requests
    [dl] = services.queue.peek_dead_letter()
    assert dl.reason == INVALID_MANIFEST and "sha256" in dl.description
    doc = services.metadata.read("batches", batch, "alice")
    assert doc["status"] == "invalid" and "sha256" in doc["error"]


def test_garbage_message_is_dead_lettered(instance, res, services):
    services.queue.send(b"\x00\xffnot json", message_id="junk")
    _tick(instance, res)
    [dl] = services.queue.peek_dead_letter()
    assert dl.message_id == "junk" and dl.reason == INVALID_MANIFEST


def test_message_id_must_match_batch_id(instance, res, services):
    batch = _upload(services).batch_id
    [msg] = services.queue.receive()
    services.queue.complete(msg)
    services.queue.send(msg.body, message_id="someone-else")
    _tick(instance, res)
    [dl] = services.queue.peek_dead_letter()
    assert "message_id" in dl.description and batch in dl.description


def test_many_batches_in_one_tick_each_get_their_own_run(instance, res, services):
    batches = {_upload(services, user=f"u{i}").batch_id for i in range(5)}
    result = _tick(instance, res)
    assert {r.run_key for r in result.run_requests} == batches
    assert set(result.dynamic_partitions_requests[0].partition_keys) == batches


def test_sensor_definition_runs_with_code_location_resources(instance, offline_settings, monkeypatch, services):
    """The sensor as registered in Definitions (resources bound from IMGPIPE_* settings)."""
    monkeypatch.setenv("IMGPIPE_DATA_DIR", str(offline_settings.data_dir))
    import importlib

    import orchestration.definitions as definitions

    importlib.reload(definitions)
    batch = _upload(services).batch_id
    sensor_def = definitions.defs.resolve_sensor_def("batch_sensor")
    ctx = build_sensor_context(instance=instance, resources=definitions.defs.resources,
                               definitions=definitions.defs)
    result = sensor_def(ctx)
    assert [r.run_key for r in result.run_requests] == [batch]


# -- run pods sized by the batch ---------------------------------------------------------------------


def _queue_manifest(services: Services, images: int) -> str:
    """A batch as intake queues it (only its manifest: the sensor reads nothing else), ``images`` images."""
    manifest = manifest_of(images)
    services.queue.send(manifest.model_dump_json().encode(), message_id=manifest.batch_id)
    return manifest.batch_id


def _pod(requests: dict, limits: dict, workers: int) -> dict:
    return {"container_config": {"resources": {"requests": requests, "limits": limits},
                                 "env": [{"name": "IMGPIPE_WORKERS", "value": str(workers)}]},
            "pod_spec_config": {"nodeSelector": {"imgpipe.io/pool": "runs"},
                                "tolerations": [{"key": "imgpipe.io/runs", "operator": "Equal", "value": "true",
                                                 "effect": "NoSchedule"}]}}


SIZED = {  # images → (band, the run pod's dagster-k8s/config)
    1: ("small", _pod({"cpu": "500m", "memory": "1Gi"}, {"cpu": "1", "memory": "2Gi"}, 1)),
    16: ("medium", _pod({"cpu": "2", "memory": "2Gi"}, {"cpu": "2", "memory": "4Gi"}, 2)),
    2000: ("large", _pod({"cpu": "3", "memory": "6Gi"}, {"cpu": "3", "memory": "8Gi"}, 3)),
}


@pytest.mark.parametrize("images", sorted(SIZED))
def test_on_kubernetes_the_run_pod_is_sized_by_its_batch(instance, res, services, offline_settings, images):
    from dagster_k8s.job import USER_DEFINED_K8S_CONFIG_KEY, get_user_defined_k8s_config

    batch = _queue_manifest(services, images)
    # (a batch that runs in one pod: below the fan-out threshold; fanned out, see the next test)
    k8s = offline_settings.model_copy(update={"run_launcher": "k8s", "fanout_min_images": 5000})
    [req] = _tick(instance, res, settings=k8s).run_requests
    band, pod = SIZED[images]
    assert req.run_key == batch and req.tags["imgpipe/size-band"] == band
    assert json.loads(req.tags[USER_DEFINED_K8S_CONFIG_KEY]) == pod
    assert len(req.tags[USER_DEFINED_K8S_CONFIG_KEY]) < 1000  # a compact tag
    parsed = get_user_defined_k8s_config(req.tags)  # what the K8sRunLauncher reads from the run's tags
    assert parsed.container_config["resources"] == pod["container_config"]["resources"]
    assert parsed.pod_spec_config["node_selector"] == {"imgpipe.io/pool": "runs"}  # (snake_cased)


def test_a_batch_at_the_fanout_threshold_runs_the_fanout_job_with_a_small_coordinating_pod(
        instance, res, services, offline_settings):
    """IMGPIPE_FANOUT_MIN_IMAGES: a batch of that many images or more runs process_batch_fanout, one below it
    process_batch; either way one run per batch (run_key = batch id) and its partition. The fanned-out run's own
    pod only coordinates its step pods: the smallest band, tagged 'fanout'."""
    from sensors.batch_sensor import FANOUT_BAND

    settings = offline_settings.model_copy(update={"run_launcher": "k8s", "fanout_min_images": 16})
    small, large = _queue_manifest(services, 15), _queue_manifest(services, 16)
    ctx = build_sensor_context(instance=instance)
    requests = {r.run_key: r for r in evaluate_batch_sensor(
        ctx, res["queue"], res["signal"], res["metadata"], safety_poll_seconds=30.0, settings=settings,
        jobs=("process_batch", "process_batch_fanout")).run_requests}
    assert {k: (r.job_name, r.partition_key) for k, r in requests.items()} == {
        small: ("process_batch", small), large: ("process_batch_fanout", large)}
    assert requests[small].tags["imgpipe/size-band"] == "medium"
    assert requests[large].tags["imgpipe/size-band"] == FANOUT_BAND
    assert json.loads(requests[large].tags["dagster-k8s/config"]) == SIZED[1][1]  # the smallest band's pod


def test_the_batch_sensor_targets_both_jobs():
    from orchestration.definitions import defs

    sensor_def = defs.resolve_sensor_def("batch_sensor")
    assert sorted(t.job_name for t in sensor_def.targets) == ["process_batch", "process_batch_fanout"]


def test_locally_runs_get_their_band_but_no_kubernetes_config(instance, res, services, offline_settings):
    _queue_manifest(services, 16)
    [req] = _tick(instance, res, settings=offline_settings).run_requests
    assert offline_settings.run_launcher == "local"
    assert req.tags["imgpipe/size-band"] == "medium"
    assert not [t for t in req.tags if t.startswith("dagster-k8s/")]
