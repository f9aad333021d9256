"""The local stack's run queue daemon, built the way the daemon process builds it, its loop driven with an
event that records each wait. Prints: applied?, is a QueuedRunCoordinatorDaemon, its interval, longest wait."""

import time

from dagster import DagsterInstance
from dagster._daemon import controller
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

from orchestration.devtools import dagster_tuning

ok = dagster_tuning._queue_loop()
daemon = controller.create_daemon_of_type(QueuedRunCoordinatorDaemon.daemon_type(), DagsterInstance.ephemeral())
rounds, waits = [], []
daemon.run_iteration = lambda ctx: (rounds.append(1), iter(()))[1]


class Event:
    def wait(self, timeout=None):
        waits.append(timeout)
        time.sleep(timeout)
        return False

    def is_set(self):
        return False


loop = daemon.core_loop(None, Event())
while len(rounds) < 5:
    next(loop)
print(ok, isinstance(daemon, QueuedRunCoordinatorDaemon), daemon.interval_seconds, max(waits))
