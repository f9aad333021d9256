"""One image in, renditions and facts out — the place where images change.

    inspect (type from bytes, every limit from the header)
      → decode (JPEG: DCT-scaled to just above the largest rendition) → EXIF auto-orient
      → resize to the largest rendition (Lanczos) → colour to sRGB (ICC) → cascade to the smaller ones
      → encode each rendition in each format (metadata stripped; allowed EXIF tags only)
      → facts from the smallest rendition (pHash, stats, colours, BlurHash) + EXIF subset + sha256

Every failure becomes ``ImageRejected`` with a code and a message; nothing else escapes
``process_image``. The time and memory limits are enforced around it by ``assets.core.pool``.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

from PIL import Image

from assets.core import facts as F
from assets.core.config import OUTPUT_FORMATS, CoreConfig
from assets.core.decode import DECODER_ERRORS, ImageRejected, decode, has_alpha, inspect, to_srgb

# Bump when the renditions or facts a given input produces change. The version a run stamps on its
# documents, outcomes and events — and the Dagster code_version of the renditions asset, so partitions
# made otherwise show as changed in the UI — is this plus a digest of the configuration that shapes the
# output (``processing_version``): turning on AVIF or changing the kept EXIF tags is a change too.
PROCESSING_VERSION = "3"  # 3: HEIC/HEIF, nclx colour, multi-image files from their primary image


def library_versions() -> dict[str, str | None]:
    """The image libraries this process decodes and encodes with (lineage: recorded on every document)."""
    from PIL import __version__ as pillow, features

    def version(feature: str) -> str | None:
        try:
            return features.version(feature)
        except (ValueError, KeyError):
            return None

    heif = heif_versions()
    return {"pillow": pillow, "libjpeg_turbo": version("libjpeg_turbo"), "libwebp": version("webp"),
            "libavif": version("avif"), "pillow_heif": heif["pillow_heif"], "libheif": heif["libheif"],
            "libde265": heif["libde265"]}


def heif_versions() -> dict[str, str | None]:
    """The HEIF stack pillow-heif bundles: its own version, libheif's and libde265's (read from the library)."""
    import re

    import pillow_heif

    info = pillow_heif.libheif_info()
    de265 = re.search(r"version (\d+(?:\.\d+)+)", str((info.get("decoders") or {}).get("libde265", "")))
    return {"pillow_heif": pillow_heif.__version__, "libheif": info.get("libheif"),
            "libde265": de265.group(1) if de265 else None}


def processing_version(config: CoreConfig) -> str:
    """``PROCESSING_VERSION`` + 8 hex digits of the output-shaping configuration (not the limits, which
    decide what is refused, nor the worker count)."""
    import hashlib

    shape = (config.renditions, config.jpeg_quality, config.webp_quality, config.webp_method, config.avif_quality,
             config.avif_speed, config.background, config.animated, config.keep_exif, config.include_gps,
             config.phash_source_edge)
    return f"{PROCESSING_VERSION}-{hashlib.sha256(repr(shape).encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class Rendition:
    name: str
    format: str
    extension: str
    width: int
    height: int
    data: bytes


@dataclass
class ProcessedImage:
    facts: dict
    renditions: list[Rendition] = field(default_factory=list)


def fit_long_edge(width: int, height: int, long_edge: int) -> tuple[int, int]:
    """Size with the long edge at most ``long_edge``, aspect kept, never upscaled, never 0."""
    scale = min(1.0, long_edge / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _shrink(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Downscale for the cascade. An exact halving is a 2x2 box average (``reduce``: ~15x faster than
    Lanczos, -0.1 dB against a full-resolution Lanczos reference); other factors first box-reduce by the
    integer part above 2x, then finish with Lanczos (``reducing_gap=2``). bench/core_speed.py measures
    every rendition's PSNR against the reference."""
    if img.size == size:
        return img
    if img.width == 2 * size[0] and img.height == 2 * size[1]:
        return img.reduce(2)
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)


def _flatten(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if img.mode != "RGBA":
        return img
    flat = Image.new("RGB", img.size, background)
    flat.paste(img, mask=img.getchannel("A"))
    return flat


def encode(img: Image.Image, fmt: str, config: CoreConfig, exif: bytes | None) -> bytes:
    buf = io.BytesIO()
    extra = {"exif": exif} if exif else {}
    if fmt == "JPEG":
        _flatten(img, config.background).save(buf, "JPEG", quality=config.jpeg_quality, **extra)
    elif fmt == "WEBP":
        img.save(buf, "WEBP", quality=config.webp_quality, method=config.webp_method, **extra)
    elif fmt == "AVIF":
        img.save(buf, "AVIF", quality=config.avif_quality, speed=config.avif_speed, **extra)
    elif fmt == "PNG":
        img.save(buf, "PNG", **extra)
    else:
        raise ValueError(f"unknown output format {fmt!r}")
    return buf.getvalue()


def process_image(data: bytes, config: CoreConfig = CoreConfig()) -> ProcessedImage:
    inspected = inspect(data, config)
    source = inspected.image
    try:
        exif = source.getexif()
        exif_subset = F.exif_facts(exif, config.include_gps)
        kept_exif = F.copy_exif(exif, config.keep_exif)
    except DECODER_ERRORS:
        exif_subset, kept_exif = {}, None
    icc = source.info.get("icc_profile")
    facts: dict = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "format": source.format,
        "sniffed_type": inspected.mime,
        "mode": source.mode,
        "original_width": inspected.width,
        "original_height": inspected.height,
        "orientation": inspected.original_orientation,  # as the file records it, for every format
        "frames": inspected.frames,
        "images": inspected.images,
        "gain_map": inspected.gain_map,
        "has_alpha": has_alpha(source),
        "icc_profile": bool(icc),
        "nclx": list(inspected.nclx) if inspected.nclx else None,
        "exif": exif_subset,
    }
    # Displayed (upright) size: EXIF orientations 5-8 swap the stored width and height.
    upright = (inspected.height, inspected.width) if inspected.orientation in (5, 6, 7, 8) else (inspected.width, inspected.height)
    facts["width"], facts["height"] = upright

    specs = sorted(config.renditions, key=lambda s: -s.long_edge)
    img = decode(inspected, max(fit_long_edge(*upright, specs[0].long_edge)))
    try:
        result = ProcessedImage(facts=facts)
        previous = None
        for spec in specs:
            size = fit_long_edge(*upright, spec.long_edge)
            if previous is None:
                resized = img if img.size == size else img.resize(size, Image.Resampling.LANCZOS)
                resized = to_srgb(resized, icc, inspected.nclx)  # colour conversion on the smaller image: cheaper
            else:  # cascade: each smaller rendition is made from the previous one
                resized = _shrink(previous, size)
            for fmt in spec.formats:
                result.renditions.append(
                    Rendition(spec.name, fmt, OUTPUT_FORMATS[fmt], size[0], size[1], encode(resized, fmt, config, kept_exif))
                )
            previous = resized
        facts["phash"] = F.phash(previous)
        facts["stats"] = F.channel_stats(previous)
        facts["dominant_colours"] = F.dominant_colours(previous)
        facts["blurhash"] = F.blurhash(previous)
    except MemoryError:
        raise ImageRejected("too_large_to_decode", "processing needed more memory than allowed") from None
    except DECODER_ERRORS as exc:
        raise ImageRejected("corrupt", f"{inspected.mime} could not be processed: {exc}") from None
    return result
