"""Limits that keep one user from hurting the others: per-user quotas at intake, fairness in the run queue,
bounded uploads, image workers without secrets, owner-only local state."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from orchestration import wiring
from orchestration.devtools.sample import jpeg_bytes, synthetic_photo
from orchestration.domain.intake import IntakeItem, QuotaExceeded, upload_batch
from tests.support.procs import probe
from orchestration.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
JPEG = jpeg_bytes(synthetic_photo(64, 48, 0, "q"))


def _raw_objects(services) -> list[str]:
    return list(services.lake.list("raw"))


def test_batches_in_flight_quota_names_the_limit_and_stores_nothing(tmp_path):
    services = wiring.services(load_settings(data_dir=tmp_path, max_batches_in_flight=2))
    first = upload_batch(services, [IntakeItem.from_bytes("a.jpg", JPEG)], user_id="alice").batch_id
    upload_batch(services, [IntakeItem.from_bytes("b.jpg", JPEG)], user_id="alice")
    before = (_raw_objects(services), services.queue.active_message_count())
    with pytest.raises(QuotaExceeded, match="IMGPIPE_MAX_BATCHES_IN_FLIGHT") as err:
        upload_batch(services, [IntakeItem.from_bytes("c.jpg", JPEG)], user_id="alice")
    assert "2 batches" in str(err.value)
    assert (_raw_objects(services), services.queue.active_message_count()) == before  # nothing written
    upload_batch(services, [IntakeItem.from_bytes("c.jpg", JPEG)], user_id="bob")  # others are not affected
    doc = services.metadata.read("batches", first, "alice")
    services.metadata.upsert("batches", {**doc, "status": "completed"})
    upload_batch(services, [IntakeItem.from_bytes("c.jpg", JPEG)], user_id="alice")  # a slot freed up


def test_bytes_per_day_quota(tmp_path):
    services = wiring.services(load_settings(data_dir=tmp_path, max_bytes_per_day=2 * len(JPEG) + 10))
    upload_batch(services, [IntakeItem.from_bytes("a.jpg", JPEG), IntakeItem.from_bytes("b.jpg", JPEG)], user_id="alice")
    with pytest.raises(QuotaExceeded, match="IMGPIPE_MAX_BYTES_PER_DAY"):
        upload_batch(services, [IntakeItem.from_bytes("c.jpg", JPEG)], user_id="alice")
    upload_batch(services, [IntakeItem.from_bytes("c.jpg", JPEG)], user_id="bob")


def test_cli_over_quota_prints_the_limit_without_a_traceback(tmp_path):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(JPEG)
    env = {**os.environ, "IMGPIPE_DATA_DIR": str(tmp_path / "data"), "IMGPIPE_MAX_BATCHES_IN_FLIGHT": "1"}
    cmd = [sys.executable, "-m", "orchestration.cli", "upload", str(photo), "--user", "alice"]
    assert subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120).returncode == 0
    over = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert over.returncode == 2 and "IMGPIPE_MAX_BATCHES_IN_FLIGHT" in over.stderr
    assert "Traceback" not in over.stderr
    assert photo.read_bytes() == JPEG  # the user's file is untouched: nothing lost


def test_run_queue_is_fair_between_users(tmp_path):
    """The local instance's run queue (the dagster.yaml `imgpipe dev` writes) launches the second user's
    batch before the first user's backlog, and never more than max_runs_per_user runs of one user."""
    from dagster import DagsterInstance, DagsterRunStatus
    from tests.support.dagster_internals import (
        QueuedRunCoordinatorDaemon,
        RegisteredCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
        create_run_for_test,
    )

    from orchestration.devtools.dagster_home import prepare_dagster_home

    home = prepare_dagster_home(load_settings(data_dir=tmp_path, workers=2))  # 2 runs at once
    with DagsterInstance.from_config(str(home)) as instance:
        origin = RemoteJobOrigin(RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("imgpipe"), "__repository__"),
                                 "process_batch")
        for user in ["u-heavy"] * 4 + ["u-light"]:  # the heavy user's backlog was queued first
            create_run_for_test(instance, job_name="process_batch", status=DagsterRunStatus.QUEUED,
                                tags={"imgpipe/user_id": user}, remote_job_origin=origin)
        daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
        picked = daemon._get_runs_to_dequeue(instance, instance.get_concurrency_config(), None)  # noqa: SLF001
        assert sorted(r.tags["imgpipe/user_id"] for r in picked) == ["u-heavy", "u-light"]


def test_helm_values_carry_the_same_fairness_limit():
    import yaml

    values = yaml.safe_load((ROOT / "deploy" / "helm" / "values.yaml").read_text())
    limits = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    assert {"key": "imgpipe/user_id", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits


def test_image_workers_start_without_secrets(tmp_path):
    """A decoder exploit in a worker finds no credentials in its environment (/proc/<pid>/environ)."""
    env = {**os.environ, "IMGPIPE_COSMOS_KEY": "sekrit-cosmos-key", "AZURE_CLIENT_SECRET": "sekrit-cosmos-key-too"}
    proc = subprocess.run(probe("worker_environments"), env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "workers 2 False True" in proc.stdout  # no secret, but still a usable environment
    assert "parent sekrit-cosmos-key" in proc.stdout  # the run process keeps its own
    assert "no new privileges 1 1" in proc.stdout  # PR_SET_NO_NEW_PRIVS in each worker


def test_image_workers_from_the_worker_server_start_without_secrets(tmp_path):
    """The same for the workers the local stack's image worker server forks: it is started from an
    environment with secrets (the code server's) and hands its workers none of them."""
    env = {**os.environ, "IMGPIPE_COSMOS_KEY": "sekrit-cosmos-key", "AZURE_CLIENT_SECRET": "sekrit-cosmos-key-too"}
    proc = subprocess.run(probe("worker_environments", "--server"), env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "from the image worker server" in proc.stdout, proc.stdout
    assert "workers 3 False True" in proc.stdout  # two workers and the server: no secret, a usable environment
    assert "no new privileges 1 1" in proc.stdout
    assert "mode gone" in proc.stdout  # its socket and private directory are removed when it stops


def test_the_worker_servers_socket_is_owner_only():
    from orchestration.devtools.image_workers import ImageWorkerServer

    server = ImageWorkerServer()
    assert server.start()
    try:
        assert os.stat(server.dir).st_mode & 0o777 == 0o700
        assert os.stat(server.path).st_mode & 0o777 == 0o600
    finally:
        server.stop()


def test_local_state_is_owner_only(tmp_path):
    data = tmp_path / "data"
    services = wiring.services(load_settings(data_dir=data))
    upload_batch(services, [IntakeItem.from_bytes("a.jpg", JPEG)], user_id="alice")
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in ("metadata.sqlite", "queue.sqlite"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name


# The web app's upload limit and its other server options, in every launcher: tests/test_web_limits.py.
