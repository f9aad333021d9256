"""A batch through the renditions step in one process (process_batch's path) and fanned out in chunks
(process_batch_fanout: the multiprocess executor, a process per chunk, on a real local instance).

    python bench/fanout.py [--images 24] [--chunk 8] [--workers 1] [--megapixels 2] [--full]
                           [--out bench/results/fanout.json]

``--full`` is the issue's batch: 2,000 images of 2 MP in chunks of 250. The default is smaller because this
machine has 2 shared CPUs. Only raw_images and renditions are materialized (understanding and the documents
step are not what fans out). Figures per path: images/s (run start → end), event-log rows of the run, peak
image worker RSS; per chunk: executor launch → step start, and step start → its first image done (that image's
own processing included); and whether both paths wrote byte-identical renditions. Nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from datetime import datetime
from pathlib import Path

from dagster import (
    AssetKey,
    DagsterEventType,
    Definitions,
    execute_job,
    instance_for_test,
    reconstructable,
)

from bench.common import write_results

SELECTION = [AssetKey("raw_images"), AssetKey("renditions")]


def fanout_job():
    """process_batch_fanout with the environment's settings, as a run process builds it (reconstructable)."""
    from assets.batch import batch_asset_checks, batch_assets
    from orchestration.definitions import process_batch_fanout_job, process_batch_job
    from orchestration.resources import resources_from_settings
    from orchestration.settings import load_settings

    defs = Definitions(assets=batch_assets, asset_checks=batch_asset_checks,
                       jobs=[process_batch_job, process_batch_fanout_job], resources=resources_from_settings(load_settings()))
    return defs.resolve_job_def(os.environ.get("BENCH_JOB", "process_batch_fanout"))


def _run(instance, job_name: str, batch: str) -> dict:
    os.environ["BENCH_JOB"] = job_name
    with execute_job(reconstructable(fanout_job), instance=instance, tags={"dagster/partition": batch},
                     asset_selection=SELECTION) as result:
        assert result.success, job_name
        run_id = result.run_id
    stats = instance.get_run_stats(run_id)
    logs = instance.all_logs(run_id)
    [mat] = [e.dagster_event.event_specific_data.materialization for e in logs
             if e.dagster_event and e.dagster_event.event_type == DagsterEventType.ASSET_MATERIALIZATION
             and e.dagster_event.asset_key == AssetKey("renditions")]
    return {"run_id": run_id, "seconds": round(stats.end_time - stats.start_time, 2), "event_log_rows": len(logs),
            "chunks": mat.metadata["chunks"].value, "peak_worker_rss_mb": mat.metadata["peak_worker_rss_mb"].value,
            "logs": logs}


def _chunk_overheads(logs, docs: dict[str, dict], chunks: list[list[str]]) -> list[dict]:
    launched, started = {}, {}
    for e in logs:
        if e.step_key and "render_chunk" in e.step_key and e.dagster_event:
            kind = e.dagster_event.event_type
            if kind == DagsterEventType.STEP_WORKER_STARTING:
                launched.setdefault(e.step_key, e.timestamp)
            elif kind == DagsterEventType.STEP_START:
                started.setdefault(e.step_key, e.timestamp)
    out = []
    for number, ids in enumerate(chunks):
        key = f"renditions.render_chunk[c{number:04d}]"
        first = min(datetime.fromisoformat(docs[i]["processed_at"]).timestamp() for i in ids)
        out.append({"chunk": key, "images": len(ids),
                    "launch_to_start_s": round(started[key] - launched[key], 2) if key in launched else None,
                    "start_to_first_image_s": round(first - started[key], 2)})
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--megapixels", type=float, default=2.0)
    parser.add_argument("--full", action="store_true", help="2,000 images of 2 MP in chunks of 250")
    parser.add_argument("--out", default="bench/results/fanout.json")
    args = parser.parse_args(argv)
    if args.full:
        args.images, args.chunk, args.megapixels = 2000, 250, 2.0

    from orchestration import wiring
    from orchestration.devtools.sample import jpeg_bytes, synthetic_photo
    from orchestration.domain.intake import IntakeItem, upload_batch
    from orchestration.domain.processing import plan_chunks, load_manifest
    from orchestration.settings import load_settings

    work = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    settings = load_settings(data_dir=work / "data", workers=args.workers, understanding="off",
                             max_files_per_batch=max(args.images, 500), fanout_min_images=args.images,
                             fanout_chunk_images=args.chunk, fanout_max_concurrent=2)
    os.environ.update(settings.to_env())
    services = wiring.services(settings)
    width = int((args.megapixels * 1e6 * 4 / 3) ** 0.5)
    photos = [jpeg_bytes(synthetic_photo(width, width * 3 // 4, hue=i * 7 % 360, label=f"b{i}")) for i in range(args.images)]
    items = lambda: [IntakeItem.from_bytes(f"p{i:05d}.jpg", b) for i, b in enumerate(photos)]  # noqa: E731
    one, fanned = (upload_batch(services, items(), user_id=u).batch_id for u in ("single", "fanout"))

    results = {"images": args.images, "megapixels": args.megapixels, "chunk_images": args.chunk,
               "workers_per_chunk": args.workers, "max_concurrent": 2, "cpus": os.cpu_count()}
    (work / "dagster").mkdir()
    with instance_for_test(temp_dir=str(work / "dagster")) as instance:
        instance.add_dynamic_partitions("batches", [one, fanned])
        for name, job, batch in (("single_process", "process_batch", one), ("fanned_out", "process_batch_fanout", fanned)):
            # (process_batch plans one chunk only below the threshold: give it the batch as one chunk)
            os.environ["IMGPIPE_FANOUT_MIN_IMAGES"] = str(args.images + (job == "process_batch"))
            run = _run(instance, job, batch)
            logs = run.pop("logs")
            run["images_per_s"] = round(args.images / run["seconds"], 2)
            if job == "process_batch_fanout":
                docs = {d["image_id"]: d for d in services.metadata.query("images", partition_key=batch)}
                chunks = plan_chunks(load_manifest(services.lake, batch), min_images=args.images, chunk_images=args.chunk)
                run["per_chunk"] = _chunk_overheads(logs, docs, chunks)
                run["median_start_to_first_image_s"] = statistics.median(c["start_to_first_image_s"] for c in run["per_chunk"])
            results[name] = run

    def made(batch):
        return {d["image_id"]: sorted((r["name"], r["format"], r["sha256"]) for r in d["renditions"])
                for d in services.metadata.query("images", partition_key=batch)}

    results["outputs_identical"] = made(one) == made(fanned)
    print(f"{'path':16} {'chunks':>6} {'seconds':>8} {'images/s':>9} {'events':>7} {'peak worker MB':>15}")
    for name in ("single_process", "fanned_out"):
        r = results[name]
        print(f"{name:16} {r['chunks']:>6} {r['seconds']:>8} {r['images_per_s']:>9} {r['event_log_rows']:>7} "
              f"{r['peak_worker_rss_mb']:>15}")
    for c in results["fanned_out"]["per_chunk"]:
        print(f"  {c['chunk']}: {c['images']} images, launch→start {c['launch_to_start_s']} s, "
              f"start→first image {c['start_to_first_image_s']} s")
    print(f"outputs identical: {results['outputs_identical']}")
    write_results(results, args.out)


if __name__ == "__main__":
    main()
