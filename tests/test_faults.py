"""Fault injection on the real local stack: batches keep arriving while the run worker, the Dagster daemon,
the Kafka broker and the whole stack are killed (kill -9) at seeded random moments; what a supervisor would
restart is restarted (the whole stack, after it was killed; `imgpipe dev` restarts its own children).
Every batch must end `completed` exactly once — one original run (plus retries of it), never two successful
runs, one document and one set of renditions per image — or `failed` with a reason; none stuck, none lost.

    IMGPIPE_FAULT_KILLS (default 20)   kills per run (at least 20 in CI)
    IMGPIPE_FAULT_SEED  (default 1125) the random schedule

Bounded: at most ~7 minutes of kills plus 5 minutes to settle. Prints a table of the kills and outcomes.
Events: every event id of every completed batch must be on the results topic at the end, broker kills
included (the local broker keeps its log in memory; `imgpipe dev` publishes again what a lost broker had
acknowledged, and consumers drop repeated ids — the copies are counted and printed).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from orchestration import wiring
from orchestration.devtools import processes
from tests.support.procs import alive, cmdline, descendants, kill_all
from tests.support.stack import DevStack
from orchestration.devtools.sample import jpeg_bytes, synthetic_photo
from orchestration.domain.intake import IntakeItem, upload_batch
from orchestration.devtools.dev_settings import DevSettings, load_dev_settings

pytestmark = pytest.mark.stack

KILLS = int(os.environ.get("IMGPIPE_FAULT_KILLS", "20"))
SEED = int(os.environ.get("IMGPIPE_FAULT_SEED", "1125"))
TARGETS = ("run worker", "daemon", "broker", "stack")
WEIGHTS = (4, 2, 2)  # of the first three; the whole stack is killed every 7th time


class Stack:
    def __init__(self, env: dict):
        self.env, self.proc, self.restarts = env, None, 0
        self.started: list[DevStack] = []
        self.start()

    def start(self) -> None:
        self.proc = DevStack(self.env, "--no-sample").ready()
        self.started.append(self.proc)

    @property
    def broker_lines(self) -> list[str]:
        return [line for stack in self.started for line in stack.lines if "Kafka broker" in line]

    def pids(self, target: str, settings) -> list[int]:
        tree = [self.proc.pid, *descendants(self.proc.pid)]
        if target == "stack":
            return tree
        if target == "broker":
            return [p for p in tree if "tansu" in cmdline(p)]
        if target == "daemon":
            return [p for p in tree if "dagster-daemon" in cmdline(p) or "dagster_tuning" in cmdline(p)
                    and " daemon " in cmdline(p) + " "]
        from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

        from orchestration.devtools.dagster_home import _alive_run_worker, _worker_pid

        with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
            started = instance.get_run_records(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED]))
            pids = [_worker_pid(instance, r.dagster_run.run_id) for r in started]
        return [p for p in pids if p and _alive_run_worker(p, settings.dagster_home)]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            everything = [self.proc.pid, *descendants(self.proc.pid)]
            if self.proc.stop(timeout=60) != 0:  # it hung and its group was killed: its children too
                kill_all(p for p in everything if alive(p))


def _kill_leftovers(tmp_path: Path) -> None:
    """Processes a kill -9 of the whole stack orphaned: one started between listing the tree and killing it
    (a run's compute-log `tail -F` on a file under this test's data dir, say) would outlive the test."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and str(tmp_path) in cmdline(int(entry)):
            try:
                os.kill(int(entry), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _topic_event_ids(settings) -> Counter:
    """Every event id on the results topic, read from the beginning until it stays quiet for 3 s (≤ 60 s)."""
    from orchestration.adapters.kafka.readers import ResultReader

    seen: Counter = Counter()
    reader = ResultReader(settings.kafka_bootstrap, settings.kafka_topic)
    try:
        quiet_since = deadline = time.monotonic()
        deadline += 60
        while time.monotonic() - quiet_since < 3 and time.monotonic() < deadline:
            got = reader.poll(0.5)
            if got:
                quiet_since = time.monotonic()
            seen.update(event["event_id"] for _, event in got)
    finally:
        reader.close()
    return seen


def _expected_event_ids(services, batch_id: str) -> list[str]:
    """The ids a consumer must see for a completed batch: one per image, then batch.completed."""
    from orchestration.domain.processing import load_manifest, result_events

    docs = sorted(services.metadata.query("images", partition_key=batch_id), key=lambda d: d["image_id"])
    return [e["event_id"] for e in result_events(load_manifest(services.lake, batch_id), docs)]


def test_batches_survive_random_kills(tmp_path):
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    rng = random.Random(SEED)
    env = {**os.environ, "IMGPIPE_PROFILE": "local", "IMGPIPE_DATA_DIR": str(tmp_path / "data"),
           "IMGPIPE_KAFKA_BOOTSTRAP": f"127.0.0.1:{processes.free_port()}",
           "IMGPIPE_WEBSERVER_PORT": str(processes.free_port()), "IMGPIPE_WEB": "false", "IMGPIPE_WORKERS": "1",
           "IMGPIPE_RUN_MAX_RETRIES": "10", "IMGPIPE_QUEUE_LOCK_SECONDS": "15",
           "IMGPIPE_SENSOR_SAFETY_POLL_SECONDS": "5", "IMGPIPE_RECONCILE_AFTER_SECONDS": "30",
           "IMGPIPE_MAX_RUNS_PER_USER": "2"}
    given = {k[len("IMGPIPE_"):].lower(): v for k, v in env.items() if k.startswith("IMGPIPE_")}
    settings = load_dev_settings(**{k: v for k, v in given.items() if k in DevSettings.model_fields})
    photos = [jpeg_bytes(synthetic_photo(1600, 1200, i * 23 % 256, str(i))) for i in range(6)]
    stack = Stack(env)
    services = wiring.services(settings)
    batches: dict[str, int] = {}
    kills: list[tuple[int, str, int, float, str]] = []
    t0 = time.monotonic()
    try:
        while len(kills) < KILLS and time.monotonic() - t0 < 420:
            if len(batches) < KILLS + 5:
                n = rng.randint(2, 6)
                try:
                    up = upload_batch(services, [IntakeItem.from_bytes(f"{len(batches)}-{i}.jpg", photos[i])
                                                 for i in range(n)], user_id=f"u{rng.randint(0, 3)}")
                    batches[up.batch_id] = n
                except Exception as exc:  # the local queue is SQLite: never down, but say so if it is
                    raise AssertionError(f"upload failed: {exc}") from exc
            time.sleep(rng.uniform(0.3, 2.5))
            assert stack.proc.poll() is None, f"imgpipe dev itself exited (code {stack.proc.returncode}) after {kills}"
            # Every run includes whole-stack kills (every 7th), the others drawn at random.
            target = "stack" if (len(kills) + 1) % 7 == 0 else rng.choices(TARGETS[:3], weights=WEIGHTS[:3])[0]
            pids = stack.pids(target, settings)
            wait_until = time.monotonic() + 15
            while target == "run worker" and not pids and time.monotonic() < wait_until:
                time.sleep(0.2)  # catch a run in the act
                pids = stack.pids(target, settings)
            if not pids:  # nothing of that kind running right now: the broker always is
                target, pids = "broker", stack.pids("broker", settings)
            if not pids:
                continue  # the broker is being restarted by the stack this very moment
            names = sorted({(cmdline(p).split(" -m ")[-1].split()[0] if " -m " in cmdline(p) else
                             Path(cmdline(p).split(" ")[0]).name) or "?" for p in pids})
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            kills.append((len(kills) + 1, target, len(pids), round(time.monotonic() - t0, 1), ", ".join(names)[:60]))
            if target == "stack":
                stack.proc.wait(timeout=30)
                time.sleep(1)
                stack.start()  # what a supervisor (systemd, Kubernetes) would do
                stack.restarts += 1

        assert stack.proc.poll() is None, f"imgpipe dev itself exited (code {stack.proc.returncode})"
        # Settle: every batch must reach an end state.
        deadline = time.monotonic() + 300

        def docs() -> dict[str, dict]:
            return {b: next(iter(services.metadata.query("batches", {"batch_id": b}))) for b in batches}

        # (a completed batch whose events a broker kill held back is settled once the events sensor sent them)
        while time.monotonic() < deadline and any(d["status"] not in ("completed", "failed") or d.get("events_pending")
                                                  for d in docs().values()):
            time.sleep(2)
        outcomes = docs()
        with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
            runs = {b: [r.dagster_run for r in instance.get_run_records(
                filters=RunsFilter(tags={"dagster/partition": b}))] for b in batches}
        delivered = _topic_event_ids(settings)  # before the stack (and its in-memory broker) stops
    finally:
        stack.stop()
        _kill_leftovers(tmp_path)

    print(f"\nfault injection, seed {SEED}: {len(kills)} kills, {stack.restarts} whole-stack restarts")
    print(" kill  target       processes  at (s)  what")
    for n, target, count, at, names in kills:
        print(f" {n:4d}  {target:11s}  {count:9d}  {at:6.1f}  {names}")
    print(f"kills by target: {dict(Counter(k[1] for k in kills))}")
    end_states = Counter(doc["status"] for doc in outcomes.values())
    killed_after_last_step = sum(1 for b, doc in outcomes.items() if doc["status"] == "completed" and not any(
        r.status == DagsterRunStatus.SUCCESS for r in runs[b]))
    print(f"batches: {len(batches)}, outcomes: {dict(end_states)}, runs per batch: "
          f"{dict(Counter(len(r) for r in runs.values()))}, completed by a run killed after its last step: "
          f"{killed_after_last_step}")
    print("\n".join(stack.broker_lines))
    expected = {b: _expected_event_ids(services, b) for b, d in outcomes.items() if d["status"] == "completed"}
    wanted = [i for ids in expected.values() for i in ids]
    print(f"events: {len(wanted)} expected for the completed batches, {sum(1 for i in wanted if delivered[i])} "
          f"on the topic, {sum(delivered[i] - 1 for i in wanted if delivered[i] > 1)} duplicate copies (consumers "
          f"drop them by event_id; a broker restart republishes what the lost broker had acknowledged)")

    assert len(kills) >= KILLS, f"only {len(kills)} kills in the time allowed"
    problems = []
    for batch, n in batches.items():
        doc = outcomes[batch]
        if doc["status"] == "failed":
            if not doc.get("error"):
                problems.append(f"{batch}: failed without a reason")
            continue
        if doc["status"] != "completed":
            problems.append(f"{batch}: stuck in {doc['status']!r}")
            continue
        originals = [r for r in runs[batch] if "dagster/parent_run_id" not in r.tags]
        successes = [r for r in runs[batch] if r.status == DagsterRunStatus.SUCCESS]
        # One run per batch (plus retries of it), never two that both succeed. A run killed after its last
        # step finished (the batch is complete) may end FAILURE with nothing left to retry: counted below.
        if len(originals) != 1 or len(successes) > 1:
            problems.append(f"{batch}: {len(originals)} original run(s), {len(successes)} successful")
        images = list(services.metadata.query("images", partition_key=batch))
        if len(images) != n or len({d["id"] for d in images}) != n:
            problems.append(f"{batch}: {len(images)} documents for {n} images")
        files = list(services.lake.list(f"processed/{batch}"))
        if len(files) != n * 6 + 1:
            problems.append(f"{batch}: {len(files)} lake objects for {n} images (want {n * 6 + 1})")
        if missing := [i for i in expected[batch] if not delivered[i]]:
            problems.append(f"{batch}: {len(missing)} of its {len(expected[batch])} events never reached the "
                            f"topic: {missing[:3]}")
    assert problems == [], "\n".join(problems)
    assert end_states["completed"] >= len(batches) // 2  # recovery really worked for most


def test_a_two_minute_broker_outage_and_a_store_lock_fail_no_batch(tmp_path):
    """The broker frozen (SIGSTOP: connections hang, nothing answers) for over two minutes while batches run:
    every batch completes on time with its events kept as pending (`imgpipe status` says so), and once the
    broker answers again the events sensor delivers every event. Then the metadata store is locked for 40 s
    (longer than SQLite's 30 s busy timeout) while a batch runs: it still completes (its run retried)."""
    import sqlite3

    from orchestration.domain.status import batch_status
    from tests.support.stack import local_env, settings_from

    env = local_env(tmp_path, IMGPIPE_WORKERS="1", IMGPIPE_RUN_MAX_RETRIES="3")
    settings = settings_from(env)
    photos = [jpeg_bytes(synthetic_photo(800, 600, i * 40, str(i))) for i in range(3)]
    stack = DevStack(env, "--no-sample").ready()
    services = wiring.services(settings)
    broker: list[int] = []

    def upload(n: int, user: str) -> str:
        return upload_batch(services, [IntakeItem.from_bytes(f"{i}.jpg", photos[i]) for i in range(n)],
                            user_id=user).batch_id

    def wait_all(batch_ids, done, timeout: float) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while True:
            states = {b: batch_status(services, b) for b in batch_ids}
            if all(done(s) for s in states.values()) or time.monotonic() > deadline:
                return states
            time.sleep(2)

    try:
        broker = [p for p in descendants(stack.pid) if "tansu" in cmdline(p)]
        assert broker, "no broker in the stack"
        for pid in broker:
            os.kill(pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        batches = [upload(3, "ann"), upload(2, "bob"), upload(1, "cyd")]
        during = wait_all(batches, lambda s: s["status"] == "completed", 110)
        assert {b: s["status"] for b, s in during.items()} == {b: "completed" for b in batches}, \
            {b: (s["status"], s["error"]) for b, s in during.items()}
        assert all(s["events"]["state"] == "pending" for s in during.values()), [s["events"] for s in during.values()]
        time.sleep(max(0.0, 125 - (time.monotonic() - frozen_at)))  # at least two minutes frozen
        for pid in broker:
            os.kill(pid, signal.SIGCONT)
        outage = time.monotonic() - frozen_at

        # A store lock longer than the busy timeout, while a batch runs.
        locked = upload(3, "dee")
        time.sleep(1.5)
        conn = sqlite3.connect(settings.metadata_db, isolation_level=None, timeout=30)
        conn.execute("BEGIN EXCLUSIVE")
        time.sleep(40)
        conn.execute("ROLLBACK")
        conn.close()

        everything = [*batches, locked]
        after = wait_all(everything, lambda s: s["status"] == "completed" and s["events"]["state"] == "delivered", 300)
        delivered = _topic_event_ids(settings)
    finally:
        for pid in broker:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        stack.stop(timeout=60)
        _kill_leftovers(tmp_path)

    print(f"\nbroker frozen for {outage:.0f} s, store locked for 40 s: "
          + ", ".join(f"{b}: {s['status']}, events {s['events']['state']} after {s['events']['attempts']} retries"
                      for b, s in after.items()))
    assert {b: (s["status"], s["events"]["state"]) for b, s in after.items()} == \
        {b: ("completed", "delivered") for b in everything}
    for b in everything:
        missing = [i for i in _expected_event_ids(services, b) if not delivered[i]]
        assert not missing, f"{b}: events never delivered: {missing}"
