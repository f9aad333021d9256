"""ImageUnderstanding on Azure: Azure AI Vision Image Analysis 4.0 (tags, caption, people) and Azure AI Content
Safety (image severities), with DefaultAzureCredential (workload identity on AKS; local auth is disabled on
both accounts by the ARM template). Image Analysis 4.0 is announced to retire in September 2028: see
docs/understanding.md for what replaces it and how this adapter moves.

Mapping onto the port's shapes (orchestration/ports/understanding.py):
- labels: the tags (name, confidence), best first, top 5, plus the caption;
- moderation: Content Safety's four categories, severity 0/2/4/6 → score severity / 6;
- faces: Image Analysis has no face detection (Azure's Face API is a restricted service): the *people* it
  finds with a confidence of at least ``min_person_score`` (IMGPIPE_FACE_MIN_SCORE; the service also returns
  weak candidates), boxes as fractions of the image, ``detector: "person"``.

A request the service refuses for this image (HTTP 400 about the image: too small, too large, not an image) is
that image's ``error``; anything else (a 400 about the request, such as a feature the account's region lacks;
throttling after the SDK's retries; an outage; auth; an unreachable endpoint) raises ``UnderstandingError`` so
the step fails and Dagster retries the run.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Collection, Sequence
from urllib.parse import urlparse

from azure.ai.contentsafety import ContentSafetyClient
from azure.ai.contentsafety.models import AnalyzeImageOptions, ImageData
from azure.ai.vision.imageanalysis import ImageAnalysisClient
from azure.ai.vision.imageanalysis.models import VisualFeatures
from azure.core.exceptions import AzureError, HttpResponseError

from orchestration.ports.understanding import TOP_LABELS, ModelInfo, UnderstandingError

VISION_API = "2023-10-01"          # Image Analysis 4.0 GA
CONTENT_SAFETY_API = "2023-10-01"  # Content Safety GA
_SEVERITY_MAX = 6.0
# Image Analysis' inner error codes that mean "this image", not "this request".
_IMAGE_ERRORS = {"InvalidImageSize", "InvalidImageFormat", "NotSupportedImage", "InvalidImageUrl"}


def _about_the_image(exc: HttpResponseError) -> bool:
    """Whether a 400 refuses the image (its size, dimensions or format) rather than the request."""
    if exc.status_code != 400:
        return False
    try:
        error = (exc.response.json() or {}).get("error") or {}
    except Exception:  # noqa: BLE001 - not JSON: not a refusal we can attribute to the image
        return False
    inner = (error.get("innererror") or {}).get("code")
    if inner in _IMAGE_ERRORS:
        return True
    message = str(error.get("message") or "").lower()
    return "image" in message and any(w in message for w in ("size", "dimension", "format", "pixels", "mb"))


def azure_models(vision_host: str, safety_host: str, min_person_score: float = 0.6) -> dict[str, ModelInfo]:
    """What answers each task: the services' API versions (their models are the service's own)."""
    vision = dict(name="azure-ai-vision-image-analysis", version=VISION_API,
                  source=f"{vision_host} (Image Analysis 4.0)", licence="Azure service")
    return {
        "labels": ModelInfo(task="labels", **vision, settings={"features": "tags,caption"}),
        "moderation": ModelInfo(task="moderation", name="azure-ai-content-safety", version=CONTENT_SAFETY_API,
                                source=f"{safety_host} (Content Safety, image)", licence="Azure service"),
        "faces": ModelInfo(task="faces", **vision, settings={"features": "people", "min_score": min_person_score}),
    }


class AzureUnderstanding:
    def __init__(self, vision: ImageAnalysisClient, safety: ContentSafetyClient, *, vision_host: str = "",
                 safety_host: str = "", min_person_score: float = 0.6, parallel: int = 8):
        self._vision, self._safety = vision, safety
        self._parallel = parallel  # requests in flight per step (IMGPIPE_UNDERSTANDING_PARALLEL)
        self._vision_host, self._safety_host = vision_host, safety_host
        self._min_person_score = min_person_score

    @classmethod
    def from_endpoints(cls, vision_endpoint: str, safety_endpoint: str, credential, *, min_person_score: float = 0.6,
                       parallel: int = 8, **client_kwargs):
        """Clients authenticated with ``credential`` (a TokenCredential: DefaultAzureCredential); never a key."""
        vision_endpoint, safety_endpoint = vision_endpoint.rstrip("/"), safety_endpoint.rstrip("/")
        return cls(ImageAnalysisClient(vision_endpoint, credential, **client_kwargs),
                   ContentSafetyClient(safety_endpoint, credential, **client_kwargs),
                   vision_host=urlparse(vision_endpoint).hostname or "",
                   safety_host=urlparse(safety_endpoint).hostname or "", min_person_score=min_person_score,
                   parallel=parallel)

    def models(self) -> dict[str, ModelInfo]:
        return azure_models(self._vision_host, self._safety_host, self._min_person_score)

    # -- one image ------------------------------------------------------------------------------------

    def _vision_result(self, data: bytes, tasks: Collection[str]) -> dict[str, dict]:
        features = []
        if "labels" in tasks:
            features += [VisualFeatures.TAGS, VisualFeatures.CAPTION]
        if "faces" in tasks:
            features.append(VisualFeatures.PEOPLE)
        result = self._vision.analyze(image_data=data, visual_features=features)
        out: dict[str, dict] = {}
        if "labels" in tasks:
            tags = sorted(((t.name, float(t.confidence)) for t in (result.tags.list if result.tags else [])),
                          key=lambda t: -t[1])[:TOP_LABELS]
            out["labels"] = {"labels": [{"name": n, "score": round(s, 4)} for n, s in tags]}
            if result.caption is not None:
                out["labels"]["caption"] = result.caption.text
        if "faces" in tasks:
            width, height = result.metadata.width, result.metadata.height
            boxes = []
            for person in (result.people.list if result.people else []):
                if float(person.confidence) < self._min_person_score:
                    continue
                b = person.bounding_box
                boxes.append({"box": [round(b.x / width, 4), round(b.y / height, 4),
                                      round(min(1.0, (b.x + b.width) / width), 4),
                                      round(min(1.0, (b.y + b.height) / height), 4)],
                              "score": round(float(person.confidence), 4)})
            out["faces"] = {"count": len(boxes), "boxes": boxes, "detector": "person"}
        return out

    def _safety_result(self, data: bytes) -> dict[str, dict]:
        result = self._safety.analyze_image(AnalyzeImageOptions(image=ImageData(content=data)))
        scores = {str(c.category).lower(): round((c.severity or 0) / _SEVERITY_MAX, 4)
                  for c in result.categories_analysis or ()}
        return {"moderation": {"scores": scores}}

    def _one(self, data: bytes, tasks: Collection[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        calls = []
        if {"labels", "faces"} & set(tasks):
            calls.append((("labels", "faces"), lambda: self._vision_result(data, tasks)))
        if "moderation" in tasks:
            calls.append((("moderation",), lambda: self._safety_result(data)))
        for covered, call in calls:
            try:
                out.update(call())
            except HttpResponseError as exc:
                if _about_the_image(exc):  # this image: too small, too large, unreadable
                    code = getattr(exc.error, "code", None) or "InvalidRequest"
                    for task in covered:
                        if task in tasks:
                            out[task] = {"error": f"refused by the service: {code}: {exc.message}"[:300]}
                    continue
                raise UnderstandingError(f"Azure AI service error {exc.status_code}: {exc.reason}: "
                                         f"{str(exc.message)[:200]}") from exc
            except AzureError as exc:  # unreachable after the SDK's retries (DNS, connection, TLS)
                raise UnderstandingError(f"Azure AI service unreachable: {type(exc).__name__}: {exc}"[:400]) from exc
        return out

    def analyze(self, images: Sequence[bytes], tasks: Collection[str]) -> list[dict[str, dict]]:
        with ThreadPoolExecutor(max_workers=min(self._parallel, max(1, len(images)))) as pool:
            return list(pool.map(lambda data: self._one(data, tasks), images))

    def close(self) -> None:
        self._vision.close()
        self._safety.close()
