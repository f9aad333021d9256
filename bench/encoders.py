"""Each encoder's share of the standard job, and what each encoder setting costs and gives.

    python bench/encoders.py [--repeat 5] [--baseline webp_method=4 --baseline avif_speed=8]
                             [--out bench/results/encoders.json]

Standard job, as bench/core_speed.py: one synthetic 12 MP (4032x3024) photo → ``process_image`` with the
core's defaults (2048/1024/256, each as JPEG and WebP, + facts), one thread.

- share: the job's wall time per step, timed by wrapping the core's own functions while it runs (header
  check, decode, colour, cascade resize, each encode, facts; the first resize is in "the rest");
- settings: every candidate setting of each encoder on the pixels the job gives that encoder (the three
  renditions): median ms and bytes for the three, and the 2048 rendition's quality against its own
  pixels: PSNR, SSIM (scikit-image) and, when the ``ssimulacra2`` package can be imported (optional, not
  a dependency; pure NumPy, so on the central 1024x768 of it), SSIMULACRA2 (higher is better; 90 ≈
  visually lossless, 70 ≈ high quality);
- job: images/s per core with the baseline settings (``--baseline``, the previous defaults) and the
  core's current defaults, alternating in this process; also with AVIF renditions turned on.
Medians and ratios only; nothing here asserts.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
from PIL import Image, features

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from assets.core import CoreConfig, RenditionSpec, process_image  # noqa: E402
from assets.core import facts as F  # noqa: E402
from assets.core import process as P  # noqa: E402
from bench.common import median_ms, psnr, write_results  # noqa: E402
from bench.core_speed import photo_like  # noqa: E402

STEPS = {"inspect": "header check", "decode": "decode", "to_srgb": "colour to sRGB", "_shrink": "cascade resize"}
FACTS = ("phash", "channel_stats", "dominant_colours", "blurhash")
REST = "first resize + the rest"
ENCODER_FIELDS = ("jpeg_quality", "webp_quality", "webp_method", "avif_quality", "avif_speed")


def timed(fn, label, totals: dict):
    """``fn``, adding its wall ms to ``totals[label(*args)]``."""
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            key = label(*args)
            totals[key] = totals.get(key, 0.0) + (time.perf_counter() - t) * 1000
    return wrapper


def job_steps(data: bytes, config: CoreConfig) -> dict[str, float]:
    """One run of the job: wall ms per step, with the untimed remainder under ``REST`` and the whole under "job"."""
    totals: dict[str, float] = {}
    targets = [(P, name, lambda *a, s=step: s) for name, step in STEPS.items()]
    targets.append((P, "encode", lambda img, fmt, *a: f"encode {fmt} {max(img.size)}"))
    targets += [(F, name, lambda *a: "facts") for name in FACTS]
    with ExitStack() as patches:
        for module, name, label in targets:
            patches.enter_context(mock.patch.object(module, name, timed(getattr(module, name), label, totals)))
        t = time.perf_counter()
        process_image(data, config)
        job = (time.perf_counter() - t) * 1000
    return {**totals, REST: job - sum(totals.values()), "job": job}


def alternate(configs: dict[str, CoreConfig], repeat: int, run) -> dict[str, list]:
    """``run(config)`` ``repeat`` times for each configuration, alternating between them (after one warm-up each)."""
    out: dict[str, list] = {name: [] for name in configs}
    for config in configs.values():
        run(config)
    for _ in range(repeat):
        for name, config in configs.items():
            out[name].append(run(config))
    return out


def shares(data: bytes, configs: dict[str, CoreConfig], repeat: int) -> list[dict]:
    """Per step: median ms and share of the job for each configuration."""
    runs = alternate(configs, repeat, lambda config: job_steps(data, config))
    jobs = {name: statistics.median(r["job"] for r in rs) for name, rs in runs.items()}
    rows = []
    for step in next(iter(runs.values()))[0]:
        row: dict = {"step": step}
        for name, rs in runs.items():
            ms = statistics.median(r[step] for r in rs)
            row[name] = {"ms": round(ms, 1), "share": round(ms / jobs[name], 3)}
        rows.append(row)
    return rows


def rendition_pixels(data: bytes, config: CoreConfig) -> list[Image.Image]:
    """The images the job hands its encoders, largest first."""
    seen: dict[int, Image.Image] = {}
    encode = P.encode

    def keep(img, fmt, *args):
        seen[max(img.size)] = img
        return encode(img, fmt, *args)

    with mock.patch.object(P, "encode", keep):
        process_image(data, config)
    return [seen[edge] for edge in sorted(seen, reverse=True)]


def candidates(config: CoreConfig) -> list[tuple[str, str, dict]]:
    """(encoder, setting, Pillow save options) for each setting to measure."""
    rows = [("WEBP", f"method {m}", {"quality": config.webp_quality, "method": m}) for m in range(7)]
    if features.check("avif"):
        rows += [("AVIF", f"speed {s}", {"quality": config.avif_quality, "speed": s}) for s in (6, 7, 8, 9, 10)]
    jpeg = {"quality": config.jpeg_quality}
    rows += [("JPEG", "baseline", jpeg), ("JPEG", "optimize", {**jpeg, "optimize": True}),
             ("JPEG", "progressive", {**jpeg, "progressive": True})]
    return rows


def perceptual():
    """SSIMULACRA2 of the central 1024x768 (reference, distorted) → score, or None without the optional package."""
    try:
        from ssimulacra2 import compute_ssimulacra2
    except ImportError:
        return None

    def png(img: Image.Image) -> io.BytesIO:
        w, h = img.size
        buf = io.BytesIO()
        img.crop(((w - 1024) // 2, (h - 768) // 2, (w + 1024) // 2, (h + 768) // 2)).save(buf, "PNG", compress_level=1)
        buf.seek(0)
        return buf

    return lambda reference, distorted: float(compute_ssimulacra2(png(reference), png(distorted)))


def settings(images: list[Image.Image], config: CoreConfig, repeat: int) -> list[dict]:
    from skimage.metrics import structural_similarity

    ssimulacra2 = perceptual()
    reference = images[0].convert("RGB")
    rows = []
    for encoder, setting, options in candidates(config):
        def encode_all(fmt=encoder, options=options) -> list[bytes]:
            out = []
            for img in images:
                buf = io.BytesIO()
                img.save(buf, fmt, **options)
                out.append(buf.getvalue())
            return out

        ms = median_ms(encode_all, repeat)
        outputs = encode_all()
        decoded = Image.open(io.BytesIO(outputs[0])).convert("RGB")
        row = {"encoder": encoder, "setting": setting, "ms": round(ms, 1), "bytes": sum(map(len, outputs)),
               "bytes_2048": len(outputs[0]), "psnr_db": round(psnr(decoded, reference), 2),
               "ssim": round(float(structural_similarity(np.asarray(reference), np.asarray(decoded),
                                                         channel_axis=2, data_range=255)), 4)}
        if ssimulacra2:
            row["ssimulacra2"] = round(ssimulacra2(reference, decoded), 2)
        rows.append(row)
        print(f"  {encoder:4s} {setting:12s} {ms:7.1f} ms {row['bytes']:8d} bytes {row['psnr_db']:6.2f} dB "
              f"SSIM {row['ssim']:.4f}" + (f" SSIMULACRA2 {row['ssimulacra2']:.2f}" if ssimulacra2 else ""), flush=True)
    return rows


def images_per_second(data: bytes, configs: dict[str, CoreConfig], repeat: int) -> dict[str, float]:
    """Images/s per core of each configuration, runs alternating between them."""
    runs = alternate(configs, repeat, lambda config: median_ms(lambda: process_image(data, config), 1))
    return {name: round(1000 / statistics.median(ms), 3) for name, ms in runs.items()}


def parse_baseline(pairs: list[str]) -> dict[str, int]:
    return {key: int(value) for key, value in (p.split("=", 1) for p in pairs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline", action="append", metavar="FIELD=VALUE",
                        help="a CoreConfig field of the baseline (default: the defaults before issue 25, "
                             "webp_method=4 avif_speed=8)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "encoders.json"))
    args = parser.parse_args()

    current = CoreConfig()
    baseline = replace(current, **parse_baseline(args.baseline or ["webp_method=4", "avif_speed=8"]))
    data = photo_like(0)
    print(f"12 MP test photo ({len(data) / 1e6:.1f} MB JPEG), Pillow {Image.__version__}, libwebp "
          f"{features.version('webp')}, libavif {features.version('avif')}; {args.repeat} repeats, medians", flush=True)

    print("share of the job (ms, share): baseline | current defaults", flush=True)
    share = shares(data, {"baseline": baseline, "current": current}, args.repeat)
    for row in share:
        print(f"  {row['step']:24s}" + " |".join(f" {row[n]['ms']:7.1f} ms {row[n]['share']:6.1%}"
                                                for n in ("baseline", "current")), flush=True)

    print("settings on the job's three renditions (quality of the 2048 one):", flush=True)
    rows = settings(rendition_pixels(data, current), current, args.repeat)

    def with_avif(config: CoreConfig) -> CoreConfig:
        return replace(config, renditions=tuple(RenditionSpec(r.name, r.long_edge, (*r.formats, "AVIF"))
                                                for r in config.renditions))

    configs = {"baseline": baseline, "current": current}
    if features.check("avif"):
        configs |= {"baseline + AVIF": with_avif(baseline), "current + AVIF": with_avif(current)}
    speed = images_per_second(data, configs, args.repeat)
    print("images/s per core: " + ", ".join(f"{name} {value:.2f}" for name, value in speed.items())
          + f"; current / baseline = {speed['current'] / speed['baseline']:.2f}x", flush=True)

    write_results({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "pillow": Image.__version__, "libwebp": features.version("webp"),
                    "libavif": features.version("avif")},
        "repeat": args.repeat,
        **{name: {k: getattr(config, k) for k in ENCODER_FIELDS}
           for name, config in (("baseline", baseline), ("current", current))},
        "share_of_job": share,
        "settings": rows,
        "images_per_second_per_core": speed,
    }, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
