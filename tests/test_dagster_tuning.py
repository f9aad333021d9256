"""The local stack's Dagster tuning (orchestration/devtools/dagster_tuning.py): the only module that touches
Dagster's internals, applied by one call, version-guarded, switched off by IMGPIPE_DEV_TUNING=off, never by
the code location itself. Each patch is checked in a fresh interpreter (tests/support/probes/), so that a
Dagster upgrade that makes one a silent no-op fails here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from orchestration.devtools import processes
from orchestration.devtools.dagster_tuning import WRITTEN_FOR
from tests.support.procs import alive, cmdline, probe

ROOT = Path(__file__).resolve().parents[1]
PRISTINE = {"sensor_loop_seconds": 5, "queue_daemon_replaced": False, "api_server_replaced": False,
            "migration_scripts_replaced": False, "engines_replaced": False}


def _state(*args: str, **env: str) -> tuple[dict, str]:
    out = subprocess.run(probe("tuning_state", *args), capture_output=True, text=True, timeout=180,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def _changed(state: dict) -> dict:
    return {k: state[k] for k in PRISTINE}


def test_the_daemon_role_shortens_both_loops_and_opens_sqlite_the_cheap_way():
    state, _ = _state("apply", "daemon")
    assert state["applied"] == ["sensor_loop", "queue_loop", "sqlite"]
    assert _changed(state) == {"sensor_loop_seconds": 1.0, "queue_daemon_replaced": True, "api_server_replaced": False,
                               "migration_scripts_replaced": True, "engines_replaced": True}


def test_only_the_patches_named_in_the_switch_are_applied():
    state, _ = _state("apply", "daemon", IMGPIPE_DEV_TUNING="sensor_loop,bogus")
    assert state["applied"] == ["sensor_loop"]
    assert _changed(state) == {**PRISTINE, "sensor_loop_seconds": 1.0}


def test_switched_off_nothing_is_applied_and_one_line_says_so():
    state, stderr = _state("apply", "daemon", IMGPIPE_DEV_TUNING="off")
    assert state["applied"] == [] and _changed(state) == PRISTINE
    assert [line for line in stderr.splitlines() if "tuning" in line] == [
        "[imgpipe dagster tuning] IMGPIPE_DEV_TUNING=off: Dagster runs untuned"]


def test_on_another_dagster_version_nothing_is_applied_and_one_line_says_so():
    state, stderr = _state("apply", "daemon", "1.99.0")
    assert state["applied"] == [] and _changed(state) == PRISTINE
    [line] = [line for line in stderr.splitlines() if "tuning" in line]
    assert f"written for Dagster {WRITTEN_FOR}, found 1.99.0" in line


def test_importing_the_code_location_as_production_does_applies_nothing(tmp_path):
    """AKS imports orchestration.definitions in its code server and run pods: no tuning module is loaded
    and every internal the tuning could touch is Dagster's own."""
    state, _ = _state("code-location", IMGPIPE_DATA_DIR=str(tmp_path))
    assert state["devtools_imported"] == [] and _changed(state) == PRISTINE


def test_the_local_run_queue_looks_for_free_slots_every_quarter_second():
    """Dagster's own queue daemon runs every dequeue_interval_seconds (an int, at least 1) in 0.5 s steps, so a
    slot a finished run freed stayed empty for up to 1.5 s and many small batches ran in waves."""
    out = subprocess.run(probe("queue_loop"), capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "True", "0.25", "0.125"], out.stdout + out.stderr


def test_dagster_migration_scripts_are_read_once_per_process(tmp_path):
    out = subprocess.run(probe("migration_scripts", str(tmp_path / "dagster")), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    ok, before, after = out.stdout.split()
    assert ok == "True" and int(before) > 50 and int(after) == 0, out.stdout


def test_dagster_sqlite_engines_are_reused_and_runs_still_record_everything(tmp_path):
    """A second materialization creates engines only for its own new database (was dozens: one per
    connection); every run's events, materializations and status are recorded as without the patch, and a
    run's database deleted under the storage is created again."""
    (tmp_path / "dagster").mkdir()
    out = subprocess.run(probe("sqlite_engines", str(tmp_path / "dagster")), capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    ok_patch, made_first, made_second, ok, latest, records, events = out.stdout.split()
    assert (ok_patch, ok, latest, records, events) == ("True", "True", "True", "3", "True"), out.stdout
    assert int(made_first) > 0 and int(made_second) <= 2, out.stdout


def _forkservers_below(pid: int) -> list[int]:
    from tests.support.procs import descendants

    return [p for p in descendants(pid) if "forkserver" in cmdline(p)]


@pytest.mark.stack
@pytest.mark.parametrize("tuning", ["on", "off"])
def test_the_code_server_has_its_run_workers_forkserver_ready_before_the_first_run_only_when_tuned(
        offline_settings, monkeypatch, tuning):
    """Tuned, run workers are forks of a preloaded forkserver the code server starts at once (its ~2 s preload
    no longer falls on the first batch); untuned, the code server is Dagster's own `dagster api grpc`, which
    spawns each run worker. No run is launched here."""
    from orchestration.devtools.dagster_home import prepare_dagster_home
    from orchestration.devtools.stack import stack_env, start_code_server, stop_dagster

    monkeypatch.setenv("IMGPIPE_DEV_TUNING", tuning)
    prepare_dagster_home(offline_settings)
    port = processes.free_port()
    log = offline_settings.dagster_home / "code_server.log"
    proc = start_code_server(port, stack_env(offline_settings), log, on_start=lambda p: None)
    try:
        assert ("dagster_tuning" in cmdline(proc.pid)) == (tuning == "on"), cmdline(proc.pid)
        deadline, found = time.monotonic() + (45 if tuning == "on" else 5), []
        while not found and time.monotonic() < deadline and proc.poll() is None:
            found = _forkservers_below(proc.pid)
            time.sleep(0.2)
        assert bool(found) == (tuning == "on"), f"forkservers {found}; see {log}: {log.read_text()[-2000:]}"
    finally:
        stop_dagster(proc)
    deadline = time.monotonic() + 10
    while any(alive(p) for p in found) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(p) for p in found), "the forkserver outlived its code server"


PRIVATE = re.compile(r"^\s*(from|import)\s+dagster\._|[\"']dagster\._[a-z]", re.M)
QUARANTINE = {"orchestration/devtools/dagster_tuning.py"}
TEST_SIDE = {"tests/support/dagster_internals.py", "tests/support/probes/"}


def test_private_dagster_apis_are_used_only_in_the_quarantined_module():
    """Product code, benchmarks and deployment tools use public Dagster APIs only; the tests' white-box
    helpers that need internals (runs made by hand, the K8s launcher's inputs) sit in tests/support."""
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith((".venv", ".tools", "build/")) or rel in QUARANTINE or rel == "tests/test_dagster_tuning.py" \
                or any(rel == t or (t.endswith("/") and rel.startswith(t)) for t in TEST_SIDE):
            continue
        if PRIVATE.search(path.read_text(errors="replace")):
            offenders.append(rel)
    assert offenders == []
    assert len((ROOT / "orchestration/devtools/dagster_tuning.py").read_text().splitlines()) <= 300
