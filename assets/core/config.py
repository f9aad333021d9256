"""Configuration of the image core, as plain data (picklable: it travels to the worker processes).

Every limit is checked from the file's header before any pixel is decoded, except the time and memory
limits, which the worker pool enforces from outside the decoder (see ``assets.core.pool``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

FIT_MODES = ("inside",)  # long edge fitted inside the box, aspect kept, never upscaled
OUTPUT_FORMATS = {"JPEG": "jpg", "WEBP": "webp", "AVIF": "avif", "PNG": "png"}


@dataclass(frozen=True)
class RenditionSpec:
    name: str
    long_edge: int
    formats: tuple[str, ...] = ("JPEG", "WEBP")
    fit: str = "inside"

    def __post_init__(self):
        if self.long_edge < 1:
            raise ValueError(f"rendition {self.name!r}: long_edge must be >= 1")
        if self.fit not in FIT_MODES:
            raise ValueError(f"rendition {self.name!r}: fit must be one of {FIT_MODES}")
        for fmt in self.formats:
            if fmt not in OUTPUT_FORMATS:
                raise ValueError(f"rendition {self.name!r}: unknown format {fmt!r} (known: {sorted(OUTPUT_FORMATS)})")


DEFAULT_RENDITIONS: tuple[RenditionSpec, ...] = (
    RenditionSpec("large", 2048),
    RenditionSpec("medium", 1024),
    RenditionSpec("thumb", 256),
)


@dataclass(frozen=True)
class Limits:
    """Defaults follow imgproxy (50 MP, 1 animation frame decoded) and are stricter than thumbor (75 MP)
    and the Azure resize sample (none)."""

    max_pixels: int = 50_000_000          # width x height of the (first) frame
    max_edge: int = 20_000                # pixels along either side
    max_file_bytes: int = 50 * 1024 * 1024
    max_frames: int = 500                 # frames of an animation (only the first is decoded)
    max_animation_pixels: int = 500_000_000  # all frames' pixels summed, like imgproxy
    max_metadata_bytes: int = 1024 * 1024  # EXIF, ICC and text chunks, each
    timeout_seconds: float = 10.0         # per image, enforced by the worker pool
    memory_limit_mb: int = 1024           # address-space cap of a worker process


@dataclass(frozen=True)
class CoreConfig:
    renditions: tuple[RenditionSpec, ...] = DEFAULT_RENDITIONS
    limits: Limits = field(default_factory=Limits)
    jpeg_quality: int = 85
    webp_quality: int = 80
    # Encoder effort, chosen by bench/encoders.py on the standard 12 MP job (docs/benchmarks.md, "Encoder
    # settings"). WebP method 2: the same bytes (+0.5 %) and quality (-0.06 dB PSNR, same SSIMULACRA2) as
    # libwebp's default 4 for ~3x less time; WebP was ~2/3 of the job. AVIF speed 8: 9 and 10 are faster
    # but +4 % bytes, 6 and 7 save 1-3 % bytes for 3x the time.
    webp_method: int = 2
    avif_quality: int = 60
    avif_speed: int = 8
    background: tuple[int, int, int] = (255, 255, 255)  # flattening colour where the format has no alpha
    animated: str = "first_frame"      # or "reject"
    keep_exif: tuple[str, ...] = ("copyright", "artist")  # EXIF tags copied into renditions
    include_gps: bool = False          # GPS position in the facts (never in renditions)
    phash_source_edge: int = 256       # facts are computed from the smallest rendition >= this

    def __post_init__(self):
        if self.animated not in ("first_frame", "reject"):
            raise ValueError("animated must be 'first_frame' or 'reject'")
        if not self.renditions:
            raise ValueError("at least one rendition is required")
        names = [(r.name) for r in self.renditions]
        if len(set(names)) != len(names):
            raise ValueError(f"rendition names must be unique: {names}")
