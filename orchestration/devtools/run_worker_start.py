"""Imported by the local stack's run-worker forkserver (``dagster_tuning.FORKSERVER_PRELOAD``): the run-worker
role's tuning, applied once there and inherited by every run worker forked from it."""

from orchestration.devtools.dagster_tuning import apply

APPLIED = apply("run_worker")
