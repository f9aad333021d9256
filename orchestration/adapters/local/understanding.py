"""ImageUnderstanding on this machine: the image core's three local models (assets/core/understand), run
with onnxruntime (and LiteRT for faces) on the image workers' CPUs, or on CUDA when present."""

from __future__ import annotations

from typing import Collection, Sequence

from orchestration.ports.understanding import TASKS, ModelInfo

_RUNTIMES = {"labels": "onnxruntime", "moderation": "onnxruntime", "faces": "ai-edge-litert"}
# The revision of our own code around the models (how the input is made from the rendition, pre- and
# post-processing): part of every task's code version, so a change there marks the assets changed too.
# Bump it with any change to assets/core/understand/engine.py, mobilenet.py or blazeface.py that changes results.
CODE_REVISION = "2"


def local_models(min_face_score: float) -> dict[str, ModelInfo]:
    """What answers each task, from the pinned files (nothing is loaded)."""
    from assets.core.understand.models import MODEL_FILES

    out = {}
    for task in TASKS:
        f = MODEL_FILES[task]
        settings = {"code": CODE_REVISION, **({"min_score": min_face_score} if task == "faces" else {})}
        out[task] = ModelInfo(task=task, name=f.name, version=f.distribution.split("==")[1], sha256=f.sha256,
                              source=f"{f.source} (run by {_RUNTIMES[task]})", licence=f.licence, settings=settings)
    return out


class LocalUnderstanding:
    """The models are loaded (files checked against their sha256) at the first ``analyze`` that needs them,
    once per process."""

    def __init__(self, *, threads: int | None = None, device: str = "auto", min_face_score: float = 0.6):
        self._options = dict(threads=threads, device=device, min_face_score=min_face_score)
        self._min_face_score = min_face_score
        self._engine = None

    @property
    def engine(self):
        if self._engine is None:
            from assets.core.understand.engine import LocalModels

            self._engine = LocalModels(**self._options)
        return self._engine

    def models(self) -> dict[str, ModelInfo]:
        return local_models(self._min_face_score)

    def analyze(self, images: Sequence[bytes], tasks: Collection[str]) -> list[dict[str, dict]]:
        return self.engine.analyze(images, tasks)

    def close(self) -> None:
        pass
