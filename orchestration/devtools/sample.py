"""A small sample batch made on the fly (nothing binary is committed): photos with EXIF orientations,
a PNG with transparency, a 16-bit grayscale scan, a truncated JPEG and a text file named like a JPEG."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw


def synthetic_photo(width: int, height: int, hue: int, label: str) -> Image.Image:
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    for y in range(0, height, 8):
        shade = int(255 * y / height)
        draw.rectangle([0, y, width, y + 8], fill=((hue + shade) % 256, shade, 255 - shade))
    # An arrow pointing to the top edge, so a wrong orientation is visible at a glance.
    cx = width // 2
    draw.polygon([(cx, height // 8), (cx - width // 8, height // 3), (cx + width // 8, height // 3)], fill="white")
    draw.text((width // 20, height // 20), label, fill="black")
    return img


def jpeg_bytes(img: Image.Image, orientation: int | None = None, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    img.save(buf, "JPEG", quality=quality, exif=exif)
    return buf.getvalue()


def make_sample_batch(directory: Path, *, images: int = 4, bad_files: bool = True) -> list[Path]:
    """Write the sample batch into ``directory``; returns the files in upload order."""
    directory.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    for i in range(images):
        # Stored sideways with orientation 6 every other image: the renditions must come out upright.
        orientation = 6 if i % 2 else 1
        upright = synthetic_photo(1600, 1200, hue=i * 60, label=f"sample {i + 1}")
        stored = upright.transpose(Image.Transpose.ROTATE_90) if orientation == 6 else upright
        path = directory / f"photo_{i + 1:02d}.jpg"
        path.write_bytes(jpeg_bytes(stored, orientation))
        files.append(path)
    if bad_files:
        logo = Image.new("RGBA", (640, 480), (0, 0, 0, 0))
        ImageDraw.Draw(logo).ellipse([80, 60, 560, 420], fill=(30, 120, 220, 200))
        path = directory / "logo_transparent.png"
        logo.save(path, "PNG")
        files.append(path)
        whole = jpeg_bytes(synthetic_photo(1200, 900, 200, "cut"))
        path = directory / "truncated.jpg"
        path.write_bytes(whole[: len(whole) // 3])
        files.append(path)
        path = directory / "not_really_a_photo.jpg"
        path.write_text("This is a text file with a .jpg name. It must be rejected by its content.\n")
        files.append(path)
    return files
