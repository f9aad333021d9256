"""Dagster's SQLite storage on the local stack, cheaper to open: its migration scripts are read once per
process, and its SQLAlchemy engines are reused.

The local stack's Dagster processes open the SQLite storage all the time:

- the code server opens a ``DagsterInstance`` for every sensor evaluation (each second) and for its
  orphaned-run check;
- the daemon opens one for every run it creates;
- each run worker opens its storages four times.

Measured on the local stack under bench/load.py, with py-spy samples taken only while a thread held the
GIL (so CPU time), and with cProfile in a run worker.

**Migration scripts** (``read_migration_scripts_once``). Each storage checks its schema against the newest
migration: Dagster builds a new alembic ``ScriptDirectory``, which reads and parses all ~90 migration
scripts from disk. This took about half of the code server's CPU, a fifth of the daemon's and a fifth of
a run worker's: 0.505 -> 0.447 CPU-s per 4-image run. The idle stack went from 5.0 to 4.2 CPU-s per 40 s.
The scripts do not change while the stack runs, so ``ScriptDirectory.from_config`` returns one directory
per script location for the life of the process.

**Engines** (``reuse_engines``). Dagster's SQLite storages create a new SQLAlchemy engine for every
connection (``create_engine(url, poolclass=NullPool)``). That means dialect set-up each time, and a
compiled-statement cache that starts empty each time, so every statement is compiled again. After the
first change, this was about a third of the daemon's CPU (create_engine 16 %, compiling 19 %). Here the
engines of those calls are kept, the most recent ``ENGINE_CACHE_SIZE`` by URL and arguments. A
``NullPool`` engine holds no connection, so each use still opens and closes its own SQLite connection,
exactly as before: a deleted or re-created database file is seen, a forked process inherits no open
connection, and ``dispose()`` stays harmless.

``tune()`` applies both. The code server calls it at start-up, and so does the daemon. The code server's
forkserver calls it too (``run_worker_preload``), so run workers inherit it.

Both are changes to Dagster 1.13's and alembic's module attributes. If an upgrade moves them, the
function returns False and changes nothing (slower, still correct). ``tests/test_devstack.py`` fails
when that happens.
"""

from __future__ import annotations


def read_migration_scripts_once() -> bool:
    """Read Dagster's migration scripts now, and never again in this process. False if not possible."""
    try:
        from alembic.script import ScriptDirectory
        from dagster._core.storage.sql import get_alembic_config
    except ImportError:
        return False
    original = ScriptDirectory.__dict__.get("from_config")
    if getattr(original, "_imgpipe_once", False):
        return True
    if not isinstance(original, classmethod):
        return False
    loaded: dict = {}

    def from_config(cls, config):
        key = (cls, config.get_main_option("script_location"))
        if key not in loaded:
            loaded[key] = original.__func__(cls, config)
        return loaded[key]

    once = classmethod(from_config)
    once._imgpipe_once = True  # type: ignore[attr-defined]
    ScriptDirectory.from_config = once
    ScriptDirectory.from_config(get_alembic_config(__file__)).as_revision_number("head")
    return True


ENGINE_CACHE_SIZE = 64  # the runs, index and schedules databases, and the shards of the runs in progress
_ENGINE_MODULES = (
    "dagster._core.storage.event_log.sqlite.sqlite_event_log",
    "dagster._core.storage.runs.sqlite.sqlite_run_storage",
    "dagster._core.storage.schedules.sqlite.sqlite_schedule_storage",
)


def reuse_engines() -> bool:
    """Make Dagster's SQLite storages reuse their ``NullPool`` engines in this process. False if not possible."""
    import importlib
    import threading
    from collections import OrderedDict

    import sqlalchemy
    from sqlalchemy.pool import NullPool

    try:
        modules = [importlib.import_module(name) for name in _ENGINE_MODULES]
    except ImportError:
        return False
    current = [getattr(m, "create_engine", None) for m in modules]
    if all(getattr(f, "_imgpipe_reuse", False) for f in current):
        return True
    if not all(f is sqlalchemy.create_engine for f in current):
        return False
    engines: OrderedDict = OrderedDict()
    lock = threading.Lock()

    def create_engine(url, **kwargs):
        if kwargs.get("poolclass") is not NullPool or not str(url).startswith("sqlite"):
            return sqlalchemy.create_engine(url, **kwargs)
        key = (str(url), repr(sorted(kwargs.items(), key=lambda item: item[0])))
        with lock:
            engine = engines.get(key)
            if engine is not None:
                engines.move_to_end(key)
                return engine
        engine = sqlalchemy.create_engine(url, **kwargs)
        with lock:
            engine = engines.setdefault(key, engine)
            while len(engines) > ENGINE_CACHE_SIZE:
                engines.popitem(last=False)
        return engine

    create_engine._imgpipe_reuse = True  # type: ignore[attr-defined]
    for module in modules:
        module.create_engine = create_engine
    return True


def tune() -> dict[str, bool]:
    """Both changes; says which took effect."""
    return {"migration scripts read once": read_migration_scripts_once(), "engines reused": reuse_engines()}
