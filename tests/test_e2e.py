"""End to end on the real local stack: `imgpipe dev` starts the Kafka broker and Dagster (webserver
+ daemon running the batch sensor); a batch goes in through intake and comes out on Kafka."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from PIL import Image

from orchestration.devtools import processes
from orchestration.domain.intake import IntakeItem, upload_batch
from orchestration.devtools.sample import make_sample_batch
from orchestration.domain.status import batch_status
from orchestration import wiring
from orchestration.wiring import build_reader
from tests.support.procs import alive, cmdline
from tests.support.stack import DevStack, local_env, settings_from

pytestmark = pytest.mark.stack


@pytest.fixture(params=["local", "emulated"])
def stack_env(request, tmp_path):
    """The stack's environment for each profile. 'emulated' runs the Azure adapters against Azurite and
    cosmosdb-server (started by `.ci/run` or the session fixtures, by PID)."""
    env = local_env(tmp_path, IMGPIPE_PROFILE=request.param)  # no web app: it has its own browser tests
    kafka_port = env["IMGPIPE_KAFKA_BOOTSTRAP"].rpartition(":")[2]
    if request.param == "emulated":
        from orchestration.devtools.emulators import COSMOS_DEV_KEY

        env.update(
            IMGPIPE_STORAGE_CONNECTION_STRING=request.getfixturevalue("azurite_connection_string"),
            IMGPIPE_COSMOS_ENDPOINT=request.getfixturevalue("cosmos_endpoint"),
            IMGPIPE_COSMOS_KEY=COSMOS_DEV_KEY,
            IMGPIPE_COSMOS_VERIFY_TLS="false",
            IMGPIPE_COSMOS_DATABASE=f"e2e{kafka_port}",
            IMGPIPE_LAKE_CONTAINER=f"lake{kafka_port}",
            IMGPIPE_SIGNAL_QUEUE=f"signals{kafka_port}",
        )
    return env


def test_batch_through_real_daemon_and_kafka(stack_env, tmp_path):
    proc = DevStack(stack_env, "--no-sample")
    try:
        proc.wait_for("Press Ctrl-C", 180)
        settings = settings_from(stack_env)
        services = wiring.services(settings)
        files = make_sample_batch(tmp_path / "in")  # 4 photos, a PNG, a truncated JPEG, text named .jpg
        upload = upload_batch(services, [IntakeItem.from_path(p) for p in files], user_id="erin",
                              metadata={"album": "e2e"})

        reader = build_reader(settings)
        try:
            events = [e for _, e in reader.follow(
                lambda k, e: e.get("batch_id") == upload.batch_id and e["type"] == "batch.completed",
                timeout_seconds=120,
            ) if e.get("batch_id") == upload.batch_id]
        finally:
            reader.close()

        done = events[-1]
        assert (done["type"], done["processed"], done["rejected"]) == ("batch.completed", 5, 2)
        assert len(events) == 13 and all(e["user_id"] == "erin" for e in events)  # 7 images, 5 understood, done

        status = batch_status(services, upload.batch_id, "erin")
        assert status["status"] == "completed"
        by_name = {i["name"]: i for i in status["images"]}
        assert by_name["truncated.jpg"]["outcome"] == "rejected" and by_name["truncated.jpg"]["code"] == "corrupt"
        assert by_name["not_really_a_photo.jpg"]["outcome"] == "rejected"
        assert "text/plain" in by_name["not_really_a_photo.jpg"]["reason"]
        processed = [i for i in status["images"] if i["outcome"] == "processed"]
        assert len(processed) == 5
        for img in processed:
            assert sorted((r["name"], r["format"]) for r in img["renditions"]) == [
                (n, f) for n in ("large", "medium", "thumb") for f in ("JPEG", "WEBP")]
            for r in img["renditions"]:
                with Image.open(io.BytesIO(services.lake.read(r["path"]))) as im:
                    im.load()
                    assert im.size == (r["width"], r["height"])
            doc = services.metadata.read("images", img["image_id"], upload.batch_id)
            assert doc["user_metadata"] == {"album": "e2e"} and doc["sha256"] and doc["dagster_run_id"]
            # What it shows, from the real models in the run worker: labels, moderation and faces, each
            # with its model's digest.
            assert len(doc["labels"]["labels"]) == 5 and doc["moderation"]["decision"] == "allow"
            assert doc["faces"]["count"] == 0 and doc["labels"]["model"]["sha256"]
        understood = {e["image_id"]: e for e in events if e["type"] == "image.understood"}
        assert sorted(understood) == sorted(i["image_id"] for i in processed)
        for img in processed:
            assert [x["name"] for x in understood[img["image_id"]]["labels"]] == [x["name"] for x in img["labels"]]

        # The daily BI export, run by the daemon (a backfill of today's partition, as from the UI): the labels
        # table holds each processed image's five labels.
        import pandas as pd

        from assets.analytics import labels_path
        from orchestration import operate

        day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        launched = operate.graphql(settings, operate.LAUNCH_BACKFILL, {"params": {
            "partitionNames": [day], "assetSelection": [{"path": ["image_facts_daily"]}]}})["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        deadline = time.monotonic() + 120
        while not services.lake.exists(labels_path(day)) and time.monotonic() < deadline:
            time.sleep(1)
        labels = pd.read_parquet(io.BytesIO(services.lake.read(labels_path(day))))
        mine = labels[labels["batch_id"] == upload.batch_id]
        assert len(mine) == 5 * 5 and set(mine["image_id"]) == set(understood)

        # A second shell that knows only the data dir reaches the same stack (in 'emulated' the endpoints
        # of the emulators come from <data_dir>/stack.json, which `imgpipe dev` wrote).
        second_shell = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
                        "IMGPIPE_DATA_DIR": stack_env["IMGPIPE_DATA_DIR"]}
        cli = subprocess.run([sys.executable, "-m", "orchestration.cli", "status", upload.batch_id, "--json"],
                             env=second_shell, capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout)["status"] == "completed"

        # The run was launched by the daemon's sensor, keyed by the batch id, and succeeded.
        from dagster import DagsterInstance, DagsterRunStatus

        with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
            run = instance.get_run_by_id(status["dagster_run_id"])
            assert run.tags["dagster/run_key"] == upload.batch_id
            assert run.tags["dagster/sensor_name"] == "batch_sensor"
            assert run.tags["dagster/partition"] == upload.batch_id
            deadline = time.monotonic() + 30
            while run.status != DagsterRunStatus.SUCCESS and time.monotonic() < deadline:
                time.sleep(0.5)
                run = instance.get_run_by_id(run.run_id)
            assert run.status == DagsterRunStatus.SUCCESS
            # Its image workers were forked by the code server's image worker server, not by a forkserver
            # the run started (assets/core/worker_server.py), and the renditions say so.
            from dagster import AssetKey

            materialization = instance.get_latest_materialization_event(AssetKey("renditions")).asset_materialization
            assert materialization.partition == upload.batch_id
            assert materialization.metadata["image_workers_from"].value == "the image worker server"  # no socket path
        # The sensor completes the queue message on its first tick after the run exists (a tick every
        # 1 s under the dev tuning, 5 s with Dagster's own loop).
        deadline = time.monotonic() + 20
        while services.queue.active_message_count() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert services.queue.active_message_count() == 0
        assert services.queue.peek_dead_letter() == []
        # `upload --wait` from that shell, as the person who signs in as alice+x@example.com: it returns when
        # the batch has ended, with the outcome in its last line and its exit code (3: some image rejected).
        waited = subprocess.run([sys.executable, "-m", "orchestration.cli", "upload", str(files[0]), str(files[-1]),
                                 "--user", "alice+x@example.com", "--wait", "--timeout", "120"],
                                env=second_shell, capture_output=True, text=True, timeout=180)
        assert waited.returncode == 3, waited.stdout + waited.stderr
        assert "completed — 1 processed · 1 rejected (of 2)" in waited.stdout.splitlines()[-1]
    finally:
        children = proc.children()
        proc.stop(timeout=60)
        out = proc.output
    assert proc.returncode == 0, out
    assert "stopped Kafka broker" in out and "stopped Dagster daemon" in out and "stopped Dagster webserver" in out
    deadline = time.monotonic() + 15
    while any(alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.25)
    left = {p: cmdline(p) for p in children if alive(p)}
    assert left == {}, f"processes left running after Ctrl-C: {left}"  # everything it started is gone
    assert not (Path(stack_env["IMGPIPE_DATA_DIR"]) / "stack.json").exists()  # the endpoints file goes with it


def test_readme_command_runs_the_sample_batch(stack_env):
    """README command 1 (after its set-up part), in each profile."""
    proc = DevStack(stack_env, "--exit-after-sample")
    proc.wait(timeout=240)  # it exits by itself after the sample batch
    proc.stop()
    out = proc.output
    assert proc.returncode == 0, out
    assert "batch complete: 5 processed, 2 rejected" in out
    assert "Dagster UI" in out and stack_env["IMGPIPE_DATA_DIR"] in out
    assert "refused not_really_a_photo.jpg" in out
    assert out.count(" shows: ") == 5  # what each processed image shows, as its image.understood event arrives


def test_a_killed_broker_is_restarted_and_batches_still_complete(tmp_path):
    """The stack supervises its children: kill -9 the Kafka broker, the stack restarts it and says so; the
    events of a batch completed before the kill are on the new broker again (it keeps its log in memory:
    the stack republishes them from the documents), and a batch uploaded afterwards comes out on Kafka."""
    kafka_port, web_port = processes.free_port(), processes.free_port()
    env = {**os.environ, "IMGPIPE_PROFILE": "local", "IMGPIPE_DATA_DIR": str(tmp_path / "data"),
           "IMGPIPE_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka_port}", "IMGPIPE_WEBSERVER_PORT": str(web_port),
           "IMGPIPE_WEB": "false"}
    proc = DevStack(env, "--no-sample")
    settings = settings_from(env)
    files = make_sample_batch(tmp_path / "in")

    def completed_event(batch_id: str) -> tuple[dict, set[str]]:
        reader = build_reader(settings)  # from the beginning of the topic
        try:
            events = [e for _, e in reader.follow(
                lambda k, e: e.get("batch_id") == batch_id and e["type"] == "batch.completed",
                timeout_seconds=120) if e.get("batch_id") == batch_id]
        finally:
            reader.close()
        return events[-1], {e["event_id"] for e in events}

    try:
        lines = proc.wait_for("Press Ctrl-C", 180)
        before = upload_batch(wiring.services(settings), [IntakeItem.from_path(p) for p in files[:3]], user_id="erin")
        _, ids_before = completed_event(before.batch_id)
        understood = sum(":understood:" in i for i in ids_before)
        assert understood >= 1 and len(ids_before) == 3 + understood + 1  # images, what they show, completed
        [broker_pid] = [int(line.split(" pid ")[1].split()[0]) for line in lines if "Kafka broker (Tansu) pid" in line]
        os.kill(broker_pid, signal.SIGKILL)
        restarted = proc.wait_for("Kafka broker restarted", 60)
        assert any("Kafka broker (pid" in line and "restarting it" in line for line in restarted)
        assert any(f"{len(ids_before)} earlier event(s) published again" in line for line in restarted), restarted
        assert completed_event(before.batch_id)[1] == ids_before  # the new broker has them all
        upload = upload_batch(wiring.services(settings), [IntakeItem.from_path(p) for p in files[:2]],
                              user_id="erin")
        done, _ = completed_event(upload.batch_id)
        assert done["type"] == "batch.completed" and done["processed"] == 2
    finally:
        proc.stop(timeout=60)
        out = proc.output
    assert proc.returncode == 0, out


def test_a_killed_run_worker_is_detected_and_the_batch_completes_by_retry(tmp_path):
    """kill -9 of the run worker in the middle of `renditions`: the run is failed (by the code server that
    launched the worker, or else by the stack's watchdog), the daemon's run retry re-executes it from
    failure, and the batch completes — once: one document and one set of renditions per image, one event id
    per image and one batch-complete."""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    from orchestration.devtools.sample import jpeg_bytes, synthetic_photo

    env = local_env(tmp_path, IMGPIPE_WORKERS="1")
    proc = DevStack(env, "--no-sample")
    try:
        proc.wait_for("Press Ctrl-C", 180)
        settings = settings_from(env)
        services = wiring.services(settings)
        photos = [IntakeItem.from_bytes(f"p{i}.jpg", jpeg_bytes(synthetic_photo(2400, 1600, i * 20, str(i))))
                  for i in range(24)]
        batch = upload_batch(services, photos, user_id="erin").batch_id
        from orchestration.devtools.dagster_home import _worker_pid

        worker, deadline = None, time.monotonic() + 120
        with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
            while worker is None and time.monotonic() < deadline:  # the run's worker, once images are done
                started = instance.get_run_records(filters=RunsFilter(tags={"dagster/partition": batch},
                                                                      statuses=[DagsterRunStatus.STARTED]))
                if started and list(services.metadata.query("images", partition_key=batch)):
                    worker = _worker_pid(instance, started[0].dagster_run.run_id)
                time.sleep(0.1)
        assert worker, "the run worker was not seen processing"
        # Run workers are forked from the code server's preloaded forkserver (dagster_tuning), not spawned.
        ppid = int(open(f"/proc/{worker}/stat").read().rsplit(")", 1)[1].split()[1])
        assert b"forkserver" in open(f"/proc/{ppid}/cmdline", "rb").read()
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 180
        while batch_status(services, batch, "erin")["status"] != "completed" and time.monotonic() < deadline:
            time.sleep(1)
        status = batch_status(services, batch, "erin")
        assert status["status"] == "completed", status
        docs = list(services.metadata.query("images", partition_key=batch))
        assert sorted(d["id"] for d in docs) == sorted({d["id"] for d in docs}) and len(docs) == 24
        files = sorted(services.lake.list(f"processed/{batch}"))
        assert len(files) == 24 * 6 + 1 and len(set(files)) == len(files)  # 6 renditions each + outcomes.json
        with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
            runs = [r.dagster_run for r in instance.get_run_records(filters=RunsFilter(tags={"dagster/partition": batch}))]
        by_status = sorted(r.status.value for r in runs)
        assert by_status == [DagsterRunStatus.FAILURE.value, DagsterRunStatus.SUCCESS.value], by_status
        [original] = [r for r in runs if "dagster/parent_run_id" not in r.tags]  # one run per batch...
        [retry] = [r for r in runs if r.tags.get("dagster/parent_run_id") == original.run_id]  # ...and its retry
        assert original.tags["dagster/run_key"] == batch and retry.status == DagsterRunStatus.SUCCESS
        reader = build_reader(settings)
        try:
            events = [e for _, e in reader.follow(
                lambda k, e: e.get("batch_id") == batch and e["type"] == "batch.completed",
                timeout_seconds=30) if e.get("batch_id") == batch]
        finally:
            reader.close()
        assert len({e["event_id"] for e in events}) == 24 + 24 + 1  # images, what they show, batch.completed
    finally:
        proc.stop(timeout=60)


def test_a_killed_stack_resumes_its_batch_after_a_restart(tmp_path):
    """kill -9 of every process of the stack while a batch is processing; `imgpipe dev` started again on the
    same data dir fails the orphaned run at start-up, the run retry re-executes it, and the batch completes
    once."""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    from orchestration.devtools.sample import jpeg_bytes, synthetic_photo

    env = local_env(tmp_path, IMGPIPE_WORKERS="1")
    proc = DevStack(env, "--no-sample")
    second = None
    try:
        proc.wait_for("Press Ctrl-C", 180)
        settings = settings_from(env)
        services = wiring.services(settings)
        photos = [IntakeItem.from_bytes(f"p{i}.jpg", jpeg_bytes(synthetic_photo(2400, 1600, i * 20, str(i))))
                  for i in range(24)]
        batch = upload_batch(services, photos, user_id="erin").batch_id
        deadline = time.monotonic() + 120
        while not list(services.metadata.query("images", partition_key=batch)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert batch_status(services, batch, "erin")["status"] == "processing"
        everything = [proc.pid, *proc.children()]
        for pid in everything:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
        time.sleep(1)

        second = DevStack(env, "--no-sample")
        lines = second.wait_for("Press Ctrl-C", 180)
        assert any("left running by a previous stack" in line for line in lines), lines
        deadline = time.monotonic() + 180
        while batch_status(services, batch, "erin")["status"] != "completed" and time.monotonic() < deadline:
            time.sleep(1)
        assert batch_status(services, batch, "erin")["status"] == "completed"
        docs = list(services.metadata.query("images", partition_key=batch))
        assert len(docs) == 24 and len({d["id"] for d in docs}) == 24
        files = list(services.lake.list(f"processed/{batch}"))
        assert len(files) == 24 * 6 + 1
        # The batch is completed by its last asset; the run still finishes its asset checks after that.
        with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
            deadline = time.monotonic() + 60
            while True:
                runs = [r.dagster_run for r in instance.get_run_records(
                    filters=RunsFilter(tags={"dagster/partition": batch}))]
                if all(r.is_finished for r in runs) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        assert sorted(r.status.value for r in runs) == [DagsterRunStatus.FAILURE.value, DagsterRunStatus.SUCCESS.value]
    finally:
        for p in (proc, second):
            if p is not None and p.poll() is None:
                p.stop(timeout=60)


def test_ctrl_c_with_a_batch_in_flight_and_a_restart_complete_the_batch_once(tmp_path):
    """The documented way to stop the stack (Ctrl-C = SIGINT to `imgpipe dev`) while a batch is in its
    renditions step: the stack stops, and the next `imgpipe dev` on the same data dir completes the batch
    — once (one document and one rendition set per image, each event id once) — with no one stepping in."""
    from orchestration.devtools.sample import jpeg_bytes, synthetic_photo

    env = local_env(tmp_path, IMGPIPE_WORKERS="1")
    proc = DevStack(env, "--no-sample")
    second = None
    try:
        proc.wait_for("Press Ctrl-C", 180)
        settings = settings_from(env)
        services = wiring.services(settings)
        photos = [IntakeItem.from_bytes(f"p{i}.jpg", jpeg_bytes(synthetic_photo(2400, 1600, i * 20, str(i))))
                  for i in range(24)]
        batch = upload_batch(services, photos, user_id="erin").batch_id
        deadline = time.monotonic() + 120
        while not list(services.metadata.query("images", partition_key=batch)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert batch_status(services, batch, "erin")["status"] == "processing"
        children = proc.children()
        proc.stop(timeout=120)
        out = proc.output
        assert proc.returncode == 0 and "Traceback" not in out, out[-3000:]
        assert not [p for p in children if alive(p)], {p: cmdline(p) for p in children if alive(p)}

        from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

        restarted_at = time.time()
        second = DevStack(env, "--no-sample")
        second.wait_for("Press Ctrl-C", 180)
        deadline = time.monotonic() + 240
        while batch_status(services, batch, "erin")["status"] != "completed" and time.monotonic() < deadline:
            time.sleep(1)
        assert batch_status(services, batch, "erin")["status"] == "completed"
        docs = list(services.metadata.query("images", partition_key=batch))
        assert len(docs) == 24 and len({d["id"] for d in docs}) == 24
        assert len(list(services.lake.list(f"processed/{batch}"))) == 24 * 6 + 1
        with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
            runs = [r.dagster_run for r in instance.get_run_records(filters=RunsFilter(tags={"dagster/partition": batch}))]
        statuses = [r.status for r in runs]
        assert statuses.count(DagsterRunStatus.SUCCESS) == 1, statuses  # never two successful runs
        doc = services.metadata.read("batches", batch, "erin")
        finished_by_restart = doc["completed_at"] > datetime.fromtimestamp(restarted_at, timezone.utc).isoformat()
        # Either the stop let the run finish (Ctrl-C stops the code server last but one, after the webserver
        # and daemon, and waits for it), or the restarted stack resumed it through a run retry. In the second
        # case its broker (in memory) has the resumed run's events, each once, ending with batch.completed.
        if finished_by_restart:
            reader = build_reader(settings)
            try:
                events = [e for _, e in reader.follow(
                    lambda k, e: e.get("batch_id") == batch and e["type"] == "batch.completed", timeout_seconds=30)
                    if e.get("batch_id") == batch]
            finally:
                reader.close()
            ids = [e["event_id"] for e in events]
            assert len(ids) == len(set(ids)) and ids[-1].startswith(f"{batch}:completed")
        else:
            assert statuses == [DagsterRunStatus.SUCCESS]
    finally:
        for p in (proc, second):
            if p is not None and p.poll() is None:
                p.stop(timeout=60)


SENSOR_TICKS = """
query {
  sensorOrError(sensorSelector: {repositoryLocationName: "imgpipe", repositoryName: "__repository__",
                                 sensorName: "batch_sensor"}) {
    ... on Sensor { sensorState { ticks(limit: 12) { timestamp } } }
  }
}"""


RUN_STEPS = """
query ($id: ID!) {
  runOrError(runId: $id) { ... on Run { jobName tags { key value } stepStats { stepKey status } } }
}"""


def _sensor_tick_gap(settings) -> float:
    """The median time between the batch sensor's last ticks, as the Dagster UI's sensor page lists them."""
    import statistics

    from orchestration.operate import graphql

    ticks = graphql(settings, SENSOR_TICKS, {})["sensorOrError"]["sensorState"]["ticks"]
    stamps = sorted(t["timestamp"] for t in ticks)
    assert len(stamps) >= 3, ticks
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:]))


@pytest.mark.parametrize("tuning", ["on", "off"])
def test_the_stack_runs_a_batch_with_and_without_the_dev_tuning(tmp_path, tuning):
    """IMGPIPE_DEV_TUNING=off is the plain stack: Dagster's own `dagster api grpc` and `dagster-daemon run`, no
    patch anywhere, and a batch still goes through. What the sensor tuning changes is seen from outside: the
    batch sensor's ticks, as the UI lists them, come every second instead of every five.

    The batch is over a small fan-out threshold (3 images, chunks of 2): the sensor starts the fan-out job,
    whose chunks run as processes of their own (the multiprocess executor) and merge into one
    materialization of the batch's partition."""
    env = local_env(tmp_path, IMGPIPE_DEV_TUNING=tuning, IMGPIPE_FANOUT_MIN_IMAGES="3", IMGPIPE_FANOUT_CHUNK_IMAGES="2")
    proc = DevStack(env, "--no-sample")
    try:
        proc.ready()
        settings = settings_from(env)
        services = wiring.services(settings)
        commands = " | ".join(cmdline(p) for p in proc.children())
        assert ("dagster_tuning" in commands) == (tuning == "on"), commands
        if tuning == "off":
            assert "api grpc" in commands and "dagster-daemon run" in commands, commands
            assert any("IMGPIPE_DEV_TUNING=off" in line for line in proc.lines), proc.output
        files = make_sample_batch(tmp_path / "in")
        batch = upload_batch(services, [IntakeItem.from_path(p) for p in files], user_id="erin").batch_id
        deadline = time.monotonic() + 180
        while batch_status(services, batch, "erin")["status"] != "completed" and time.monotonic() < deadline:
            time.sleep(0.5)
        status = batch_status(services, batch, "erin")
        assert status["status"] == "completed", status
        assert sum(i["outcome"] == "processed" for i in status["images"]) == 5
        from orchestration.operate import graphql

        run = graphql(settings, RUN_STEPS, {"id": services.metadata.read("batches", batch, "erin")["dagster_run_id"]})
        run = run["runOrError"]
        assert run["jobName"] == "process_batch_fanout" and run["tags"] and \
            {"key": "dagster/partition", "value": batch} in run["tags"], run
        chunks = sorted(s["stepKey"] for s in run["stepStats"] if "render_chunk" in s["stepKey"])
        expected = -(-len(status["images"]) // 2)  # every file of the batch in chunks of 2 (refused ones too)
        assert expected >= 3 and chunks == [f"renditions.render_chunk[c{n:04d}]" for n in range(expected)], run
        # (the asset checks may still be running: the batch completes at result_events, before them)
        assert all(s["status"] == "SUCCESS" for s in run["stepStats"] if s["stepKey"].startswith("renditions.")), run
        time.sleep(12)  # a few more ticks
        gap = _sensor_tick_gap(settings)
        assert (gap < 2.5) if tuning == "on" else (gap >= 4.5), f"median gap between sensor ticks {gap:.2f} s"
    finally:
        proc.stop(timeout=90)
    assert proc.returncode == 0, proc.output[-3000:]


def test_deleting_a_running_and_a_queued_batch_sticks_and_restore_completes_them(tmp_path):
    """On the real stack, with one run at a time per user: a batch deleted while its run processes it, and
    one deleted while its run waits in the queue for that slot. Both runs end without failing (the running
    one stops at its next write or is terminated through the webserver; the queued one is cancelled by the
    deletion sensor, or never started), nothing they wrote stays live, no later write undoes the delete;
    `imgpipe restore` puts each back in the queue and both complete."""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    from orchestration.devtools.sample import jpeg_bytes, synthetic_photo
    from orchestration.domain import retention

    env = local_env(tmp_path, IMGPIPE_WORKERS="1", IMGPIPE_MAX_RUNS_PER_USER="1")
    proc = DevStack(env, "--no-sample")
    try:
        proc.wait_for("Press Ctrl-C", 180)
        settings = settings_from(env)
        services = wiring.services(settings)
        photos = [IntakeItem.from_bytes(f"p{i}.jpg", jpeg_bytes(synthetic_photo(2400, 1600, i * 20, str(i))))
                  for i in range(24)]
        running = upload_batch(services, photos, user_id="fay").batch_id

        def runs(batch_id):
            with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
                return [r.dagster_run for r in instance.get_run_records(filters=RunsFilter(tags={"dagster/partition": batch_id}))]

        deadline = time.monotonic() + 120
        while len(list(services.metadata.query("images", partition_key=running))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        queued = upload_batch(services, photos[:3], user_id="fay").batch_id  # waits for fay's one run slot
        deadline = time.monotonic() + 30
        while [r.status for r in runs(queued)] in ([], [DagsterRunStatus.NOT_STARTED]) and time.monotonic() < deadline:
            time.sleep(0.2)  # (created NOT_STARTED, then submitted to the run queue)
        assert [r.status for r in runs(queued)] == [DagsterRunStatus.QUEUED], runs(queued)
        # The queued one first: the deletion sensor has its run cancelled through the webserver's GraphQL API.
        retention.delete_batch(services, queued, "fay", deleted_by="fay")
        deadline = time.monotonic() + 60
        while [r.status for r in runs(queued)] != [DagsterRunStatus.CANCELED] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert [r.status for r in runs(queued)] == [DagsterRunStatus.CANCELED]
        assert [r.status for r in runs(running)] == [DagsterRunStatus.STARTED]  # still at work
        retention.delete_batch(services, running, "fay", deleted_by="fay")

        finished = {DagsterRunStatus.SUCCESS, DagsterRunStatus.CANCELED, DagsterRunStatus.FAILURE}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (
                all(r.status in finished for b in (running, queued) for r in runs(b))
                and not any(services.metadata.read("batches", b, "fay").get("cleanup_pending") for b in (running, queued))):
            time.sleep(1)
        for b in (running, queued):
            doc = services.metadata.read("batches", b, "fay")
            assert doc["status"] == "deleted" and not doc.get("cleanup_pending"), doc
            assert all(r.status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.CANCELED) for r in runs(b)), \
                [(r.run_id, r.status) for r in runs(b)]
            assert [p for prefix in (f"raw/{b}/", f"processed/{b}/") for p in services.lake.list(prefix)] == []
            assert all(d.get("deleted") and d.get("ttl") for d in services.metadata.query("images", partition_key=b))
        assert {d["batch_id"] for d in retention.recently_deleted(services, "fay")} == {running, queued}
        time.sleep(8)  # later sensor ticks (failure sensor, reconciler, events sensor) leave it deleted
        assert services.metadata.read("batches", running, "fay")["status"] == "deleted"

        for b in (running, queued):
            assert retention.restore_batch(services, b, "fay")["status"] == "received"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and any(
                batch_status(services, b, "fay")["status"] != "completed" for b in (running, queued)):
            time.sleep(1)
        for b, n in ((running, 24), (queued, 3)):
            status = batch_status(services, b, "fay")
            assert status["status"] == "completed", (b, status["status"], status["error"])
            assert [i["outcome"] for i in status["images"]] == ["processed"] * n
            assert len(list(services.lake.list(f"processed/{b}/"))) == n * 6 + 1
    finally:
        proc.stop(timeout=60)


def test_a_batch_with_one_file_of_each_kind_phones_and_cameras_send(tmp_path):
    """Through the real daemon: HEIC (rotated, P3 via nclx), AVIF with a generic major brand, Ultra HDR,
    multi-page TIFF — processed; DNG, CR3, JPEG XL and a Live Photo's .MOV — refused by name."""
    from tests.test_formats import ORANGE_IN_SRGB, ORANGE_P3, _avif, _close, _dng, _heif

    photo = Image.new("RGB", (400, 200), ORANGE_P3)
    exif = Image.Exif()
    exif[0x0112] = 6
    heic = _heif(photo, exif=exif.tobytes(), save_nclx_profile=True, color_primaries=12, transfer_characteristics=13,
                 matrix_coefficients=6, full_range_flag=1)
    avif = bytearray(_avif(Image.new("RGB", (64, 48), (30, 120, 220))))
    avif[8:12] = b"mif1"
    ultra_hdr, tiff = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (120, 80), (240, 120, 20)).save(
        ultra_hdr, "MPO", save_all=True, append_images=[Image.new("RGB", (60, 40), (128, 128, 128))],
        xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description xmlns:hdrgm="http://ns.adobe.com/hdr-gain-map/1.0/" hdrgm:Version="1.0"/></x:xmpmeta>')
    Image.new("RGB", (80, 60), (0, 160, 80)).save(tiff, "TIFF", save_all=True, append_images=[Image.new("RGB", (8, 8))])
    files = {
        "IMG_0001.HEIC": heic, "photo.avif": bytes(avif), "ultrahdr.jpg": ultra_hdr.getvalue(), "scan.tif": tiff.getvalue(),
        "IMG_0002.DNG": _dng(tmp_path / "raw.dng"), "IMG_0003.CR3": b"\x00\x00\x00\x18ftypcrx \x00\x00\x00\x01crx isom" + bytes(500),
        "art.jxl": b"\xff\x0a\xfa\x7f" + bytes(500), "IMG_0001.MOV": b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00qt  " + bytes(500),
    }
    env = local_env(tmp_path, IMGPIPE_ANIMATED="reject")
    proc = DevStack(env, "--no-sample")
    try:
        proc.wait_for("Press Ctrl-C", 180)
        settings = settings_from(env)
        services = wiring.services(settings)
        batch = upload_batch(services, [IntakeItem.from_bytes(n, d) for n, d in files.items()], user_id="gil").batch_id
        deadline = time.monotonic() + 180
        while batch_status(services, batch, "gil")["status"] != "completed" and time.monotonic() < deadline:
            time.sleep(1)
        status = batch_status(services, batch, "gil")
    finally:
        proc.stop(timeout=60)
    assert status["status"] == "completed", status
    by_name = {i["name"]: i for i in status["images"]}
    for name in ("IMG_0001.HEIC", "photo.avif", "ultrahdr.jpg", "scan.tif"):
        assert by_name[name]["outcome"] == "processed", by_name[name]
    for name, code, says in (("IMG_0002.DNG", "camera_raw", "camera RAW (DNG)"), ("IMG_0003.CR3", "camera_raw", "camera RAW (CR3)"),
                             ("art.jxl", "jpeg_xl", "JPEG XL"), ("IMG_0001.MOV", "video", "video; upload the photo")):
        assert (by_name[name]["outcome"], by_name[name]["code"]) == ("rejected", code) and says in by_name[name]["reason"]
    heic_doc = by_name["IMG_0001.HEIC"]
    assert (heic_doc["facts"]["width"], heic_doc["facts"]["height"]) == (200, 400)  # upright
    large = next(r for r in heic_doc["renditions"] if r["format"] == "JPEG" and r["width"] == 200)
    pixel = Image.open(io.BytesIO(services.lake.read(large["path"]))).convert("RGB").getpixel((100, 200))
    assert _close(pixel, ORANGE_IN_SRGB, 5), pixel
