"""Throughput of many small batches against one large batch, through the real local stack, as a curve.

    python bench/load.py [--sizes 1 4 16 64] [--images 200] [--large 200] [--out bench/results/load.json]

Starts `imgpipe dev --no-sample` (Kafka broker, code server, Dagster webserver + daemon) in a fresh data dir,
then, in that one stack:

1. for each size k in ``--sizes``: uploads ``--images`` / k batches of k 2-MP JPEGs at once (one thread per
   batch, as many users would) and waits for every batch-complete event;
2. uploads one batch of ``--large`` images (the baseline) and waits for it;

and reports, for each: images/s from the first upload to the last batch-complete event, its ratio to the
large batch's images/s (targets: >= 0.8 at 16 images per batch, >= 0.5 at 4), upload -> complete p50/p95,
the run concurrency achieved, where the CPU went, and the stack's peak memory. ``IMGPIPE_DEV_TUNING`` is
passed to the stack (bench/tuning.py measures each patch on and off). Printed as a table and written as JSON;
no assertion.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import local_stack, write_results  # noqa: E402
from tests.support.procs import cmdline, descendants  # noqa: E402
from orchestration import wiring  # noqa: E402
from orchestration.devtools import processes  # noqa: E402
from orchestration.devtools.sample import jpeg_bytes, synthetic_photo  # noqa: E402
from orchestration.domain.intake import IntakeItem, upload_batch  # noqa: E402
from orchestration.devtools.dev_settings import load_dev_settings
from orchestration.wiring import build_reader  # noqa: E402


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()


def _tree_rss_mb(root_pid: int) -> float:
    """Resident memory of a process and all its descendants (from /proc)."""
    total = 0
    for pid in [root_pid, *descendants(root_pid)]:
        try:
            total += int(_stat(pid)[21])
        except (OSError, IndexError, ValueError):
            continue
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


def _role(cmdline: str) -> str:
    """Which part of the stack a process is (run workers are forked from the code server: same command line)."""
    if "tansu" in cmdline:
        return "broker"
    if "code_server" in cmdline or "api grpc" in cmdline:
        return "code server + run workers"
    if "dagster-daemon" in cmdline or " daemon " in cmdline + " ":
        return "daemon"
    if "dagster-webserver" in cmdline or "dagster_webserver" in cmdline:
        return "webserver"
    if "orchestration.cli" in cmdline:
        return "imgpipe dev"
    return "other"


def _tree_cpu(root_pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system, with the reaped children's) of every process under ``root_pid``."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in [root_pid, *descendants(root_pid)]:
        try:
            out[pid] = (_role(cmdline(pid)), sum(int(f) for f in _stat(pid)[11:15]) / tick)  # utime stime cutime cstime
        except (OSError, IndexError, ValueError):
            continue
    return out


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _cpu_by_role(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds each part of the stack spent between two snapshots (a process gone by ``after`` is
    counted through its parent's reaped-children time)."""
    spent: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        spent[role] = spent.get(role, 0.0) + seconds - (before.get(pid, (role, 0.0))[1] if pid in before else 0.0)
    return {k: round(v, 1) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}


def _run_concurrency(settings, since: float, until: float) -> float:
    """Time-weighted mean number of batch runs in progress between ``since`` and ``until``."""
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        spans = [(r.start_time, r.end_time) for r in instance.get_run_records()
                 if r.start_time and r.end_time and r.end_time >= since and r.start_time <= until]
    busy = sum(min(e, until) - max(s, since) for s, e in spans)
    return busy / (until - since) if until > since else 0.0


def _run_phases(settings, since: float, uploaded_at: dict[str, float], t0_wall: float) -> dict:
    """Median seconds each batch run spent in each phase, from the Dagster instance's run records and events:
    queued (enqueued → dequeued: waiting for a slot), launching (dequeued → starting), starting (the run
    worker process comes up and loads the code), executing (start → end)."""
    from dagster import DagsterEventType, DagsterInstance

    phases: dict[str, list[float]] = {"sensor_s": [], "queued_s": [], "launching_s": [], "starting_s": [], "executing_s": []}
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        for r in instance.get_run_records():
            created = r.create_timestamp.timestamp()
            if created < since or not (r.start_time and r.end_time):
                continue
            first: dict[str, float] = {}
            for e in instance.all_logs(r.dagster_run.run_id):
                if e.dagster_event is not None:
                    first.setdefault(e.dagster_event.event_type_value, e.timestamp)
            batch = r.dagster_run.tags.get("dagster/partition")
            if batch in uploaded_at:
                phases["sensor_s"].append(created - (t0_wall + uploaded_at[batch]))  # upload done → run created
            enqueued = first.get(DagsterEventType.RUN_ENQUEUED.value, created)
            dequeued = first.get(DagsterEventType.RUN_DEQUEUED.value, enqueued)
            starting = first.get(DagsterEventType.RUN_STARTING.value, dequeued)
            phases["queued_s"].append(dequeued - enqueued)      # waiting for a free slot
            phases["launching_s"].append(starting - dequeued)   # the launcher asks the code server
            phases["starting_s"].append(r.start_time - starting)  # run worker process up, code loaded
            phases["executing_s"].append(r.end_time - r.start_time)
    return {k: round(statistics.median(v), 2) if v else None for k, v in phases.items()}


def _wait_complete(settings, batch_ids: set[str], t0: float, timeout: float) -> dict[str, float]:
    done: dict[str, float] = {}
    reader = build_reader(settings)
    try:
        deadline = time.monotonic() + timeout
        while len(done) < len(batch_ids) and time.monotonic() < deadline:
            for _, e in reader.poll(0.5):
                if e.get("type") == "batch.completed" and e.get("batch_id") in batch_ids and e["batch_id"] not in done:
                    done[e["batch_id"]] = time.perf_counter() - t0
    finally:
        reader.close()
    missing = batch_ids - set(done)
    if missing:
        raise TimeoutError(f"{len(missing)} batch(es) not complete within {timeout:.0f} s")
    return done


def _phase(settings, groups: list[list[IntakeItem]], label: str, stack_pid: int) -> dict:
    import resource

    services = wiring.services(settings)
    cpu_before = _tree_cpu(stack_pid)
    busy_before = _machine_busy_s()
    me_before = resource.getrusage(resource.RUSAGE_SELF)
    uploaded_at: dict[str, float] = {}
    upload_took: dict[str, float] = {}
    t0 = time.perf_counter()
    wall0 = time.time()

    def send(n_items):
        n, items = n_items
        started = time.perf_counter() - t0
        batch = upload_batch(services, items, user_id=f"user{n % 10}").batch_id
        upload_took[batch] = time.perf_counter() - t0 - started
        uploaded_at[batch] = started  # upload → complete counts from the moment this upload began
        return batch

    with ThreadPoolExecutor(max_workers=min(16, len(groups))) as pool:
        batches = set(pool.map(send, enumerate(groups)))
    done = _wait_complete(settings, batches, t0, timeout=1800)
    elapsed = max(done.values())
    time.sleep(1.5)  # let the last runs record their end (the batch-complete event comes just before it)
    # The long-lived parts of the stack are measured per process; run workers and their image workers come
    # and go (the image workers' forkserver is reaped by no one we can see), so they are the machine's busy
    # time less everything else (on an otherwise idle machine).
    by_role = _cpu_by_role(cpu_before, _tree_cpu(stack_pid))
    machine = _machine_busy_s() - busy_before
    me = resource.getrusage(resource.RUSAGE_SELF)
    cpu = {role: by_role.get(role, 0.0) for role in ("daemon", "webserver", "broker", "imgpipe dev")}
    cpu["uploads + reader (this process)"] = round(me.ru_utime + me.ru_stime - me_before.ru_utime - me_before.ru_stime, 1)
    cpu["runs: run workers + image workers (the rest)"] = round(machine - sum(cpu.values()), 1)
    cpu["machine busy"] = round(machine, 1)
    latencies = sorted(done[b] - uploaded_at[b] for b in batches)
    images = sum(len(g) for g in groups)
    out = {
        "batches": len(groups), "images": images, "elapsed_s": round(elapsed, 2),
        "images_per_s": round(images / elapsed, 3),
        "upload_to_complete_p50_s": round(statistics.median(latencies), 2),
        "upload_to_complete_p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2),
        "run_concurrency_mean": round(_run_concurrency(settings, wall0, wall0 + elapsed), 2),
        "upload_s_p50": round(statistics.median(upload_took.values()), 2),
        "run_phase_p50": _run_phases(settings, wall0, {b: uploaded_at[b] + upload_took[b] for b in batches}, wall0),
        # Where the machine's CPU went (the phase includes 1.5 s of settling): per part of the stack, and
        # per batch run — the fixed cost of a run against the images' own work.
        "cpu_s": cpu,
        "cpu_s_per_run": {k: round(v / len(groups), 2) for k, v in cpu.items()},
    }
    print(f"  {label}: {images} images in {elapsed:.1f} s = {out['images_per_s']:.2f} images/s, "
          f"complete p50 {out['upload_to_complete_p50_s']} s / p95 {out['upload_to_complete_p95_s']} s, "
          f"runs in progress {out['run_concurrency_mean']}; upload p50 {out['upload_s_p50']} s; "
          f"per run p50 {out['run_phase_p50']}", flush=True)
    print(f"    CPU s by part of the stack: {cpu} (over {elapsed + 1.5:.1f} s wall, {os.cpu_count()} CPUs)",
          flush=True)
    return out


TARGETS = {16: 0.8, 4: 0.5}  # images per batch -> the least ratio to one large batch's images/s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16, 64], help="images per batch")
    parser.add_argument("--images", type=int, default=200, help="images per point of the curve")
    parser.add_argument("--large", type=int, default=200, help="images in the one large batch (the baseline)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "load.json"))
    args = parser.parse_args()

    n_total = max(args.images, args.large)
    print(f"making {n_total} 2-MP JPEGs ...", flush=True)
    photos = [jpeg_bytes(synthetic_photo(1600, 1200, hue=i * 37 % 256, label=str(i))) for i in range(n_total)]
    items = [IntakeItem.from_bytes(f"img_{i:04d}.jpg", data) for i, data in enumerate(photos)]

    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
               "image": "1600x1200 JPEG, renditions 2048/1024/256 JPEG + WebP",
               "dev_tuning": os.environ.get("IMGPIPE_DEV_TUNING", "on"), "curve": {}}
    with tempfile.TemporaryDirectory(prefix="imgpipe-load-") as tmp:
        settings = load_dev_settings(data_dir=Path(tmp), kafka_bootstrap=f"127.0.0.1:{processes.free_port()}",
                                 webserver_port=processes.free_port(), web=False,
                                 max_batches_in_flight=n_total + 1)
        env = {**os.environ, **settings.to_env()}
        stack_log = Path(args.out).with_suffix(".stack.log")
        stack_log.parent.mkdir(parents=True, exist_ok=True)
        stack_log.write_text("")
        peak = [0.0]
        stop = threading.Event()
        with local_stack(env, stack_log) as proc:

            def sample():
                while not stop.wait(0.5):
                    peak[0] = max(peak[0], _tree_rss_mb(proc.pid))

            threading.Thread(target=sample, daemon=True).start()
            try:
                time.sleep(2)
                for k in args.sizes:
                    n = max(1, args.images // k)
                    print(f"{n} batches x {k} images, uploaded at once:", flush=True)
                    results["curve"][str(k)] = _phase(settings, [items[i * k:(i + 1) * k] for i in range(n)],
                                                      f"{k} per batch", proc.pid)
                print(f"1 batch x {args.large} images:", flush=True)
                results["large_batch"] = _phase(settings, [items[:args.large]], "large batch", proc.pid)
            finally:
                stop.set()
                wiring.CLIENTS.close_all()
        print(f"the stack's own output: {stack_log}")
    results["peak_stack_rss_mb"] = round(peak[0], 1)
    big = results["large_batch"]
    print(f"\nIMGPIPE_DEV_TUNING={results['dev_tuning']}")
    print("images/batch  batches   images/s   ratio   target   complete p50 / p95   runs in progress   CPU-s/run")
    for k, point in results["curve"].items():
        point["ratio_to_large"] = round(point["images_per_s"] / big["images_per_s"], 3)
        target = TARGETS.get(int(k))
        point["target"] = target
        print(f"{k:>12}  {point['batches']:>7}   {point['images_per_s']:8.2f}   {point['ratio_to_large']:5.2f}   "
              f"{'>= %.1f' % target if target else '':>6}   {point['upload_to_complete_p50_s']:6.1f} / "
              f"{point['upload_to_complete_p95_s']:6.1f} s   {point['run_concurrency_mean']:16}   "
              f"{point['cpu_s_per_run']['machine busy']:9}")
    print(f"{args.large:>12}  {1:>7}   {big['images_per_s']:8.2f}    1.00            {big['upload_to_complete_p50_s']:6.1f} s")
    print(f"peak stack memory {results['peak_stack_rss_mb']} MB")
    write_results(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
