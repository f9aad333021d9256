"""The batch manifest: what a queue message carries (claim check — ids, names, hashes, never image bytes).

The same schema is used by intake (writes it), the sensor (validates every message against it before a
run is requested) and the assets (read it back from the lake)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

BATCH_ID_PATTERN = r"^b-[0-9]{8}-[0-9]{6}-[0-9a-f]{8}$"
USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$"
IMAGE_ID_PATTERN = r"^i[0-9]{4,6}$"
META_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Refusal(BaseModel):
    """Why intake refused a file (the run records it as that image's rejection)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    code: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=1000)


class ManifestImage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    image_id: str = Field(pattern=IMAGE_ID_PATTERN)
    name: str = Field(min_length=1, max_length=255, description="Original file name, for display only.")
    size: int = Field(ge=0)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    sniffed_type: str = Field(max_length=100)
    lake_path: str | None = Field(default=None, description="Where the raw bytes are; None when not stored.")
    refused: Refusal | None = None


class BatchManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: Literal[1] = 1
    batch_id: str = Field(pattern=BATCH_ID_PATTERN)
    user_id: str = Field(pattern=USER_ID_PATTERN)
    created_at: datetime
    metadata: dict[str, str] = Field(default_factory=dict)
    images: list[ManifestImage] = Field(min_length=1, max_length=10_000)


def display_name(text: str, limit: int = 120) -> str:
    """A person's name or e-mail as it may be shown (in run tags, operator pages): printable, one line, short."""
    return "".join(c for c in " ".join(str(text).split()) if c.isprintable())[:limit]


def manifest_path(batch_id: str) -> str:
    return f"raw/{batch_id}/manifest.json"


def raw_path(batch_id: str, image_id: str) -> str:
    return f"raw/{batch_id}/{image_id}"


def rendition_path(batch_id: str, image_id: str, rendition: str, extension: str) -> str:
    return f"processed/{batch_id}/{image_id}/{rendition}.{extension}"


def outcomes_path(batch_id: str) -> str:
    return f"processed/{batch_id}/outcomes.json"


def step_output_path(batch_id: str, parts) -> str:
    """Where a step of the batch's run hands a value to the next step through the lake (a fanned-out run's
    chunk lists and chunk results: step pods share no disk): under the batch's processed/ prefix, so deleting
    or restoring the batch covers it; result_events removes it once the batch is complete.
    ``parts``: the run id, step key, output name (and mapping key) of the value."""
    safe = ["".join(c if c.isalnum() or c in "._-" else "_" for c in str(p)) for p in parts]
    return f"processed/{batch_id}/_steps/{'/'.join(safe)}.json"
