"""The image core against pyvips (libvips) on the standard job, in the same run, plus memory figures.

    python bench/core_speed.py [--images 3] [--repeat 5] [--big-batch 200] [--formats-only] [--understanding-only]
                               [--out bench/results/core_speed.json]

Standard job: one 12 MP (4032x3024) JPEG → header check → decode → auto-orient → 2048/1024/256 → each as
JPEG q85 and WebP q80 (the same WebP method for both contenders) → pHash + channel stats.

- per-core speed: both pipelines in this process, one thread each (VIPS_CONCURRENCY=1), median ms/image;
- quality: PSNR of each 2048 JPEG rendition against a full-resolution Lanczos reference made from a full
  decode, next to the PSNR of that reference itself encoded the same way (the difference is what the
  shortcuts cost);
- (each encoder's share and settings: bench/encoders.py)
- scaling: the worker pool with 1 and 2 workers on the same images (images/s ratio);
- memory: peak RSS of the parent and of the largest worker for a 10-image and a --big-batch batch, each
  in a fresh process;
- per source format: the same photo as JPEG, HEIC (q80, as phones) and AVIF: decode and whole-job ms;
- understanding: CPU ms per image of each local model (labels, moderation, faces) and of all three, on the
  1024 px JPEG rendition the job made (decode included), against the job's own CPU ms, one thread each;
  images/s at batch sizes 1, 32 and 256; the memory the models add to a fresh process. On a machine with a
  CUDA device (onnxruntime-gpu) the same with the CUDA provider.
Medians and ratios only; nothing here asserts.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VIPS_CONCURRENCY", "1")  # one core for libvips too; set before pyvips loads

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from assets.core import CoreConfig, process_image  # noqa: E402
from bench.common import median_ms, psnr, write_results  # noqa: E402
from assets.core import facts as F  # noqa: E402


def photo_like(seed: int, size=(4032, 3024)) -> bytes:
    """A synthetic photo with the entropy of a real one: shapes, gradients, texture and sensor grain."""
    rng = random.Random(seed)
    w, h = size
    small = Image.new("RGB", (w // 8, h // 8))
    draw = ImageDraw.Draw(small)
    for y in range(small.height):
        draw.line([(0, y), (small.width, y)], fill=(rng.randrange(256) // 4 + y % 97, 90 + y % 60, 160 - y % 80))
    for _ in range(120):
        x0, y0 = rng.randrange(small.width), rng.randrange(small.height)
        r = rng.randrange(5, 120)
        draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r],
                     fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    img = small.resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(2))
    grain = Image.effect_noise(size, 24).convert("RGB")
    img = Image.blend(img, grain, 0.12)
    detail = Image.effect_noise((w // 2, h // 2), 60).resize(size).convert("RGB")
    img = Image.blend(img, detail, 0.08)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def vips_job(data: bytes, webp_method: int) -> dict:
    import pyvips

    # shrink-on-load + autorotate; copy_memory because the source is sequential and is read by two encoders
    img = pyvips.Image.thumbnail_buffer(data, 2048, size="down").copy_memory()
    out, previous = {}, None
    for edge in (2048, 1024, 256):
        if previous is not None:
            img = previous.resize(edge / max(previous.width, previous.height), kernel="lanczos3").copy_memory()
        out[edge] = (img.jpegsave_buffer(Q=85, keep="none"), img.webpsave_buffer(Q=80, effort=webp_method, keep="none"))
        previous = img
    thumb = Image.fromarray(np.ndarray(buffer=previous.write_to_memory(), dtype=np.uint8,
                                       shape=[previous.height, previous.width, previous.bands]))
    return {"renditions": out, "phash": F.phash(thumb), "stats": F.channel_stats(thumb)}


def ours_job(data: bytes, config: CoreConfig):
    return process_image(data, config)


def quality(data: bytes, ours: list, vips: dict) -> dict:
    """PSNR of every JPEG rendition against a full-resolution Lanczos reference of the same size, minus
    the PSNR of that reference encoded the same way (0 = as good as the reference; negative = worse)."""
    full = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    full.load()
    out = {}
    for r in (r for r in ours if r.format == "JPEG"):
        reference = full.resize((r.width, r.height), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        reference.save(buf, "JPEG", quality=85)
        base = psnr(Image.open(io.BytesIO(buf.getvalue())), reference)
        mine = psnr(Image.open(io.BytesIO(r.data)), reference)
        theirs_img = Image.open(io.BytesIO(vips[max(r.width, r.height)][0]))
        if theirs_img.size != reference.size:
            theirs_img = theirs_img.resize(reference.size)
        out[r.name] = {"reference_db": round(base, 2), "ours_minus_reference_db": round(mine - base, 3),
                       "pyvips_minus_reference_db": round(psnr(theirs_img, reference) - base, 3)}
    out["worst_ours_minus_reference_db"] = min(v["ours_minus_reference_db"] for v in out.values())
    out["worst_pyvips_minus_reference_db"] = min(
        v["pyvips_minus_reference_db"] for k, v in out.items() if isinstance(v, dict))
    return out


def pool_throughput(datas: list[bytes], workers: int, config: CoreConfig) -> float:
    from assets.core.pool import WorkerPool

    tasks = [(str(i), (lambda d=d: d)) for i, d in enumerate(datas)]
    with WorkerPool(workers, config) as pool:
        list(pool.map(tasks[:workers]))  # warm-up: workers started, modules loaded
        t = time.perf_counter()
        outs = list(pool.map(tasks))
        elapsed = time.perf_counter() - t
    assert all(o.image for o in outs)
    return len(tasks) / elapsed


MEMORY_CHILD = r"""
import datetime, json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from orchestration.domain.processing import process_batch
from assets.core import CoreConfig
from orchestration.adapters.local.lake import LocalLake
from orchestration.domain.manifest import BatchManifest, ManifestImage
lake_dir, n, workers = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
lake = LocalLake(lake_dir)
sources = sorted(lake.list("raw/src"))
images = []
for i in range(n):
    path = sources[i % len(sources)]
    size = (lake_dir / path).stat().st_size
    images.append(ManifestImage(image_id=f"i{i:04d}", name=f"{i}.jpg", size=size, sniffed_type="image/jpeg", lake_path=path))
m = BatchManifest(batch_id="b-20260101-000000-%08d" % n, user_id="u", created_at=datetime.datetime.now(datetime.timezone.utc), images=images)
from assets.core.pool import peak_rss_mb
before = peak_rss_mb()
report = process_batch(lake, m, workers=workers, config=CoreConfig())
print(json.dumps({"images": n, "parent_rss_before_mb": round(before, 1),
                  "parent_peak_rss_mb": round(peak_rss_mb(), 1),
                  "largest_worker_peak_rss_mb": report.peak_worker_rss_mb,
                  "processed": sum(o["outcome"] == "processed" for o in report.outcomes)}))
"""


def memory_run(lake_dir: Path, n: int, workers: int) -> dict:
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(lake_dir), str(n), str(workers), str(ROOT)],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def per_format(jpeg: bytes, config: CoreConfig, repeat: int) -> list[dict]:
    """The same 12 MP photo as a phone's JPEG, HEIC and AVIF: median ms to decode (open + load, as the core
    opens it) and for the whole standard job, per source format."""
    from assets.core.decode import PIL_DECODERS  # registers the HEIF plugin, as the image workers have it

    assert "image/heic" in PIL_DECODERS

    photo = Image.open(io.BytesIO(jpeg))
    photo.load()
    sources = {"JPEG": jpeg}
    for fmt, options in (("HEIF", {"quality": 80}), ("AVIF", {"quality": 70, "speed": 6})):
        buf = io.BytesIO()
        photo.save(buf, fmt, **options)
        sources[fmt] = buf.getvalue()

    def decode(data: bytes) -> None:
        with Image.open(io.BytesIO(data)) as im:
            im.load()

    rows = []
    for fmt, data in sources.items():
        rows.append({"source": fmt, "bytes": len(data),
                     "decode_ms": round(median_ms(lambda d=data: decode(d), repeat), 1),
                     "job_ms": round(median_ms(lambda d=data: ours_job(d, config), repeat), 1)})
    jpeg_row = rows[0]
    for row in rows:
        row["job_ratio_to_jpeg"] = round(row["job_ms"] / jpeg_row["job_ms"], 2)
    return rows


def cpu_ms(fn, repeat: int) -> float:
    """Median CPU time (all threads of the process) of ``fn`` in ms."""
    return median_ms(fn, repeat, clock=time.process_time)


MODEL_MEMORY = """
import sys
sys.path.insert(0, {root!r})
def rss(field='VmRSS'):  # VmHWM: this process's peak (ru_maxrss would start from the parent's at fork)
    return int(open('/proc/self/status').read().split(field + ':')[1].split()[0]) / 1024
import numpy, PIL.Image, io
before = rss()
from assets.core.understand.engine import LocalModels
m = LocalModels(threads=1, device={device!r})
data = open({path!r}, 'rb').read()
m.analyze([data] * 32, ['labels', 'moderation', 'faces'])
print(round(before, 1), round(rss(), 1), round(rss('VmHWM'), 1))
"""


def understanding(data: bytes, config: CoreConfig, repeat: int, device: str = "cpu") -> dict:
    """The understanding step against the rendition job, per image, one thread."""
    from assets.core.understand.engine import LocalModels

    job = ours_job(data, config)
    medium = next(r for r in job.renditions if r.name == "medium" and r.format == "JPEG")
    job_cpu = cpu_ms(lambda: ours_job(data, config), repeat)
    models = LocalModels(threads=1, device=device)
    models.load(["labels", "moderation", "faces"])
    batch = [medium.data] * 16
    per_task = {}
    for task in ("labels", "moderation", "faces"):
        models.analyze(batch, [task])  # warm
        per_task[task] = round(cpu_ms(lambda t=task: models.analyze(batch, [t]), repeat) / len(batch), 2)
    models.analyze(batch, ["labels", "moderation", "faces"])
    together = round(cpu_ms(lambda: models.analyze(batch, ["labels", "moderation", "faces"]), repeat) / len(batch), 2)
    decode_only = round(cpu_ms(lambda: [models.decode(b) for b in batch], repeat) / len(batch), 2)
    throughput = {}
    for size in (1, 32, 256):
        images = [medium.data] * size
        wall = median_ms(lambda: models.analyze(images, ["labels", "moderation", "faces"]), max(1, repeat // 2))
        throughput[str(size)] = round(size / (wall / 1000), 1)
    with tempfile.NamedTemporaryFile(suffix=".jpg") as f:
        f.write(medium.data)
        f.flush()
        out = subprocess.run([sys.executable, "-c", MODEL_MEMORY.format(root=str(ROOT), device=device, path=f.name)],
                             capture_output=True, text=True, timeout=300)
    before, after, peak = (float(v) for v in out.stdout.split()[-3:])
    return {"device": device, "input": f"{medium.width}x{medium.height} JPEG rendition ({len(medium.data)} bytes)",
            "job_cpu_ms": round(job_cpu, 1), "cpu_ms_per_image": {**per_task, "all_three": together,
                                                                  "decode_and_shrink": decode_only},
            "share_of_job": round(together / job_cpu, 4),
            "images_per_second_all_three": throughput,
            "memory_mb": {"before_models": before, "after_32_images": after, "peak": peak,
                          "added": round(after - before, 1), "peak_added": round(peak - before, 1)}}


def print_understanding(u: dict) -> None:
    c = u["cpu_ms_per_image"]
    print(f"  on the {u['input']} ({u['device']}): labels {c['labels']} ms, moderation {c['moderation']} ms, faces "
          f"{c['faces']} ms, all three {c['all_three']} ms CPU per image (decode {c['decode_and_shrink']} ms) = "
          f"{u['share_of_job']:.1%} of the rendition job's {u['job_cpu_ms']} ms", flush=True)
    print(f"  images/s (all three) at batch 1/32/256: {' / '.join(map(str, u['images_per_second_all_three'].values()))};"
          f" memory added by the models: {u['memory_mb']['added']} MB, at the peak {u['memory_mb']['peak_added']} MB",
          flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3, help="distinct 12 MP test photos")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--big-batch", type=int, default=200)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "core_speed.json"))
    parser.add_argument("--formats-only", action="store_true", help="only the per-source-format timings")
    parser.add_argument("--understanding-only", action="store_true", help="only the understanding step's timings")
    args = parser.parse_args()

    import pyvips

    config = CoreConfig()
    datas = [photo_like(seed) for seed in range(args.images)]
    print(f"{args.images} test photos, 4032x3024 JPEG, {statistics.mean(map(len, datas)) / 1e6:.1f} MB each; "
          f"libvips {pyvips.version(0)}.{pyvips.version(1)}, one thread per contender", flush=True)

    print("understanding (local models, one thread):", flush=True)
    understood = [understanding(datas[0], config, args.repeat)]
    print_understanding(understood[0])
    try:
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            understood.append(understanding(datas[0], config, args.repeat, device="cuda"))
            print_understanding(understood[-1])
        else:
            print("  (no CUDA device for onnxruntime here: CPU only)", flush=True)
    except Exception as exc:  # noqa: BLE001 - the GPU part is optional
        print(f"  (CUDA measurement skipped: {exc})", flush=True)
    if args.understanding_only:
        write_results({"job": "understanding", "understanding": understood}, args.out)
        return 0

    print("per source format (the same photo as JPEG, HEIC, AVIF; one thread):", flush=True)
    formats = per_format(datas[0], config, args.repeat)
    for row in formats:
        print(f"  {row['source']:5s} {row['bytes'] / 1e6:5.2f} MB: decode {row['decode_ms']:6.1f} ms, whole job "
              f"{row['job_ms']:6.1f} ms ({row['job_ratio_to_jpeg']:.2f}x JPEG)", flush=True)
    if args.formats_only:
        write_results({"job": "per source format", "per_format": formats}, args.out)
        return 0

    speed = []
    for i, data in enumerate(datas):
        ours = median_ms(lambda: ours_job(data, config), args.repeat)
        vips = median_ms(lambda: vips_job(data, config.webp_method), args.repeat)
        q = quality(data, ours_job(data, config).renditions, vips_job(data, config.webp_method)["renditions"])
        speed.append({"photo": i, "ours_ms": round(ours, 1), "pyvips_ms": round(vips, 1), "psnr": q})
        print(f"  photo {i}: ours {ours:6.1f} ms, pyvips {vips:6.1f} ms, speed ratio {vips / ours:4.2f}x; worst PSNR vs "
              f"reference: ours {q['worst_ours_minus_reference_db']:+.3f} dB, "
              f"pyvips {q['worst_pyvips_minus_reference_db']:+.3f} dB", flush=True)
    ours_med = statistics.median(s["ours_ms"] for s in speed)
    vips_med = statistics.median(s["pyvips_ms"] for s in speed)

    print("worker pool scaling:", flush=True)
    pool_images = [datas[i % len(datas)] for i in range(12)]
    one = pool_throughput(pool_images, 1, config)
    two = pool_throughput(pool_images, 2, config)
    print(f"  1 worker {one:.2f} img/s, 2 workers {two:.2f} img/s, ratio {two / one:.2f}x", flush=True)

    print("memory (fresh process per batch size, 2 workers):", flush=True)
    with tempfile.TemporaryDirectory(prefix="imgpipe-bench-") as tmp:
        from orchestration.adapters.local.lake import LocalLake

        lake = LocalLake(Path(tmp))
        for i, data in enumerate(datas):
            lake.write(f"raw/src/{i}", data)
        small = memory_run(Path(tmp), 10, 2)
        big = memory_run(Path(tmp), args.big_batch, 2)
    for m in (small, big):
        print(f"  {m['images']:4d} images: parent peak {m['parent_peak_rss_mb']} MB, largest worker peak "
              f"{m['largest_worker_peak_rss_mb']} MB", flush=True)

    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "pillow": Image.__version__, "libvips": f"{pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}"},
        "job": "4032x3024 JPEG -> 2048/1024/256 x (JPEG q85 + WebP q80 method %d) + pHash + stats" % config.webp_method,
        "per_photo": speed,
        "median_ms": {"ours": ours_med, "pyvips": vips_med},
        "images_per_second_per_core": {"ours": round(1000 / ours_med, 3), "pyvips": round(1000 / vips_med, 3),
                                       "ratio_ours_to_pyvips": round(vips_med / ours_med, 3)},
        "psnr_worst_ours_minus_reference_db": min(s["psnr"]["worst_ours_minus_reference_db"] for s in speed),
        "pool": {"one_worker_img_s": round(one, 3), "two_workers_img_s": round(two, 3), "ratio": round(two / one, 3)},
        "memory": {"small_batch": small, "big_batch": big},
        "per_format": formats,
        "understanding": understood,
    }
    print(f"\nper core: ours {1000 / ours_med:.2f} img/s vs pyvips {1000 / vips_med:.2f} img/s = {vips_med / ours_med:.2f}x; "
          f"worst PSNR delta {result['psnr_worst_ours_minus_reference_db']:+.3f} dB; 2 workers {two / one:.2f}x one; "
          f"peak worker RSS {max(small['largest_worker_peak_rss_mb'], big['largest_worker_peak_rss_mb'])} MB; "
          f"parent peak {small['parent_peak_rss_mb']} MB (10) vs {big['parent_peak_rss_mb']} MB ({args.big_batch})")
    write_results(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
