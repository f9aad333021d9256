"""Hostile and unusual input through the core and its worker pool: limits, metadata, animation, EXIF,
time and memory limits, near-duplicates. (Orientation and mode goldens are in test_core.py.)"""

from __future__ import annotations

import io
import os
import signal
import time

import pytest
from hypothesis import given, settings as hsettings, strategies as st
from PIL import Image, PngImagePlugin

from assets.core import CoreConfig, ImageRejected, Limits, RenditionSpec, fit_long_edge, process_image
from assets.core.facts import blurhash, hamming, phash
from assets.core.pool import WorkerPool
from orchestration.devtools.sample import synthetic_photo, jpeg_bytes


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


# -- geometry (property tests) ---------------------------------------------------------------------

@given(w=st.integers(1, 50_000), h=st.integers(1, 50_000), edge=st.integers(1, 4096))
def test_fit_long_edge_properties(w, h, edge):
    fw, fh = fit_long_edge(w, h, edge)
    assert max(fw, fh) == min(edge, max(w, h))          # exact long edge, never upscaled
    assert fw <= w and fh <= h and fw >= 1 and fh >= 1
    if w >= h:
        assert abs(fh - h * fw / w) <= 1                 # aspect kept within one pixel
    else:
        assert abs(fw - w * fh / h) <= 1


@hsettings(max_examples=25, deadline=None)
@given(w=st.integers(1, 700), h=st.integers(1, 700), edges=st.lists(st.integers(1, 800), min_size=1, max_size=3, unique=True),
       orientation=st.sampled_from([1, 3, 6, 8]))
def test_renditions_have_exact_sizes_from_real_images(w, h, edges, orientation):
    specs = tuple(RenditionSpec(f"r{e}", e, ("JPEG",)) for e in edges)
    result = process_image(jpeg_bytes(Image.new("RGB", (w, h), (90, 120, 150)), orientation), CoreConfig(renditions=specs))
    upright = (h, w) if orientation in (6, 8) else (w, h)
    for r in result.renditions:
        spec = next(s for s in specs if s.name == r.name)
        assert (r.width, r.height) == fit_long_edge(*upright, spec.long_edge)
        assert Image.open(io.BytesIO(r.data)).size == (r.width, r.height)


# -- limits checked from the header -----------------------------------------------------------------

def test_limits_are_checked_before_decoding():
    data = _png(Image.new("L", (3000, 2000)))
    for limits, code in [
        (Limits(max_pixels=5_000_000), "too_many_pixels"),
        (Limits(max_edge=2500), "bad_dimensions"),
        (Limits(max_file_bytes=100), "file_too_large"),
    ]:
        with pytest.raises(ImageRejected) as err:
            process_image(data, CoreConfig(limits=limits))
        assert err.value.code == code, limits


def test_oversized_metadata_is_rejected():
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 5000)
    with pytest.raises(ImageRejected) as err:
        process_image(_png(Image.new("RGB", (20, 20)), pnginfo=info), CoreConfig(limits=Limits(max_metadata_bytes=1000)))
    assert err.value.code == "metadata_too_large" and "text" in err.value.message


def test_animated_input_first_frame_or_rejected():
    frames = [Image.new("RGB", (40, 30), c) for c in ("red", "green", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    result = process_image(buf.getvalue())
    assert result.facts["frames"] == 3
    px = Image.open(io.BytesIO(next(r for r in result.renditions if r.format == "JPEG").data)).convert("RGB").getpixel((20, 15))
    assert px[0] > 200 and px[1] < 60  # the first (red) frame
    with pytest.raises(ImageRejected) as err:
        process_image(buf.getvalue(), CoreConfig(animated="reject"))
    assert err.value.code == "animated"
    with pytest.raises(ImageRejected) as err:
        process_image(buf.getvalue(), CoreConfig(limits=Limits(max_frames=2)))
    assert err.value.code == "too_many_frames"


@pytest.mark.parametrize(
    "data",
    [
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><svg>&lol2;</svg>',
        b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj",
        b"PK\x03\x04" + b"\x00" * 40,
        b"\xff\xd8\xff",  # a JPEG that is only its magic number
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x7f\xff\xff\xff\x7f\xff\xff\xff\x08\x02\x00\x00\x00",  # absurd header
        b"GIF89a\xff\xff\xff\xff",
        b"BM" + b"\xff" * 60,
        b"II*\x00" + b"\xff" * 60,
    ],
)
def test_hostile_bytes_become_rejections(data):
    with pytest.raises(ImageRejected) as err:
        process_image(data)
    assert err.value.code and err.value.message


def test_junk_exif_does_not_stop_the_picture():
    good = jpeg_bytes(Image.new("RGB", (40, 30), "red"))
    junk_app1 = b"\xff\xe1" + (2 + 6 + 40).to_bytes(2, "big") + b"Exif\x00\x00" + os.urandom(40)
    data = good[:2] + junk_app1 + good[2:]
    result = process_image(data)
    assert result.facts["orientation"] in range(1, 9) and result.renditions


# -- metadata in renditions and facts -----------------------------------------------------------------

def _exif_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "Acme"
    exif[0x0110] = "Acme Phone 9"
    exif[0x013B] = "Ada Lovelace"
    exif[0x8298] = "(c) 2026 Ada"
    sub = exif.get_ifd(0x8769)
    sub[0x9003] = "2026:07:14 10:30:00"
    sub[0xA434] = "Wide 26mm"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", (48.0, 51.0, 24.0), "E", (2.0, 21.0, 0.0)
    buf = io.BytesIO()
    Image.new("RGB", (60, 40), "red").save(buf, "JPEG", exif=exif)
    return buf.getvalue()


def test_renditions_keep_only_allowed_exif_and_never_gps():
    result = process_image(_exif_jpeg())
    for r in result.renditions:
        exif = Image.open(io.BytesIO(r.data)).getexif()
        assert exif.get(0x013B) == "Ada Lovelace" and exif.get(0x8298) == "(c) 2026 Ada"
        assert 0x010F not in exif and not exif.get_ifd(0x8825)
        assert b"Acme" not in r.data
    stripped = process_image(_exif_jpeg(), CoreConfig(keep_exif=()))
    assert all(not Image.open(io.BytesIO(r.data)).getexif() for r in stripped.renditions)


def test_exif_facts_and_gps_only_when_enabled():
    facts = process_image(_exif_jpeg()).facts["exif"]
    assert facts["camera_make"] == "Acme" and facts["camera_model"] == "Acme Phone 9"
    assert facts["lens_model"] == "Wide 26mm" and facts["captured_at"] == "2026-07-14T10:30:00"
    assert "gps" not in facts
    gps = process_image(_exif_jpeg(), CoreConfig(include_gps=True)).facts["exif"]["gps"]
    assert gps == {"latitude": pytest.approx(48.8566667), "longitude": pytest.approx(2.35)}


def test_facts_fingerprints():
    img = synthetic_photo(640, 480, 30, "fp")
    result = process_image(jpeg_bytes(img))
    f = result.facts
    assert len(f["phash"]) == 16 and len(f["stats"]["mean"]) == 3 and len(f["stats"]["std"]) == 3
    assert 1 <= len(f["dominant_colours"]) <= 5 and abs(sum(c["fraction"] for c in f["dominant_colours"]) - 1) < 0.01
    assert len(f["blurhash"]) == 28  # 4x3 components
    # pHash is stable under resizing and recompression, and far from an unrelated picture.
    near = phash(img.resize((320, 240)))
    assert hamming(f["phash"], near) <= 6
    other = phash(synthetic_photo(640, 480, 200, "other").transpose(Image.Transpose.FLIP_TOP_BOTTOM))
    assert hamming(f["phash"], other) > 16


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blurhash_matches_the_reference_implementation(seed):
    import blurhash as reference  # the pure-Python reference encoder, a test-only dependency
    import numpy as np

    img = synthetic_photo(640 - seed * 150, 480, seed * 80, str(seed)) if seed else Image.new("RGB", (32, 32), (255, 0, 0))
    small = img.convert("RGB")
    small.thumbnail((32, 32))
    expected = reference.encode(np.asarray(small).tolist(), components_x=4, components_y=3)
    assert blurhash(img) == expected


# -- the worker pool: time and memory limits ----------------------------------------------------------

@pytest.fixture(scope="module")
def image_worker_server():
    """The image worker server the local stack's code server runs (assets/core/worker_server.py)."""
    from orchestration.devtools.image_workers import ImageWorkerServer

    server = ImageWorkerServer()
    assert server.start()
    yield server
    server.stop()


@pytest.fixture(params=["own forkserver", "worker server"])
def workers_from(request, image_worker_server):
    """Every pool test runs with the run's own forkserver and with workers forked by the worker server."""
    return None if request.param == "own forkserver" else image_worker_server.path


def test_pool_stops_an_image_that_runs_over_its_time_limit(workers_from):
    slow = jpeg_bytes(synthetic_photo(4000, 3000, 0, "slow"))
    with WorkerPool(1, CoreConfig(limits=Limits(timeout_seconds=0.05)), server=workers_from) as pool:
        outcomes = {o.key: o for o in pool.map([("slow", lambda: slow), ("next", lambda: b"not an image")])}
        assert pool.restarts == 1
    assert outcomes["slow"].rejection.code == "timeout" and outcomes["slow"].seconds < 2
    assert outcomes["next"].rejection.code == "unsupported_type"  # the fresh worker carries on


def test_pool_survives_a_worker_that_dies(workers_from):
    data = jpeg_bytes(synthetic_photo(200, 100, 0, "x"))
    with WorkerPool(1, server=workers_from) as pool:
        def load_and_kill():
            os.kill(pool.pids[0], signal.SIGKILL)
            time.sleep(0.1)
            return data

        outcomes = {o.key: o for o in pool.map([("a", load_and_kill), ("b", lambda: data)])}
    assert outcomes["a"].rejection.code == "decoder_crashed"
    assert "signal 9" in outcomes["a"].rejection.message  # how it died, also when the worker is not our child
    assert outcomes["b"].image is not None


def test_pool_memory_limit_turns_into_a_rejection(workers_from):
    huge = _png(Image.new("1", (12_000, 12_000), 1))  # 144 MP, a few hundred KB compressed
    config = CoreConfig(limits=Limits(max_pixels=200_000_000, memory_limit_mb=400, timeout_seconds=60))
    with WorkerPool(1, config, server=workers_from) as pool:
        [outcome] = list(pool.map([("huge", lambda: huge)]))
    assert outcome.rejection is not None and outcome.rejection.code in {"too_large_to_decode", "decoder_crashed"}


def test_pool_results_match_in_process_results(workers_from):
    datas = {f"k{i}": jpeg_bytes(synthetic_photo(300 + i * 10, 200, i * 40, str(i))) for i in range(4)}
    with WorkerPool(2, server=workers_from) as pool:
        got = {o.key: o.image for o in pool.map([(k, lambda d=d: d) for k, d in datas.items()])}
        assert ("worker server" in pool.source) == (workers_from is not None), pool.source
    for key, data in datas.items():
        assert got[key].facts["phash"] == process_image(data).facts["phash"]
        assert got[key].facts["sha256"] == process_image(data).facts["sha256"]


@pytest.mark.skipif(not __import__("PIL.features", fromlist=["check"]).check("avif"), reason="this Pillow has no AVIF codec")
def test_avif_in_and_optional_avif_out():
    buf = io.BytesIO()
    synthetic_photo(400, 300, 60, "avif").save(buf, "AVIF", quality=70)
    default = process_image(buf.getvalue())
    assert default.facts["sniffed_type"] == "image/avif" and {r.format for r in default.renditions} == {"JPEG", "WEBP"}
    specs = tuple(RenditionSpec(n, e, ("JPEG", "WEBP", "AVIF")) for n, e in (("large", 2048), ("thumb", 256)))
    with_avif = process_image(buf.getvalue(), CoreConfig(renditions=specs))
    avif = [r for r in with_avif.renditions if r.format == "AVIF"]
    assert [(r.name, r.extension) for r in avif] == [("large", "avif"), ("thumb", "avif")]
    assert Image.open(io.BytesIO(avif[1].data)).size == (256, 192)


def test_served_workers_are_the_servers_forks_and_exit_with_their_run(image_worker_server):
    """The workers of a pool with a server are forked by it (not started by the run), each pool gets
    fresh ones, and they are gone when the pool closes."""
    data = jpeg_bytes(synthetic_photo(200, 100, 0, "x"))
    with WorkerPool(2, server=image_worker_server.path) as pool:
        first = pool.pids
        parents = {int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1]) for pid in first}
        assert parents == {image_worker_server.proc.pid}
        assert [o.image is not None for o in pool.map([("a", lambda: data)])] == [True]
    with WorkerPool(2, server=image_worker_server.path) as pool:
        assert not set(pool.pids) & set(first)
    deadline = time.monotonic() + 5
    while any(os.path.exists(f"/proc/{pid}") for pid in first) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in first if os.path.exists(f"/proc/{pid}")]


def test_a_pool_whose_worker_server_is_gone_starts_its_own_workers(tmp_path):
    data = jpeg_bytes(synthetic_photo(200, 100, 0, "x"))
    with WorkerPool(1, server=str(tmp_path / "no-such-socket")) as pool:
        assert "forkserver of this run's own" in pool.source and "FileNotFoundError" in pool.source
        assert [o.image is not None for o in pool.map([("a", lambda: data)])] == [True]


def test_the_code_servers_worker_server_is_restarted_when_it_dies():
    from orchestration.devtools.image_workers import ImageWorkerServer

    server = ImageWorkerServer()
    assert server.start()
    import threading

    threading.Thread(target=server.watch, daemon=True).start()
    try:
        first = server.proc.pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while (server.proc.pid == first or not os.path.exists(server.path)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.proc.pid != first
        with WorkerPool(1, server=server.path) as pool:
            assert "worker server" in pool.source
            assert [o.image is not None for o in pool.map([("a", lambda: jpeg_bytes(synthetic_photo(64, 64, 0, "y")))])]
    finally:
        server.stop()
    assert not os.path.exists(server.dir)


def test_a_killed_worker_servers_directory_is_removed_by_the_next_one():
    """kill -9 leaves the server's private directory behind (it cannot clean up); the next code server's
    worker server removes it, and leaves a running one's alone."""
    from orchestration.devtools.image_workers import ImageWorkerServer

    killed, running = ImageWorkerServer(), ImageWorkerServer()
    try:
        assert killed.start() and running.start()
        killed.proc.kill()
        killed.proc.wait()
        assert os.path.exists(killed.dir)
        fresh = ImageWorkerServer()
        fresh.stop()
        assert not os.path.exists(killed.dir)
        assert os.path.exists(running.path)
    finally:
        killed.stop()
        running.stop()


@pytest.mark.parametrize("forked_from", ["assets.core.worker_server", "the pool's own forkserver"])
def test_an_image_worker_imports_nothing_on_its_first_images(tmp_path, forked_from):
    """What a worker is forked from has already imported what processing needs (assets/core/warm.py): a
    worker's first image used to import ~45 modules (Pillow's plugins, numpy's), ~0.05 CPU-s per worker."""
    import subprocess

    from assets.core.pool import FORKSERVER_PRELOAD
    from tests.support.procs import probe

    inputs = {  # made here, so the child imports nothing to make them
        "photo.jpg": jpeg_bytes(synthetic_photo(1200, 900, 30, "p")),
        "alpha.png": _png(Image.new("RGBA", (300, 200), (10, 200, 30, 120))),
        "gray16.png": _png(Image.new("I;16", (200, 100), 40000)),
        "palette.gif": (lambda b: (Image.new("P", (120, 80), 3).save(b, "GIF"), b.getvalue())[1])(io.BytesIO()),
        "photo.webp": (lambda b: (synthetic_photo(300, 200, 5, "w").save(b, "WEBP"), b.getvalue())[1])(io.BytesIO()),
    }
    for name, data in inputs.items():
        (tmp_path / name).write_bytes(data)
    preload = ["assets.core.worker_server"] if forked_from == "assets.core.worker_server" else FORKSERVER_PRELOAD
    out = subprocess.run(probe("first_images", str(tmp_path), *preload), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{len(inputs)} []", out.stdout


def test_warming_up_is_never_what_stops_a_worker_from_starting(monkeypatch):
    """The warm-up uses only the encoders this Pillow has, and a failure in it leaves the server or the
    forkserver that imports it starting cold instead of not at all."""
    from assets.core import warm

    assert {"JPEG", "PNG", "WEBP"} <= set(warm.WARMED)
    monkeypatch.setattr(warm.features, "check", lambda feature: False)  # a Pillow without WebP or AVIF
    assert warm.warm_up() == ["JPEG", "PNG"]
    monkeypatch.setattr(warm, "process_image", lambda *a, **k: (_ for _ in ()).throw(ImageRejected("x", "y")))
    assert warm.warm_up() == []


def test_the_vectorised_near_duplicate_search_finds_exactly_what_hamming_finds():
    """Every pair within the distance, with its distance, and nothing else, across block edges and for hashes
    with the top bit set (64-bit words, not signed)."""
    import random

    from assets.core.facts import within_distance

    rnd = random.Random(7)
    base = [rnd.getrandbits(64) for _ in range(40)]
    # near copies: 0..12 bits flipped, so some fall on each side of the limit
    hashes = [f"{h:016x}" for h in base] + [f"{b ^ sum(1 << rnd.randrange(64) for _ in range(k)):016x}"
                                            for k, b in enumerate(base[:13])] + ["ffffffffffffffff", "7fffffffffffffff"]
    pool = hashes + [f"{rnd.getrandbits(64):016x}" for _ in range(30)]
    for limit in (0, 6, 10):
        got = within_distance(hashes, pool, limit, block=7)
        want = [[(j, hamming(q, p)) for j, p in enumerate(pool) if hamming(q, p) <= limit] for q in hashes]
        assert got == want
    assert (len(hashes) - 1, 1) in within_distance(["ffffffffffffffff"], hashes, 1)[0]
