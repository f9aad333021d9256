"""The pure image-processing core: byte sniffing, safe decoding, renditions, facts. No Dagster here."""

from assets.core.process import (
    DEFAULT_RENDITIONS,
    PROCESSING_VERSION,
    ImageRejected,
    Limits,
    ProcessedImage,
    Rendition,
    RenditionSpec,
    process_image,
)
from assets.core.sniff import SUPPORTED_IMAGE_TYPES, sniff_type

__all__ = [
    "DEFAULT_RENDITIONS",
    "PROCESSING_VERSION",
    "ImageRejected",
    "Limits",
    "ProcessedImage",
    "Rendition",
    "RenditionSpec",
    "SUPPORTED_IMAGE_TYPES",
    "process_image",
    "sniff_type",
]
