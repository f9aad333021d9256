"""The supervised dev stack: a taken port is named with the program on it; a child that dies is restarted
(bounded); every child is stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest


from orchestration.devtools import kafka_broker
from orchestration.devtools import processes
from orchestration.devtools.supervisor import MAX_RESTARTS, Child, supervise_once

SLEEP = ["60"]


def test_a_taken_port_is_an_error_naming_the_port_and_the_program(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import socket, time; s = socket.socket(); "
                               "s.bind(('127.0.0.1', 0)); s.listen(); print(s.getsockname()[1], flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(holder.stdout.readline())
        env = {**os.environ, "IMGPIPE_DATA_DIR": str(tmp_path), "IMGPIPE_WEBSERVER_PORT": str(port),
               "IMGPIPE_WEB": "false", "IMGPIPE_KAFKA_BOOTSTRAP": f"127.0.0.1:{processes.free_port()}"}
        proc = subprocess.run([sys.executable, "-m", "orchestration.cli", "dev", "--no-sample"], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"port {port} (IMGPIPE_WEBSERVER_PORT" in proc.stderr
        assert f"pid {holder.pid} (" in proc.stderr and "socket" in proc.stderr  # who holds it
        assert "Traceback" not in proc.stderr
        assert "Kafka broker (Tansu) pid" not in proc.stdout  # nothing was started
    finally:
        holder.kill()
        holder.wait()


def _sleeper(on_start):
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(float(sys.argv[1]))", SLEEP[0]])
    on_start(proc)
    return proc


def test_a_killed_child_is_always_restarted_and_a_crash_loop_is_bounded():
    child = Child("sleeper", _sleeper)
    child.launch()
    try:
        assert supervise_once([child]) is None  # alive: nothing to do
        for _ in range(MAX_RESTARTS + 3):  # killed from outside, however often: restarted every time
            first = child.proc.pid
            os.kill(first, signal.SIGKILL)
            child.proc.wait()
            assert supervise_once([child]) is None
            assert child.proc.pid != first and child.proc.poll() is None and child.quick_exits == 0
        child.proc.kill()
        child.proc.wait()
        SLEEP[0] = "0"  # now it exits by itself (code 0) right after every start: a crash loop
        reasons = [supervise_once([child]) for _ in range(MAX_RESTARTS + 2)]
        for _ in range(20):
            if reasons[-1]:
                break
            child.proc.wait()
            reasons.append(supervise_once([child]))
        assert reasons[-1] and "sleeper exited with code 0" in reasons[-1] and "in a row" in reasons[-1]
    finally:
        SLEEP[0] = "60"
        if child.proc and child.proc.poll() is None:
            child.proc.kill()


def test_start_hooks_register_the_process_before_it_is_ready(tmp_path):
    """A Ctrl-C while a child starts must find it registered: the hook fires before the readiness wait."""
    seen = []
    port = processes.free_port()

    def on_start(proc):
        seen.append((proc.pid, processes.port_in_use("127.0.0.1", port)))

    broker = kafka_broker.start_broker(port, on_start=on_start)
    try:
        assert seen and seen[0][0] == broker.pid
    finally:
        processes.stop_process(broker)


def test_a_producer_outlives_a_broker_that_lost_its_state(tmp_path):
    """A restarted local broker starts without its log and without the idempotent producers' state: the
    old producer's first flush fails (UnknownProducerId), and the client then starts a new producer, so the
    next publish goes through instead of failing for the rest of the process's life."""
    from orchestration.adapters.kafka.producer import KafkaResultStream
    from orchestration.adapters.kafka.readers import ResultReader
    from orchestration.adapters.kafka.connection import ResultStreamError
    from orchestration.adapters.kafka.admin import ensure_topic

    port = processes.free_port()
    bootstrap = f"127.0.0.1:{port}"
    broker = kafka_broker.start_broker(port)
    stream = KafkaResultStream(bootstrap, "results")
    try:
        ensure_topic(bootstrap, "results")
        stream.publish("u", {"event_id": "before"})
        stream.flush()
        broker.kill()
        broker.wait()
        broker = kafka_broker.start_broker(port)
        ensure_topic(bootstrap, "results")
        stream.publish("u", {"event_id": "lost"})
        with pytest.raises(ResultStreamError):
            stream.flush(timeout_seconds=15)
        stream.publish("u", {"event_id": "after"})
        stream.flush(timeout_seconds=15)
        reader = ResultReader(bootstrap, "results")
        try:
            seen = [e["event_id"] for _, e in reader.follow(lambda k, e: e["event_id"] == "after", timeout_seconds=20)]
        finally:
            reader.close()
        assert seen == ["after"]
    finally:
        stream.close()
        processes.stop_process(broker)


def test_the_run_worker_preload_loads_what_a_run_imports():
    """The code server's forkserver preloads what each run would otherwise import after the fork (~0.6 CPU-s
    of a 4-image run). Every module it names exists in this Dagster — a Dagster upgrade that moves one
    fails here instead of quietly making runs slower — and the instance's storage stack is among them."""
    from orchestration.devtools import code_server

    assert "orchestration.devtools.run_worker_preload" in code_server.PRELOAD
    probe = ("import sys, orchestration.devtools.run_worker_preload as p; print(p.MISSING); "
             "print(all(m in sys.modules for m in ('dagster._core.storage.event_log.sqlite.sqlite_event_log', "
             "'sqlalchemy.dialects.sqlite', 'alembic.command', 'kafka', 'PIL.WebPImagePlugin')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.split("\n")[:2] == ["[]", "True"], out.stdout + out.stderr


def test_the_run_worker_preload_builds_the_repository_a_run_loads():
    """A run worker loads its job through the code pointer; after the preload that finds the repository
    and the job already built (0.4 CPU-s cold in a fresh process, under 0.01 s here)."""
    probe = (
        "import time, orchestration.devtools.run_worker_preload as p\n"
        "from dagster._core.code_pointer import ModuleCodePointer\n"
        "from dagster._core.definitions.reconstruct import ReconstructableRepository\n"
        "from orchestration.definitions import defs\n"
        "print(bool(vars(defs)))\n"  # the repository is cached on the Definitions object already
        "built = defs.get_repository_def()\n"
        "t = time.process_time()\n"
        "repo = ReconstructableRepository(ModuleCodePointer('orchestration.definitions', 'defs', '.'))\n"
        "job = repo.get_reconstructable_job('process_batch').get_definition()\n"
        "print(p.JOBS, job is built.get_job('process_batch'), repo.get_definition() is built)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().split("\n")
    assert lines[0] == "True" and lines[1].endswith("True True") and "'process_batch'" in lines[1], out.stdout + out.stderr


def test_a_page_follower_misses_nothing_when_the_broker_restarts_without_its_log(tmp_path):
    """The web page's follower stood at offset 3 of a log the restarted broker no longer has (2 records; the
    local broker then answers nothing at offset 3 rather than "out of range"): once its partition has been
    quiet for a while it notices that the last record it read is gone and reads the new log from its start —
    the event published after the restart arrives, the republished one it saw before is dropped by id —
    instead of waiting until the new log grows past its old position."""
    import time

    from orchestration.adapters.kafka.producer import KafkaResultStream
    from orchestration.adapters.kafka.readers import UserEventFollower
    from orchestration.adapters.kafka.admin import ensure_topic

    port = processes.free_port()
    bootstrap = f"127.0.0.1:{port}"
    broker = kafka_broker.start_broker(port)
    follower = None
    try:
        ensure_topic(bootstrap, "results", partitions=1)
        follower = UserEventFollower(bootstrap, "results", "u", since=time.time() - 60)
        follower.RECHECK_SECONDS = 1.0  # (10 s on the page)
        stream = KafkaResultStream(bootstrap, "results")
        for i in range(3):
            stream.publish("u", {"event_id": f"e{i}", "user_id": "u"})
        stream.flush()
        stream.close()
        seen, deadline = [], time.monotonic() + 20
        while len(seen) < 3 and time.monotonic() < deadline:
            seen += [e["event_id"] for e in follower.poll(500)]
        assert seen == ["e0", "e1", "e2"]

        broker.kill()
        broker.wait()
        broker = kafka_broker.start_broker(port)
        ensure_topic(bootstrap, "results", partitions=1)
        stream = KafkaResultStream(bootstrap, "results")
        stream.publish("u", {"event_id": "e2", "user_id": "u"})  # republished by the stack's refill
        stream.publish("u", {"event_id": "e3", "user_id": "u"})  # new since the restart
        stream.flush()
        stream.close()
        after, deadline = [], time.monotonic() + 30
        while "e3" not in after and time.monotonic() < deadline:
            after += [e["event_id"] for e in follower.poll(500)]
        assert after == ["e3"]
    finally:
        if follower is not None:
            follower.close()
        processes.stop_process(broker)


def test_the_local_daemon_ticks_sensors_every_second():
    """`imgpipe dev` runs Dagster's daemon with a 1 s sensor loop (orchestration/devtools/daemon.py): the
    setting exists in this Dagster and the daemon process applies it before it starts its loops."""
    probe = ("import orchestration.devtools.daemon as d; ok = d.install(); "
             "from dagster._daemon import sensor; print(ok, sensor.MIN_INTERVAL_LOOP_TIME)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "1.0"], out.stdout + out.stderr


def test_the_local_run_queue_looks_for_free_slots_every_quarter_second():
    """The daemon's run queue (orchestration/devtools/daemon.py) runs every 0.25 s and never sleeps longer
    than 0.125 s at a time; Dagster's own ran every dequeue_interval_seconds (1) in 0.5 s steps, so a slot a
    run freed stayed empty for up to 1.5 s and many small batches ran in waves. The queue daemon is built the
    way the daemon process builds it; its loop is driven with an event that records each wait."""
    probe = (
        "import orchestration.devtools.daemon as d\n"
        "from dagster import DagsterInstance\n"
        "from dagster._daemon import controller\n"
        "from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon\n"
        "ok = d.install_queue_loop()\n"
        "daemon = controller.create_daemon_of_type(QueuedRunCoordinatorDaemon.daemon_type(), DagsterInstance.ephemeral())\n"
        "rounds = []\n"
        "daemon.run_iteration = lambda ctx: (rounds.append(1), iter(()))[1]\n"
        "waits = []\n"
        "class Event:\n"
        "    def wait(self, timeout=None):\n"
        "        waits.append(timeout)\n"
        "        import time; time.sleep(timeout)\n"
        "        return False\n"
        "    def is_set(self): return False\n"
        "loop = daemon.core_loop(None, Event())\n"
        "while len(rounds) < 5: next(loop)\n"
        "print(ok, isinstance(daemon, QueuedRunCoordinatorDaemon), daemon.interval_seconds, max(waits))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "True", "0.25", "0.125"], out.stdout + out.stderr


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    kids = [int(p) for p in out.split()]
    return kids + [g for k in kids for g in _descendants(k)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("how", ["ctrl-c after starting it with SIGINT ignored", "terminal closed",
                                 "SIGHUP under nohup, then ctrl-c"])
def test_the_stack_stops_with_its_children_however_it_was_started(tmp_path, how):
    """Ctrl-C stops `imgpipe dev` and every child even when it was started with SIGINT ignored (what a shell
    script's `imgpipe dev &` does; before, the stack ignored Ctrl-C for good), and a closed terminal (SIGHUP,
    with nobody left to read its output) stops it the same way instead of killing it alone and orphaning
    the broker, the code server and Dagster (they run in sessions of their own)."""
    import time

    kafka_port, web_port = processes.free_port(), processes.free_port()
    env = {**os.environ, "IMGPIPE_PROFILE": "local", "IMGPIPE_DATA_DIR": str(tmp_path / "data"),
           "IMGPIPE_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka_port}", "IMGPIPE_WEBSERVER_PORT": str(web_port),
           "IMGPIPE_WEB": "false"}
    ignore_sigint = how.startswith("ctrl-c")

    def before_exec():
        os.setsid()
        # As from a terminal, whatever this test runs under (CI under nohup ignores SIGHUP, and a stack
        # started with SIGHUP ignored rightly keeps ignoring it), or under nohup.
        signal.signal(signal.SIGHUP, signal.SIG_IGN if "nohup" in how else signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN if ignore_sigint else signal.SIG_DFL)

    proc = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "dev", "--no-sample"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=before_exec)
    children: list[int] = []
    try:
        for line in proc.stdout:
            if "Press Ctrl-C" in line:
                break
        else:
            pytest.fail(f"the stack did not start (exit code {proc.wait()})")
        children = _descendants(proc.pid)
        assert len(children) >= 3, children  # broker, code server (+ its forkserver), webserver, daemon
        if "nohup" in how:
            os.kill(proc.pid, signal.SIGHUP)
            time.sleep(3)
            assert proc.poll() is None, "SIGHUP stopped a stack started under nohup"
            os.kill(proc.pid, signal.SIGINT)
        elif ignore_sigint:
            os.kill(proc.pid, signal.SIGINT)
        else:
            proc.stdout.close()  # the terminal is gone: its output has nowhere to go
            os.kill(proc.pid, signal.SIGHUP)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`imgpipe dev` did not stop within 90 s of {how}")
        assert proc.returncode == 0, proc.returncode
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in children if _alive(p)], f"left running after {how}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in children:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_dagster_migration_scripts_are_read_once_per_process(tmp_path):
    """The code server, the daemon and the run workers read Dagster's migration scripts once
    (orchestration/devtools/sqlite_storage.py), not at every instance they open: opening the local
    SQLite storage again reads no script. Fails if an alembic or Dagster upgrade makes the change a no-op."""
    probe = (
        "import sys\n"
        "from alembic.script import base\n"
        "from dagster._core.storage.sqlite_storage import DagsterSqliteStorage\n"
        "from orchestration.devtools import sqlite_storage\n"
        "reads = []\n"
        "original = base.Script._from_path\n"
        "base.Script._from_path = classmethod(lambda cls, *a, **k: (reads.append(1), original.__func__(cls, *a, **k))[1])\n"
        "DagsterSqliteStorage.from_local(sys.argv[1]).dispose()\n"
        "before = len(reads)\n"
        "print(sqlite_storage.read_migration_scripts_once())\n"
        "reads.clear()\n"
        "for _ in range(3):\n"
        "    DagsterSqliteStorage.from_local(sys.argv[1]).dispose()\n"
        "print(before, len(reads))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "dagster")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    enabled, counts = out.stdout.split("\n")[:2]
    before, after = map(int, counts.split())
    assert enabled == "True" and before > 50 and after == 0, out.stdout


def test_dagster_sqlite_engines_are_reused_and_runs_still_record_everything(tmp_path):
    """With the storage tuned as the stack's Dagster processes have it, a second materialization creates no
    SQLAlchemy engine (the first made them), and every run's events, materializations and status are
    recorded and read back as without it; a run's database deleted under the storage is simply created
    again. Fails if a Dagster upgrade stops calling the function that is replaced."""
    probe = (
        "import os, sys, sqlalchemy\n"
        "from orchestration.devtools import sqlite_storage\n"
        "print(sqlite_storage.tune())\n"
        "from sqlalchemy.engine.base import Engine\n"
        "made = []\n"
        "original = Engine.__init__\n"
        "Engine.__init__ = lambda self, *a, **k: (made.append(1), original(self, *a, **k))[1]\n"
        "from dagster import AssetKey, DagsterInstance, asset, materialize\n"
        "@asset\n"
        "def numbers():\n"
        "    return [1, 2, 3]\n"
        "with DagsterInstance.from_config(sys.argv[1]) as instance:\n"
        "    first = materialize([numbers], instance=instance)\n"
        "    made_first = len(made)\n"
        "    made.clear()\n"
        "    second = materialize([numbers], instance=instance)\n"
        "    made_second = len(made)\n"
        "    shard = os.path.join(sys.argv[1], 'history', 'runs', second.run_id + '.db')\n"
        "    os.remove(shard)\n"
        "    third = materialize([numbers], instance=instance)\n"
        "    ok = all(r.success for r in (first, second, third))\n"
        "    latest = instance.get_latest_materialization_event(AssetKey('numbers')).run_id\n"
        "    records = len(instance.get_run_records())\n"
        "    events = len(instance.all_logs(third.run_id))\n"
        "print(made_first, made_second, ok, latest == third.run_id, records, events > 5)\n"
    )
    (tmp_path / "dagster").mkdir()
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "dagster")], capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    tuned, figures = out.stdout.strip().split("\n")[-2:]
    assert tuned == "{'migration scripts read once': True, 'engines reused': True}", out.stdout
    made_first, made_second, ok, latest, records, events = figures.split()
    assert int(made_first) > 0 and ok == "True" and latest == "True" and records == "3" and events == "True", figures
    # The second run made engines only for its own new database, not per connection (was dozens).
    assert int(made_second) <= 2, figures


def _forkserver_children(pid: int) -> list[int]:
    """The run workers' forkservers among a process's children."""
    found = []
    for child in open(f"/proc/{pid}/task/{pid}/children").read().split():
        try:
            cmdline = open(f"/proc/{child}/cmdline", "rb").read()
        except OSError:
            continue
        if b"forkserver" in cmdline and b"run_worker_preload" in cmdline:
            found.append(int(child))
    return found


def test_the_code_server_starts_its_run_workers_forkserver_before_the_first_run(offline_settings):
    """The forkserver that run workers are forked from takes ~2 s to preload. The code server starts it at
    start-up, so the first batch after the stack starts does not wait for it. No run is launched here: on
    the old code no forkserver existed until the first one."""
    import time

    from orchestration.devtools import devstack

    devstack.prepare_dagster_home(offline_settings)
    port = processes.free_port()
    log = offline_settings.dagster_home / "code_server.log"
    proc = devstack.start_code_server(port, devstack.stack_env(offline_settings), log, on_start=lambda p: None)
    try:
        deadline, found = time.monotonic() + 45, []
        while not found and time.monotonic() < deadline and proc.poll() is None:
            found = _forkserver_children(proc.pid)
            time.sleep(0.2)
        assert found, f"no forkserver started before the first run; see {log}: {log.read_text()[-2000:]}"
    finally:
        devstack.stop_dagster(proc)
    time.sleep(1)
    assert not any(os.path.exists(f"/proc/{pid}/cmdline") and b"forkserver" in open(f"/proc/{pid}/cmdline", "rb").read()
                   for pid in found), "the forkserver outlived its code server"


def test_the_stacks_children_stop_when_imgpipe_dev_is_killed_outright(tmp_path):
    """`kill -9` of `imgpipe dev` alone (the OOM killer, a process manager) cannot be handled by it. Before,
    its children ran on in sessions of their own — the broker, the code server, Dagster's webserver and
    daemon, the OIDC provider, the web app — and held their ports, so the next `imgpipe dev` refused to start
    until someone killed them by hand. Now each gets SIGTERM when its parent dies (processes.die_with_parent), and the
    same stack starts again on the same ports."""
    import time

    ports = {name: processes.free_port() for name in ("KAFKA", "WEBSERVER", "WEB", "OIDC")}
    env = {**os.environ, "IMGPIPE_PROFILE": "local", "IMGPIPE_DATA_DIR": str(tmp_path / "data"),
           "IMGPIPE_KAFKA_BOOTSTRAP": f"127.0.0.1:{ports['KAFKA']}", "IMGPIPE_WEBSERVER_PORT": str(ports["WEBSERVER"]),
           "IMGPIPE_WEB_PORT": str(ports["WEB"]), "IMGPIPE_OIDC_PORT": str(ports["OIDC"])}

    def start() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "dev", "--no-sample"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line:
                return proc
        pytest.fail(f"the stack did not start (exit code {proc.wait()}):\n{''.join(lines[-15:])}")

    first = start()
    children = _descendants(first.pid)
    second = None
    try:
        names = " ".join(open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace") for p in children)
        for program in ("tansu", "code_server", "dagster_webserver", "devtools.daemon", "oidc_provider_mock", "streamlit"):
            assert program in names, f"{program} is not among the stack's processes"
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace")[:80] for p in children if _alive(p)]
        assert not left, f"left running after imgpipe dev was killed: {left}"
        second = start()  # the ports are free again
        os.kill(second.pid, signal.SIGINT)
        assert second.wait(timeout=90) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        for p in children:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
