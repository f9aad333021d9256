"""Batch manifests of any size, as intake writes them, without the files (what the sensor and run sizing read)."""

from __future__ import annotations

from datetime import datetime, timezone

from orchestration.domain.intake import new_batch_id
from orchestration.domain.manifest import BatchManifest, ManifestImage, raw_path


def manifest_of(images: int, image_bytes: int = 3_000_000, user_id: str = "alice") -> BatchManifest:
    """A batch of ``images`` stored images of ``image_bytes`` each (a 12-MP JPEG is about 3 MB)."""
    batch_id = new_batch_id()
    return BatchManifest(
        batch_id=batch_id, user_id=user_id, created_at=datetime.now(timezone.utc),
        images=[ManifestImage(image_id=f"i{i:04d}", name=f"{i}.jpg", size=image_bytes, sniffed_type="image/jpeg",
                              lake_path=raw_path(batch_id, f"i{i:04d}")) for i in range(1, images + 1)])
