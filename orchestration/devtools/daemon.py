"""The local stack's Dagster daemon: Dagster's own `dagster-daemon run` (sensors, schedules, the run queue,
run retries, run monitoring, backfills), with the sensor loop every ``SENSOR_LOOP_SECONDS`` instead of 5.

    python -m orchestration.devtools.daemon -w WORKSPACE

Why: a batch reaches a run through the batch sensor, and Dagster's sensor daemon starts a new round of
sensor ticks at most every 5 s (``MIN_INTERVAL_LOOP_TIME`` in ``dagster._daemon.sensor``), whatever the
sensor's ``minimum_interval_seconds``. So every upload waited 0-5 s (2.5 s on average) before anything
happened — most of a small batch's latency (bench/latency.py), and enough noise to hide a 1 s difference
between batch sizes. At 1 s the wait is 0-1 s. The price is a sensor evaluation per second while idle:
the idle stack (no web app) used 4.7 CPU-s per 40 s against 2.6 with the 5 s loop (daemon 2.1 vs 1.1, code
server 1.9 vs 0.8), i.e. about 5 % more of one core.

Production (AKS) runs the Helm chart's `dagster-daemon` unchanged (5 s); the difference there is small
against a Kubernetes Job's start-up.

The run queue looks for free run slots every ``QUEUE_LOOP_SECONDS`` (0.25 s) instead of every 1-1.5 s
(``install_queue_loop``; why: at that constant).

It also opens Dagster's SQLite storage the cheaper way (``sqlite_storage.tune``: migration scripts read once,
not once per run created; engines reused).

The changes are two module attributes of Dagster 1.13; if an upgrade removes one, the daemon says so and runs
with Dagster's own loop (slower to react, still correct). ``tests/test_devstack.py`` fails on that upgrade.
"""

from __future__ import annotations

import sys

SENSOR_LOOP_SECONDS = 1.0

# How often the run queue looks for a free slot. Dagster's queue daemon runs every dequeue_interval_seconds
# (an integer, at least 1) and sleeps in 0.5 s steps, so a slot freed by a finished run stayed empty for
# 0-1.5 s. Under many small batches (bench/load.py) the runs then went in waves: four start together, end
# together ~2 s later, and the machine idled until the next round (CPU 7-50 % in those gaps, 85 % over the
# whole phase). Every 0.25 s the gap is 0-0.25 s and the machine stays ~100 % busy: 50 x 4 images went
# from 5.80 to 6.14-6.20 images/s. The price, on the idle stack: the daemon's 1.50 -> 1.93 CPU-s per 40 s,
# about 1 % of one core.
QUEUE_LOOP_SECONDS = 0.25


def install() -> bool:
    """Shorten the sensor daemon's loop in this process. False if this Dagster has no such setting."""
    from dagster._daemon import sensor as sensor_daemon

    if not hasattr(sensor_daemon, "MIN_INTERVAL_LOOP_TIME"):
        print("[imgpipe daemon] this Dagster has no dagster._daemon.sensor.MIN_INTERVAL_LOOP_TIME; "
              "sensors tick at Dagster's own pace", file=sys.stderr, flush=True)
        return False
    sensor_daemon.MIN_INTERVAL_LOOP_TIME = SENSOR_LOOP_SECONDS
    return True


class _ShortWaits:
    """The daemon's shutdown event, waited on in steps of at most ``step`` seconds (Dagster's interval loop
    waits in 0.5 s steps whatever the interval)."""

    def __init__(self, event, step: float):
        self._event, self._step = event, step

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(self._step if timeout is None else min(timeout, self._step))

    def is_set(self) -> bool:
        return self._event.is_set()

    def __getattr__(self, name):
        return getattr(self._event, name)


def install_queue_loop() -> bool:
    """Make the run queue daemon of this process look for free slots every ``QUEUE_LOOP_SECONDS``.
    False (and Dagster's own pace) if this Dagster builds its daemons differently."""
    try:
        from dagster._daemon import controller
        from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon
    except ImportError:
        return False
    original = getattr(controller, "create_daemon_of_type", None)
    if getattr(original, "_imgpipe_queue_loop", False):
        return True
    if original is None or not hasattr(QueuedRunCoordinatorDaemon, "core_loop"):
        print("[imgpipe daemon] this Dagster builds its daemons differently; the run queue runs at Dagster's "
              "own pace", file=sys.stderr, flush=True)
        return False

    class PromptQueuedRunCoordinatorDaemon(QueuedRunCoordinatorDaemon):
        def core_loop(self, workspace_process_context, shutdown_event):
            yield from super().core_loop(workspace_process_context, _ShortWaits(shutdown_event, QUEUE_LOOP_SECONDS / 2))

    def create_daemon_of_type(daemon_type, instance):
        if daemon_type == QueuedRunCoordinatorDaemon.daemon_type():
            return PromptQueuedRunCoordinatorDaemon(interval_seconds=QUEUE_LOOP_SECONDS)
        return original(daemon_type, instance)

    create_daemon_of_type._imgpipe_queue_loop = True  # type: ignore[attr-defined]
    controller.create_daemon_of_type = create_daemon_of_type
    return True


def main(argv: list[str] | None = None) -> int:
    install()
    install_queue_loop()
    from orchestration.devtools import sqlite_storage

    sqlite_storage.tune()  # migration scripts and engines: half of this process's CPU per run otherwise
    from dagster._daemon.cli import cli

    return cli.main(args=["run", *(sys.argv[1:] if argv is None else argv)], obj={}, standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main())
