"""Decode one image safely and make its renditions — the place where images change.

A simple, correct Pillow pipeline: sniff → open with a decoder allowlist → size limits checked from
the header before any pixel is decoded → decode → EXIF auto-orient → colour to sRGB (ICC) and RGB →
resized renditions (never upscaled, Lanczos, cascaded from the previous size) → JPEG without metadata.
Every failure becomes ``ImageRejected`` with a machine-readable code and a human message; nothing
else escapes ``process_image``.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field
from typing import Sequence

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from assets.core.sniff import SUPPORTED_IMAGE_TYPES, sniff_type

# Bump when the renditions a given input produces change; stored on every document and used as the
# Dagster code_version of the renditions asset, so stale partitions show up in the UI.
PROCESSING_VERSION = "1"

_PIL_FORMATS = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
    "image/tiff": "TIFF",
    "image/bmp": "BMP",
}


@dataclass(frozen=True)
class RenditionSpec:
    name: str
    long_edge: int
    format: str = "JPEG"
    quality: int = 85

    @property
    def extension(self) -> str:
        return {"JPEG": "jpg", "WEBP": "webp", "PNG": "png"}[self.format]


DEFAULT_RENDITIONS: tuple[RenditionSpec, ...] = (
    RenditionSpec("large", 2048),
    RenditionSpec("medium", 1024),
    RenditionSpec("thumb", 256),
)


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 50_000_000  # like imgproxy
    max_edge: int = 30_000
    max_frames: int = 1_000


class ImageRejected(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Rendition:
    name: str
    width: int
    height: int
    format: str
    extension: str
    data: bytes


@dataclass
class ProcessedImage:
    facts: dict
    renditions: list[Rendition] = field(default_factory=list)


def fit_long_edge(width: int, height: int, long_edge: int) -> tuple[int, int]:
    """Size with the long edge at most ``long_edge``, aspect kept, never upscaled, never 0."""
    scale = min(1.0, long_edge / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


_SRGB = ImageCms.createProfile("sRGB")


def _to_srgb_rgb(img: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """RGB in sRGB: ICC profile applied, alpha flattened on ``background`` (JPEG has no alpha)."""
    icc = img.info.get("icc_profile")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode.startswith("I;16"):
        # 16-bit grayscale: scale 0..65535 down to 0..255 (a plain convert("L") would clip).
        img = img.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    elif img.mode in ("I", "F"):
        img = img.convert("L")
    if icc and img.mode in ("RGB", "RGBA", "CMYK", "L", "LA"):
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            alpha = img.getchannel("A") if img.mode in ("RGBA", "LA") else None
            base = img.convert("RGB") if img.mode in ("RGBA", "LA") else img
            out_mode = "RGB"
            if base.mode == "L":
                base = base.convert("RGB")
            base = ImageCms.profileToProfile(base, src, _SRGB, outputMode=out_mode)
            if alpha is not None:
                base.putalpha(alpha)
            img = base
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: fall back to treating the pixels as sRGB
    if img.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, background)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return img if img.mode == "RGB" else img.convert("RGB")


def process_image(
    data: bytes,
    renditions: Sequence[RenditionSpec] = DEFAULT_RENDITIONS,
    limits: Limits = Limits(),
) -> ProcessedImage:
    mime = sniff_type(data[:64])
    if mime not in SUPPORTED_IMAGE_TYPES:
        raise ImageRejected("unsupported_type", f"not a supported image (content looks like {mime})")
    facts: dict = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "sniffed_type": mime}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[mime]])
            width, height = img.size
            # Limits from the header, before any pixel is decoded.
            if width <= 0 or height <= 0 or max(width, height) > limits.max_edge:
                raise ImageRejected("bad_dimensions", f"{width}x{height} px is outside 1..{limits.max_edge} px per edge")
            if width * height > limits.max_pixels:
                raise ImageRejected(
                    "too_many_pixels", f"{width}x{height} = {width * height / 1e6:.1f} MP exceeds {limits.max_pixels / 1e6:.0f} MP"
                )
            frames = getattr(img, "n_frames", 1)
            if frames > limits.max_frames:
                raise ImageRejected("too_many_frames", f"{frames} frames exceed {limits.max_frames}")
            orientation = img.getexif().get(0x0112, 1)
            facts.update(format=img.format, mode=img.mode, original_width=width, original_height=height,
                         frames=frames, orientation=orientation, has_alpha="A" in img.getbands() or "transparency" in img.info)
            if mime == "image/jpeg":
                # Let the JPEG decoder scale by 1/2, 1/4 or 1/8 while staying >= the largest rendition.
                biggest = max(s.long_edge for s in renditions)
                if max(width, height) > biggest * 2:
                    img.draft("RGB", fit_long_edge(width, height, biggest * 2))
            img.load()
            img = ImageOps.exif_transpose(img)
            img = _to_srgb_rgb(img)
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected("decompression_bomb", str(exc)) from None
    except Image.DecompressionBombWarning as exc:
        raise ImageRejected("decompression_bomb", str(exc)) from None
    except UnidentifiedImageError:
        raise ImageRejected("corrupt", f"content looks like {mime} but its header could not be read") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, ZeroDivisionError) as exc:
        raise ImageRejected("corrupt", f"{mime} could not be decoded: {exc}") from None
    except MemoryError:
        raise ImageRejected("too_large_to_decode", "decoding needed more memory than available") from None

    # width/height are the upright (displayed) size; original_* the stored one (they differ for
    # EXIF orientations 5-8).
    # (computed from the header: the JPEG decoder may have decoded at a reduced scale).
    upright = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    facts["width"], facts["height"] = upright
    result = ProcessedImage(facts=facts)
    source = img
    for spec in sorted(renditions, key=lambda s: -s.long_edge):
        size = fit_long_edge(*upright, spec.long_edge)
        resized = source if source.size == size else source.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        buf = io.BytesIO()
        options = {"quality": spec.quality} if spec.format in ("JPEG", "WEBP") else {}
        resized.save(buf, format=spec.format, **options)
        result.renditions.append(Rendition(spec.name, size[0], size[1], spec.format, spec.extension, buf.getvalue()))
        source = resized  # cascade: the next (smaller) size is made from this one
    return result
