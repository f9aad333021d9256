"""Azure AI Vision (Image Analysis 4.0) and Azure AI Content Safety at the SDK boundary.

No emulator exists for either service, so the tests give both SDK clients this azure-core ``HttpTransport``
(``AzureUnderstanding.from_endpoints(..., transport=double)``): every request the real clients build goes
through their real pipelines (authentication, retry, error mapping, deserialization) and lands here, where
the services' documented rules are enforced and the answers are recorded responses
(tests/data/recorded/azure-ai/*.json), chosen by the image's size (each recording is of one rendition).

Rules enforced (what the real services refuse, the double refuses with their status and error body):
- a bearer token for ``https://cognitiveservices.azure.com/.default`` (401 otherwise); a key header is refused
  (403 AuthenticationTypeDisabled: local auth is disabled on both accounts);
- Image Analysis: ``POST /computervision/imageanalysis:analyze?api-version=2023-10-01&features=...`` with
  features from the documented set, ``application/octet-stream``, the image as the body: at most 20 MB, a
  decodable image of 50..16000 px on each side; the answer holds only the features asked;
- Content Safety: ``POST /contentsafety/image:analyze?api-version=2023-10-01``, JSON
  ``{"image": {"content": base64}}``: valid base64, at most 4 MB, 50..7200 px on each side;
- faults: ``throttle[service] = n`` answers the next n calls 429 with Retry-After; ``outage`` holds the
  services answering 503 until further notice; ``unreachable`` those whose connection fails.

``sleep`` is recorded, not slept, so the SDK's retry policy runs at full speed.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from azure.core.credentials import AccessToken
from azure.core.exceptions import ServiceRequestError
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest._http_response_impl import HttpResponseImpl
from azure.core.utils import case_insensitive_dict
from PIL import Image, ImageDraw

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recorded" / "azure-ai"
SCOPE = "https://cognitiveservices.azure.com/.default"
VISION_ENDPOINT = "https://imgpipe-vision.cognitiveservices.azure.com/"
SAFETY_ENDPOINT = "https://imgpipe-safety.cognitiveservices.azure.com/"
API_VERSION = "2023-10-01"

VISION_FEATURES = {"tags", "caption", "densecaptions", "objects", "read", "smartcrops", "people"}
_FEATURE_FIELDS = {"tags": "tagsResult", "caption": "captionResult", "densecaptions": "denseCaptionsResult",
                   "objects": "objectsResult", "read": "readResult", "smartcrops": "smartCropsResult",
                   "people": "peopleResult"}
VISION_MAX_BYTES, VISION_MIN_EDGE, VISION_MAX_EDGE = 20 * 1024 * 1024, 50, 16000
SAFETY_MAX_BYTES, SAFETY_MIN_EDGE, SAFETY_MAX_EDGE = 4 * 1024 * 1024, 50, 7200
SAFETY_FORMATS = {"JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"}
VISION_FORMATS = SAFETY_FORMATS | {"ICO", "MPO"}
SEVERITIES = {0, 2, 4, 6}
CATEGORIES = {"Hate", "SelfHarm", "Sexual", "Violence"}


# -- recordings ---------------------------------------------------------------------------------------

def load_recordings() -> dict[str, dict]:
    """The recorded scenes by name (file stem), each checked against the REST API's shapes."""
    scenes = {}
    for path in sorted(RECORDINGS.glob("*.json")):
        if path.stem == "errors":
            continue
        rec = json.loads(path.read_text())
        size = (rec["image"]["width"], rec["image"]["height"])
        vision = rec["imageanalysis"]["response"]
        assert vision["modelVersion"] and (vision["metadata"]["width"], vision["metadata"]["height"]) == size, path
        for tag in vision["tagsResult"]["values"]:
            assert tag["name"] and 0 <= tag["confidence"] <= 1, path
        for person in vision["peopleResult"]["values"]:
            b = person["boundingBox"]
            assert b["x"] >= 0 and b["y"] >= 0 and b["x"] + b["w"] <= size[0] and b["y"] + b["h"] <= size[1], path
        safety = rec["contentsafety"]["response"]["categoriesAnalysis"]
        assert {c["category"] for c in safety} == CATEGORIES and all(c["severity"] in SEVERITIES for c in safety), path
        scenes[path.stem] = rec
    return scenes


def load_errors() -> dict[str, dict]:
    return json.loads((RECORDINGS / "errors.json").read_text())


def scene_image(scene: dict, *, fmt: str = "JPEG", seed: int = 0) -> bytes:
    """A small image of a recorded scene's size (the recording answers for it)."""
    return make_image(scene["image"]["width"], scene["image"]["height"], fmt=fmt, seed=seed)


def make_image(width: int, height: int, *, fmt: str = "JPEG", seed: int = 0) -> bytes:
    """A small picture (sky, ground, a few shapes): enough for a decoder and a model to chew on."""
    im = Image.new("RGB", (width, height), (90 + 20 * seed % 120, 140, 200))
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, height * 2 // 3, width, height), fill=(70, 120 + 10 * seed % 80, 50))
    draw.ellipse((width // 5, height // 5, width // 2, height * 3 // 4), fill=(200, 160, 120))
    draw.rectangle((width * 3 // 5, height // 3, width * 4 // 5, height * 5 // 6), fill=(60, 50, 40 + seed))
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buf.getvalue()


# -- the credential -----------------------------------------------------------------------------------

class FakeCredential:
    """A TokenCredential (what DefaultAzureCredential is to the SDK) that records the scopes asked. The
    token names its audience, as an Entra ID token's ``aud`` claim does; the double checks it."""

    def __init__(self, *, lifetime_s: int = 3600):
        self.lifetime_s = lifetime_s
        self.scopes: list[tuple[str, ...]] = []
        self._lock = threading.Lock()

    @property
    def calls(self) -> int:
        return len(self.scopes)

    def get_token(self, *scopes: str, claims=None, tenant_id=None, enable_cae=False, **kwargs) -> AccessToken:
        with self._lock:
            self.scopes.append(scopes)
        audience = scopes[0].removesuffix("/.default") if scopes else ""
        return AccessToken(f"entra-token;aud={audience}", int(time.time()) + self.lifetime_s)


def token_is_valid(authorization: str | None) -> bool:
    return authorization == f"Bearer entra-token;aud={SCOPE.removesuffix('/.default')}"


# -- the transport ------------------------------------------------------------------------------------

class RecordedResponse(HttpResponseImpl):
    """An ``azure.core.rest.HttpResponse`` whose body is already read (what a non-streamed
    RequestsTransport response is once the pipeline has it)."""

    def __init__(self, request, status: int, body: bytes, headers: dict[str, str]):
        reasons = {200: "OK", 400: "Bad Request", 401: "PermissionDenied", 403: "Forbidden", 404: "Not Found",
                   405: "Method Not Allowed", 415: "Unsupported Media Type", 429: "Too Many Requests",
                   503: "Service Unavailable"}
        headers = case_insensitive_dict(headers)
        super().__init__(request=request, internal_response=io.BytesIO(body), status_code=status,
                         reason=reasons.get(status, ""), content_type=headers.get("Content-Type"), headers=headers,
                         stream_download_generator=lambda **kw: iter([body]))
        self._content = body


@dataclass
class Call:
    service: str        # "vision", "safety" or "" (no such resource)
    method: str
    url: str
    headers: Any        # case-insensitive, as HTTP headers are
    query: dict[str, str]
    body_size: int
    status: int = 0


class AzureAIDouble(HttpTransport):
    """Both services' endpoints, answering from the recordings by image size (see the module's docstring).

    ``reverse_tags`` serves the tags worst first (their order is not documented); ``throttle``,
    ``outage`` and ``unreachable`` are keyed by service, "vision" or "safety"."""

    def __init__(self, scenes: dict[str, dict] | None = None, *, vision_endpoint: str = VISION_ENDPOINT,
                 safety_endpoint: str = SAFETY_ENDPOINT, reverse_tags: bool = False):
        self.scenes = load_recordings() if scenes is None else scenes
        self.vision_host = urlsplit(vision_endpoint).hostname
        self.safety_host = urlsplit(safety_endpoint).hostname
        self.reverse_tags = reverse_tags
        self.throttle: dict[str, int] = {}
        self.outage: set[str] = set()
        self.unreachable: set[str] = set()
        self.calls: list[Call] = []
        self.sleeps: list[float] = []
        self.opened = self.closed = 0
        self.errors = load_errors()
        self._lock = threading.Lock()
        self._by_size = {(s["image"]["width"], s["image"]["height"]): s for s in self.scenes.values()}
        assert len(self._by_size) == len(self.scenes), "two recordings of one image size"

    # HttpTransport
    def open(self) -> None:
        self.opened += 1

    def close(self) -> None:
        self.closed += 1

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def sleep(self, duration: float) -> None:
        with self._lock:
            self.sleeps.append(float(duration))

    def send(self, request, **kwargs: Any):
        parts = urlsplit(request.url)
        # An endpoint ending in "/" (as the portal and docs/configuration.md give it) makes the SDK send
        # "//computervision/...": taken as the single-slash path (assumed of the gateway, not verified live).
        path = "/" + "/".join(p for p in parts.path.split("/") if p)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        headers = case_insensitive_dict(request.headers)
        body = request.content
        if isinstance(body, str):
            body = body.encode()
        body = body or b""
        service = ("vision" if (parts.hostname, path) == (self.vision_host, "/computervision/imageanalysis:analyze")
                   else "safety" if (parts.hostname, path) == (self.safety_host, "/contentsafety/image:analyze")
                   else "")
        call = Call(service, request.method, request.url, headers, query, len(body))
        with self._lock:
            self.calls.append(call)
        if service in self.unreachable:
            raise ServiceRequestError(f"Failed to establish a new connection to {parts.hostname}")
        status, payload, extra = self._answer(service, request.method, headers, query, body)
        call.status = status
        out = {"Content-Type": "application/json; charset=utf-8", "apim-request-id": f"req-{len(self.calls)}",
               **extra}
        return RecordedResponse(request, status, json.dumps(payload).encode(), out)

    # the services
    def _error(self, group: str, name: str, **fill: str) -> tuple[int, dict, dict]:
        rec = self.errors[group][name]
        text = json.dumps(rec["body"])
        for key, value in fill.items():
            text = text.replace("{" + key + "}", json.dumps(str(value))[1:-1])
        return rec["status"], json.loads(text), dict(rec.get("headers", {}))

    def _answer(self, service, method, h, query, body):
        if not service:
            return self._error("gateway", "not_found")
        if "Ocp-Apim-Subscription-Key" in h:
            return self._error("gateway", "key_auth_disabled")
        if not token_is_valid(h.get("Authorization")):
            return self._error("gateway", "unauthorized")
        if query.get("api-version") != API_VERSION or method != "POST":
            return self._error("gateway", "not_found")
        with self._lock:
            if self.throttle.get(service, 0) > 0:
                self.throttle[service] -= 1
                return self._error("gateway", "throttled")
        if service in self.outage:
            return self._error("gateway", "unavailable")
        return self._vision(h, query, body) if service == "vision" else self._safety(h, body)

    def _vision(self, headers, query, body):
        features = [f for f in query.get("features", "").split(",") if f]
        for f in features or [""]:
            if f.lower() not in VISION_FEATURES:
                return self._error("imageanalysis", "visual_feature", feature=f)
        content_type = headers.get("Content-Type", "")
        if content_type.split(";")[0].strip() != "application/octet-stream":
            return self._error("imageanalysis", "media_type", content_type=content_type)
        if not body or len(body) > VISION_MAX_BYTES:
            return self._error("imageanalysis", "image_bytes")
        size = _image_size(body, VISION_FORMATS)
        if size is None:
            return self._error("imageanalysis", "image_format")
        if min(size) < VISION_MIN_EDGE or max(size) > VISION_MAX_EDGE:
            return self._error("imageanalysis", "image_dimension")
        recorded = self._scene(size)["imageanalysis"]["response"]
        answer = {"modelVersion": recorded["modelVersion"], "metadata": dict(recorded["metadata"])}
        for f in {f.lower() for f in features}:
            key = _FEATURE_FIELDS[f]
            if key not in recorded:
                raise LookupError(f"the recording of a {size[0]}x{size[1]} image has no {key}: record it")
            answer[key] = json.loads(json.dumps(recorded[key]))
        if self.reverse_tags and "tagsResult" in answer:
            answer["tagsResult"]["values"].reverse()
        return 200, answer, {}

    def _safety(self, headers, body):
        content_type = headers.get("Content-Type", "")
        if content_type.split(";")[0].strip() != "application/json":
            return self._error("contentsafety", "media_type", content_type=content_type)
        try:
            doc = json.loads(body)
        except ValueError:
            return self._error("contentsafety", "body", reason="The request body is not valid JSON.")
        if not isinstance(doc, dict) or set(doc) - {"image", "outputType"} or not isinstance(doc.get("image"), dict):
            return self._error("contentsafety", "body", reason="The request body must be {\"image\": {...}}.")
        if doc.get("outputType", "FourSeverityLevels") != "FourSeverityLevels":
            return self._error("contentsafety", "body", reason="outputType must be FourSeverityLevels for images.")
        image = doc["image"]
        if set(image) != {"content"} or not isinstance(image["content"], str):
            return self._error("contentsafety", "body",
                               reason="Provide exactly one of image.content and image.blobUrl.")
        try:
            data = base64.b64decode(image["content"], validate=True)
        except (binascii.Error, ValueError):
            return self._error("contentsafety", "body", reason="image.content is not valid base64.")
        if not data or len(data) > SAFETY_MAX_BYTES:
            return self._error("contentsafety", "image_bytes")
        size = _image_size(data, SAFETY_FORMATS)
        if size is None:
            return self._error("contentsafety", "image_format")
        if min(size) < SAFETY_MIN_EDGE or max(size) > SAFETY_MAX_EDGE:
            return self._error("contentsafety", "image_dimension")
        return 200, json.loads(json.dumps(self._scene(size)["contentsafety"]["response"])), {}

    def _scene(self, size: tuple[int, int]) -> dict:
        try:
            return self._by_size[size]
        except KeyError:
            raise LookupError(f"no recording of a {size[0]}x{size[1]} image in {RECORDINGS}: record one "
                              f"(recordings are chosen by image size: {sorted(self._by_size)})") from None

    # what the tests look at
    def calls_to(self, service: str) -> list[Call]:
        return [c for c in self.calls if c.service == service]


def _image_size(data: bytes, formats: set[str]) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in formats:
                return None
            im.verify()
            return im.size
    except Exception:  # noqa: BLE001 - whatever the decoder says, the service says "not a valid image"
        return None
