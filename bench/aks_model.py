"""A model of one big batch on AKS: the wall time of a batch along its critical path, step by step, from figures
measured here (per-image cost, per-chunk overhead) and parameters stated for the cluster (pod start-up, node
size, pool size, Azure quotas and latencies), each a flag. It also gives the CPU-seconds a run reserves per
image with the run size bands against today's fixed 2 CPU. Nothing here runs on a cluster: it is arithmetic,
printed with its terms so that each one can be checked and replaced by a measurement.

    python bench/aks_model.py [--images 10000] [--nodes 20] [--node-vcpu 8] [--pod-start-s 20] ...
                              [--out bench/results/aks_model.json]

Measured inputs (docs/benchmarks.md): --cpu-s-per-image, the standard 12 MP rendition job on one core after
the encoder change (232 ms, bench/encoders.py); --chunk-overhead-s, a chunk step's start to its first image
less that image (bench/fanout.py --full: median 0.92 s with its first 2 MP image; 0.8 s kept).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results  # noqa: E402

SCENARIOS = {
    # The deployed defaults: IMGPIPE_FANOUT_MAX_CONCURRENT=4, the chart's chunk pool of 12, Azure AI Vision's
    # S1 rate (20 transactions/s) and IMGPIPE_UNDERSTANDING_PARALLEL=8.
    "defaults": {"max_concurrent": 4, "pool_limit": 12, "vision_tps": 20, "understanding_parallel": 8},
    # Tuned for a 20-node pool: 24 chunks of one batch at once (a pool of 32 leaves room for another batch),
    # the Vision quota raised to 50/s (a support request, Microsoft's FAQ) and 25 requests in flight.
    "tuned": {"max_concurrent": 24, "pool_limit": 32, "vision_tps": 50, "understanding_parallel": 25},
    # Tuned, but with the Vision quota left at S1's 20/s.
    "tuned, Vision at 20/s": {"max_concurrent": 24, "pool_limit": 32, "vision_tps": 20, "understanding_parallel": 25},
}


def critical_path(a: argparse.Namespace, s: dict) -> list[tuple[str, float, str]]:
    """(step, seconds, arithmetic) along the batch's critical path: each step a pod under k8s_job_executor."""
    p = a.pod_start_s
    chunks = math.ceil(a.images / a.chunk_images)
    slots = a.nodes * int(a.node_alloc_cpu // a.step_cpu)
    at_once = min(s["max_concurrent"], s["pool_limit"], slots, chunks)
    waves = math.ceil(chunks / at_once)
    per_image = a.cpu_s_per_image + a.io_s_per_image
    compute = a.chunk_images * per_image / (a.step_workers * a.efficiency)
    chunk = p + a.chunk_overhead_s + compute
    rate = min(s["vision_tps"], s["understanding_parallel"] / a.azure_latency_s)
    docs = a.images * 2 * a.store_rtt_s / a.doc_parallel
    return [
        ("run pod start", p, f"{p:g} s (parameter)"),
        ("raw_images", p + 1, f"pod {p:g} s + one listing of raw/ (~1 s)"),
        ("renditions.plan_chunks", p + 1, f"pod {p:g} s + manifest (~1 s)"),
        ("renditions.render_chunk ×" + str(chunks), waves * chunk,
         f"{chunks} chunks of {a.chunk_images}, {at_once} at once (min of max_concurrent {s['max_concurrent']}, "
         f"pool {s['pool_limit']}, {slots} pod slots) = {waves} wave(s) × (pod {p:g} s + {a.chunk_overhead_s:g} s + "
         f"{a.chunk_images} × {per_image:.3f} s / ({a.step_workers} workers × {a.efficiency:g}) = {compute:.1f} s)"),
        ("renditions.merge_chunks", p + 2, f"pod {p:g} s + outcomes.json (~2 s)"),
        ("understand_images (Azure)", p + a.images / rate,
         f"pod {p:g} s + {a.images} / min({s['vision_tps']}/s quota, {s['understanding_parallel']} in flight / "
         f"{a.azure_latency_s:g} s) = {a.images / rate:.0f} s"),
        ("image_documents", p + docs + 1,
         f"pod {p:g} s + {a.images} × 2 round trips × {a.store_rtt_s * 1000:g} ms / {a.doc_parallel} at once "
         f"= {docs:.0f} s + near-duplicates (~1 s)"),
        ("result_events", p + a.images / a.kafka_eps, f"pod {p:g} s + {a.images} / {a.kafka_eps:g} events/s"),
    ]


def one_pod_today(a: argparse.Namespace) -> float:
    """The same batch as one 2-CPU run pod processes it (2 image workers, understanding 4 in flight, documents
    one at a time), for comparison."""
    return (a.pod_start_s + a.images * (a.cpu_s_per_image + a.io_s_per_image) / (2 * a.efficiency)
            + a.images / min(20, 4 / a.azure_latency_s) + a.images * 2 * a.store_rtt_s)


def reserved_cpu_s_per_image(a: argparse.Namespace) -> list[dict]:
    """CPU-seconds a run reserves per image (CPU request × the pod's running time ÷ images) with the size
    bands (deploy defaults: small 0.5 CPU and 1 worker up to 8 images, medium 2/2 up to 100, large 3/3) against
    the fixed 2 CPU / 2 workers of before; ``run_overhead_s`` covers the pod's start and Dagster's steps."""
    bands = [(8, 0.5, 1, "small"), (100, 2.0, 2, "medium"), (math.inf, 3.0, 3, "large")]
    rows = []
    for n in (1, 16, 200):
        _, cpu, workers, name = next(b for b in bands if n <= b[0])  # (small: 1 worker, bursting to 1 CPU)

        def running(w: int) -> float:
            return a.run_overhead_s + math.ceil(n / w) * a.cpu_s_per_image

        rows.append({"images": n, "band": name, "cpu_request": cpu,
                     "fixed_2cpu": round(2 * running(2) / n, 3), "bands": round(cpu * running(workers) / n, 3),
                     "seconds_fixed": round(running(2), 1), "seconds_bands": round(running(workers), 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--images", type=int, default=10_000)
    add("--chunk-images", type=int, default=250, help="IMGPIPE_FANOUT_CHUNK_IMAGES")
    add("--nodes", type=int, default=20, help="run pool nodes")
    add("--node-alloc-cpu", type=float, default=7.2, help="of an 8-vCPU node, after AKS's reservation and daemon sets")
    add("--step-cpu", type=float, default=3.0, help="a chunk step pod's CPU request (its size band)")
    add("--step-workers", type=int, default=3)
    add("--efficiency", type=float, default=0.9, help="image workers' scaling per core")
    add("--pod-start-s", type=float, default=20.0, help="a step pod from scheduling to its step starting (parameter)")
    add("--chunk-overhead-s", type=float, default=0.8, help="measured: bench/fanout.py --full")
    add("--cpu-s-per-image", type=float, default=0.232, help="measured: bench/encoders.py, 12 MP job, one core")
    add("--io-s-per-image", type=float, default=0.05, help="reading ~5 MB from ADLS, writing ~1 MB (parameter)")
    add("--azure-latency-s", type=float, default=0.5, help="one Vision + Content Safety request (parameter)")
    add("--store-rtt-s", type=float, default=0.008, help="one Cosmos DB round trip in the region (parameter)")
    add("--doc-parallel", type=int, default=8, help="image_documents' writes in flight")
    add("--kafka-eps", type=float, default=5000.0, help="events/s to Event Hubs (parameter)")
    add("--run-overhead-s", type=float, default=5.0, help="a run pod's start and Dagster steps, for the bands table")
    add("--out", default="bench/results/aks_model.json")
    a = parser.parse_args()

    results = {"parameters": vars(a), "scenarios": {}, "one_pod_today_s": round(one_pod_today(a)),
               "reserved_cpu_s_per_image": reserved_cpu_s_per_image(a)}
    for name, scenario in SCENARIOS.items():
        steps = critical_path(a, scenario)
        total = sum(t for _, t, _ in steps)
        results["scenarios"][name] = {"settings": scenario, "total_s": round(total),
                                      "steps": [{"step": s, "seconds": round(t, 1), "how": how} for s, t, how in steps]}
        print(f"\n### {name}: {total:.0f} s = {total / 60:.1f} min\n\n| step | seconds | arithmetic |\n|---|---:|---|")
        for step, t, how in steps:
            print(f"| {step} | {t:.0f} | {how} |")
    print(f"\nOne 2-CPU run pod, as before the fan-out: {results['one_pod_today_s']} s "
          f"= {results['one_pod_today_s'] / 60:.0f} min")
    print("\n| images | band | CPU request | reserved CPU-s per image, fixed 2 CPU | with bands | pod seconds "
          "(fixed → bands) |\n|---:|---|---:|---:|---:|---|")
    for r in results["reserved_cpu_s_per_image"]:
        print(f"| {r['images']} | {r['band']} | {r['cpu_request']:g} | {r['fixed_2cpu']} | {r['bands']} | "
              f"{r['seconds_fixed']} → {r['seconds_bands']} |")
    write_results(results, a.out)


if __name__ == "__main__":
    main()
