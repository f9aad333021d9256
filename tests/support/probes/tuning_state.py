"""Prints, as JSON, which of Dagster's internals the local stack's tuning has changed in a fresh process.

    python tuning_state.py apply ROLE [FAKE_DAGSTER_VERSION]   # dagster_tuning.apply(ROLE) first
    python tuning_state.py code-location                       # only import the code location, as production does
"""

import json
import sys

import dagster
from alembic.script import ScriptDirectory
from dagster._core.storage.runs.sqlite import sqlite_run_storage
from dagster._daemon import controller, sensor
from dagster._grpc.server import DagsterApiServer

ORIGINAL = {
    "create_daemon_of_type": controller.create_daemon_of_type,
    "api_server_init": DagsterApiServer.__init__,
    "from_config": ScriptDirectory.__dict__["from_config"],
    "create_engine": sqlite_run_storage.create_engine,
}

applied = None
if sys.argv[1] == "apply":
    if len(sys.argv) > 3:
        dagster.__version__ = sys.argv[3]
    from orchestration.devtools import dagster_tuning

    applied = dagster_tuning.apply(sys.argv[2])
else:
    import importlib

    importlib.import_module("orchestration.definitions")

print(json.dumps({
    "applied": applied,
    "sensor_loop_seconds": sensor.MIN_INTERVAL_LOOP_TIME,
    "queue_daemon_replaced": controller.create_daemon_of_type is not ORIGINAL["create_daemon_of_type"],
    "api_server_replaced": DagsterApiServer.__init__ is not ORIGINAL["api_server_init"],
    "migration_scripts_replaced": ScriptDirectory.__dict__["from_config"] is not ORIGINAL["from_config"],
    "engines_replaced": sqlite_run_storage.create_engine is not ORIGINAL["create_engine"],
    "devtools_imported": sorted(m for m in sys.modules if m.startswith("orchestration.devtools")),
}))
