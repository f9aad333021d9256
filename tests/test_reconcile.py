"""A reconciled intake: a failed queue send never strands a batch, never makes a second one, and never
shows the user a traceback."""

from __future__ import annotations

import sqlite3
import time

import pytest
from dagster import build_sensor_context, instance_for_test
from tests.support.dagster_internals import create_run_for_test

from orchestration import wiring
from orchestration.devtools.sample import jpeg_bytes, synthetic_photo
from orchestration.domain.intake import IntakeItem, upload_batch
from orchestration.domain.services import Services
from sensors.batch_sensor import evaluate_batch_sensor
from sensors.reconcile_sensor import reconcile

JPEG = jpeg_bytes(synthetic_photo(64, 48, 0, "r"))


class FlakyQueue:
    """The real queue, whose sends fail (as a busy SQLite file or an unreachable namespace does) while
    ``failures`` lasts."""

    def __init__(self, queue, failures: int):
        self._queue, self.failures = queue, failures

    def send(self, *args, **kwargs):
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database is locked")
        return self._queue.send(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._queue, name)


@pytest.fixture
def instance():
    with instance_for_test() as inst:
        yield inst


def _flaky(services: Services, failures: int) -> Services:
    return Services(services.settings, services.lake, services.metadata, FlakyQueue(services.queue, failures))


def _reconcile(instance, s: Services, now: float, max_attempts: int = 3):
    return reconcile(build_sensor_context(instance=instance), s.metadata, s.lake, s.queue, after_seconds=120,
                     max_attempts=max_attempts, now=now)


def test_a_failed_send_is_reported_and_the_reconciler_queues_the_batch_once(services, instance):
    flaky = _flaky(services, failures=1)
    result = upload_batch(flaky, [IntakeItem.from_bytes("a.jpg", JPEG)], user_id="alice")
    assert not result.queued and "database is locked" in result.queue_error
    doc = services.metadata.read("batches", result.batch_id, "alice")
    assert doc["status"] == "received" and "locked" in doc["queue_error"]
    assert services.queue.active_message_count() == 0

    assert _reconcile(instance, flaky, time.time())["waiting"] == 1  # too early: not stuck yet
    assert _reconcile(instance, flaky, time.time() + 130)["requeued"] == 1
    assert services.queue.active_message_count() == 1
    assert _reconcile(instance, flaky, time.time() + 140)["waiting"] == 1  # re-sent just now: waits again
    assert _reconcile(instance, flaky, time.time() + 300)["requeued"] == 1  # still no run: sent again...
    assert services.queue.active_message_count() == 1  # ...and dropped as a duplicate: one message

    tick = evaluate_batch_sensor(build_sensor_context(instance=instance), services.queue,
                                 wiring.CLIENTS.signal(services.settings), services.metadata, safety_poll_seconds=0.01)
    assert [r.run_key for r in tick.run_requests] == [result.batch_id]
    create_run_for_test(instance, job_name="process_batch", tags={"dagster/run_key": result.batch_id})
    assert _reconcile(instance, flaky, time.time() + 1000) == {"requeued": 0, "failed": 0, "waiting": 0}


def test_a_batch_that_never_reaches_the_queue_ends_failed_with_the_reason(services, instance):
    flaky = _flaky(services, failures=100)
    result = upload_batch(flaky, [IntakeItem.from_bytes("a.jpg", JPEG)], user_id="alice")
    now = time.time()
    for attempt in range(3):
        now += 200
        assert _reconcile(instance, flaky, now, max_attempts=3)["requeued"] == 1
    now += 200
    assert _reconcile(instance, flaky, now, max_attempts=3)["failed"] == 1
    doc = services.metadata.read("batches", result.batch_id, "alice")
    assert doc["status"] == "failed" and "3 re-sends" in doc["error"] and "database is locked" in doc["error"]


def test_cli_upload_with_a_busy_queue_gives_the_batch_id_and_no_traceback(offline_settings, monkeypatch, tmp_path,
                                                                         capsys):
    from orchestration import cli

    photo = tmp_path / "a.jpg"
    photo.write_bytes(JPEG)
    real = wiring.CLIENTS.queue(offline_settings)
    monkeypatch.setattr(wiring.CLIENTS, "queue", lambda settings: FlakyQueue(real, failures=1))
    monkeypatch.setenv("IMGPIPE_DATA_DIR", str(offline_settings.data_dir))
    monkeypatch.setenv("IMGPIPE_WORKERS", "2")
    code = cli.main(["upload", str(photo), "--user", "alice"])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err
    batch_id = out.split()[1].rstrip(":")
    assert f"batch {batch_id} is stored" in err and "queued again automatically" in err


def test_cli_upload_with_an_unreachable_store_says_so(offline_settings, monkeypatch, tmp_path, capsys):
    from orchestration import cli

    photo = tmp_path / "a.jpg"
    photo.write_bytes(JPEG)
    metadata = wiring.CLIENTS.metadata(offline_settings)

    def down(*a, **k):
        raise ConnectionError("metadata store unreachable")

    monkeypatch.setattr(type(metadata), "upsert", down)
    monkeypatch.setenv("IMGPIPE_DATA_DIR", str(offline_settings.data_dir))
    monkeypatch.setenv("IMGPIPE_WORKERS", "2")
    code = cli.main(["upload", str(photo), "--user", "alice"])
    err = capsys.readouterr().err
    assert code == 2 and "unreachable" in err and "try again" in err and "Traceback" not in err


def test_operators_list_failed_batches_with_the_reason(services, instance, offline_settings, monkeypatch, capsys):
    from orchestration import cli

    flaky = _flaky(services, failures=100)
    result = upload_batch(flaky, [IntakeItem.from_bytes("a.jpg", JPEG)], user_id="alice")
    now = time.time()
    for _ in range(2):
        now += 200
        _reconcile(instance, flaky, now, max_attempts=1)
    monkeypatch.setenv("IMGPIPE_DATA_DIR", str(offline_settings.data_dir))
    monkeypatch.setenv("IMGPIPE_WORKERS", "2")
    assert cli.main(["failed", "--json"]) == 0
    import json

    [row] = json.loads(capsys.readouterr().out)
    assert row["batch_id"] == result.batch_id and row["status"] == "failed" and "re-sends" in row["error"]
