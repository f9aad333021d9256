"""What each batch run needs, imported once by the code server's forkserver (orchestration/devtools/code_server.py)
so that every forked run worker starts with it instead of importing it again.

It also builds the code location's repository (``resolve_definitions``).

Measured on the local stack (bench/load.py, 4-image batches): the run worker itself spent ~1.1 CPU-s per run,
most of it importing ~700 modules after the fork — Dagster's instance and storage classes (SQLite storages,
alembic, SQLAlchemy's dialect), the daemon and workspace modules the instance refers to, the adapters and
their clients (kafka-python), Pillow's format plugins. An import that this Dagster (or a later one) does not
have is skipped: the run worker then imports what it needs itself, slower, still correct.
"""

from __future__ import annotations

import importlib

from orchestration.devtools import sqlite_storage

WARM_MODULES = (
    "orchestration.definitions",  # the code location itself (first in the forkserver's preload too)
    # DagsterInstance.from_ref and the classes a local dagster.yaml names
    "dagster._core.instance.factory",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.storage.runs.sqlite.sqlite_run_storage",
    "dagster._core.storage.event_log.sqlite.sqlite_event_log",
    "dagster._core.storage.schedules.sqlite.sqlite_schedule_storage",
    "dagster._core.storage.local_compute_log_manager",
    "dagster._core.run_coordinator.queued_run_coordinator",
    "dagster._core.launcher.default_run_launcher",
    "dagster._scheduler.scheduler",
    "dagster._daemon.controller",
    "dagster._core.workspace.context",
    # executing a run
    "dagster._core.executor.in_process",
    "dagster._core.execution.asset_backfill",
    "dagster._core.execution.plan.resume_retry",
    "dagster._core.secrets.env_file",
    "dagster._core.execution.plan.active",
    "dagster._core.storage.root",
    "dagster._core.storage.migration.utils",
    "dagster._core.utility_ops",
    "dagster._core.system_config.composite_descent",
    "dagster._core.definitions.repository_definition.repository_data_builder",
    "dagster._core.workspace.autodiscovery",
    # what the storages load lazily
    "sqlalchemy.dialects.sqlite",
    "alembic.command",
    "alembic.config",
    "alembic.runtime.migration",
    "alembic.script",
    "watchdog.observers",
    "upath.implementations.local",  # the default IO manager's paths
    "fsspec.implementations.local",
    "rich.console",
    "rich.traceback",
    "structlog",
    "tqdm",
    # the adapters a run builds (Azure ones too: the emulated and azure profiles)
    "orchestration.adapters.kafka_results",
    "orchestration.adapters.local_lake",
    "orchestration.adapters.local_metadata",
    "orchestration.adapters.azure_lake",
    "orchestration.adapters.azure_cosmos",
    "dagster._utils.test",  # imported by the code pointer's loader in every run
)


def warm() -> list[str]:
    """Import WARM_MODULES and Pillow's plugins; returns the modules that could not be imported."""
    missing = []
    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    from PIL import Image

    Image.init()  # every format plugin (Image.open would import them in each run)
    return missing


def resolve_definitions() -> list[str]:
    """Build the code location's repository and resolve its jobs once, here, so that a run worker finds
    them built (``Definitions.get_repository_def`` and each job's resolution are cached on the objects
    this module imported) instead of building them from the definitions again. Measured with py-spy under
    bench/load.py: 8 % of a 4-image run worker's CPU. Returns the names of the jobs resolved."""
    from orchestration.definitions import defs

    try:
        repository = defs.get_repository_def()
        return sorted(job.name for job in repository.get_all_jobs())
    except Exception:  # noqa: BLE001 - an optimisation: the run then builds them itself (and reports why)
        return []


MISSING = warm()
JOBS = resolve_definitions()
STORAGE_TUNED = sqlite_storage.tune()  # inherited by every run worker

