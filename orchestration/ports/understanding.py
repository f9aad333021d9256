"""ImageUnderstanding port: what an image shows: labels, moderation scores and faces (local models run
with onnxruntime; Azure AI Vision + Azure AI Content Safety in Azure).

The port takes a small rendition's bytes (JPEG or WebP, at most a few hundred pixels on its long side, never
the 12 MP source) and answers per task, in one shape for every adapter (tests/contracts/
test_understanding_contract.py holds both to it):

- ``labels``: ``{"labels": [{"name": str, "score": 0..1}, ...]}``, best first, at most ``TOP_LABELS``; an
  adapter may add ``"caption": str``;
- ``moderation``: ``{"scores": {category: 0..1}}``; the decision is not the adapter's: ``decide`` makes it
  from the scores and the thresholds in Settings, the same way for every model;
- ``faces``: ``{"count": n, "boxes": [{"box": [x0, y0, x1, y1], "score": 0..1}], "detector": "face" | "person"}``
  with box corners as fractions of the image's width and height (so they hold for every rendition).

An image the model cannot read gets ``{"error": reason}`` for that task instead; nothing raises for one bad
image. ``models()`` names what answers each task (model, version, sha256 of its file where there is one,
thresholds), which is the asset's code version and the lineage of every result.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Collection, Protocol, Sequence, runtime_checkable

TASKS: tuple[str, ...] = ("labels", "moderation", "faces")
TOP_LABELS = 5

# Moderation decisions, from least to most severe.
ALLOW, REVIEW, FLAG = "allow", "review", "flag"


class UnderstandingError(Exception):
    """The service or the models cannot answer at all (not one image's problem): the step fails and retries."""


@dataclass(frozen=True)
class ModelInfo:
    """What answers one task: enough to reproduce a result and to compare it with a later model's."""

    task: str
    name: str                      # e.g. "mobilenet_v2-imagenet1k" or "azure-ai-vision-image-analysis"
    version: str                   # the package's or the service API's version
    sha256: str = ""               # digest of the model file (local models)
    source: str = ""               # where it comes from (package and file, or endpoint host)
    licence: str = ""
    settings: dict = field(default_factory=dict)  # thresholds and the like, part of the version

    @property
    def code_version(self) -> str:
        """The asset's code version: a digest of everything that shapes the results."""
        blob = json.dumps([self.name, self.version, self.sha256, self.settings], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def lineage(self) -> dict:
        return {"model": self.name, "version": self.version, "sha256": self.sha256, "source": self.source,
                "code_version": self.code_version, **({"settings": self.settings} if self.settings else {})}


@runtime_checkable
class ImageUnderstanding(Protocol):
    def models(self) -> dict[str, ModelInfo]:
        """The model behind each task (without loading it)."""

    def analyze(self, images: Sequence[bytes], tasks: Collection[str]) -> list[dict[str, dict]]:
        """For each image (bytes of a small rendition), ``{task: result}`` for every task asked."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class ModerationPolicy:
    """Thresholds on the 0..1 moderation scores (IMGPIPE_MODERATION_*): at or above ``flag`` an image is
    flagged, at or above ``review`` it waits for an operator's review; ``action`` says what a flagged image
    does on the users' pages ("blur": blurred behind a click; "withhold": not shown until an operator keeps it)."""

    review: float = 0.4
    flag: float = 0.8
    action: str = "blur"

    def __post_init__(self):
        if not 0 < self.review <= self.flag <= 1:
            raise ValueError("moderation thresholds must satisfy 0 < review <= flag <= 1")
        if self.action not in ("blur", "withhold"):
            raise ValueError("moderation action must be 'blur' or 'withhold'")

    def as_dict(self) -> dict:
        return {"review": self.review, "flag": self.flag, "action": self.action}

    def decide(self, scores: dict[str, float]) -> tuple[str, str | None]:
        """(decision, the category that decided it) from a result's scores."""
        if not scores:
            return ALLOW, None
        category, top = max(scores.items(), key=lambda kv: kv[1])
        if top >= self.flag:
            return FLAG, category
        if top >= self.review:
            return REVIEW, category
        return ALLOW, None
