"""The pure image core: sniffing, safe decoding, orientation, modes, renditions."""

from __future__ import annotations

import io
import subprocess
import zipfile

import pytest
from PIL import Image

from assets.core import CoreConfig, ImageRejected, Limits, fit_long_edge, process_image, sniff_type
from tests.support.procs import probe
from orchestration.devtools.sample import jpeg_bytes


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_core_imports_no_dagster():
    out = subprocess.run(probe("imports", "assets.core", "orchestration.domain.processing"), capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "data,expected",
    [
        (_encode(Image.new("RGB", (4, 4)), "JPEG"), "image/jpeg"),
        (_encode(Image.new("RGB", (4, 4)), "PNG"), "image/png"),
        (_encode(Image.new("P", (4, 4)), "GIF"), "image/gif"),
        (_encode(Image.new("RGB", (4, 4)), "WEBP"), "image/webp"),
        (_encode(Image.new("RGB", (4, 4)), "TIFF"), "image/tiff"),
        (_encode(Image.new("RGB", (4, 4)), "BMP"), "image/bmp"),
        (b"", "application/x-empty"),
        (b"just some words", "text/plain"),
        (b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>", "image/svg+xml"),
        (b"%PDF-1.7 ...", "application/pdf"),
        (b"\x00\x01\x02\xff\xfe", "application/octet-stream"),
    ],
)
def test_sniff_type_reads_bytes_not_names(data, expected):
    assert sniff_type(data[:64]) == expected


def test_zip_named_png_is_refused():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", "x")
    with pytest.raises(ImageRejected) as err:
        process_image(buf.getvalue())
    assert err.value.code == "unsupported_type" and "zip" in err.value.message


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_comes_out_upright(orientation):
    # A 60x40 landscape marker image: red left half, blue right half, as the viewer should see it.
    upright = Image.new("RGB", (60, 40), "blue")
    upright.paste(Image.new("RGB", (30, 40), "red"), (0, 0))
    # Store it so that applying `orientation` restores `upright` (the inverse transform).
    inverse = {
        1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }[orientation]
    stored = upright if inverse is None else upright.transpose(inverse)
    result = process_image(jpeg_bytes(stored, orientation, quality=95))
    assert (result.facts["width"], result.facts["height"]) == (60, 40)
    assert result.facts["orientation"] == orientation
    out = Image.open(io.BytesIO(result.renditions[0].data)).convert("RGB")
    assert out.size == (60, 40)
    left, right = out.getpixel((10, 20)), out.getpixel((50, 20))
    assert left[0] > 200 and left[2] < 60, left
    assert right[2] > 200 and right[0] < 60, right


@pytest.mark.parametrize(
    "img,fmt",
    [
        (Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"),
        (Image.new("L", (40, 30), 128), "PNG"),
        (Image.new("LA", (40, 30), (128, 200)), "PNG"),
        (Image.new("P", (40, 30), 3), "PNG"),
        (Image.new("I;16", (40, 30), 40000), "PNG"),
        (Image.new("RGBA", (40, 30), (255, 0, 0, 128)), "PNG"),
        (Image.new("RGBA", (40, 30), (0, 255, 0, 128)), "WEBP"),
        (Image.new("RGB", (40, 30), (0, 0, 255)), "TIFF"),
        (Image.new("RGB", (40, 30), (0, 0, 255)), "BMP"),
    ],
)
def test_modes_become_rgb_jpeg_renditions(img, fmt):
    result = process_image(_encode(img, fmt))
    alpha = "A" in img.getbands()
    assert {r.format for r in result.renditions} == {"JPEG", "WEBP"}
    for r in result.renditions:
        out = Image.open(io.BytesIO(r.data))
        assert out.format == r.format
        if r.format == "JPEG":
            assert out.mode == "RGB"  # alpha flattened
        else:
            assert out.mode == ("RGBA" if alpha else "RGB")  # WebP keeps alpha


def test_alpha_is_flattened_on_white():
    result = process_image(_encode(Image.new("RGBA", (40, 30), (0, 0, 0, 0)), "PNG"))
    px = Image.open(io.BytesIO(result.renditions[0].data)).getpixel((20, 15))
    assert min(px) >= 250


def test_sixteen_bit_gray_is_scaled_not_clipped():
    result = process_image(_encode(Image.new("I;16", (40, 30), 40000), "PNG"))
    px = Image.open(io.BytesIO(result.renditions[0].data)).getpixel((20, 15))
    assert abs(px[0] - 40000 // 256) <= 2


def test_renditions_keep_aspect_never_upscale_and_hit_the_long_edge():
    big = process_image(jpeg_bytes(Image.new("RGB", (5000, 2500), "gray")))
    sizes = {r.name: (r.width, r.height) for r in big.renditions}
    assert len(big.renditions) == 6
    assert sizes == {"large": (2048, 1024), "medium": (1024, 512), "thumb": (256, 128)}
    small = process_image(jpeg_bytes(Image.new("RGB", (300, 200), "gray")))
    assert {r.name: (r.width, r.height) for r in small.renditions} == {
        "large": (300, 200), "medium": (300, 200), "thumb": (256, 171)}
    for r in big.renditions + small.renditions:
        assert Image.open(io.BytesIO(r.data)).size == (r.width, r.height)


@pytest.mark.parametrize("w,h,edge", [(1, 10000, 256), (10000, 1, 256), (3, 2, 2048), (4032, 3024, 1024)])
def test_fit_long_edge(w, h, edge):
    fw, fh = fit_long_edge(w, h, edge)
    assert max(fw, fh) == min(edge, max(w, h)) and fw >= 1 and fh >= 1
    assert abs(fw / fh - w / h) <= max(1 / fh, 1 / fw) * (w / h) + 1e-9 or min(fw, fh) == 1


def test_pixel_limit_checked_from_header_before_decoding():
    data = _encode(Image.new("L", (2000, 2000)), "PNG")
    with pytest.raises(ImageRejected) as err:
        process_image(data, CoreConfig(limits=Limits(max_pixels=1_000_000)))
    assert err.value.code == "too_many_pixels" and "4.0 MP" in err.value.message


def test_decompression_bomb_header_is_rejected():
    # A PNG header claiming 100000 x 100000 pixels with almost no data.
    import struct
    import zlib

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
    with pytest.raises(ImageRejected) as err:
        process_image(png)
    assert err.value.code in {"bad_dimensions", "too_many_pixels", "decompression_bomb"}


def test_a_pixel_flood_names_our_limit_not_pillows():
    """Far over the limit, Pillow's own bomb guard (at twice our limit) fires before our check: the refusal
    still names our limit (IMGPIPE_MAX_PIXELS), not Pillow's internal number."""
    import struct
    import zlib

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 5000, 5000, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
    with pytest.raises(ImageRejected) as err:
        process_image(png, CoreConfig(limits=Limits(max_pixels=1_000_000)))
    assert err.value.code == "too_many_pixels"
    assert err.value.message == "25.0 MP exceeds 1 MP", err.value.message


@pytest.mark.parametrize(
    "data,code",
    [
        (b"", "unsupported_type"),
        (b"hello, I am text named photo.jpg", "unsupported_type"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 10, "corrupt"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "corrupt"),
        (b"GIF89a" + b"\xff" * 20, "corrupt"),
    ],
)
def test_bad_input_is_a_rejection_not_an_exception(data, code):
    with pytest.raises(ImageRejected) as err:
        process_image(data)
    assert err.value.code == code and err.value.message


def test_truncated_jpeg_rejected():
    whole = jpeg_bytes(Image.effect_noise((400, 300), 50).convert("RGB"))
    with pytest.raises(ImageRejected) as err:
        process_image(whole[: len(whole) // 2])
    assert err.value.code == "corrupt"


def test_gps_and_other_exif_are_stripped_from_renditions():
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    exif.get_ifd(0x8825)[2] = (48.0, 51.0, 24.0)  # GPSLatitude
    data = _encode(Image.new("RGB", (50, 50), "red"), "JPEG", exif=exif)
    assert b"CameraMaker" in data
    for r in process_image(data).renditions:
        assert b"CameraMaker" not in r.data and not Image.open(io.BytesIO(r.data)).getexif()


@pytest.mark.parametrize("size", [(1, 1), (3, 7), (640, 427), (2048, 1536), (16383, 2)])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
@pytest.mark.parametrize("options", [{"quality": 80}, {"lossless": True}, {"quality": 80, "exif": b"Exif\0\0II*\0"}],
                         ids=["lossy", "lossless", "with-exif"])
def test_a_webps_size_read_from_its_header_is_the_size_pillow_reads(size, mode, options):
    """The rendition check reads a WebP's size from its first chunk (``VP8 ``, ``VP8L`` or ``VP8X``: alpha
    and EXIF make it extended) instead of opening it with Pillow; both must agree on every kind."""
    from assets.core.sniff import webp_dimensions

    buf = io.BytesIO()
    Image.new(mode, size, 90 if mode == "L" else (10, 200, 30, 100)[: len(mode)]).save(buf, "WEBP", **options)
    data = buf.getvalue()
    assert webp_dimensions(data) == Image.open(io.BytesIO(data)).size == size


def test_a_webp_header_that_is_not_one_gives_no_size():
    from assets.core.sniff import webp_dimensions

    buf = io.BytesIO()
    Image.new("RGB", (64, 48)).save(buf, "JPEG")
    assert webp_dimensions(buf.getvalue()) is None  # not a WebP at all
    assert webp_dimensions(b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 20) is None  # no key-frame start code
    assert webp_dimensions(b"RIFF\0\0\0\0WEBPVP8L" + b"\0" * 20) is None  # no lossless signature
    assert webp_dimensions(b"RIFF\0\0\0\0WEBPVP8L\0\0\0\0\x2f") is None  # truncated
    assert webp_dimensions(b"RIFF\0\0\0\0WEBPALPH" + b"\0" * 20) is None  # a chunk that cannot come first


def test_encoder_effort_is_part_of_the_processing_version():
    """Renditions made with another WebP method or AVIF speed carry another processing version, so they show
    as changed and ``--changed`` reprocesses them (issue 25 moved the WebP default from 4 to 2)."""
    from assets.core import processing_version

    default = processing_version(CoreConfig())
    assert processing_version(CoreConfig(webp_method=4)) != default
    assert processing_version(CoreConfig(avif_speed=9)) != default
