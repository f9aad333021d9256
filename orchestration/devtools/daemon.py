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

It also opens Dagster's SQLite storage the cheaper way (``sqlite_storage.tune``: migration scripts read once,
not once per run created; engines reused).

The change is one module attribute of Dagster 1.13; if an upgrade removes it, the daemon says so and runs
with Dagster's own loop (slower to react, still correct). ``tests/test_devstack.py`` fails on that upgrade.
"""

from __future__ import annotations

import sys

SENSOR_LOOP_SECONDS = 1.0


def install() -> bool:
    """Shorten the sensor daemon's loop in this process. False if this Dagster has no such setting."""
    from dagster._daemon import sensor as sensor_daemon

    if not hasattr(sensor_daemon, "MIN_INTERVAL_LOOP_TIME"):
        print("[imgpipe daemon] this Dagster has no dagster._daemon.sensor.MIN_INTERVAL_LOOP_TIME; "
              "sensors tick at Dagster's own pace", file=sys.stderr, flush=True)
        return False
    sensor_daemon.MIN_INTERVAL_LOOP_TIME = SENSOR_LOOP_SECONDS
    return True


def main(argv: list[str] | None = None) -> int:
    install()
    from orchestration.devtools import sqlite_storage

    sqlite_storage.tune()  # migration scripts and engines: half of this process's CPU per run otherwise
    from dagster._daemon.cli import cli

    return cli.main(args=["run", *(sys.argv[1:] if argv is None else argv)], obj={}, standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main())
