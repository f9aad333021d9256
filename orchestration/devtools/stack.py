"""`imgpipe dev`: the whole local stack on one machine, no cloud account.

Starts, in this order, each as a supervised child process (``supervisor``):
1. the Kafka broker (Tansu) on ``IMGPIPE_KAFKA_BOOTSTRAP`` and the results topic (a broker already listening
   there is used instead); for the 'emulated' profile, Azurite and cosmosdb-server;
2. the code server (Dagster's gRPC server for the imgpipe code location), the Dagster webserver and the Dagster
   daemon (sensors — the batch sensor among them —, run queue, retries), with ``DAGSTER_HOME`` under the data
   dir (``dagster_home``); the code server and daemon are tuned by ``dagster_tuning`` unless
   ``IMGPIPE_DEV_TUNING=off``;
3. unless ``IMGPIPE_WEB=false``, a local OIDC provider and the web app (``webstack``);
then optionally uploads the sample batch, follows its events on Kafka and prints where to look (``banner``).
Ctrl-C (or SIGTERM, or a closed terminal) stops everything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pydantic import BaseModel, SecretStr

from orchestration.adapters.kafka.admin import ensure_topic
from orchestration.devtools import dagster_tuning, kafka_broker, processes, webstack
from orchestration.devtools.banner import follow_batch, log, print_ready
from orchestration.devtools.dagster_home import RunWatchdog, fail_orphaned_runs, prepare_dagster_home
from orchestration.devtools.dev_settings import DevSettings
from orchestration.devtools.processes import StartupFailed, die_with_parent, log_tail
from orchestration.devtools.sample import make_sample_batch
from orchestration.devtools.supervisor import Child, Supervisor, stop_signals
from orchestration.domain.identity import opaque_user_id
from orchestration.domain.intake import IntakeItem, upload_batch
from orchestration.domain.status import batch_status
from orchestration.settings import ConfigurationError, check_profile, remove_stack_file, write_stack_file
from orchestration.wiring import CLIENTS, private_data_dir


def stack_env(settings: DevSettings) -> dict[str, str]:
    """The environment of the processes the stack starts: every setting as its IMGPIPE_* variable, so the
    Dagster daemon, the run workers and the webserver see exactly this configuration."""
    env = {**os.environ, **settings.to_env()}
    env.update(DAGSTER_HOME=str(settings.dagster_home), PYTHONUNBUFFERED="1")
    return env


def start_emulators(settings: DevSettings, launch) -> DevSettings:
    """Azurite (Blob + Queue) and cosmosdb-server for the 'emulated' profile, installed when missing, each
    started through ``launch`` (registered and supervised). Returns the settings pointing at them."""
    from orchestration.devtools import emulators

    tools = emulators.ensure_tools(settings.tools_dir, log=log)
    blob, queue, cosmos = (processes.free_port() for _ in range(3))
    azurite = launch(Child("Azurite", lambda on_start: emulators.start_azurite(
        tools, blob, queue, log_path=settings.log_dir / "azurite.log", on_start=on_start)))
    log(f"Azurite pid {azurite.pid}: blob 127.0.0.1:{blob}, queue 127.0.0.1:{queue}")
    server = launch(Child("cosmosdb-server", lambda on_start: emulators.start_cosmos(
        tools, cosmos, log_path=settings.log_dir / "cosmos.log", on_start=on_start)))
    log(f"cosmosdb-server pid {server.pid}: https://127.0.0.1:{cosmos}")
    return type(settings)(**{
        **settings.model_dump(),
        "storage_connection_string": emulators.azurite_connection_string(blob, queue),
        "cosmos_endpoint": f"https://127.0.0.1:{cosmos}",
        "cosmos_key": emulators.COSMOS_DEV_KEY,
        "cosmos_verify_tls": False,
    })


# The only secrets stack.json may carry: the emulators' public development keys (profile 'emulated').
EMULATOR_SECRETS = ("storage_connection_string", "cosmos_key")


def stack_values(settings: DevSettings) -> dict:
    """What a second shell needs to reach this stack (written to <data_dir>/stack.json while it runs):
    every setting that differs from its default, without secrets other than the emulators' keys."""
    values = {}
    for name, value in settings:
        if name == "data_dir" or value == type(settings).model_fields[name].get_default(call_default_factory=True):
            continue
        if isinstance(value, SecretStr) and not (settings.profile == "emulated" and name in EMULATOR_SECRETS):
            continue
        values[name] = ([v.model_dump(exclude_none=True) if isinstance(v, BaseModel) else v for v in value]
                        if isinstance(value, tuple) else value)  # (JSON for stack.json: size bands as dicts)
    return values


def _wait_http(url: str, timeout_seconds: float, proc: subprocess.Popen, log_file: Path) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartupFailed(f"the Dagster webserver exited with code {proc.returncode} while starting. The end of "
                                f"its log ({log_file}):\n{log_tail(log_file)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise StartupFailed(f"{url} not ready after {timeout_seconds:.0f} s. The end of its log ({log_file}):\n"
                        f"{log_tail(log_file)}")


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
            raise StartupFailed(f"the code server exited with code {proc.returncode} while starting. The end of its "
                                f"log ({log_path}):\n{log_tail(log_path)}")
        if code_server_serving(port):
            return proc
        time.sleep(0.3)
    raise StartupFailed(f"the code server did not answer within {timeout_seconds:.0f} s. The end of its log "
                        f"({log_path}):\n{log_tail(log_path)}")


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


class PortBusy(ConfigurationError):
    """A port the stack needs is taken; the message names the port, its setting and the program on it."""


def check_ports(settings: DevSettings) -> None:
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

# Kafka's default retention (retention.ms) is 7 days: a fresh local broker is given back what a real one
# would still hold.
REPLAY_WINDOW = timedelta(days=7)


def refill_broker(settings: DevSettings) -> int:
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


def _refill(settings: DevSettings) -> None:
    try:
        count = refill_broker(settings)
    except Exception as exc:  # the store is busy: the pages read it anyway; say so and go on
        log(f"could not give the Kafka broker back its events ({type(exc).__name__}: {exc})")
        return
    if count:
        log(f"Kafka broker: {count} earlier event(s) published again (the local broker keeps its log in memory)")

def start_broker(settings: DevSettings, supervisor: Supervisor) -> bool:
    """The local Kafka broker, unless one already listens on IMGPIPE_KAFKA_BOOTSTRAP; then the topic. Returns
    whether the broker is the stack's own."""
    host, _, port = settings.kafka_bootstrap.rpartition(":")
    local = host in ("127.0.0.1", "localhost")
    own = local and not processes.port_in_use("127.0.0.1", int(port))
    if own:
        broker = supervisor.launch(Child("Kafka broker", lambda on_start: kafka_broker.start_broker(
            int(port), log_path=settings.log_dir / "kafka.log", on_start=on_start)))
        log(f"Kafka broker (Tansu) pid {broker.pid} on {settings.kafka_bootstrap}")
    else:
        log(f"using the Kafka broker already at {settings.kafka_bootstrap} "
            f"({processes.port_owner(int(port)) if local else 'remote'})")
    ensure_topic(settings.kafka_bootstrap, settings.kafka_topic)
    return own


def start_webserver(settings: DevSettings, workspace: Path, on_start) -> subprocess.Popen:
    """Dagster's webserver (the UI and its GraphQL API); returns once it answers."""
    log_path = settings.log_dir / "dagster.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-w", str(workspace), "-h", "127.0.0.1",
         "-p", str(settings.webserver_port)],
        env=stack_env(settings), stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
        start_new_session=True, preexec_fn=die_with_parent(),
    )
    on_start(proc)
    log(f"Dagster webserver pid {proc.pid}, log {log_path}; waiting for it (about 10 s) ...")
    _wait_http(f"{settings.dagster_ui_url}/server_info", 120, proc, log_path)
    return proc


def start_daemon(settings: DevSettings, workspace: Path, on_start) -> subprocess.Popen:
    """Dagster's daemon: sensors (the batch sensor among them), the run queue, run retries, run monitoring."""
    log_path = settings.log_dir / "dagster.log"
    proc = subprocess.Popen(
        dagster_tuning.command("daemon", ["-w", str(workspace)]),
        env=stack_env(settings), stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
        start_new_session=True, preexec_fn=die_with_parent(),
    )
    on_start(proc)
    log(f"Dagster daemon pid {proc.pid} (sensors, run queue, retries, run monitoring), log {log_path}")
    return proc


def start_dagster(settings: DevSettings, supervisor: Supervisor) -> None:
    """The code server, the webserver and the daemon; returns once the UI answers."""
    code_port = processes.free_port()
    workspace = write_workspace(settings.dagster_home, code_port)
    if not dagster_tuning.enabled():
        log(f"{dagster_tuning.ENV}=off (or another Dagster than {dagster_tuning.WRITTEN_FOR}): "
            "Dagster's own processes, untuned")
    code_log = settings.log_dir / "code-server.log"
    supervisor.launch(Child("code server", lambda on_start: start_code_server(
        code_port, stack_env(settings), code_log, on_start=on_start),
        stop=stop_dagster))  # SIGINT, then its whole process group (forkserver, run workers)
    log(f"code server on 127.0.0.1:{code_port}, log {code_log}")
    supervisor.launch(Child("Dagster webserver", lambda on_start: start_webserver(settings, workspace, on_start),
                            stop=stop_dagster))
    supervisor.launch(Child("Dagster daemon", lambda on_start: start_daemon(settings, workspace, on_start),
                            stop=stop_dagster))
    log(f"Dagster UI ready at {settings.dagster_ui_url}")


def start_web(settings: DevSettings, supervisor: Supervisor) -> str:
    """The local OIDC provider and the web app; returns the app's address."""
    oidc = supervisor.launch(Child("OIDC provider", lambda on_start: webstack.start_oidc(
        settings, settings.log_dir / "oidc.log", on_start=on_start)))
    log(f"local OIDC provider pid {oidc.pid} on http://127.0.0.1:{settings.oidc_port} "
        f"(users: {', '.join(settings.dev_users)})")
    secrets_file = webstack.write_secrets(settings, settings.data_dir / "web")
    web = supervisor.launch(Child("web app", lambda on_start: webstack.start_web(
        settings, stack_env(settings), secrets_file, settings.log_dir / "web.log", on_start=on_start)))
    url = f"http://127.0.0.1:{settings.web_port}"
    log(f"web app pid {web.pid} ready at {url}")
    return url


def upload_sample(settings: DevSettings) -> None:
    """Where a batch enters, as a user's would: the sample batch, followed event by event."""
    files = make_sample_batch(settings.data_dir / "sample")
    services = CLIENTS.services(settings)
    # The first local user's id, as the web app derives it from their token (issuer + subject).
    user = (opaque_user_id(webstack.local_issuer(settings), settings.dev_users[0])
            if settings.web and settings.dev_users else "sample-user")
    result = upload_batch(services, [IntakeItem.from_path(p) for p in files], user_id=user,
                          metadata={"title": "imgpipe sample batch", "source": "imgpipe dev"})
    log(f"uploaded sample batch {result.batch_id}: {len(result.accepted)} accepted, "
        f"{len(result.refused)} refused at intake")
    for f in result.refused:
        log(f"  refused {f.name}: {f.reason}")
    follow_batch(settings, result.batch_id, total=len(files))
    status = batch_status(services, result.batch_id)
    log(f"status: {status['status']} — `imgpipe status {result.batch_id}` for details")


def run_dev(settings: DevSettings, *, sample: bool = True, exit_after_sample: bool = False) -> int:
    private_data_dir(settings)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    home = prepare_dagster_home(settings)
    orphans = fail_orphaned_runs(home)
    if orphans:
        log(f"{len(orphans)} run(s) left running by a previous stack had lost their worker; marked failed "
            f"(they are retried): {', '.join(orphans)}")
    supervisor = Supervisor()
    pid = os.getpid()

    def stopped() -> None:
        supervisor.stop_all()
        CLIENTS.close_all()
        remove_stack_file(settings, pid=pid)

    with stop_signals(on_exit=stopped):
        try:
            check_ports(settings)
            own_broker = start_broker(settings, supervisor)
            if settings.profile == "emulated":
                if settings.storage_connection_string and settings.cosmos_endpoint:
                    log("using the Azurite and Cosmos DB servers given by IMGPIPE_STORAGE_CONNECTION_STRING / "
                        "IMGPIPE_COSMOS_ENDPOINT")
                else:
                    settings = start_emulators(settings, supervisor.launch)
            check_profile(settings)
            if own_broker:
                _refill(settings)
            if settings.web:
                settings = webstack.with_local_issuer(settings)
            write_stack_file(settings, stack_values(settings), pid=pid)
            start_dagster(settings, supervisor)
            web_url = start_web(settings, supervisor) if settings.web else None
            if sample:
                upload_sample(settings)
            print_ready(settings, web_url)
            if exit_after_sample:
                return 0
            return supervise(settings, supervisor, home)
        except KeyboardInterrupt:
            log("stopping ...")
            return 0


def supervise(settings: DevSettings, supervisor: Supervisor, home: Path) -> int:
    """Until stopped: restart children that exit, and fail runs whose run worker died (they are retried)."""
    watchdog = RunWatchdog(home)

    def after_restart(child: Child) -> None:
        if child.name == "Kafka broker":  # it started empty: the topic, then the events it had
            ensure_topic(settings.kafka_bootstrap, settings.kafka_topic)
            _refill(settings)

    def check_runs() -> None:
        try:
            for run_id in watchdog.check():
                log(f"run {run_id}: its run worker died; marked failed (it is retried)")
        except Exception as exc:  # the instance is busy or restarting: try again on the next check
            log(f"run watchdog: {type(exc).__name__}: {exc}")

    return supervisor.watch(on_restart=after_restart, every_pass=check_runs)
