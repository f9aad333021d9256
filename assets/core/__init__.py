"""The pure image-processing core: byte sniffing, safe decoding, renditions, facts, and the worker pool
that enforces time and memory limits. No Dagster here (a test checks it)."""

from assets.core.config import DEFAULT_RENDITIONS, CoreConfig, Limits, RenditionSpec
from assets.core.decode import ImageRejected
from assets.core.facts import hamming, within_distance
from assets.core.process import (
    PROCESSING_VERSION, ProcessedImage, Rendition, fit_long_edge, library_versions, process_image,
    processing_version,
)
from assets.core.sniff import SUPPORTED_IMAGE_TYPES, sniff_type

__all__ = [
    "DEFAULT_RENDITIONS",
    "PROCESSING_VERSION",
    "CoreConfig",
    "ImageRejected",
    "Limits",
    "ProcessedImage",
    "Rendition",
    "RenditionSpec",
    "SUPPORTED_IMAGE_TYPES",
    "fit_long_edge",
    "hamming",
    "within_distance",
    "library_versions",
    "process_image",
    "processing_version",
    "sniff_type",
]
