"""Facts and fingerprints for the metadata store: a safe EXIF subset, a 64-bit perceptual hash,
per-channel statistics, dominant colours and a BlurHash placeholder. Computed from a small rendition,
so they cost a few milliseconds whatever the source size."""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
from PIL import Image, ImageStat

# EXIF tags that may be copied into renditions when the operator allows them (CoreConfig.keep_exif).
COPYABLE_EXIF = {"copyright": 0x8298, "artist": 0x013B, "image_description": 0x010E}

_IFD0 = {"camera_make": 0x010F, "camera_model": 0x0110, "software": 0x0131}
_EXIF_IFD = {
    "lens_model": 0xA434,
    "captured_at": 0x9003,  # DateTimeOriginal
    "exposure_time": 0x829A,
    "f_number": 0x829D,
    "iso": 0x8827,
    "focal_length_mm": 0x920A,
}


def _clean(value):
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        return "".join(ch for ch in value if ch.isprintable()).strip()[:128] or None
    if isinstance(value, tuple):
        return _clean(value[0]) if value else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return round(number, 6) if math.isfinite(number) else None


def _gps(exif: Image.Exif) -> dict | None:
    gps = exif.get_ifd(0x8825)
    try:
        def degrees(values, ref):
            d, m, s = (float(v) for v in values)
            sign = -1 if ref in ("S", "W") else 1
            return round(sign * (d + m / 60 + s / 3600), 7)

        lat = degrees(gps[2], gps.get(1, "N"))
        lon = degrees(gps[4], gps.get(3, "E"))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return {"latitude": lat, "longitude": lon}


def exif_facts(exif: Image.Exif, include_gps: bool) -> dict:
    """Camera, lens, capture time and exposure; GPS only when ``include_gps``. Junk is dropped."""
    out: dict = {}
    try:
        for name, tag in _IFD0.items():
            if tag in exif:
                out[name] = _clean(exif[tag])
        sub = exif.get_ifd(0x8769)
        for name, tag in _EXIF_IFD.items():
            if tag in sub:
                out[name] = _clean(sub[tag])
        if out.get("captured_at"):
            try:
                out["captured_at"] = datetime.strptime(str(out["captured_at"]), "%Y:%m:%d %H:%M:%S").isoformat()
            except ValueError:
                out["captured_at"] = None
        if include_gps:
            out["gps"] = _gps(exif)
    except Exception:  # EXIF parsing of hostile data: facts are optional, the picture is not
        return {k: v for k, v in out.items() if v is not None}
    return {k: v for k, v in out.items() if v is not None}


def copy_exif(exif: Image.Exif, keep: tuple[str, ...]) -> bytes | None:
    """A minimal EXIF block with only the allowed tags (never GPS, never maker notes)."""
    if not keep:
        return None
    out = Image.Exif()
    for name in keep:
        tag = COPYABLE_EXIF.get(name)
        value = exif.get(tag) if tag else None
        cleaned = _clean(value) if value is not None else None
        if isinstance(cleaned, str):
            out[tag] = cleaned
    return out.tobytes() if len(out) else None


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)
    m = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m


_DCT32 = _dct_matrix(32)


def phash(img: Image.Image) -> str:
    """64-bit DCT perceptual hash (the classic pHash: 32x32 gray, 8x8 low frequencies vs their median),
    as 16 hex digits."""
    gray = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    coeffs = _DCT32 @ gray @ _DCT32.T
    low = coeffs[:8, :8].flatten()
    bits = low > np.median(low[1:])
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return f"{value:016x}"


def hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def within_distance(queries: list[str], pool: list[str], max_distance: int, block: int = 512
                    ) -> list[list[tuple[int, int]]]:
    """For each query pHash, ``(index in pool, distance)`` of the pool's hashes at most ``max_distance`` bits
    away, in pool order. Vectorised in blocks of rows (XOR and bit count on 64-bit words): a 10,000-image
    batch against itself is 10^8 comparisons, seconds in NumPy where a Python loop over ``hamming`` takes
    minutes; memory stays at ``block`` × len(pool) words."""
    words = np.array([int(h, 16) for h in pool], dtype=np.uint64)
    asked = np.array([int(h, 16) for h in queries], dtype=np.uint64)
    found: list[list[tuple[int, int]]] = []
    for start in range(0, len(asked), block):
        bits = np.bitwise_count(asked[start:start + block, None] ^ words[None, :])
        for row in bits:
            near = np.flatnonzero(row <= max_distance)
            found.append([(int(j), int(row[j])) for j in near])
    return found


def channel_stats(img: Image.Image) -> dict:
    rgb = img.convert("RGB")
    stat = ImageStat.Stat(rgb)
    return {
        "mean": [round(v, 2) for v in stat.mean],
        "std": [round(v, 2) for v in stat.stddev],
    }


def dominant_colours(img: Image.Image, count: int = 5) -> list[dict]:
    small = img.convert("RGB")
    small.thumbnail((64, 64))
    quant = small.quantize(colors=count, method=Image.Quantize.MEDIANCUT)
    palette = quant.getpalette() or []
    total = small.width * small.height
    out = []
    for pixels, index in sorted(quant.getcolors() or [], reverse=True)[:count]:
        r, g, b = palette[index * 3: index * 3 + 3]
        out.append({"hex": f"#{r:02x}{g:02x}{b:02x}", "fraction": round(pixels / total, 4)})
    return out


_B83 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"


def _b83(value: int, length: int) -> str:
    return "".join(_B83[(value // 83 ** (length - i - 1)) % 83] for i in range(length))


def blurhash(img: Image.Image, x_components: int = 4, y_components: int = 3) -> str:
    """BlurHash (https://blurha.sh algorithm) of the image, computed on a 32 px copy."""
    small = img.convert("RGB")
    small.thumbnail((32, 32))
    srgb = np.asarray(small, dtype=np.float64) / 255.0
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    h, w, _ = linear.shape
    ys, xs = np.arange(h), np.arange(w)
    factors = []
    for j in range(y_components):
        for i in range(x_components):
            basis = np.outer(np.cos(np.pi * j * ys / h), np.cos(np.pi * i * xs / w))
            norm = 1.0 if i == 0 and j == 0 else 2.0
            factors.append(norm * (linear * basis[:, :, None]).sum(axis=(0, 1)) / (w * h))
    dc, ac = factors[0], factors[1:]

    def to_srgb(v: float) -> int:
        v = min(max(v, 0.0), 1.0)
        return int(round((v * 12.92 if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055) * 255))

    out = _b83((x_components - 1) + (y_components - 1) * 9, 1)
    if ac:
        max_ac = max(abs(float(c)) for f in ac for c in f)
        quant_max = max(0, min(82, int(math.floor(max_ac * 166 - 0.5))))
        max_value = (quant_max + 1) / 166
        out += _b83(quant_max, 1)
    else:
        max_value = 1.0
        out += _b83(0, 1)
    out += _b83((to_srgb(dc[0]) << 16) + (to_srgb(dc[1]) << 8) + to_srgb(dc[2]), 4)

    def sign_pow(v: float, e: float) -> float:
        return math.copysign(abs(v) ** e, v)

    for f in ac:
        q = [max(0, min(18, int(math.floor(sign_pow(float(c) / max_value, 0.5) * 9 + 9.5)))) for c in f]
        out += _b83(q[0] * 19 * 19 + q[1] * 19 + q[2], 2)
    return out
