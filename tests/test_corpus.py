"""Every file in Pillow's own test corpus (Tests/images of the installed Pillow's source distribution:
fuzzer crashers and hangs, decompression bombs, truncated and broken files, odd modes and profiles)
goes through the worker pool: each is processed or rejected with a reason, none raises, none exceeds
the time or memory limit.

The source distribution is downloaded once with pip and cached outside the repository
(``IMGPIPE_CORPUS_CACHE``, default ~/.cache/imgpipe)."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import PIL
import pytest

from assets.core import CoreConfig, Limits
from assets.core.pool import WorkerPool

LIMITS = Limits(timeout_seconds=10.0, memory_limit_mb=1024)


@pytest.fixture(scope="session")
def pillow_corpus() -> Path:
    cache = Path(os.environ.get("IMGPIPE_CORPUS_CACHE", Path.home() / ".cache" / "imgpipe")) / f"pillow-{PIL.__version__}"
    images = cache / "Tests" / "images"
    if (cache / ".complete").exists():
        return images
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             "--disable-pip-version-check", f"pillow=={PIL.__version__}", "-d", tmp],
            check=True, timeout=600,
        )
        [sdist] = Path(tmp).glob("*.tar.gz")
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if "/Tests/images/" in m.name and m.isfile()]
            for m in members:
                m.name = m.name.split("/", 1)[1]  # drop the top folder
            tar.extractall(cache, members=members, filter="data")
    (cache / ".complete").write_text("ok")
    return images


def test_every_corpus_file_is_processed_or_rejected_within_limits(pillow_corpus):
    files = sorted(p for p in pillow_corpus.rglob("*") if p.is_file())
    assert len(files) > 1000, f"only {len(files)} corpus files found in {pillow_corpus}"
    outcomes = {}
    with WorkerPool(2, CoreConfig(limits=LIMITS)) as pool:
        for outcome in pool.map([(str(p), p.read_bytes) for p in files]):
            outcomes[outcome.key] = outcome
    assert set(outcomes) == {str(p) for p in files}  # one outcome per file, none lost

    codes = collections.Counter()
    for key, o in outcomes.items():
        assert (o.image is None) != (o.rejection is None), key
        if o.rejection:
            assert o.rejection.code and o.rejection.message, key
            codes[o.rejection.code] += 1
        assert o.seconds <= LIMITS.timeout_seconds + 2, f"{key} took {o.seconds:.1f} s"
        if o.peak_rss_mb is not None:
            assert o.peak_rss_mb <= LIMITS.memory_limit_mb, f"{key} used {o.peak_rss_mb:.0f} MB"
    processed = sum(1 for o in outcomes.values() if o.image)
    print(f"\n{len(files)} corpus files: {processed} processed, rejections by code: {dict(codes.most_common())}")
    # Real images must get through: the corpus is mostly valid pictures in every format and mode.
    assert processed >= 500, dict(codes)
    # Non-images (text, scripts, fonts, ...) are refused by type, never by a decoder accident.
    assert codes["unsupported_type"] > 0


def test_embedded_display_p3_profile_is_converted_to_srgb(pillow_corpus):
    """Golden test for colour: a picture tagged Display P3 (the profile from a phone photo in the
    corpus) comes out in sRGB, matching LittleCMS's own conversion."""
    import io

    from PIL import Image, ImageCms

    from assets.core import process_image

    icc = Image.open(pillow_corpus / "frame_size.mpo").info["icc_profile"]
    p3 = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    assert "P3" in ImageCms.getProfileDescription(p3)
    colour = (200, 120, 60)
    src = Image.new("RGB", (64, 48), colour)
    buf = io.BytesIO()
    src.save(buf, "PNG", icc_profile=icc)
    expected = ImageCms.profileToProfile(src, p3, ImageCms.createProfile("sRGB"), outputMode="RGB").getpixel((0, 0))
    assert max(abs(a - b) for a, b in zip(expected, colour)) > 5  # the conversion matters for this colour
    result = process_image(buf.getvalue())
    assert result.facts["icc_profile"] is True
    for r in result.renditions:
        got = Image.open(io.BytesIO(r.data)).convert("RGB").getpixel((32, 24))
        assert max(abs(a - b) for a, b in zip(got, expected)) <= 3, (r.format, got, expected)
