"""Share of a batch run spent in the blocking rendition check (`renditions_exist_and_decode`).

    python bench/rendition_check.py [--images 200] [--out bench/results/rendition_check.json]

Runs one batch of phone-sized JPEGs through the batch assets with Dagster's `materialize` (in process, the
real local adapters) and reads each step's duration from the run's event log. Prints the table and writes
JSON; no assertion (the target, at most 5 % of the run, is read off the output).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write_results  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "rendition_check.json"))
    args = parser.parse_args()

    import logging

    from dagster import DagsterEventType, DagsterInstance, materialize

    from assets.batch import batch_asset_checks, batch_assets
    from bench.latency import make_items
    from orchestration import wiring
    from orchestration.devtools import kafka_broker
    from orchestration.devtools import processes
    from orchestration.adapters.kafka.admin import ensure_topic
    from orchestration.domain.intake import upload_batch
    from orchestration.partitions import batches_partitions
    from orchestration.resources import resources_from_settings
    from orchestration.settings import load_settings

    logging.getLogger("dagster").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="imgpipe-bench-") as tmp:
        port = processes.free_port()
        broker = kafka_broker.start_broker(port)
        try:
            s = load_settings(data_dir=Path(tmp), kafka_bootstrap=f"127.0.0.1:{port}", kafka_topic="bench.check")
            ensure_topic(s.kafka_bootstrap, s.kafka_topic)
            print(f"making and uploading {args.images} images ...", flush=True)
            batch = upload_batch(wiring.services(s), make_items(args.images), user_id="bench").batch_id
            instance = DagsterInstance.ephemeral()
            instance.add_dynamic_partitions(batches_partitions.name, [batch])
            result = materialize([*batch_assets, *batch_asset_checks], partition_key=batch, instance=instance,
                                 resources=resources_from_settings(s))
            assert result.success
            starts, ends = {}, {}
            for rec in instance.get_records_for_run(result.run_id, limit=100_000).records:
                e = rec.event_log_entry
                if e.dagster_event is None:
                    continue
                kind = e.dagster_event.event_type
                if kind == DagsterEventType.STEP_START:
                    starts[e.step_key] = e.timestamp
                elif kind in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
                    ends[e.step_key] = e.timestamp
                elif kind == DagsterEventType.RUN_START:
                    run_start = e.timestamp
                elif kind == DagsterEventType.RUN_SUCCESS:
                    run_end = e.timestamp
            # Baseline, same batch, same run: the previous check, which decoded every rendition in full.
            import io
            import time

            from PIL import Image

            from orchestration.domain import processing

            lake = wiring.services(s).lake
            t0 = time.perf_counter()
            for outcome in processing.load_outcomes(lake, batch):
                for r in outcome["renditions"]:
                    with Image.open(io.BytesIO(lake.read(r["path"]))) as im:
                        im.load()
            full_decode_s = time.perf_counter() - t0
        finally:
            processes.stop_process(broker)
            wiring.CLIENTS.close_all()
    steps = {k: round(ends[k] - starts[k], 2) for k in starts if k in ends}
    total = run_end - run_start
    check = steps.get("renditions_renditions_exist_and_decode", 0.0)
    print(f"\nrun of {args.images} images: {total:.1f} s")
    for k, v in sorted(steps.items(), key=lambda kv: -kv[1]):
        print(f"  {k:45s} {v:7.2f} s  {100 * v / total:5.1f} %")
    print(f"rendition check share: {100 * check / total:.1f} % of the run (target at most 5 %)")
    print(f"baseline, the previous check (decode every rendition) on the same batch: {full_decode_s:.2f} s, "
          f"{100 * full_decode_s / (total - check + full_decode_s):.1f} % of such a run")
    write_results({"images": args.images, "cpus": os.cpu_count(), "run_s": round(total, 2), "steps_s": steps,
                   "rendition_check_share": round(check / total, 4),
                   "baseline_full_decode_check_s": round(full_decode_s, 2)}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
