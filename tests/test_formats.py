"""What phones and cameras send: HEIC/HEIF (orientation, 10-bit, several images, nclx colour), AVIF with a
generic major brand, MPO / Ultra HDR, multi-page TIFF, camera RAW (DNG and TIFF-based by their tags; CR3, RAF,
ORF, RW2 by signature), JPEG XL and video — each made here, each with its outcome and, where processed,
upright renditions and the colour of a known patch."""

from __future__ import annotations

import io
import re

import numpy as np
import pillow_heif
import pytest
from PIL import Image

from assets.core.config import CoreConfig, Limits
from assets.core.decode import ImageRejected
from assets.core.process import heif_versions, process_image
from assets.core.sniff import SUPPORTED_IMAGE_TYPES, camera_raw, sniff_type, type_refusal
from orchestration.domain.intake import check_content

ORANGE_P3 = (200, 100, 50)
ORANGE_IN_SRGB = (215, 93, 31)  # Display P3 (200,100,50) in sRGB


def _version(text: str | None) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text or "0"))


def test_the_bundled_heif_decoders_carry_the_known_security_fixes():
    """libheif 1.23.5 and libde265 1.1.2 are the releases with the last security fixes known (2026); a
    pillow-heif that bundles older ones must not be installed (pi-heif 1.4.0, for one, ships libheif 1.23.0 and
    libde265 1.1.0)."""
    versions = heif_versions()
    assert _version(versions["libheif"]) >= (1, 23, 5), versions
    assert _version(versions["libde265"]) >= (1, 1, 2), versions


def _heif(img: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "HEIF", quality=92, **save)
    return buf.getvalue()


def _pixel(rendition, xy=(20, 20)) -> tuple[int, ...]:
    return Image.open(io.BytesIO(rendition.data)).convert("RGB").getpixel(xy)


def _close(a, b, tolerance=6) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b))


def _largest(result):
    return max(result.renditions, key=lambda r: (r.width * r.height, r.format == "PNG"))


def test_a_heic_from_a_phone_is_processed_upright_with_its_orientation_recorded():
    # Stored landscape with EXIF orientation 6 (pillow-heif writes it as the HEIF's own rotation, as phones do):
    # the left half blue, so upright the top half is blue.
    photo = Image.new("RGB", (400, 200), (230, 230, 230))
    photo.paste((0, 0, 255), (0, 0, 200, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _heif(photo, exif=exif.tobytes())
    assert sniff_type(data[:64]) == "image/heic" and check_content(data) is None
    result = process_image(data, CoreConfig())
    facts = result.facts
    assert (facts["width"], facts["height"], facts["orientation"]) == (200, 400, 6)
    big = _largest(result)
    assert (big.width, big.height) == (200, 400)
    image = Image.open(io.BytesIO(big.data)).convert("RGB")
    assert _close(image.getpixel((100, 50)), (0, 0, 255), 30) and _close(image.getpixel((100, 350)), (230, 230, 230), 30)


def test_a_heic_described_by_nclx_only_comes_out_in_srgb():
    data = _heif(Image.new("RGB", (64, 64), ORANGE_P3), save_nclx_profile=True, color_primaries=12,
                 transfer_characteristics=13, matrix_coefficients=6, full_range_flag=1)
    result = process_image(data, CoreConfig())
    assert result.facts["nclx"][:2] == [12, 13] and not result.facts["icc_profile"]
    assert _close(_pixel(_largest(result)), ORANGE_IN_SRGB, 3), _pixel(_largest(result))


def test_a_10_bit_heic_is_processed():
    pixels = (np.ones((48, 64, 3), dtype=np.uint16) * np.array([200, 100, 50], dtype=np.uint16) * 257)
    buf = io.BytesIO()
    pillow_heif.from_bytes(mode="RGB;16", size=(64, 48), data=pixels.tobytes()).save(buf, quality=-1)
    result = process_image(buf.getvalue(), CoreConfig())
    assert _close(_pixel(_largest(result)), (200, 100, 50), 3)


def test_a_heic_with_several_images_is_processed_from_its_primary_even_when_animations_are_refused():
    heif = pillow_heif.from_pillow(Image.new("RGB", (96, 64), (10, 200, 10)))
    heif.add_from_pillow(Image.new("RGB", (32, 32), (200, 10, 10)))
    buf = io.BytesIO()
    heif.save(buf, quality=90)
    result = process_image(buf.getvalue(), CoreConfig(animated="reject"))
    assert (result.facts["images"], result.facts["frames"], result.facts["width"]) == (2, 1, 96)
    assert _close(_pixel(_largest(result)), (10, 200, 10), 8)


def test_a_tiled_48_mp_heic_processes_under_the_workers_memory_cap():
    """An 8000x6000 HEIC as phones make them (a grid of tiles), through the worker pool with its address-space
    cap (IMGPIPE_WORKER_MEMORY_MB's default)."""
    from assets.core.pool import WorkerPool

    gradient = np.linspace(0, 255, 8000, dtype=np.uint8)
    big = Image.fromarray(np.dstack([np.tile(gradient, (6000, 1))] * 3), "RGB")
    before, pillow_heif.options.GRID_TILE_SIZE = pillow_heif.options.GRID_TILE_SIZE, 512  # tiles, as phones write
    try:
        data = _heif(big)
    finally:
        pillow_heif.options.GRID_TILE_SIZE = before
    del big
    config = CoreConfig()
    with WorkerPool(1, config) as pool:
        [outcome] = list(pool.map([("big", lambda: data)]))
    assert outcome.rejection is None, outcome.rejection
    assert (outcome.image.facts["width"], outcome.image.facts["height"]) == (8000, 6000)
    assert outcome.peak_rss_mb is None or outcome.peak_rss_mb < config.limits.memory_limit_mb


def _avif(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "AVIF", quality=95)
    return buf.getvalue()


def test_an_avif_whose_major_brand_is_mif1_is_an_avif():
    data = bytearray(_avif(Image.new("RGB", (64, 48), (30, 120, 220))))
    assert data[8:12] == b"avif" and b"mif1" in data[16:32]
    data[8:12] = b"mif1"  # as some encoders write it: the generic brand first, 'avif' among the compatible ones
    assert sniff_type(bytes(data[:64])) == "image/avif" and check_content(bytes(data)) is None
    assert _close(_pixel(_largest(process_image(bytes(data), CoreConfig()))), (30, 120, 220), 8)


def test_an_avif_described_by_nclx_only_comes_out_in_srgb():
    data = bytearray(_avif(Image.new("RGB", (64, 64), ORANGE_P3)))
    at = data.find(b"colrnclx")
    assert at > 0
    data[at + 8:at + 12] = (12).to_bytes(2, "big") + (13).to_bytes(2, "big")  # Display P3 primaries, sRGB curve
    result = process_image(bytes(data), CoreConfig())
    assert result.facts["nclx"][:2] == [12, 13]
    assert _close(_pixel(_largest(result)), ORANGE_IN_SRGB, 4), _pixel(_largest(result))


def test_an_ultra_hdr_mpo_is_processed_from_its_photo_and_its_gain_map_recorded():
    photo = Image.new("RGB", (120, 80), (240, 120, 20))
    gain_map = Image.new("L", (60, 40), 128).convert("RGB")
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description xmlns:hdrgm="http://ns.adobe.com/hdr-gain-map/1.0/" hdrgm:Version="1.0"/></x:xmpmeta>'
    buf = io.BytesIO()
    photo.save(buf, "MPO", save_all=True, append_images=[gain_map], xmp=xmp, quality=95)
    # (Pillow opens an Ultra HDR file as its primary JPEG: the gain map is not a frame of it)
    result = process_image(buf.getvalue(), CoreConfig(animated="reject"))
    assert result.facts["gain_map"] is True and result.facts["frames"] == 1
    assert result.facts["width"] == 120 and _close(_pixel(_largest(result)), (240, 120, 20), 8)


def test_an_mpo_from_a_3d_camera_is_processed_from_its_first_image():
    buf = io.BytesIO()
    Image.new("RGB", (120, 80), (20, 120, 240)).save(buf, "MPO", save_all=True,
                                                      append_images=[Image.new("RGB", (120, 80), (30, 130, 250))])
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    result = process_image(buf.getvalue(), CoreConfig(animated="reject"))
    assert (result.facts["images"], result.facts["frames"], result.facts["gain_map"]) == (2, 1, False)
    assert _close(_pixel(_largest(result)), (20, 120, 240), 8)


def test_a_multi_page_tiff_is_processed_from_its_first_page():
    buf = io.BytesIO()
    Image.new("RGB", (80, 60), (0, 160, 80)).save(buf, "TIFF", save_all=True,
                                                   append_images=[Image.new("RGB", (40, 40), (255, 0, 0))])
    result = process_image(buf.getvalue(), CoreConfig(animated="reject"))
    assert (result.facts["images"], result.facts["frames"], result.facts["width"]) == (2, 1, 80)


def test_a_real_animation_is_still_refused_in_reject_mode():
    buf = io.BytesIO()
    frames = [Image.new("RGB", (32, 32), (i * 60, 0, 0)) for i in range(3)]
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(ImageRejected) as err:
        process_image(buf.getvalue(), CoreConfig(animated="reject"))
    assert err.value.code == "animated"


def _dng(path, *, dng: bool = True, make: str = "Canon"):
    """A camera RAW as cameras write it: IFD0 a small RGB preview (what Pillow would read), a SubIFD with the
    sensor's CFA data; DNGVersion in IFD0 for a DNG, or only the maker for a TIFF-based RAW (NEF, ARW, …)."""
    import tifffile

    preview = np.full((192, 256, 3), 128, dtype=np.uint8)
    cfa = np.random.default_rng(1).integers(0, 4095, (1200, 1600), dtype=np.uint16)
    extratags = [(271, "s", 0, make, True)]
    if dng:
        extratags.append((50706, "B", 4, (1, 4, 0, 0), True))
    with tifffile.TiffWriter(path) as tif:
        tif.write(preview, photometric="rgb", subfiletype=1, subifds=1, extratags=extratags)
        tif.write(cfa, photometric=32803, extratags=[(33421, "H", 2, (2, 2), True),
                                                     (33422, "B", 4, (0, 1, 1, 2), True)])
    return path.read_bytes()


@pytest.mark.parametrize("dng,make,name", [(True, "Canon", "DNG"), (False, "NIKON CORPORATION", "NEF"),
                                           (False, "SONY", "ARW")])
def test_a_tiff_based_camera_raw_is_refused_by_name_never_processed_as_its_preview(tmp_path, dng, make, name):
    data = _dng(tmp_path / "raw.tif", dng=dng, make=make)
    assert sniff_type(data[:64]) == "image/tiff" and camera_raw(data) == name
    with pytest.raises(ImageRejected) as err:
        process_image(data, CoreConfig())
    assert err.value.code == "camera_raw" and f"camera RAW ({name})" in err.value.message
    assert check_content(data).reason.startswith(f"camera RAW ({name}): export a JPEG or HEIC")


def test_an_ordinary_tiff_is_not_a_camera_raw():
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(buf, "TIFF")
    assert camera_raw(buf.getvalue()) is None and check_content(buf.getvalue()) is None


@pytest.mark.parametrize("head,name", [
    (b"\x00\x00\x00\x18ftypcrx \x00\x00\x00\x01crx isom", "CR3"),
    (b"FUJIFILMCCD-RAW 0201FF383501", "RAF"),
    (b"IIRO\x08\x00\x00\x00", "ORF"),
    (b"IIU\x00\x18\x00\x00\x00", "RW2"),
])
def test_other_camera_raws_are_refused_by_their_signature(head, name):
    data = head + bytes(200)
    assert camera_raw(data) == name
    assert type_refusal(data)[:2] == ("camera_raw", f"camera RAW ({name}): export a JPEG or HEIC from your camera or photo app")


@pytest.mark.parametrize("head", [b"\xff\x0a\xfa\x7f", b"\x00\x00\x00\x0cJXL \r\n\x87\n\x00\x00\x00\x14ftypjxl "])
def test_jpeg_xl_is_refused_by_name(head):
    refused = type_refusal(head + bytes(100))
    assert refused[0] == "jpeg_xl" and "JPEG XL" in refused[1]


@pytest.mark.parametrize("head,mime", [
    (b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00qt  ", "video/quicktime"),  # a Live Photo's .MOV
    (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2", "video/mp4"),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01", "video/webm"),
])
def test_video_is_refused_as_video(head, mime):
    data = head + bytes(100)
    assert sniff_type(data[:64]) == mime
    assert check_content(data).reason == "video; upload the photo (a Live Photo's still is its HEIC or JPEG)"


def test_heic_and_avif_are_accepted_types():
    assert {"image/heic", "image/avif"} <= SUPPORTED_IMAGE_TYPES


def test_a_heic_over_the_pixel_limit_is_refused_from_its_header():
    data = _heif(Image.new("RGB", (1200, 1000), (9, 9, 9)))
    with pytest.raises(ImageRejected) as err:
        process_image(data, CoreConfig(limits=Limits(max_pixels=1_000_000)))
    assert err.value.code == "too_many_pixels"


def test_the_upload_pages_check_gives_the_same_reasons_as_intake(tmp_path):
    """The page checks each file in place before sending (a memoryview of Streamlit's buffer): a DNG, whose
    tags may lie anywhere in the file, gets the same reason there as at intake."""
    from types import SimpleNamespace

    from ui_streamlit import data

    class Uploaded:
        def __init__(self, name, content):
            self.name, self.size, self._content = name, len(content), content

        def getbuffer(self):
            return memoryview(self._content)

    dng = _dng(tmp_path / "raw.dng")
    heic = _heif(Image.new("RGB", (32, 32), (1, 2, 3)))
    services = SimpleNamespace(settings=SimpleNamespace(max_file_bytes=50 * 1024 * 1024))
    checks = data.precheck([Uploaded("IMG_1.DNG", dng), Uploaded("IMG_2.HEIC", heic)], services)
    assert [(c.ok, c.reason) for c in checks] == [(False, check_content(dng).reason), (True, None)]


def test_a_heif_declaring_a_huge_coded_image_is_refused_from_its_header():
    """A HEIF shows its size after libheif's crop; every coded size it declares (ispe) is checked too, so a
    small crop of a huge image cannot pass."""
    from assets.core.decode import coded_sizes

    data = bytearray(_heif(Image.new("RGB", (64, 48), (5, 5, 5))))
    assert coded_sizes(bytes(data)) == [(64, 64)]  # (coded 64x64, shown 64x48 through a crop: the mechanism)
    at = data.find(b"ispe")
    data[at + 8:at + 16] = (30000).to_bytes(4, "big") + (30000).to_bytes(4, "big")
    with pytest.raises(ImageRejected) as err:
        process_image(bytes(data), CoreConfig())
    assert err.value.code in ("too_many_pixels", "bad_dimensions", "corrupt")
    assert (30000, 30000) in coded_sizes(bytes(data))
