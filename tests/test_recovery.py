"""Recovery without a human: runs orphaned by a killed stack are failed at start-up (and so retried), failed
runs are retried a bounded number of times, and only then does the batch end 'failed' with the reason."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, build_run_status_sensor_context, materialize
from dagster import instance_for_test
from tests.support.dagster_internals import create_run_for_test
from tests.support.procs import probe
from tests.support.results import LakeFailingOn

from assets.batch import batch_asset_checks, batch_assets
from orchestration.devtools.dagster_home import fail_orphaned_runs, prepare_dagster_home
from orchestration.domain.intake import IntakeItem, upload_batch
from orchestration.partitions import batches_partitions
from orchestration.resources import resources_from_settings
from orchestration.settings import load_settings

def _run_with_worker(home, instance, seconds: float):
    """A STARTED run whose (stand-in) run worker wrote an event and then lives ``seconds`` (with the stack's
    DAGSTER_HOME in its environment, as a real run worker has)."""
    run = create_run_for_test(instance, job_name="process_batch", status=DagsterRunStatus.STARTED)
    proc = subprocess.Popen(probe("stand_in_run_worker", str(home), run.run_id, str(seconds)),
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "DAGSTER_HOME": str(home)})
    assert proc.stdout.readline().strip() == "ready"
    return run, proc


def test_runs_whose_worker_died_are_failed_at_start_up_and_live_ones_kept(tmp_path):
    home = prepare_dagster_home(load_settings(data_dir=tmp_path))
    with DagsterInstance.from_config(str(home)) as instance:
        dead, p1 = _run_with_worker(home, instance, 0)
        p1.wait(timeout=30)
        alive, p2 = _run_with_worker(home, instance, 60)
        never = create_run_for_test(instance, job_name="process_batch", status=DagsterRunStatus.STARTING)
    try:
        assert sorted(fail_orphaned_runs(home)) == sorted([dead.run_id, never.run_id])
        with DagsterInstance.from_config(str(home)) as instance:
            assert instance.get_run_by_id(dead.run_id).status == DagsterRunStatus.FAILURE
            assert instance.get_run_by_id(never.run_id).status == DagsterRunStatus.FAILURE
            assert instance.get_run_by_id(alive.run_id).status == DagsterRunStatus.STARTED
            [failure] = instance.get_records_for_run(dead.run_id, of_type=DagsterEventType.RUN_FAILURE).records
            assert "run worker died" in failure.event_log_entry.dagster_event.message
            assert instance.run_retries_enabled and instance.run_retries_max_retries == 2  # so they are retried
    finally:
        p2.kill()
        p2.wait()


@pytest.mark.parametrize("retry_number,expected", [("0", "retrying"), ("1", "retrying"), ("2", "failed")])
def test_a_failed_run_marks_the_batch_retrying_until_its_retries_are_spent(settings, tmp_path, retry_number, expected):
    from orchestration import wiring
    from orchestration.definitions import process_batch_job
    from orchestration.devtools.sample import jpeg_bytes, synthetic_photo
    from sensors.batch_sensor import build_failure_sensor

    services = wiring.services(settings)
    batch = upload_batch(services, [IntakeItem.from_bytes("a.jpg", jpeg_bytes(synthetic_photo(64, 48, 0, "r")))],
                         user_id="alice").batch_id
    failing = {**resources_from_settings(settings), "lake": LakeFailingOn(services.lake)}
    with instance_for_test(overrides={"run_retries": {"enabled": True, "max_retries": 2}}) as instance:
        instance.add_dynamic_partitions(batches_partitions.name, [batch])
        result = materialize([*batch_assets, *batch_asset_checks], partition_key=batch, instance=instance,
                             resources=failing, raise_on_error=False,
                             tags={"imgpipe/user_id": "alice", "dagster/retry_number": retry_number})
        assert not result.success
        run = instance.get_run_by_id(result.run_id)
        [failure] = instance.get_records_for_run(result.run_id, of_type=DagsterEventType.RUN_FAILURE).records
        ctx = build_run_status_sensor_context(
            sensor_name="batch_failure_sensor", dagster_event=failure.event_log_entry.dagster_event,
            dagster_instance=instance, dagster_run=run,
            resources={"metadata": resources_from_settings(settings)["metadata"]},
        ).for_run_failure()
        build_failure_sensor(process_batch_job)(ctx)
    doc = services.metadata.read("batches", batch, "alice")
    assert doc["status"] == expected and doc["error"]
    if expected == "retrying":
        assert f"attempt {int(retry_number) + 1} of 3" in doc["error"]


def test_the_watchdog_fails_a_run_whose_worker_dies_while_the_stack_runs(tmp_path):
    from orchestration.devtools.dagster_home import RunWatchdog

    home = prepare_dagster_home(load_settings(data_dir=tmp_path))
    with DagsterInstance.from_config(str(home)) as instance:
        dying, p1 = _run_with_worker(home, instance, 0)
        living, p2 = _run_with_worker(home, instance, 60)
    p1.wait(timeout=30)
    try:
        dog = RunWatchdog(home, interval_seconds=0)
        assert dog.check(now=1) == []  # seen dead once: a suspect, not yet failed
        assert dog.check(now=2) == [dying.run_id]  # still dead and STARTED: failed
        assert dog.check(now=3) == []
        with DagsterInstance.from_config(str(home)) as instance:
            assert instance.get_run_by_id(dying.run_id).status == DagsterRunStatus.FAILURE
            assert instance.get_run_by_id(living.run_id).status == DagsterRunStatus.STARTED
    finally:
        p2.kill()
        p2.wait()


def test_a_live_run_worker_is_recognised_though_its_command_line_does_not_say_dagster(tmp_path):
    """Run workers are multiprocessing children of the code server ('python -c from multiprocessing.spawn
    import spawn_main ...'); the watchdog must see them as alive, or it would fail every long run."""
    from orchestration.devtools.dagster_home import _alive_run_worker

    code = ("import multiprocessing as mp, time\n"
            "def work():\n    time.sleep(30)\n"
            "if __name__ == '__main__':\n"
            "    p = mp.get_context('spawn').Process(target=work); p.start(); print(p.pid, flush=True); p.join()\n")
    script = tmp_path / "launcher.py"
    script.write_text(code)
    launcher = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "DAGSTER_HOME": str(tmp_path / "home")})
    worker = None
    try:
        worker = int(launcher.stdout.readline())
        assert b"dagster" not in open(f"/proc/{worker}/cmdline", "rb").read()
        assert _alive_run_worker(worker, tmp_path / "home")
        assert not _alive_run_worker(worker, tmp_path / "another-home")  # another stack's (or a reused pid)
        assert not _alive_run_worker(os.getpid(), tmp_path / "home")
    finally:
        for pid in filter(None, (worker, launcher.pid)):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        launcher.wait()


def test_a_late_failure_sensor_tick_never_undoes_a_completed_retry(settings, tmp_path):
    """Seen under fault injection: the retry completed the batch before the failure sensor's tick for the
    original run; the batch must stay completed."""
    from orchestration import wiring
    from orchestration.definitions import process_batch_job
    from orchestration.devtools.sample import jpeg_bytes, synthetic_photo
    from sensors.batch_sensor import build_failure_sensor

    services = wiring.services(settings)
    batch = upload_batch(services, [IntakeItem.from_bytes("a.jpg", jpeg_bytes(synthetic_photo(64, 48, 0, "r")))],
                         user_id="alice").batch_id
    failing = {**resources_from_settings(settings), "lake": LakeFailingOn(services.lake)}
    with instance_for_test(overrides={"run_retries": {"enabled": True, "max_retries": 2}}) as instance:
        instance.add_dynamic_partitions(batches_partitions.name, [batch])
        failed = materialize([*batch_assets, *batch_asset_checks], partition_key=batch, instance=instance,
                             resources=failing, raise_on_error=False,
                             tags={"imgpipe/user_id": "alice"})
        retry = materialize([*batch_assets, *batch_asset_checks], partition_key=batch, instance=instance,
                            resources=resources_from_settings(settings), tags={"imgpipe/user_id": "alice"})
        assert retry.success and services.metadata.read("batches", batch, "alice")["status"] == "completed"
        [failure] = instance.get_records_for_run(failed.run_id, of_type=DagsterEventType.RUN_FAILURE).records
        ctx = build_run_status_sensor_context(
            sensor_name="batch_failure_sensor", dagster_event=failure.event_log_entry.dagster_event,
            dagster_instance=instance, dagster_run=instance.get_run_by_id(failed.run_id),
            resources={"metadata": resources_from_settings(settings)["metadata"]},
        ).for_run_failure()
        build_failure_sensor(process_batch_job)(ctx)
    assert services.metadata.read("batches", batch, "alice")["status"] == "completed"


class _CompletedBetweenReadAndWrite:
    """The metadata store as the failure sensor sees it while the retry run completes the batch: its first
    read of the batch returns the document as it was, and the completion lands right after that read."""

    def __init__(self, store, complete):
        self._store, self._complete, self.reads = store, complete, 0

    def read(self, container, id, partition_key):
        doc = self._store.read(container, id, partition_key)
        self.reads += 1
        if container == "batches" and self.reads == 1:
            self._complete()
        return doc

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_a_completion_between_the_failure_sensors_read_and_write_is_not_undone(settings, tmp_path):
    """Seen in CI's fault injection with the run queue every 0.25 s: the original run was killed, its retry
    completed the batch while the failure sensor was marking it 'retrying', and the sensor's write (the
    document as it had read it, plus 'retrying') replaced the completion: the batch stayed 'retrying' for
    good with nothing left to run. The sensor's write is now conditional on what it read."""
    from orchestration import wiring
    from orchestration.definitions import process_batch_job
    from orchestration.devtools.sample import jpeg_bytes, synthetic_photo
    from sensors.batch_sensor import build_failure_sensor

    services = wiring.services(settings)
    batch = upload_batch(services, [IntakeItem.from_bytes("a.jpg", jpeg_bytes(synthetic_photo(64, 48, 0, "r")))],
                         user_id="alice").batch_id
    failing = {**resources_from_settings(settings), "lake": LakeFailingOn(services.lake)}
    with instance_for_test(overrides={"run_retries": {"enabled": True, "max_retries": 2}}) as instance:
        instance.add_dynamic_partitions(batches_partitions.name, [batch])
        failed = materialize([*batch_assets, *batch_asset_checks], partition_key=batch, instance=instance,
                             resources=failing, raise_on_error=False,
                             tags={"imgpipe/user_id": "alice"})
        assert services.metadata.read("batches", batch, "alice")["status"] != "completed"

        def retry_completes():
            retry = materialize([*batch_assets, *batch_asset_checks], partition_key=batch, instance=instance,
                                resources=resources_from_settings(settings), tags={"imgpipe/user_id": "alice"})
            assert retry.success

        store = _CompletedBetweenReadAndWrite(services.metadata, retry_completes)
        [failure] = instance.get_records_for_run(failed.run_id, of_type=DagsterEventType.RUN_FAILURE).records
        ctx = build_run_status_sensor_context(
            sensor_name="batch_failure_sensor", dagster_event=failure.event_log_entry.dagster_event,
            dagster_instance=instance, dagster_run=instance.get_run_by_id(failed.run_id),
            resources={"metadata": store},
        ).for_run_failure()
        build_failure_sensor(process_batch_job)(ctx)
    doc = services.metadata.read("batches", batch, "alice")
    assert doc["status"] == "completed" and doc["error"] is None, doc
    assert store.reads == 2  # it read again after its write was refused, and left the completion alone
