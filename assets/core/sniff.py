"""Identify a file's type from its first bytes — never from its name or extension."""

from __future__ import annotations

import codecs

# Types the pipeline decodes. Everything else is refused at intake, with a reason that says what it is.
def _supported() -> frozenset[str]:
    # AVIF: Pillow >= 12 (the pinned range) always has it; HEIC/HEIF: pillow-heif (a runtime dependency).
    types = {"image/jpeg", "image/png", "image/gif", "image/webp", "image/tiff", "image/bmp", "image/avif",
             "image/heic"}
    try:
        from PIL import features

        if not features.check("avif"):
            types.discard("image/avif")
    except ImportError:
        pass
    return frozenset(types)


# What intake accepts and the core decodes.
SUPPORTED_IMAGE_TYPES = _supported()

# For people: what is accepted, as the web page, the CLI and the README say it.
ACCEPTED_FORMATS = "JPEG (and MPO / Ultra HDR), PNG, WebP, GIF, TIFF, BMP, AVIF, HEIC/HEIF"

# ISO base media files (ftyp box) by brand. A file lists a major brand and compatible brands; an AVIF may
# carry the generic 'mif1' as major brand and 'avif' among the compatible ones, a HEIC 'mif1' + 'heic'.
_AVIF_BRANDS = {b"avif", b"avis"}
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"heif"}
_HEIF_GENERIC = {b"mif1", b"msf1", b"miaf"}
_QUICKTIME_BRANDS = {b"qt  "}


def _ftyp_brands(head: bytes) -> tuple[bytes, set[bytes]]:
    """(major brand, every brand) of an ISO base media file's leading ``ftyp`` box."""
    size = int.from_bytes(head[0:4], "big")
    end = min(len(head), size if 16 <= size <= 4096 else len(head))
    brands = {head[8:12]} | {head[i:i + 4] for i in range(16, end - 3, 4)}
    return head[8:12], brands


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
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video/x-msvideo"
    if head.startswith(b"FUJIFILMCCD-RAW"):
        return "image/x-fuji-raf"
    if head[:4] in (b"IIRO", b"IIRS", b"MMOR"):
        return "image/x-olympus-orf"
    if head[:4] == b"IIU\x00":
        return "image/x-panasonic-rw2"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"  # camera RAW files are TIFF too: ``camera_raw`` tells them apart by their tags
    if head[:2] == b"BM" and len(head) >= 14:
        return "image/bmp"
    if head[:2] == b"\xff\x0a" or head[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        return "image/jxl"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "video/webm"  # Matroska / WebM
    if head[4:8] == b"ftyp":
        major, brands = _ftyp_brands(head)
        if major == b"crx ":
            return "image/x-canon-cr3"
        if major in _AVIF_BRANDS:
            return "image/avif"
        if major in _HEIF_BRANDS:
            return "image/heic"
        if major in _HEIF_GENERIC or brands & (_AVIF_BRANDS | _HEIF_BRANDS):
            if brands & _HEIF_BRANDS:
                return "image/heic"
            if brands & _AVIF_BRANDS:
                return "image/avif"
            return "image/heic"  # a still-image HEIF of another codec: libheif says what it is
        if major in _QUICKTIME_BRANDS:
            return "video/quicktime"
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


_RAW_BY_TYPE = {"image/x-fuji-raf": "RAF", "image/x-olympus-orf": "ORF", "image/x-panasonic-rw2": "RW2",
                "image/x-canon-cr3": "CR3"}
# TIFF-based RAW by the camera maker (the Make tag); a maker not listed is named "camera RAW".
_RAW_BY_MAKE = {"NIKON": "NEF", "SONY": "ARW", "PENTAX": "PEF", "RICOH": "PEF", "SAMSUNG": "SRW", "CANON": "CR2",
                "KODAK": "DCR", "MINOLTA": "MRW", "KONICA": "MRW", "HASSELBLAD": "3FR", "PHASE ONE": "IIQ",
                "LEAF": "MOS", "EPSON": "ERF", "MAMIYA": "MEF", "SIGMA": "X3F"}
_CFA, _LINEAR_RAW = 32803, 34892  # PhotometricInterpretation of sensor data (TIFF/EP, DNG)


def _tiff_tags(data: bytes, *, max_ifds: int = 32) -> list[dict[int, tuple[int, int, int]]]:
    """The tags of every IFD of a TIFF (IFD0's chain and SubIFDs): tag -> (type, count, value or offset).
    Bounded: at most ``max_ifds`` IFDs of at most 1,000 entries, each read once; never raises."""
    order = "little" if data[:2] == b"II" else "big"

    def u(at: int, n: int) -> int:
        return int.from_bytes(data[at:at + n], order) if at + n <= len(data) else 0

    ifds, todo, seen = [], [u(4, 4)], set()
    while todo and len(ifds) < max_ifds:
        at = todo.pop(0)
        if at in seen or at < 8 or at + 2 > len(data):
            continue
        seen.add(at)
        count = u(at, 2)
        if count > 1000 or at + 2 + 12 * count > len(data):
            continue
        tags = {}
        for i in range(count):
            entry = at + 2 + 12 * i
            tags[u(entry, 2)] = (u(entry + 2, 2), u(entry + 4, 4), u(entry + 8, 4) if u(entry + 2, 2) != 3 or u(entry + 4, 4) != 1
                                 else u(entry + 8, 2))
        ifds.append(tags)
        todo.append(u(at + 2 + 12 * count, 4))
        if 330 in tags:  # SubIFDs: one offset inline, or an array of them
            kind, n, value = tags[330]
            todo.extend([value] if n == 1 else [u(value + 4 * k, 4) for k in range(min(n, 16))])
    return ifds


def _tiff_ascii(data: bytes, entry: tuple[int, int, int], order: str) -> str:
    kind, count, value = entry
    if kind != 2 or count == 0:
        return ""
    raw = value.to_bytes(4, order)[:count] if count <= 4 else bytes(data[value:value + min(count, 256)])
    return raw.split(b"\x00", 1)[0].decode("latin-1").strip()


def camera_raw(data: bytes) -> str | None:
    """The camera RAW format of ``data`` ("DNG", "CR2", "NEF", "CR3", "RAF", …), or None for anything else.
    DNG and the TIFF-based RAWs are TIFF files: DNG by its DNGVersion tag, CR2 by its 'CR' marker, the others
    by sensor data (a CFA or linear-raw image) in any IFD, named by the camera maker. Pillow would read only
    their small embedded preview, so they must never reach it as a photo. ``data`` may be a memoryview."""
    mime = sniff_type(bytes(data[:64]))
    if mime in _RAW_BY_TYPE:
        return _RAW_BY_TYPE[mime]
    if mime != "image/tiff":
        return None
    if data[8:10] == b"CR":
        return "CR2"
    ifds = _tiff_tags(data)
    if any(50706 in tags for tags in ifds):  # DNGVersion
        return "DNG"
    if not any(tags.get(262, (0, 0, 0))[2] in (_CFA, _LINEAR_RAW) for tags in ifds):
        return None
    order = "little" if data[:2] == b"II" else "big"
    make = next((_tiff_ascii(data, tags[271], order) for tags in ifds if 271 in tags), "").upper()
    return next((name for maker, name in _RAW_BY_MAKE.items() if make.startswith(maker)), "camera RAW")


def type_refusal(data: bytes) -> tuple[str, str, str] | None:
    """Why a file is refused for its type — ``(code, reason, sniffed type)`` — or None when the pipeline
    decodes it. The reason says what the file is and what to do. ``data``: the whole file (bytes or a
    memoryview: a TIFF-based camera RAW is told apart by tags that may lie anywhere in it)."""
    mime = sniff_type(bytes(data[:64]))
    raw = camera_raw(data)
    if raw:
        return "camera_raw", f"camera RAW ({raw}): export a JPEG or HEIC from your camera or photo app", mime
    if mime.startswith("video/"):
        return "video", "video; upload the photo (a Live Photo's still is its HEIC or JPEG)", mime
    if mime == "image/jxl":
        return "jpeg_xl", "JPEG XL is not supported yet: export a JPEG, HEIC or AVIF", mime
    if mime not in SUPPORTED_IMAGE_TYPES:
        return "unsupported_type", f"not a supported image: its content looks like {mime} (supported: {ACCEPTED_FORMATS})", mime
    return None


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
