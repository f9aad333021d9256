"""Each patch of the local stack's Dagster tuning (orchestration/devtools/dagster_tuning.py) on and off.

    python bench/tuning.py [--images 64] [--sizes 1 4 16] [--runs 5] [--configs on off no-queue_loop ...]

For each configuration — everything on, everything off, and everything but one patch — runs bench/load.py
(the small-batch curve against one large batch) and bench/latency.py (upload -> first event of a 1-image
batch) with ``IMGPIPE_DEV_TUNING`` set accordingly, one after the other on the same machine, and prints one
table: images/s and ratio per batch size, latency p50, and each figure's change against "everything on".
Written as JSON to bench/results/tuning.json. No assertion.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write_results  # noqa: E402
from orchestration.devtools.dagster_tuning import PATCHES  # noqa: E402


def tuning_value(config: str) -> str:
    if config in ("on", "off"):
        return config
    if config.startswith("no-"):  # everything but this patch
        return ",".join(p for p in PATCHES if p != config[3:]) or "off"
    return config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="images per point of the load curve")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--large", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5, help="1-image batches timed by bench/latency.py")
    parser.add_argument("--configs", nargs="+", default=["on", "off", *(f"no-{p}" for p in PATCHES)])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "tuning.json"))
    args = parser.parse_args()
    out_dir = Path(args.out).parent / "tuning"
    results: dict[str, dict] = {}
    for config in args.configs:
        env = {**os.environ, "IMGPIPE_DEV_TUNING": tuning_value(config)}
        print(f"== {config} (IMGPIPE_DEV_TUNING={env['IMGPIPE_DEV_TUNING']})", flush=True)
        load_out, latency_out = out_dir / f"load{config}.json", out_dir / f"latency{config}.json"
        subprocess.run([sys.executable, str(ROOT / "bench" / "load.py"), "--images", str(args.images),
                        "--large", str(args.large), "--sizes", *map(str, args.sizes), "--out", str(load_out)],
                       env=env, check=True)
        subprocess.run([sys.executable, str(ROOT / "bench" / "latency.py"), "--sizes", "1", "--runs", str(args.runs),
                        "--out", str(latency_out)], env=env, check=True)
        load, latency = json.loads(load_out.read_text()), json.loads(latency_out.read_text())
        results[config] = {
            "IMGPIPE_DEV_TUNING": env["IMGPIPE_DEV_TUNING"],
            "images_per_s": {k: p["images_per_s"] for k, p in load["curve"].items()},
            "ratio": {k: p["ratio_to_large"] for k, p in load["curve"].items()},
            "large_images_per_s": load["large_batch"]["images_per_s"],
            "first_event_p50_s": latency["local_stack"]["1"]["first_event"]["p50_s"],
        }
    base = results.get("on")
    sizes = [str(k) for k in args.sizes]
    print("\nconfig" + "".join(f"   {k}/batch img/s (ratio)" for k in sizes) + "   large img/s   1-image first event p50")
    for config, r in results.items():
        cells = []
        for k in sizes:
            change = f" {100 * (r['images_per_s'][k] / base['images_per_s'][k] - 1):+.0f}%" if base and config != "on" else ""
            cells.append(f"{r['images_per_s'][k]:6.2f} ({r['ratio'][k]:.2f}){change}")
        lat_change = (f" {100 * (r['first_event_p50_s'] / base['first_event_p50_s'] - 1):+.0f}%"
                      if base and config != "on" else "")
        print(f"{config:<22}" + "".join(f"   {c:>22}" for c in cells)
              + f"   {r['large_images_per_s']:11.2f}   {r['first_event_p50_s']:.2f} s{lat_change}")
    write_results(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
