"""Upload → first Kafka event and → batch complete, through the real local stack.

    python bench/latency.py [--runs 5] [--sizes 1 20 200] [--pixels 1600x1200] [--out bench/results/latency.json]

Starts `imgpipe dev --no-sample` (Kafka broker + Dagster webserver + daemon) in a fresh data dir, then for
each batch size uploads `--runs` batches one after another (each after a random 0-5 s pause, so samples
are not phase-locked to the sensor daemon's loop) and times, from the moment `upload_batch` is
called: the first event of that batch on Kafka and the batch-complete event.

Baseline, in the same run and on the same machine: the same batches through the same assets with
Dagster's `materialize` in this process (no sensor, no run queue, no run worker start), i.e. the cost of
the work itself. The ratio of the two is what orchestration adds. Medians and maxima only: this machine
is shared and noisy. No assertion anywhere: the numbers go to stdout and to JSON.

Also reported: each size's first-event p50 minus the 1-image batch's (targets on a 2-core machine: ≤ 1 s
for 20 images, ≤ 3 s for 200 — each image's event is sent as soon as that image is done).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import local_stack, write_results  # noqa: E402
from orchestration.devtools import kafka_broker  # noqa: E402
from orchestration.devtools import processes
from orchestration.wiring import build_reader
from orchestration.domain.intake import IntakeItem, upload_batch
from orchestration.devtools.sample import synthetic_photo, jpeg_bytes
from orchestration.devtools.dev_settings import load_dev_settings
from orchestration.settings import load_settings
from orchestration import wiring


def make_items(n: int, width: int = 1600, height: int = 1200) -> list[IntakeItem]:
    """n JPEGs of ``width`` x ``height``, distinct content, half of them rotated by EXIF."""
    return [IntakeItem.from_bytes(f"img_{i:03d}.jpg", jpeg_bytes(synthetic_photo(width, height, hue=i * 37 % 256, label=str(i)),
                                                                 orientation=6 if i % 2 else 1))
            for i in range(n)]


def summarize(samples: list[float]) -> dict:
    return {"p50_s": round(statistics.median(samples), 3), "max_s": round(max(samples), 3),
            "samples_s": [round(s, 3) for s in samples]}


def run_stack(settings, sizes, runs, items_by_size) -> dict:
    env = {**os.environ, "IMGPIPE_DATA_DIR": str(settings.data_dir), "IMGPIPE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "IMGPIPE_WEBSERVER_PORT": str(settings.webserver_port), "IMGPIPE_WEB": "false"}
    with local_stack(env, settings.data_dir / "imgpipe-dev.log"):
        time.sleep(2)  # let the daemon finish its first sensor tick
        services = wiring.services(settings)
        reader = build_reader(settings)
        out = {}
        # Dagster's sensor daemon loops every 1 s under the dev tuning (5 s without it). Uploading right after
        # the previous batch completed would phase-lock every sample to that loop, so each upload waits a
        # random 0-5 s first (seeded): the samples then spread over the loop's
        # phase as real uploads do, and their median is the expected latency, not one phase's.
        import random

        rng = random.Random(20261126)
        for n in sizes:
            first, complete = [], []
            for r in range(runs):
                time.sleep(rng.uniform(0.0, 5.0))
                t0 = time.perf_counter()
                batch = upload_batch(services, items_by_size[n], user_id="bench").batch_id
                t_first = None
                for _, e in reader.follow(lambda k, e: e.get("batch_id") == batch and e["type"] == "batch.completed",
                                          timeout_seconds=300):
                    if e.get("batch_id") == batch and t_first is None:
                        t_first = time.perf_counter() - t0
                complete.append(time.perf_counter() - t0)
                first.append(t_first)
                print(f"  stack     {n:3d} image(s) run {r + 1}/{runs}: first event {t_first:6.2f} s, "
                      f"complete {complete[-1]:6.2f} s", flush=True)
            out[str(n)] = {"first_event": summarize(first), "batch_complete": summarize(complete)}
        reader.close()
        return out


def run_baseline(settings, sizes, runs, items_by_size) -> dict:
    import logging

    from dagster import DagsterInstance, materialize

    logging.getLogger("dagster").setLevel(logging.WARNING)  # keep the per-step debug lines off the report

    from assets.batch import batch_asset_checks, batch_assets
    from orchestration.partitions import batches_partitions
    from orchestration.resources import resources_from_settings

    services = wiring.services(settings)
    instance = DagsterInstance.ephemeral()
    out = {}
    for n in sizes:
        complete = []
        for r in range(runs):
            t0 = time.perf_counter()
            batch = upload_batch(services, items_by_size[n], user_id="bench").batch_id
            instance.add_dynamic_partitions(batches_partitions.name, [batch])
            result = materialize([*batch_assets, *batch_asset_checks], partition_key=batch, instance=instance,
                                 resources=resources_from_settings(settings))
            assert result.success
            complete.append(time.perf_counter() - t0)
            print(f"  baseline  {n:3d} image(s) run {r + 1}/{runs}: complete {complete[-1]:6.2f} s", flush=True)
        out[str(n)] = {"batch_complete": summarize(complete)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 20, 200])
    parser.add_argument("--pixels", default="1600x1200", help="image size WxH (default 2 MP)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "latency.json"))
    args = parser.parse_args()

    width, height = (int(v) for v in args.pixels.lower().split("x"))
    items_by_size = {n: make_items(n, width, height) for n in args.sizes}
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
               "runs": args.runs, "image": f"{width}x{height} JPEG, renditions 2048/1024/256 JPEG + WebP"}
    with tempfile.TemporaryDirectory(prefix="imgpipe-bench-") as tmp:
        kafka_port, web_port = processes.free_port(), processes.free_port()
        broker = kafka_broker.start_broker(kafka_port)
        try:
            from orchestration.adapters.kafka.admin import ensure_topic

            base = load_settings(data_dir=Path(tmp) / "baseline", kafka_bootstrap=f"127.0.0.1:{kafka_port}",
                                 kafka_topic="bench.baseline")
            ensure_topic(base.kafka_bootstrap, base.kafka_topic)
            print("baseline: materialize in-process (the work without orchestration)", flush=True)
            results["baseline_in_process"] = run_baseline(base, args.sizes, args.runs, items_by_size)
        finally:
            wiring.CLIENTS.close_all()
            processes.stop_process(broker)
        # A broker of its own on another port: with the baseline's port, clients left from the baseline met
        # the stack's new broker, and the stack's 200-image run took 33 s instead of 18-21 s (measured).
        stack = load_dev_settings(data_dir=Path(tmp) / "stack", kafka_bootstrap=f"127.0.0.1:{processes.free_port()}",
                              webserver_port=web_port)
        print("stack: imgpipe dev (sensor → queued run → run worker → Kafka)", flush=True)
        results["local_stack"] = run_stack(stack, args.sizes, args.runs, items_by_size)

    print("\nsize  stack first p50/max     stack complete p50/max   baseline p50   ratio (p50)   first - 1-image first")
    for n in map(str, args.sizes):
        s, b = results["local_stack"][n], results["baseline_in_process"][n]
        ratio = s["batch_complete"]["p50_s"] / b["batch_complete"]["p50_s"]
        results["local_stack"][n]["ratio_to_baseline_p50"] = round(ratio, 2)
        one = results["local_stack"].get("1")
        gap = s["first_event"]["p50_s"] - one["first_event"]["p50_s"] if one else float("nan")
        results["local_stack"][n]["first_event_p50_minus_1_image_s"] = round(gap, 2)
        print(f"{n:>4}  {s['first_event']['p50_s']:6.2f} / {s['first_event']['max_s']:6.2f} s"
              f"    {s['batch_complete']['p50_s']:6.2f} / {s['batch_complete']['max_s']:6.2f} s"
              f"      {b['batch_complete']['p50_s']:6.2f} s       {ratio:5.1f}x        {gap:+6.2f} s")
    write_results(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
