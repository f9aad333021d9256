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
