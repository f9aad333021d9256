"""The local stack's Dagster instance: its ``dagster.yaml`` (run queue, per-user limits, retries, monitoring), and
the runs whose worker died — left by a killed stack (failed at start-up) or killed while the stack runs
(``RunWatchdog``) — reported failed so that run retries take them up. Public Dagster APIs only."""

from __future__ import annotations

import time
from pathlib import Path

from orchestration.settings import Settings

# Instance settings for the local stack, chosen for latency on a small machine:
# - QueuedRunCoordinator, at most `max_concurrent_runs` runs at once: a burst of uploads queues up instead
#   of starting one ~150 MB run process per batch at the same time; launches are made from 2 threads, so
#   starting one run worker does not hold up the next (dagster_tuning's queue_loop looks for free slots
#   every 0.25 s; Dagster's own loop uses the integer dequeue_interval_seconds);
# - fairness: at most `runs_per_user` runs per user (tag imgpipe/user_id, applyLimitPerUniqueValue), so
#   one user's 200 queued batches cannot hold every slot while another user's batch waits behind them;
# - the sensor daemon evaluates sensors in threads (dagster_tuning's sensor_loop starts a round every 1 s
#   instead of Dagster's 5 s) and creates a
#   tick's runs from 4 threads (`num_submit_workers`): creating a run asks the code server for its
#   execution plan, and done one by one, 50 uploads at once waited 15 s (p50) for their run to exist
#   (bench/load.py); backfills (reprocessing) submit their runs the same way;
# - at most 2 runs per CPU: a run spends part of its life starting up and writing events, not
#   decoding, so two per CPU keep the CPUs busy without more image workers than fit in memory
#   (a run's worker pool is sized to the CPUs; 20 x 4-image batches: 0.7 → 1.6 runs in progress);
# - run retries: a failed batch run is re-executed from failure `run_max_retries` times by the daemon
#   (writes are idempotent), then the batch ends 'failed' (failure sensor);
# - run monitoring fails runs stuck STARTING (the run worker never came up) after 180 s; runs whose
#   worker died with a previous stack are failed at start-up (`fail_orphaned_runs`), then retried;
# - no telemetry (the machine may have no network), no onboarding / newsletter prompt in the UI.
DAGSTER_YAML = """\
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: {max_runs}
    dequeue_interval_seconds: 1
    dequeue_use_threads: true
    dequeue_num_workers: 2
    tag_concurrency_limits:
      - key: "{user_tag}"
        value:
          applyLimitPerUniqueValue: true
        limit: {runs_per_user}
sensors:
  use_threads: true
  num_workers: 2
  num_submit_workers: 4
backfills:
  use_threads: true
  num_workers: 2
  num_submit_workers: 4
run_retries:
  enabled: true
  max_retries: {run_retries}
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  poll_interval_seconds: 30
telemetry:
  enabled: false
nux:
  enabled: false
"""


USER_TAG = "imgpipe/user_id"  # set by the batch sensor on every run (the opaque user id, never an e-mail)


def prepare_dagster_home(settings: Settings) -> Path:
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(DAGSTER_YAML.format(max_runs=max(2, 2 * settings.effective_workers),
                                                           user_tag=USER_TAG, runs_per_user=settings.max_runs_per_user,
                                                           run_retries=settings.run_max_retries))
    return home


def _alive_run_worker(pid: int | None, home: Path) -> bool:
    """Whether ``pid`` is a live process of this stack's Dagster instance. A run worker is a multiprocessing
    child of the code server (its command line does not say dagster), so it is recognised by the
    DAGSTER_HOME in its environment — which also keeps a reused pid from passing for it."""
    if not pid:
        return False
    for attempt in range(5):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return False
        if environ:  # empty while the process is in exec() (or a zombie): look again shortly
            return f"DAGSTER_HOME={home}".encode() in environ.split(b"\0")
        time.sleep(0.05)
    return False


def _worker_pid(instance, run_id: str) -> int | None:
    pids = [e.dagster_event.pid for e in instance.all_logs(run_id) if e.dagster_event and e.dagster_event.pid]
    return pids[-1] if pids else None


def fail_orphaned_runs(home: Path) -> list[str]:
    """Runs a previous stack left STARTING/STARTED/CANCELING whose run worker process is gone (the stack
    was killed): reported failed with the reason, so their concurrency slots free up and run retries
    re-execute them. The local run launcher cannot see a dead worker by itself. Returns their run ids."""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    failed = []
    with DagsterInstance.from_config(str(home)) as instance:
        open_statuses = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
        for record in instance.get_run_records(filters=RunsFilter(statuses=open_statuses)):
            run = record.dagster_run
            if _alive_run_worker(_worker_pid(instance, run.run_id), home):
                continue
            instance.report_run_failed(run, message="the run worker died with the previous imgpipe dev "
                                                    "(found at start-up); the run is retried")
            failed.append(run.run_id)
    return failed


class RunWatchdog:
    """While the stack runs: a STARTED run whose run worker process has gone (killed, OOM) is reported
    failed — after being seen dead on two checks, re-reading its status just before — so run retries take
    it up instead of it holding a concurrency slot for ever. (K8sRunLauncher has run monitoring for this;
    the local launcher does not.)"""

    def __init__(self, home: Path, interval_seconds: float = 5.0):
        self.home, self.interval = home, interval_seconds
        self._suspects: set[str] = set()
        self._next = 0.0

    def check(self, now: float | None = None) -> list[str]:
        from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

        now = time.monotonic() if now is None else now
        if now < self._next:
            return []
        self._next = now + self.interval
        failed, suspects = [], set()
        with DagsterInstance.from_config(str(self.home)) as instance:
            for record in instance.get_run_records(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED])):
                run_id = record.dagster_run.run_id
                pid = _worker_pid(instance, run_id)
                if pid is None or _alive_run_worker(pid, self.home):
                    continue
                if run_id not in self._suspects:
                    suspects.add(run_id)  # dead now; failed on the next check if still STARTED
                    continue
                run = instance.get_run_by_id(run_id)
                if run is not None and run.status == DagsterRunStatus.STARTED:
                    instance.report_run_failed(run, message=f"the run worker (pid {pid}) died; the run is retried")
                    failed.append(run_id)
        self._suspects = suspects
        return failed
