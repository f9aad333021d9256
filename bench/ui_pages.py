"""Web page render times with 1,000 of a user's images in the store, next to the same pages with 10.

    python bench/ui_pages.py [--images 1000] [--runs 5] [--out bench/results/ui_pages.json]

Fills a fresh data dir (local profile) with one user's processed images spread over batches of 50 —
documents as the pipeline writes them and a real 256 px thumbnail per image in the lake — then renders
each page with Streamlit's AppTest (the script run the server does per page view, without the browser)
and reports the median and maximum over ``--runs`` renders, first render (cold caches) separately.
Kafka: a real broker (Tansu) with the results topic; the results page is also timed with Kafka down
(a closed port), where the first render waits for the bootstrap timeout and later ones do not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write_results  # noqa: E402
from orchestration.devtools.sample import synthetic_photo, jpeg_bytes  # noqa: E402

USER = "alice@example.com"


def fill(data_dir: Path, images: int, per_batch: int = 50) -> None:
    from orchestration.settings import load_settings
    from orchestration import wiring

    services = wiring.services(load_settings(data_dir=data_dir))
    thumb = jpeg_bytes(synthetic_photo(256, 192, 80, "t"))
    now = datetime.now(timezone.utc).isoformat()
    for b in range(0, images, per_batch):
        batch_id = f"b-20261125-{b // per_batch:06d}-{b:08x}"
        entries = []
        for i in range(b, min(images, b + per_batch)):
            image_id = f"i{i - b + 1:04d}"
            path = f"processed/{batch_id}/{image_id}/thumb.jpg"
            services.lake.write(path, thumb)
            rejected = i % 25 == 0
            services.metadata.upsert("images", {
                "id": image_id, "image_id": image_id, "batch_id": batch_id, "user_id": USER, "name": f"img_{i}.jpg",
                "outcome": "rejected" if rejected else "processed", "code": "corrupt" if rejected else None,
                "reason": "could not be decoded" if rejected else None, "size": 3_000_000, "sniffed_type": "image/jpeg",
                "facts": {} if rejected else {"format": "JPEG", "width": 4032, "height": 3024, "phash": "0" * 16},
                "renditions": [] if rejected else [{"name": "thumb", "format": "JPEG", "width": 256, "height": 192,
                                                    "bytes": len(thumb), "path": path}],
                "processing_ms": 300.0, "processed_at": now, "near_duplicates": [],
            })
            entries.append({"image_id": image_id, "name": f"img_{i}.jpg", "size": 3_000_000,
                            "sniffed_type": "image/jpeg", "refused": None})
        services.metadata.upsert("batches", {"id": batch_id, "batch_id": batch_id, "user_id": USER,
                                             "status": "completed", "created_at": now, "metadata": {"title": batch_id},
                                             "images": entries, "image_count": len(entries)})


def render_times(page: str | None, runs: int) -> dict:
    from streamlit.testing.v1 import AppTest

    times = []
    for _ in range(runs):
        at = AppTest.from_file(str(ROOT / "ui_streamlit" / "app.py"), default_timeout=120)
        at.user = {"is_logged_in": True, "email": USER, "sub": USER}
        at.run()
        t = time.perf_counter()
        if page:
            at.switch_page(page).run()
        else:
            at.run()
        times.append(time.perf_counter() - t)
        assert not at.exception, at.exception
    return {"first_s": round(times[0], 3), "p50_s": round(statistics.median(times[1:] or times), 3),
            "max_s": round(max(times[1:] or times), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ui_pages.json"))
    args = parser.parse_args()
    import streamlit as st

    from orchestration.devtools import kafka_broker
    from orchestration.devtools import processes
    from orchestration.adapters.kafka.admin import ensure_topic

    results = {"images": args.images, "runs": args.runs}
    port = processes.free_port()
    broker = kafka_broker.start_broker(port)
    try:
        ensure_topic(f"127.0.0.1:{port}", "imgpipe.results")
        for n in (10, args.images):
            with tempfile.TemporaryDirectory(prefix="imgpipe-ui-bench-") as tmp:
                os.environ.update(IMGPIPE_DATA_DIR=tmp, IMGPIPE_KAFKA_BOOTSTRAP=f"127.0.0.1:{port}")
                st.cache_resource.clear()
                st.cache_data.clear()
                fill(Path(tmp), n)
                row = {page: render_times(path, args.runs) for page, path in
                       [("upload", None), ("results", "views/results.py"), ("stats", "views/stats.py")]}
                os.environ["IMGPIPE_KAFKA_BOOTSTRAP"] = "127.0.0.1:1"
                st.cache_resource.clear()
                row["results, Kafka down"] = render_times("views/results.py", args.runs)
                results[f"{n}_images"] = row
                for page, t in row.items():
                    print(f"{n:5d} images  {page:20s} first {t['first_s']:6.3f} s   p50 {t['p50_s']:6.3f} s   "
                          f"max {t['max_s']:6.3f} s", flush=True)
    finally:
        processes.stop_process(broker)
    write_results(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
