"""Run pods sized by their batch: which size band (``IMGPIPE_RUN_SIZE_BANDS``, ``orchestration.settings.SizeBand``)
a batch gets, from what its manifest says before the run starts.

A batch's load is its images that will be processed (a file refused at intake costs the run nothing) and
their bytes; it gets the first band, smallest first, whose ``max_images`` and ``max_bytes`` it is within.
The band says the pod's CPU and memory requests and limits, its node pool and the image workers to match
its CPUs. The sensor turns it into the run's tags (sensors/batch_sensor.py)."""

from __future__ import annotations

from typing import Sequence

from orchestration.domain.manifest import BatchManifest
from orchestration.settings import SizeBand


def batch_load(manifest: BatchManifest) -> tuple[int, int]:
    """(images to process, their bytes) of a batch."""
    kept = [img for img in manifest.images if img.refused is None]
    return len(kept), sum(img.size for img in kept)


def choose_band(bands: Sequence[SizeBand], images: int, nbytes: int) -> SizeBand:
    """The first band the batch fits; the settings guarantee the last band fits every batch."""
    for band in bands:
        if images <= (band.max_images or images) and nbytes <= (band.max_bytes or nbytes):
            return band
    raise ValueError(f"no band for {images} images / {nbytes} bytes: the last band must have no bound")
