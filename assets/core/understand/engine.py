"""Local image understanding: three small models on this process's CPUs (or a CUDA device when
onnxruntime has one), loaded once per process and fed a ≤ 320 px image made from a small rendition.

- labels: torchvision's MobileNetV2 (ImageNet-1k), converted to ONNX in memory from its weights file
  (``mobilenet``); the 1000 ImageNet classes, which are objects, animals and scenes, not people;
- moderation: Yahoo's open_nsfw (ONNX): one score, sexual content;
- faces: MediaPipe BlazeFace full range (TFLite, run by LiteRT) (``blazeface``).

Pure image code: no service, no Dagster. One image the decoder or a model cannot read gets
``{"error": reason}`` for its tasks; the others are unaffected.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
from typing import Collection, Sequence

import numpy as np
from PIL import Image

from assets.core.understand import blazeface, mobilenet
from assets.core.understand.models import FACES, LABELS, MODERATION, ModelFile, default_threads

INPUT_EDGE = 320          # the long edge the models' input is made from (each resizes further) ...
SHORT_EDGE = 256          # ... unless the short side would then be under this (wide or tall images) ...
MAX_INPUT_EDGE = 1024     # ... up to this long edge
# Images per inference call. On one CPU thread a larger batch is no faster (measured: 7.5 vs 7.8 ms per image
# for MobileNetV2 at 1 and 16) and its activations cost memory; a GPU wants large batches.
CPU_BATCH, GPU_BATCH = 1, 64
TOP = 5
MAX_INPUT_PIXELS = 4096 * 4096  # a rendition larger than this is not a rendition: refused before decoding

_NSFW_MEAN_BGR = np.array([104, 117, 123], dtype=np.float32)


def _trim() -> None:
    """Give the C heap's free pages back to the system (glibc keeps them otherwise): converting the labels model
    and running the models leave ~100-300 MB of freed memory in the heap, which the worker would keep for its
    lifetime. A no-op where there is no glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise RuntimeError(f"IMGPIPE_UNDERSTANDING_DEVICE=cuda but onnxruntime offers only {available}")
    return ["CPUExecutionProvider"]


@dataclass
class Timings:
    """CPU-side milliseconds spent per task (the benchmark reads them)."""

    decode: float = 0.0
    labels: float = 0.0
    moderation: float = 0.0
    faces: float = 0.0


# Loaded models, shared by every LocalModels of the process with the same options: a model is read, checked and
# loaded once per process (a run worker, the benchmark), whatever number of adapters ask for it.
_LOADED: dict[tuple, object] = {}
_LOADED_LOCK = threading.Lock()


class LocalModels:
    """The three models, each loaded (and its file's sha256 checked) on first use, once per process."""

    def __init__(self, *, threads: int | None = None, device: str = "auto", min_face_score: float = 0.6):
        self.threads = threads or default_threads()
        self.device = device
        self.min_face_score = min_face_score
        self._lock = threading.Lock()
        self._labels = self._nsfw = self._faces = None
        self._classes: list[str] = []
        self.timings = Timings()
        self.batch = CPU_BATCH

    # -- loading ----------------------------------------------------------------------------------

    def _session(self, model: bytes):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = _providers(self.device)
        if providers[0] == "CPUExecutionProvider":
            # No arena and no memory pattern: each call allocates what it needs and frees it (then trimmed), instead
            # of keeping the largest call's activations for the worker's lifetime. Measured cost: none visible.
            options.enable_cpu_mem_arena = False
            options.enable_mem_pattern = False
            options.add_session_config_entry("session.disable_prepacking", "1")
        return ort.InferenceSession(model, sess_options=options, providers=providers)

    def _shared(self, key: tuple, make):
        with _LOADED_LOCK:
            if key not in _LOADED:
                _LOADED[key] = make()
            return _LOADED[key]

    def load(self, tasks: Collection[str]) -> None:
        options = (self.threads, self.device)
        if {"labels", "moderation"} & set(tasks) and self._labels is None and self._nsfw is None:
            # (once: asking onnxruntime for its providers on every call would be work on the hot path)
            self.batch = CPU_BATCH if _providers(self.device)[0] == "CPUExecutionProvider" else GPU_BATCH
        with self._lock:
            if "labels" in tasks and self._labels is None:
                self._labels = self._shared(("labels", *options), lambda: self._session(
                    mobilenet.convert(LABELS.read_verified())))
                self._classes = mobilenet.CLASSES
            if "moderation" in tasks and self._nsfw is None:
                self._nsfw = self._shared(("moderation", *options),
                                          lambda: self._session(MODERATION.read_verified()))
            if "faces" in tasks and self._faces is None:
                self._faces = self._shared(("faces", self.threads, self.min_face_score), lambda: blazeface.FaceDetector(
                    FACES.read_verified(), min_score=self.min_face_score, num_threads=self.threads))
        _trim()

    @staticmethod
    def files() -> dict[str, ModelFile]:
        return {"labels": LABELS, "moderation": MODERATION, "faces": FACES}

    # -- inference --------------------------------------------------------------------------------

    @staticmethod
    def input_size(width: int, height: int) -> tuple[int, int]:
        """The models' input size for an image: INPUT_EDGE on the long side, or more for a wide (or tall) image
        so its short side keeps SHORT_EDGE pixels (up to MAX_INPUT_EDGE), never upscaled."""
        long, short = max(width, height), max(1, min(width, height))
        target = min(MAX_INPUT_EDGE, max(INPUT_EDGE, round(SHORT_EDGE * long / short)))
        scale = min(1.0, target / long)
        return max(1, round(width * scale)), max(1, round(height * scale))

    @classmethod
    def decode(cls, data: bytes) -> Image.Image:
        """A rendition's bytes → RGB at ``input_size`` (JPEG decodes at a reduced scale)."""
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_INPUT_PIXELS:
                raise ValueError(f"{im.width}x{im.height} is larger than a rendition for understanding")
            size = cls.input_size(im.width, im.height)
            im.draft("RGB", size)
            rgb = im.convert("RGB")
        return rgb if rgb.size == size else rgb.resize(size, Image.Resampling.BILINEAR)

    @staticmethod
    def _nsfw_input(img: Image.Image) -> np.ndarray:
        # Yahoo's reference: 256x256 (aspect not kept), centre 224 crop, BGR minus the dataset mean, NHWC.
        small = img.resize((256, 256), Image.Resampling.BILINEAR).crop((16, 16, 240, 240))
        return np.asarray(small, dtype=np.float32)[:, :, ::-1] - _NSFW_MEAN_BGR

    def analyze(self, images: Sequence[bytes], tasks: Collection[str]) -> list[dict[str, dict]]:
        tasks = [t for t in ("labels", "moderation", "faces") if t in tasks]
        self.load(tasks)
        out: list[dict[str, dict]] = [{} for _ in images]
        decoded: list[tuple[int, Image.Image]] = []
        t0 = time.process_time()
        for i, data in enumerate(images):
            try:
                decoded.append((i, self.decode(data)))
            except Exception as exc:  # noqa: BLE001 - one unreadable image, not the batch's failure
                for task in tasks:
                    reason = str(exc) if isinstance(exc, ValueError) else type(exc).__name__
                    out[i][task] = {"error": f"unreadable rendition: {reason}"[:300]}
        self.timings.decode += (time.process_time() - t0) * 1000
        for start in range(0, len(decoded), self.batch):
            chunk = decoded[start:start + self.batch]
            if "labels" in tasks:
                t0 = time.process_time()
                logits = self._labels.run(None, {"input": np.stack([mobilenet.preprocess(im) for _, im in chunk])})[0]
                for (i, _), row in zip(chunk, logits):
                    p = np.exp(row - row.max())
                    p /= p.sum()
                    best = np.argsort(-p)[:TOP]
                    out[i]["labels"] = {"labels": [{"name": self._classes[k], "score": round(float(p[k]), 4)}
                                                   for k in best]}
                self.timings.labels += (time.process_time() - t0) * 1000
            if "moderation" in tasks:
                t0 = time.process_time()
                name = self._nsfw.get_inputs()[0].name
                probs = self._nsfw.run(None, {name: np.stack([self._nsfw_input(im) for _, im in chunk])})[0]
                for (i, _), row in zip(chunk, probs):
                    out[i]["moderation"] = {"scores": {"sexual": round(float(row[1]), 4)}}
                self.timings.moderation += (time.process_time() - t0) * 1000
            if "faces" in tasks:
                t0 = time.process_time()
                for i, im in chunk:
                    with _LOADED_LOCK:  # one LiteRT interpreter is not safe to share between threads
                        found = self._faces.detect(im)
                    out[i]["faces"] = {"count": len(found), "detector": "face",
                                       "boxes": [{"box": [round(v, 4) for v in f["box"]],
                                                  "score": round(float(f["score"]), 4)} for f in found]}
                self.timings.faces += (time.process_time() - t0) * 1000
        _trim()
        return out
