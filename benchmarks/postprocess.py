"""Post-processing of raw model outputs: softmax, temperature, box decoding and NMS, CTC greedy decoding.

Imports only numpy and the standard library, and keeps to Python 3.10 syntax: it runs on a device next to the
runner (``device.py``) as well as in the host's metrics (``metrics.py``), so both decode outputs the same way.
"""

from __future__ import annotations

import numpy as np

#: Probabilities are clipped to this before a log, so a hard 0 does not become -inf.
EPS = 1e-12


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    z = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    z = x - np.max(x, axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def apply_temperature(arr: np.ndarray, temperature: float, probabilities: bool, axis: int = -1) -> np.ndarray:
    """Probabilities at temperature ``T``: ``softmax(logits / T)``, or ``softmax(log(p) / T)`` for probabilities.

    ``T > 1`` softens over-confident outputs; ``T = 1`` gives the softmax of the logits (the probabilities back).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    arr = np.asarray(arr, dtype=np.float64)
    logits = np.log(np.clip(arr, EPS, None)) if probabilities else arr
    return softmax(logits / temperature, axis=axis)


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    half = boxes[..., 2:4] / 2.0
    return np.concatenate([boxes[..., 0:2] - half, boxes[..., 0:2] + half], axis=-1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: ``[len(a), len(b)]``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0.0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, classes: np.ndarray | None = None,
        max_boxes: int | None = None) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first.

    With ``classes``, boxes suppress only boxes of their own class (per-class NMS).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    if classes is not None and len(boxes):
        # shift each class into its own region so boxes of different classes never overlap
        span = float(np.max(boxes) - min(float(np.min(boxes)), 0.0)) + 1.0
        boxes = boxes + (np.asarray(classes, dtype=np.float64) * span)[:, None]
    keep: list[int] = []
    while order.size and (max_boxes is None or len(keep) < max_boxes):
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        if not rest.size:
            break
        ious = box_iou(boxes[best:best + 1], boxes[rest])[0]
        order = rest[ious <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def decode_detections(
    anchors: np.ndarray,
    boxes: tuple[int, int],
    scores: tuple[int, int],
    layout: str = "cxcywh",
    objectness: int | None = None,
    probabilities: bool = True,
    score_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    max_boxes: int = 300,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[A, K]`` anchor rows of one image -> (xyxy boxes ``[k, 4]``, scores ``[k]``, classes ``[k]``) after a
    score threshold and per-class NMS; each anchor votes for its best class."""
    rows = np.asarray(anchors, dtype=np.float64)
    class_scores = class_probabilities(rows, scores, objectness, probabilities)
    if class_scores.shape[1] == 0:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64)
    cls = np.argmax(class_scores, axis=1)
    conf = class_scores[np.arange(len(rows)), cls]
    sel = np.flatnonzero(conf >= score_threshold)
    xyxy = rows[sel, boxes[0]:boxes[1]]
    if layout == "cxcywh":
        xyxy = cxcywh_to_xyxy(xyxy)
    keep = nms(xyxy, conf[sel], iou_threshold, cls[sel], max_boxes)
    return xyxy[keep], conf[sel][keep], cls[sel][keep].astype(np.int64)


def grid_decode(rows: np.ndarray, boxes: tuple[int, int], levels: list[tuple[int, int, int]]) -> np.ndarray:
    """``[A, K]`` anchor rows of a raw anchor-free head -> the same rows with the box channels in pixels
    (cx, cy, w, h), YOLOX style: ``(offset + cell) * stride`` and ``exp(log size) * stride``; ``levels`` are
    (rows, columns, stride) of each level, anchors level by level, row-major."""
    cells = [np.stack(np.meshgrid(np.arange(c), np.arange(r)), -1).reshape(-1, 2) for r, c, _ in levels]
    stride = np.concatenate([np.full((r * c, 1), s, dtype=np.float64) for r, c, s in levels])
    out = np.array(rows, dtype=np.float64, copy=True)
    b = boxes[0]
    out[:, b:b + 2] = (out[:, b:b + 2] + np.concatenate(cells)) * stride
    out[:, b + 2:b + 4] = np.exp(np.clip(out[:, b + 2:b + 4], -20.0, 20.0)) * stride
    return out


def class_probabilities(rows: np.ndarray, scores: tuple[int, int], objectness: int | None = None,
                        probabilities: bool = True) -> np.ndarray:
    """The ``[A, C]`` class scores of anchor rows, sigmoid applied to logits and objectness multiplied in."""
    s = np.asarray(rows[:, scores[0]:scores[1]], dtype=np.float64)
    if not probabilities:
        s = sigmoid(s)
    if objectness is not None:
        obj = np.asarray(rows[:, objectness], dtype=np.float64)
        s = s * (obj if probabilities else sigmoid(obj))[:, None]
    return s


def ctc_greedy_decode(frame_scores: np.ndarray, blank: int = 0, collapse: bool = True) -> list[int]:
    """``[T, C]`` scores of one sequence -> token ids: argmax per frame, repeats collapsed, blanks dropped.

    With ``collapse=False`` it is the plain per-frame argmax (no collapsing, nothing dropped).
    """
    ids = np.argmax(np.asarray(frame_scores), axis=-1).ravel()
    if not collapse:
        return [int(i) for i in ids]
    if ids.size == 0:
        return []
    keep = np.ones(ids.size, dtype=bool)
    keep[1:] = ids[1:] != ids[:-1]
    ids = ids[keep]
    return [int(i) for i in ids if i != blank]
