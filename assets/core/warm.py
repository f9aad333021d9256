"""Everything an image worker would import or set up lazily, done once in the process workers fork from.

``warm_up()`` registers Pillow's format plugins and pushes one small synthetic photo through
``process_image`` (every format in ``OUTPUT_FORMATS``), so that the lazy imports on that path — Pillow's
plugins (``Image.save`` imports all ~40 the first time), numpy's functions behind ``np.median`` — and
compiled regular expressions are in the parent's memory before any fork. A forked worker then starts
with them instead of paying for them on its first image.

Measured (a 2-MP JPEG, this 2-core machine): a worker's first image took 0.18 CPU-s against 0.13 s for
the next, about 0.05 CPU-s of imports per worker; each 4-image batch run forks two workers. The worker
server (``assets.core.worker_server``) and a pool's own forkserver (``assets.core.pool``) both import this
module before they fork.

Nothing here reads a file, the environment or a credential; the photo is drawn in memory.
"""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, features

from assets.core.config import OUTPUT_FORMATS, CoreConfig, RenditionSpec
from assets.core.process import process_image


def _photo() -> bytes:
    """A small JPEG with EXIF orientation, gradients and shapes (so every step has work to do)."""
    img = Image.new("RGB", (320, 240))
    draw = ImageDraw.Draw(img)
    for x in range(0, 320, 8):
        draw.rectangle((x, 0, x + 7, 239), fill=(x % 256, (x * 3) % 256, 255 - x % 256))
    draw.ellipse((60, 40, 260, 200), fill=(200, 120, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate, so auto-orientation runs
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85, exif=exif.tobytes())
    return out.getvalue()


def _encodable() -> tuple[str, ...]:
    """The output formats this Pillow can write (AVIF and WebP depend on how it was built)."""
    optional = {"WEBP": "webp", "AVIF": "avif"}
    return tuple(f for f in OUTPUT_FORMATS if f not in optional or features.check(optional[f]))


def warm_up() -> list[str]:
    """Import and set up what processing an image needs: one small rendition in every output format this
    Pillow can write, so each encoder's module is loaded too. Returns the formats it produced, or [] if
    anything failed: warming is an optimisation, and a worker (or the server and forkserver that import
    this module) must start without it."""
    try:
        Image.init()
        config = CoreConfig(renditions=(RenditionSpec("warm", 64, formats=_encodable()),))
        return sorted(r.format for r in process_image(_photo(), config).renditions)
    except Exception:  # noqa: BLE001 - see above
        return []


WARMED = warm_up()
