"""Safe decoding: identify by bytes, check every limit from the header, then decode.

Order matters: nothing here decodes a pixel before ``inspect`` has accepted the file's type, size,
dimensions, frame count and metadata sizes. Decoder errors of every kind become ``ImageRejected``.
"""

from __future__ import annotations

import io
import math
import re
import struct
import warnings
from dataclasses import dataclass

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError, features

from assets.core.config import CoreConfig, Limits
from assets.core.sniff import sniff_type, type_refusal

# Decoders we allow, by sniffed type. Pillow is told to use exactly this one (Image.open(formats=...)),
# so a file can never be routed to another, riskier decoder by its content.
PIL_DECODERS = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
    "image/tiff": "TIFF",
    "image/bmp": "BMP",
}
if features.check("avif"):
    PIL_DECODERS["image/avif"] = "AVIF"

# HEIC/HEIF through pillow-heif (libheif + libde265; why this package: docs/formats.md). Opening reads the
# file's boxes only (sizes, number of images); pixels are decoded on load, after our checks. No thumbnails,
# depth or auxiliary images (the primary image is the photo), one decode thread (the worker pool is the
# parallelism), libheif's own security limits on.
import pillow_heif  # noqa: E402

pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False, decode_threads=1)
pillow_heif.options.DISABLE_SECURITY_LIMITS = False
PIL_DECODERS["image/heic"] = "HEIF"

# Formats whose extra frames are other pictures, not time: a multi-page TIFF, an MPO (a 3D pair or an Ultra
# HDR gain map after the photo), a HEIF with several images. Their primary image is processed.
_STILL_COLLECTIONS = {"TIFF", "MPO", "HEIF"}

# Exceptions Pillow's decoders raise on hostile or broken input (seen over its own Tests/images corpus, tests/test_corpus.py).
DECODER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError,
                  ZeroDivisionError, AttributeError, struct.error, RuntimeError)


class ImageRejected(Exception):
    """A per-image rejection: ``code`` is machine-readable, ``message`` is for people."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self):  # picklable across the worker pipe
        return (ImageRejected, (self.code, self.message))


@dataclass
class Inspected:
    image: Image.Image
    mime: str
    width: int           # as stored (for HEIF: as libheif presents it, its rotation already applied)
    height: int
    frames: int          # frames of an animation (1 for a still, whatever else the file holds)
    orientation: int     # the EXIF rotation still to apply (1 for HEIF: libheif applies the file's own)
    images: int = 1      # pictures in the file (pages, MPO images, HEIF images); the primary is processed
    original_orientation: int = 1  # the file's orientation as recorded (the fact, the same for every format)
    gain_map: bool = False         # an HDR gain map travels with the photo (Ultra HDR, Apple HDR)
    nclx: tuple[int, int, int] | None = None  # colour primaries, transfer, matrix from an nclx box


def _nclx(data: bytes) -> tuple[int, int, int] | None:
    """The nclx colour description of a HEIF/AVIF ('colr' box of type 'nclx': primaries, transfer
    characteristics, matrix coefficients, ISO/IEC 23091-2 code points), when the file has one."""
    at = data.find(b"colrnclx", 0, 1 << 20)
    if at < 0 or at + 14 > len(data):
        return None
    return tuple(int.from_bytes(data[at + 8 + 2 * i: at + 10 + 2 * i], "big") for i in range(3))  # type: ignore[return-value]


def coded_sizes(data: bytes) -> list[tuple[int, int]]:
    """Every image size a HEIF/AVIF declares in its top-level ``meta`` box (``ispe`` properties: the coded
    sizes of the primary image, its tiles, thumbnails, auxiliary images). Pillow reports the size after
    libheif's crop and rotation; a small crop of a huge coded image would pass a check of that size alone."""
    at, meta = 0, None
    for _ in range(64):  # top-level boxes: ftyp, meta, mdat, ... (meta comes early)
        if at + 8 > len(data):
            break
        size, kind = int.from_bytes(data[at:at + 4], "big"), data[at + 4:at + 8]
        if size == 1 and at + 16 <= len(data):
            size = int.from_bytes(data[at + 8:at + 16], "big")
        elif size == 0:
            size = len(data) - at
        if size < 8:
            break
        if kind == b"meta":
            meta = data[at:at + size]
            break
        at += size
    sizes, start = [], 0
    while meta is not None and len(sizes) < 4096:
        found = meta.find(b"ispe", start)
        if found < 4 or found + 16 > len(meta):
            break
        sizes.append((int.from_bytes(meta[found + 8:found + 12], "big"), int.from_bytes(meta[found + 12:found + 16], "big")))
        start = found + 4
    return sizes


def _gain_map(img: Image.Image) -> bool:
    """Whether an HDR gain map travels with the photo, from the primary image's XMP: Ultra HDR (the hdrgm
    namespace) or Apple's HDR photos (HDRGainMap). (Auxiliary images are not opened, so Apple's gain-map
    image itself is not looked at; the aux list is used when a decoder provides it.)"""
    xmp = img.info.get("xmp") or b""
    xmp = xmp if isinstance(xmp, bytes) else str(xmp).encode()
    if b"hdrgm" in xmp or b"HDRGainMap" in xmp:
        return True
    return any("hdrgainmap" in str(kind).lower() for kind in (img.info.get("aux") or {}))


def _metadata_sizes(img: Image.Image) -> dict[str, int]:
    info = img.info
    text = sum(len(v) for k, v in info.items() if isinstance(v, (str, bytes)) and k not in ("exif", "icc_profile"))
    return {
        "exif": len(info.get("exif") or b""),
        "icc": len(info.get("icc_profile") or b""),
        "text": text,
    }


def inspect(data: bytes, config: CoreConfig) -> Inspected:
    """Open lazily and check every limit from the header. Raises ``ImageRejected``."""
    limits: Limits = config.limits
    if len(data) > limits.max_file_bytes:
        raise ImageRejected("file_too_large", f"{len(data):,} bytes exceeds {limits.max_file_bytes:,}")
    refused = type_refusal(data)
    if refused:
        raise ImageRejected(refused[0], refused[1])
    mime = sniff_type(data[:64])
    if mime not in PIL_DECODERS:
        raise ImageRejected("unsupported_type", f"not a supported image (content looks like {mime})")
    # Our own check below is the limit (with a clear message). Pillow's bomb guard stays as a backstop
    # behind it: it refuses above twice its MAX_IMAGE_PIXELS, so that is set to 2x our limit (its
    # default of 89 MP would otherwise override a higher configured limit or pre-empt our message).
    Image.MAX_IMAGE_PIXELS = 2 * limits.max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[PIL_DECODERS[mime]])
            width, height = img.size
            if width < 1 or height < 1 or max(width, height) > limits.max_edge:
                raise ImageRejected("bad_dimensions", f"{width}x{height} px is outside 1..{limits.max_edge} px per side")
            if width * height > limits.max_pixels:
                raise ImageRejected("too_many_pixels",
                                    f"{width}x{height} = {width * height / 1e6:.1f} MP exceeds {limits.max_pixels / 1e6:g} MP")
            if mime in ("image/heic", "image/avif"):
                for coded_w, coded_h in coded_sizes(data):
                    if max(coded_w, coded_h) > limits.max_edge or coded_w * coded_h > limits.max_pixels:
                        raise ImageRejected("too_many_pixels", f"it declares a coded image of {coded_w}x{coded_h} px, over "
                                            f"{limits.max_pixels / 1e6:g} MP or {limits.max_edge} px a side")
            images = int(getattr(img, "n_frames", 1) or 1)
            frames = 1 if img.format in _STILL_COLLECTIONS else images
            if frames > 1 and config.animated == "reject":
                raise ImageRejected("animated", f"animated image with {frames} frames; animations are not accepted")
            if frames > limits.max_frames:
                raise ImageRejected("too_many_frames", f"{frames} frames exceed {limits.max_frames}")
            if frames * width * height > limits.max_animation_pixels:
                raise ImageRejected("too_many_pixels", f"{frames} frames of {width}x{height} exceed "
                                    f"{limits.max_animation_pixels / 1e6:g} MP in all")
            if images > 1 and img.format != "HEIF":
                img.seek(0)  # (pillow-heif opens on the primary image, which need not be the first)
            for kind, size in _metadata_sizes(img).items():
                if size > limits.max_metadata_bytes:
                    raise ImageRejected("metadata_too_large", f"{kind} metadata is {size:,} bytes; limit {limits.max_metadata_bytes:,}")
            try:
                orientation = int(img.getexif().get(0x0112, 1) or 1)
            except DECODER_ERRORS:
                orientation = 1  # junk EXIF: ignore orientation rather than reject the picture
            if orientation not in range(1, 9):
                orientation = 1
            original = orientation
            if img.format == "HEIF":
                # libheif rotates and mirrors by the file's own transforms on decode and reports the upright
                # size; pillow-heif keeps the recorded orientation aside. Applying EXIF again would turn twice.
                original = int(img.info.get("original_orientation") or orientation or 1)
                orientation = 1
            gain_map = _gain_map(img)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_many_pixels(exc, limits.max_pixels) from None
    except UnidentifiedImageError:
        raise ImageRejected("corrupt", f"content looks like {mime} but its header could not be read") from None
    except DECODER_ERRORS as exc:
        raise ImageRejected("corrupt", f"{mime} header could not be read: {exc}") from None
    nclx = _nclx(data) if mime in ("image/heic", "image/avif") and not img.info.get("icc_profile") else None
    return Inspected(img, mime, width, height, frames, orientation, images, original, gain_map, nclx)


def _too_many_pixels(exc: Exception, max_pixels: int) -> ImageRejected:
    """Pillow's bomb guard fired (it stands behind our own check, at twice our limit): the refusal names our
    limit, in the words of our own check, not Pillow's internal one."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)) / 1e6:.1f} MP" if found else "its pixel count"
    return ImageRejected("too_many_pixels", f"{size} exceeds {max_pixels / 1e6:g} MP")


def draft_size(width: int, height: int, target_long_edge: int, tolerance: float) -> tuple[int, int] | None:
    """The smallest size the JPEG decoder may scale to (1/2, 1/4, 1/8) and still serve the largest
    rendition within ``tolerance`` (a decoded long edge >= tolerance x target)."""
    long_edge = max(width, height)
    needed = math.ceil(target_long_edge * tolerance)
    if long_edge < 2 * needed:
        return None
    scale = needed / long_edge
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def decode(inspected: Inspected, largest_edge: int, *, draft_tolerance: float = 0.98) -> Image.Image:
    """Decode the first frame, using the JPEG decoder's DCT scaling when it can, and apply the EXIF
    orientation. Returns an upright image in a mode that can be resized (see ``normalize_mode``)."""
    img = inspected.image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if inspected.mime == "image/jpeg":
                size = draft_size(img.width, img.height, largest_edge, draft_tolerance)
                if size:
                    img.draft(img.mode, size)
            img.load()
            if inspected.orientation != 1:
                img = ImageOps.exif_transpose(img)
            return normalize_mode(img)
    except MemoryError:
        raise ImageRejected("too_large_to_decode", "decoding needed more memory than allowed") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_many_pixels(exc, Image.MAX_IMAGE_PIXELS // 2) from None
    except DECODER_ERRORS as exc:
        raise ImageRejected("corrupt", f"{inspected.mime} could not be decoded: {exc}") from None


def has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info)


def normalize_mode(img: Image.Image) -> Image.Image:
    """Bring any decoded mode to one of L, LA, RGB, RGBA, CMYK (all resizable, 8 bits per channel)."""
    mode = img.mode
    if mode in ("L", "LA", "RGB", "RGBA", "CMYK"):
        return img
    if mode in ("P", "PA"):
        return img.convert("RGBA" if has_alpha(img) or mode == "PA" else "RGB")
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I;16") or mode == "I":
        # 16-bit: scale 0..65535 to 0..255 (a plain convert("L") would clip everything above 255).
        return img.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if mode == "F":
        return img.point(lambda v: v * 255).convert("L") if img.getextrema()[1] <= 1.0 else img.convert("L")
    if mode in ("RGBa", "La"):
        return img.convert("RGBA" if mode == "RGBa" else "LA")
    return img.convert("RGBA" if "A" in img.getbands() else "RGB")


_SRGB = ImageCms.createProfile("sRGB")


# Linear-light RGB of other primaries to linear sRGB (BT.709 primaries, D65), from the primaries' chromaticities
# (ISO/IEC 23091-2 colour primaries code points): 12 = Display P3 (SMPTE EG 432-1), 9 = BT.2020/2100.
_TO_SRGB = {
    12: ((1.2249401, -0.2249404, 0.0), (-0.0420569, 1.0420571, 0.0), (-0.0196376, -0.0786361, 1.0982735)),
    9: ((1.6604910, -0.5876411, -0.0728499), (-0.1245505, 1.1328999, -0.0083494), (-0.0181508, -0.1005789, 1.1187297)),
}


def _srgb_decode(v):
    import numpy as np

    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _srgb_encode(v):
    import numpy as np

    v = np.clip(v, 0.0, 1.0)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055)


def nclx_to_srgb(img: Image.Image, nclx: tuple[int, int, int]) -> Image.Image:
    """Pixels described by an nclx box (no ICC profile) in sRGB: Display P3 and BT.2020 primaries are
    converted in linear light (the sRGB curve for transfer 13, BT.1886's gamma 2.4 for the BT.709-family
    curves 1/6/14/15); colours sRGB cannot show are clipped. sRGB/BT.709 primaries (1, 2 = unspecified) stay
    as they are, and so do HDR curves (PQ 16, HLG 18), which the SDR renditions show without tone mapping."""
    import numpy as np

    primaries, transfer, _ = nclx
    matrix = _TO_SRGB.get(primaries)
    if matrix is None or transfer not in (1, 6, 13, 14, 15) or img.mode != "RGB":
        return img
    rgb = np.asarray(img, dtype=np.float32) / 255.0
    linear = _srgb_decode(rgb) if transfer == 13 else rgb ** 2.4
    out = _srgb_encode(linear @ np.asarray(matrix, dtype=np.float32).T)
    return Image.fromarray(np.round(out * 255.0).astype(np.uint8), "RGB")


def to_srgb(img: Image.Image, icc: bytes | None, nclx: tuple[int, int, int] | None = None) -> Image.Image:
    """Convert to sRGB RGB/RGBA using the embedded ICC profile (if any and not sRGB already), or else the
    nclx colour description of a HEIF/AVIF."""
    alpha = img.getchannel("A") if img.mode in ("RGBA", "LA") else None
    base = img.convert("RGB") if img.mode in ("RGBA", "LA") else img
    if not icc and nclx:
        base = nclx_to_srgb(base.convert("RGB"), nclx)
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            description = (ImageCms.getProfileDescription(src) or "").lower()
            wants_mode = {"RGB": "RGB", "CMYK": "CMYK", "L": "L"}.get(base.mode)
            is_srgb = "srgb" in description and base.mode == "RGB"
            if wants_mode and not is_srgb:
                base = ImageCms.profileToProfile(base, src, _SRGB, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass  # a broken or mismatched profile: treat the pixels as sRGB
    if base.mode != "RGB":
        base = base.convert("RGB")
    if alpha is not None:
        base.putalpha(alpha)
    return base
