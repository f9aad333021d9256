"""The only place that touches Dagster's internals: laptop-speed tuning of the local stack's Dagster processes.

Never in production (the code location never imports it). ``imgpipe dev`` starts its code server and daemon
through ``main``, which calls ``apply(role)`` once, then Dagster's own command. ``apply`` applies nothing, and
says so in one line, when ``IMGPIPE_DEV_TUNING=off`` or the installed Dagster is not ``WRITTEN_FOR``; otherwise
the role's patches, or only those ``IMGPIPE_DEV_TUNING`` names (comma-separated; bench/tuning.py measures each
on and off). Off, the stack runs Dagster's own CLIs (``command``). Why each patch is kept: docs/local-stack.md.
"""

from __future__ import annotations

import os
import sys

WRITTEN_FOR = "1.13.27"
ENV = "IMGPIPE_DEV_TUNING"
SENSOR_LOOP_SECONDS = 1.0  # Dagster's sensor daemon starts a round of ticks at most every 5 s
QUEUE_LOOP_SECONDS = 0.25  # Dagster's queue daemon: every dequeue_interval_seconds (an int >= 1), in 0.5 s steps

# Patch -> the roles (processes) it applies to. "run_worker" is the code server's forkserver: run workers
# are forked from it and inherit what it applied.
PATCHES = {
    "sensor_loop": ("daemon",),
    "queue_loop": ("daemon",),
    "run_worker_fork": ("code_server",),
    "sqlite": ("daemon", "code_server", "run_worker"),
    "image_worker_server": ("code_server",),
    "run_worker_preload": ("run_worker",),
}
_applied: dict[str, list[str]] = {}


def selected() -> set[str]:
    """The patches ``IMGPIPE_DEV_TUNING`` asks for: all (unset, ``on``), none (``off``) or the ones named."""
    from orchestration.devtools.dev_settings import DevSettings

    value = DevSettings().dev_tuning.strip().lower()
    if value in ("", "on", "1", "true"):
        return set(PATCHES)
    if value in ("off", "0", "false", "none"):
        return set()
    names = {n.strip() for n in value.split(",") if n.strip()}
    unknown = names - set(PATCHES)
    if unknown:
        _say(f"{ENV}: unknown patch(es) {sorted(unknown)} ignored; known: {', '.join(PATCHES)}")
    return names & set(PATCHES)


def enabled() -> bool:
    """Whether the stack should start its Dagster processes through this module at all."""
    if not selected():
        return False
    import importlib.metadata

    return importlib.metadata.version("dagster") == WRITTEN_FOR


def apply(role: str) -> list[str]:
    """Apply this role's patches in this process (once); returns the names applied."""
    if role in _applied:
        return _applied[role]
    import dagster

    chosen = selected()
    if not chosen:
        _say(f"{ENV}=off: Dagster runs untuned")
        applied: list[str] = []
    elif dagster.__version__ != WRITTEN_FOR:
        _say(f"written for Dagster {WRITTEN_FOR}, found {dagster.__version__}: no tuning applied (slower, correct)")
        applied = []
    else:
        applied = [name for name, roles in PATCHES.items()
                   if role in roles and name in chosen and _PATCH_FUNCS[name]()]
    _applied[role] = applied
    return applied


def _say(msg: str) -> None:
    print(f"[imgpipe dagster tuning] {msg}", file=sys.stderr, flush=True)


# --- the patches -------------------------------------------------------------------------------------------

def _sensor_loop() -> bool:
    """A batch waits for the next sensor round: 0-5 s with Dagster's loop, 0-1 s with this."""
    from dagster._daemon import sensor

    if not hasattr(sensor, "MIN_INTERVAL_LOOP_TIME"):
        return False
    sensor.MIN_INTERVAL_LOOP_TIME = SENSOR_LOOP_SECONDS
    return True


class _ShortWaits:
    """The daemon's shutdown event, waited on in steps of at most ``step`` seconds."""

    def __init__(self, event, step: float):
        self._event, self._step = event, step

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(self._step if timeout is None else min(timeout, self._step))

    def __getattr__(self, name):
        return getattr(self._event, name)


def _queue_loop() -> bool:
    """A run slot freed by a finished run is filled within 0.25 s instead of 0-1.5 s."""
    from dagster._daemon import controller
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    original = controller.create_daemon_of_type

    class PromptQueuedRunCoordinatorDaemon(QueuedRunCoordinatorDaemon):
        def core_loop(self, workspace_process_context, shutdown_event):
            yield from super().core_loop(workspace_process_context, _ShortWaits(shutdown_event, QUEUE_LOOP_SECONDS / 2))

    def create_daemon_of_type(daemon_type, instance):
        if daemon_type == QueuedRunCoordinatorDaemon.daemon_type():
            return PromptQueuedRunCoordinatorDaemon(interval_seconds=QUEUE_LOOP_SECONDS)
        return original(daemon_type, instance)

    controller.create_daemon_of_type = create_daemon_of_type
    return True


# What the run workers' forkserver imports: the code location, then this module's run-worker role.
FORKSERVER_PRELOAD = ["orchestration.definitions", "orchestration.devtools.run_worker_start"]


def forkserver_context():
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
    return ctx


def _run_worker_fork() -> bool:
    """Run workers are forks of one preloaded process instead of new interpreters (``spawn``): a run no
    longer imports Dagster and imgpipe again (about 1.5 CPU-s per run)."""
    from dagster._grpc import server

    original_init = server.DagsterApiServer.__init__

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self._mp_ctx = forkserver_context()

    server.DagsterApiServer.__init__ = __init__
    return True


def start_forkserver() -> bool:
    """Start the run workers' forkserver now (its preload takes ~2 s), not when the first run is launched."""
    from multiprocessing import forkserver

    try:
        forkserver_context()
        forkserver.ensure_running()
        return True
    except Exception as exc:  # noqa: BLE001 - an optimisation only: the first run starts it
        _say(f"the run workers' forkserver was not started ahead ({type(exc).__name__}: {exc})")
        return False


def _image_worker_server() -> bool:
    """Batch runs fork their image workers from one long-lived server instead of a forkserver of their own."""
    from orchestration.devtools.image_workers import start_image_worker_server

    return start_image_worker_server() is not None


# What a run worker would import after the fork (Dagster's instance, storage and executor modules and what they
# load lazily, the adapters); a module a Dagster upgrade moved is skipped.
RUN_WORKER_MODULES = (
    "dagster._core.instance.factory", "dagster._core.storage.sqlite_storage", "dagster._core.workspace.context",
    "dagster._core.storage.local_compute_log_manager", "dagster._core.run_coordinator.queued_run_coordinator",
    "dagster._core.launcher.default_run_launcher", "dagster._scheduler.scheduler", "dagster._daemon.controller",
    "dagster._core.executor.in_process", "dagster._core.execution.asset_backfill", "dagster._core.storage.root",
    "dagster._core.execution.plan.resume_retry", "dagster._core.secrets.env_file", "dagster._core.utility_ops",
    "dagster._core.execution.plan.active", "dagster._core.storage.migration.utils", "dagster._utils.test",
    "dagster._core.system_config.composite_descent", "dagster._core.workspace.autodiscovery",
    "dagster._core.definitions.repository_definition.repository_data_builder", "sqlalchemy.dialects.sqlite",
    "alembic.command", "alembic.config", "alembic.runtime.migration", "alembic.script", "watchdog.observers",
    "upath.implementations.local", "fsspec.implementations.local", "rich.console", "rich.traceback", "structlog",
    "tqdm", "orchestration.adapters.kafka.producer", "orchestration.adapters.local.lake",
    "orchestration.adapters.local.metadata", "orchestration.adapters.azure.lake", "orchestration.adapters.azure.cosmos",
)


def _run_worker_preload() -> bool:
    """Run workers start with what each would otherwise import after the fork, and the repository built."""
    import importlib

    from PIL import Image

    from orchestration.definitions import defs

    for name in RUN_WORKER_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    Image.init()  # every format plugin (Image.open would import them in each run)
    defs.get_repository_def().get_all_jobs()
    return True


def _sqlite() -> bool:
    """Dagster's SQLite storage opened the cheaper way: alembic's ~90 migration scripts parsed once per
    process (not at every instance opened), and its ``NullPool`` engines reused (not one per connection)."""
    import threading
    from collections import OrderedDict

    import sqlalchemy
    from alembic.script import ScriptDirectory
    from dagster._core.storage.event_log.sqlite import sqlite_event_log
    from dagster._core.storage.runs.sqlite import sqlite_run_storage
    from dagster._core.storage.schedules.sqlite import sqlite_schedule_storage
    from sqlalchemy.pool import NullPool

    modules = (sqlite_event_log, sqlite_run_storage, sqlite_schedule_storage)
    if not all(getattr(m, "create_engine", None) is sqlalchemy.create_engine for m in modules):
        return False
    scripts: dict = {}
    from_config = ScriptDirectory.__dict__["from_config"].__func__

    def once(cls, config):
        key = (cls, config.get_main_option("script_location"))
        if key not in scripts:
            scripts[key] = from_config(cls, config)
        return scripts[key]

    ScriptDirectory.from_config = classmethod(once)
    engines: OrderedDict = OrderedDict()
    lock = threading.Lock()

    def create_engine(url, **kwargs):
        if kwargs.get("poolclass") is not NullPool or not str(url).startswith("sqlite"):
            return sqlalchemy.create_engine(url, **kwargs)
        key = (str(url), repr(sorted(kwargs.items())))
        with lock:
            if key not in engines:
                engines[key] = sqlalchemy.create_engine(url, **kwargs)
                while len(engines) > 64:  # the runs, index and schedules databases and the runs' shards
                    engines.popitem(last=False)
            engines.move_to_end(key)
            return engines[key]

    for module in modules:
        module.create_engine = create_engine
    return True


_PATCH_FUNCS = {"sensor_loop": _sensor_loop, "queue_loop": _queue_loop, "run_worker_fork": _run_worker_fork,
                "sqlite": _sqlite, "image_worker_server": _image_worker_server, "run_worker_preload": _run_worker_preload}


# --- how the stack starts Dagster's processes -----------------------------------------------------------------

def command(role: str, args: list[str]) -> list[str]:
    """The command line of the local stack's ``daemon`` or ``code_server``: through this module when tuning
    is on, else Dagster's own CLI (``dagster-daemon run``, ``dagster api grpc``)."""
    if enabled():  # -c, not -m: processes forked from it must not re-run a __main__ module (multiprocessing)
        return [sys.executable, "-c", "import sys, orchestration.devtools.dagster_tuning as t; sys.exit(t.main())",
                role, *args]
    bin_dir = os.path.dirname(sys.executable)
    if role == "daemon":
        return [os.path.join(bin_dir, "dagster-daemon"), "run", *args]
    return [os.path.join(bin_dir, "dagster"), "api", "grpc", *args]


def _console_script(name: str):
    from importlib.metadata import entry_points

    [entry] = entry_points(group="console_scripts", name=name)
    return entry.load()


def main(argv: list[str] | None = None) -> int:
    role, *args = sys.argv[1:] if argv is None else argv
    applied = apply(role)
    _say(f"{role}: {', '.join(applied) or 'nothing'} applied")
    if role == "daemon":
        sys.argv = ["dagster-daemon", "run", *args]
        return _console_script("dagster-daemon")()
    if "run_worker_fork" in applied:
        import threading

        threading.Thread(target=start_forkserver, name="run-worker-forkserver", daemon=True).start()
    sys.argv = ["dagster", "api", "grpc", *args]
    return _console_script("dagster")()


if __name__ == "__main__":
    sys.exit(main())
