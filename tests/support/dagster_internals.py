"""The tests' one door to Dagster internals (white-box helpers with no public equivalent): runs made by hand
in a test instance, the run queue daemon, and what the K8s run launcher is given. Product code never uses
these (tests/test_dagster_tuning.py checks it)."""

from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.events import EngineEventData
from dagster._core.launcher import LaunchRunContext
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.remote_origin import (
    RegisteredCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.test_utils import create_run_for_test
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

__all__ = ["ModuleCodePointer", "EngineEventData", "LaunchRunContext", "JobPythonOrigin", "RepositoryPythonOrigin",
           "RegisteredCodeLocationOrigin", "RemoteJobOrigin", "RemoteRepositoryOrigin", "create_run_for_test",
           "QueuedRunCoordinatorDaemon"]
