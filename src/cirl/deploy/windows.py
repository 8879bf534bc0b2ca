"""A photo of any size through a model that takes tiles: overlapping windows, each blended
with a weight that falls off towards its edges, so seams do not show in the probabilities.
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from cirl.deploy.predict_config import PredictConfig, decision_threshold
from cirl.errors import CirlError


def window_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one axis: step ``tile - overlap``, the last shifted to end at the edge.

    ``length`` must be >= ``tile`` (shorter sides are padded first).
    """
    if length < tile:
        raise ValueError(f"length {length} is shorter than the tile {tile}; pad it first")
    step = tile - overlap
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def blend_window(tile: int, overlap: int) -> np.ndarray:
    """``(tile,)`` weights: 1 in the middle, falling linearly to ``0.5 / overlap`` at the ends.

    The 2-D weight of a tile is the outer product of two of these. Weighted averaging makes
    the blend continuous across tile borders (each tile fades out where its neighbour takes
    over), and the weight stays positive, so a pixel covered by one tile only keeps its value.
    """
    if overlap == 0:
        return np.ones(tile, np.float32)
    index = np.arange(tile, dtype=np.float32)
    edge = np.minimum(index, tile - 1 - index) + 0.5
    return np.clip(edge / overlap, 0.0, 1.0).astype(np.float32)


def sliding_window(
    image_rgb: np.ndarray, engine, cfg: PredictConfig
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Run ``engine`` over ``image_rgb`` tile by tile and blend.

    Args:
        image_rgb: ``(H, W, 3)`` uint8 RGB photo of any size.
        engine: an engine from :func:`cirl.deploy.opener.load_engine`.
        cfg: tile, overlap, batch and threshold (``auto``: the engine's model's).

    Returns:
        ``(prob8, mask, stats)``: ``(H, W)`` uint8 probability (value / 255), ``(H, W)`` bool
        crack map (float probability >= threshold, before 8-bit rounding) and counts/timings.
    """
    if cfg.tile % engine.stride:
        raise CirlError(
            f"tile {cfg.tile} is not a multiple of the model's stride {engine.stride}; "
            f"use --tile {cfg.tile // engine.stride * engine.stride or engine.stride}"
        )
    threshold = decision_threshold(cfg, getattr(engine, "description", {}))["value"]
    h, w = image_rgb.shape[:2]
    T = cfg.tile
    ph, pw = max(T - h, 0), max(T - w, 0)
    if ph or pw:  # smaller than a tile: reflect so the model sees plausible context
        mode = cv2.BORDER_REFLECT_101 if min(h, w) > 1 else cv2.BORDER_REPLICATE
        image_rgb = cv2.copyMakeBorder(image_rgb, 0, ph, 0, pw, mode)
    H, W = image_rgb.shape[:2]
    ys, xs = window_starts(H, T, cfg.overlap), window_starts(W, T, cfg.overlap)
    ramp = blend_window(T, cfg.overlap)
    weight = np.outer(ramp, ramp)
    prob8 = np.zeros((h, w), np.uint8)
    mask = np.zeros((h, w), bool)
    # Strip accumulators for the rows [base, base + T) of the padded photo.
    num = np.zeros((T, W), np.float32)
    den = np.zeros((T, W), np.float32)
    base = 0
    infer_seconds = 0.0

    def flush(upto: int) -> None:
        """Finish rows [base, upto): no later tile row touches them."""
        nonlocal base, num, den
        rows = upto - base
        if rows <= 0:
            return
        p = num[:rows] / den[:rows]
        lo, hi = base, min(upto, h)
        if hi > lo:
            part = p[: hi - lo, :w]
            mask[lo:hi] = part >= threshold
            prob8[lo:hi] = np.clip(np.rint(part * 255.0), 0, 255).astype(np.uint8)
        num = np.concatenate([num[rows:], np.zeros((rows, W), np.float32)])
        den = np.concatenate([den[rows:], np.zeros((rows, W), np.float32)])
        base = upto

    boxes = [(y, x) for y in ys for x in xs]
    for start in range(0, len(boxes), cfg.batch):
        chunk = boxes[start : start + cfg.batch]
        if chunk[0][0] > base:
            flush(chunk[0][0])
        batch = np.stack([image_rgb[y : y + T, x : x + T] for y, x in chunk])
        batch = batch.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1 / 255)
        t0 = time.perf_counter()
        probs = engine(batch)[:, 0]
        infer_seconds += time.perf_counter() - t0
        for (y, x), p in zip(chunk, probs, strict=True):
            if y > base:  # a batch may span two tile rows
                flush(y)
            num[y - base : y - base + T, x : x + T] += p * weight
            den[y - base : y - base + T, x : x + T] += weight
    flush(H)
    stats = {
        "tiles": len(boxes),
        "grid": [len(ys), len(xs)],
        "padded_to": [H, W] if (ph or pw) else None,
        "infer_seconds": infer_seconds,
    }
    return prob8, mask, stats
