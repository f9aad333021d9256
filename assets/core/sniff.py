"""Identify a file's type from its first bytes — never from its name or extension."""

from __future__ import annotations

import codecs

# Types the pipeline decodes. Everything else is refused at intake with the sniffed type as reason.
def _supported() -> frozenset[str]:
    types = {"image/jpeg", "image/png", "image/gif", "image/webp", "image/tiff", "image/bmp"}
    try:
        from PIL import features

        if features.check("avif"):
            types.add("image/avif")
    except ImportError:
        pass
    return frozenset(types)


# What intake accepts and the core decodes (HEIC needs a plugin Pillow does not ship; it is refused).
SUPPORTED_IMAGE_TYPES = _supported()


def sniff_type(head: bytes) -> str:
    """MIME type from magic numbers in ``head`` (the first 64 bytes are enough)."""
    if not head:
        return "application/x-empty"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if head[:2] == b"BM" and len(head) >= 14:
        return "image/bmp"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "image/avif"
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
            return "image/heic"
        return "video/mp4"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "application/zip"
    if head[:3] == b"\x1f\x8b\x08":
        return "application/gzip"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if stripped.startswith((b"<svg", b"<?xml")) and b"<svg" in head.lower():
        return "image/svg+xml"
    if stripped.startswith((b"<?xml", b"<!doctype", b"<html", b"<")):
        return "text/xml"
    try:
        # Incremental decoding tolerates a multi-byte character cut off at the end of ``head``.
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        return "text/plain"
    except UnicodeDecodeError:
        return "application/octet-stream"


def webp_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a WebP file's first chunk header, or None if ``data`` is not a well-formed
    simple-lossy (``VP8 ``), lossless (``VP8L``) or extended (``VP8X``) WebP header.

    Pillow learns a WebP's size only by creating libwebp's demuxer over the whole file: ~1.5-3 ms for a
    2048-px rendition, against microseconds here. The rendition check reads only the size (it has already
    compared the bytes with the sha256 recorded when they were encoded). Layout: the WebP container
    specification (developers.google.com/speed/webp/docs/riff_container) and RFC 6386 section 9.1.
    """
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8 ":
        # frame tag (3 bytes), start code 9d 01 2a, then 14-bit width and height (2 bits of scale above each)
        if data[23:26] != b"\x9d\x01\x2a" or data[20] & 1:  # bit 0 set: an inter frame, never a key frame here
            return None
        width = int.from_bytes(data[26:28], "little") & 0x3FFF
        height = int.from_bytes(data[28:30], "little") & 0x3FFF
    elif chunk == b"VP8L":
        # signature 0x2f, then width-1 and height-1 in 14 bits each, little-endian bit order
        if data[20] != 0x2F:
            return None
        bits = int.from_bytes(data[21:25], "little")
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif chunk == b"VP8X":
        # flags (1 byte), reserved (3), canvas width-1 and height-1 in 24 bits each
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
    else:
        return None
    return (width, height) if width and height else None
