"""Dagster's database migration scripts, read once per process of the local stack instead of every time
a Dagster instance is opened.

Every time a process opens a ``DagsterInstance`` on the local stack's SQLite storage, each storage
(runs, event log and its per-run shards, schedules) checks its schema against the newest migration:
Dagster builds a new alembic ``ScriptDirectory``, which reads and parses all ~90 migration scripts from
disk. The stack does that all the time. The code server opens an instance for every sensor evaluation
(each second) and its orphaned-run check. The daemon opens one for every run it creates. Each run worker
opens its storages four times. Measured on the local stack under bench/load.py, with samples taken only
while a thread held the GIL, so CPU time:

- the code server: about half of its CPU time;
- the daemon: about a fifth;
- a run worker: about a fifth (cProfile). A run worker's CPU per 4-image run went from 0.505 to 0.447 s.

The scripts do not change while the stack runs. So ``load_once`` makes ``ScriptDirectory.from_config``
return one directory per script location for the life of the process, and loads Dagster's directory
immediately. The code server's forkserver calls it, so run workers inherit the loaded scripts. The code
server and the daemon call it at start-up.

An alembic without ``ScriptDirectory.from_config`` as a classmethod is left alone (slower, still
correct). ``tests/test_devstack.py`` fails if that happens.
"""

from __future__ import annotations


def load_once() -> bool:
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
