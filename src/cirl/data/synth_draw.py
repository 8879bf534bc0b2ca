"""Drawing a synthetic concrete photo: cracks as random walks with a varying width and their
exact masks, a textured surface, and distractors that look like cracks and are not
(formwork joints, stains, scratches).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np


class _CrackCanvas:
    """Truth mask, label mask and crack darkness of one image, drawn segment by segment.

    A segment of width ``w`` covers the pixels whose centre lies closer than ``w / 2`` to it
    (pixel ``(row, col)`` has its centre at ``x = col, y = row``), so a straight crack of width
    ``w`` is ``w`` px across on average, whatever its direction.
    """

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width
        self.truth = np.zeros((height, width), bool)
        self.label = np.zeros((height, width), bool)
        self.dark = np.zeros((height, width), np.float32)

    def segment(
        self,
        p0: np.ndarray,
        p1: np.ndarray,
        w: float,
        w_label: float,
        depth: float,
        soft: float,
    ) -> bool:
        """Draw one segment; return whether it touches the image."""
        margin = max(w, w_label) / 2 + (4.0 * soft if depth > 0 else 0.0) + 1.0
        x0 = int(np.floor(min(p0[0], p1[0]) - margin))
        x1 = int(np.ceil(max(p0[0], p1[0]) + margin)) + 1
        y0 = int(np.floor(min(p0[1], p1[1]) - margin))
        y1 = int(np.ceil(max(p0[1], p1[1]) + margin)) + 1
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, self.width), min(y1, self.height)
        if x0 >= x1 or y0 >= y1:
            return False
        xs = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(p0[0])
        ys = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(p0[1])
        dx, dy = np.float32(p1[0] - p0[0]), np.float32(p1[1] - p0[1])
        length2 = dx * dx + dy * dy
        if length2 > 0:
            t = np.clip((xs * dx + ys * dy) / length2, 0.0, 1.0)
            ex, ey = xs - t * dx, ys - t * dy
        else:
            ex, ey = np.broadcast_to(xs, (y1 - y0, x1 - x0)), ys
        d = np.sqrt(ex * ex + ey * ey)
        box = np.s_[y0:y1, x0:x1]
        inside = d < w / 2
        self.truth[box] |= inside
        self.label[box] |= d < w_label / 2
        if depth > 0:
            # Soft edge: a logistic profile, 1/2 at the true edge, so the pixels just outside
            # the crack are darkened too and the pixels just inside are lighter than its core.
            profile = depth / (1.0 + np.exp((d - w / 2) / soft))
            np.maximum(self.dark[box], profile, out=self.dark[box])
        return bool(inside.any())


def draw_crack(
    mask: np.ndarray,
    points: Sequence[tuple[float, float]] | np.ndarray,
    width: float,
    value: int = 255,
) -> float:
    """Draw a straight or polyline crack of constant width into a mask, in place.

    The crack covers the pixels whose centre (``x = col, y = row``) lies closer than
    ``width / 2`` to the polyline, as the synthetic cracks do: a straight crack of odd integer
    width on integer coordinates is exactly ``width`` px across, and in general its area is
    about ``length * width``.

    Args:
        mask: ``(H, W)`` array to draw into (any dtype that holds ``value``).
        points: ``(K, 2)`` polyline vertices as ``(x, y)`` pixel coordinates, ``K >= 2``.
        width: crack width in pixels, > 0.
        value: the value written at crack pixels.

    Returns:
        The polyline length in pixels (sum of its segment lengths).

    Raises:
        ValueError: on fewer than two points, a non-positive width or a mask that is not 2-D.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 2:
        raise ValueError(f"points must be a (K, 2) array of (x, y) with K >= 2, got {pts.shape}")
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    canvas = _CrackCanvas(*mask.shape)
    for p0, p1 in itertools.pairwise(pts):
        canvas.segment(p0, p1, width, width, 0.0, 1.0)
    mask[canvas.truth] = value
    return float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())


def _smooth_series(rng: np.random.Generator, n: int, knots: int, low: float, high: float):
    """``n`` values varying smoothly between ``low`` and ``high`` (linear between knots)."""
    knot_values = rng.uniform(low, high, max(knots, 2))
    return np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(knot_values)), knot_values)


def _walk(
    rng: np.random.Generator, start: np.ndarray, angle: float, length: float, step: float
) -> np.ndarray:
    """A random-walk polyline from ``start``: persistent heading with a wandering offset."""
    k = max(int(length / step), 2)
    wander = np.empty(k)
    phi = 0.0
    for i in range(k):  # AR(1) heading offset: meanders but keeps the overall direction
        phi = 0.85 * phi + rng.normal(0.0, 0.28)
        wander[i] = phi
    drift = np.cumsum(rng.normal(0.0, 0.03, k))
    heading = angle + wander + drift
    steps = step * rng.uniform(0.7, 1.3, k)
    moves = np.stack([np.cos(heading) * steps, np.sin(heading) * steps], axis=1)
    return np.vstack([start[None], start[None] + np.cumsum(moves, axis=0)])


def _width_profile(
    rng: np.random.Generator, n: int, peak: float, lo: float, hi: float, taper_start: bool
) -> np.ndarray:
    """Per-segment widths: smooth variation below ``peak``, tapering to the ends."""
    rel = _smooth_series(rng, n, max(n // 6, 2), 0.35, 1.0)
    pos = (np.arange(n) + 0.5) / n
    taper = np.minimum(1.0, (1.0 - pos) / 0.25)
    if taper_start:
        taper = np.minimum(taper, pos / 0.25)
    widths = peak * rel * (0.25 + 0.75 * np.sqrt(np.clip(taper, 0.0, 1.0)))
    return np.clip(widths, lo, hi)


def _draw_path(
    rng: np.random.Generator,
    canvas: _CrackCanvas,
    cfg: Any,
    points: np.ndarray,
    widths: np.ndarray,
    depth: float,
    soft: float,
    drawn: list[float],
) -> None:
    n = len(points) - 1
    if cfg.label_noise > 0:
        offsets = _smooth_series(rng, n, max(n // 3, 2), -cfg.label_noise, cfg.label_noise)
    else:
        offsets = np.zeros(n)
    label_widths = np.maximum(1.0, widths + offsets)
    for i in range(n):
        # Wider cracks are deeper, hence darker (more shadow inside).
        seg_depth = depth * (0.75 + 0.25 * min(1.0, widths[i] / 6.0))
        if canvas.segment(points[i], points[i + 1], widths[i], label_widths[i], seg_depth, soft):
            drawn.append(float(widths[i]))


def _cracks(rng: np.random.Generator, cfg: Any, canvas: _CrackCanvas) -> dict[str, Any]:
    """Draw the branching cracks of one image; return what was drawn."""
    h, w = canvas.height, canvas.width
    diag = float(np.hypot(h, w))
    step = float(np.clip(diag / 200.0, 3.0, 12.0))
    lo, hi = float(cfg.min_crack_width), float(cfg.max_crack_width)
    n_cracks = int(rng.integers(cfg.cracks_min, cfg.cracks_max + 1))
    drawn: list[float] = []
    paths = thin = 0
    for _ in range(n_cracks):
        faint = rng.random() < 0.25
        if faint:  # very thin, low-contrast crack
            peak = rng.uniform(lo, min(hi, lo + 2.0))
            depth = rng.uniform(0.12, 0.25)
            thin += 1
        else:
            peak = lo + (hi - lo) * rng.random() ** 1.5
            depth = rng.uniform(0.3, 0.6)
        soft = rng.uniform(0.6, 1.4)
        # Walk both ways from a point in the middle part of the image so the crack is seen.
        centre = np.array([rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h])
        angle = rng.uniform(0.0, np.pi)
        length = rng.uniform(0.25, 0.8) * diag
        a = _walk(rng, centre, angle, length / 2, step)
        b = _walk(rng, centre, angle + np.pi, length / 2, step)
        points = np.vstack([a[::-1], b[1:]])
        widths = _width_profile(rng, len(points) - 1, peak, lo, hi, taper_start=True)
        _draw_path(rng, canvas, cfg, points, widths, depth, soft, drawn)
        paths += 1
        # Branches leave the main path at a random vertex, thinner than it is there.
        stack = [(points, widths, 0)]
        while stack:
            parent, parent_widths, level = stack.pop()
            for _ in range(int(rng.poisson(1.2 if level == 0 else 0.5))):
                j = int(rng.integers(1, len(parent) - 1))
                heading = np.arctan2(*(parent[j + 1] - parent[j - 1])[::-1])
                turn = rng.uniform(0.4, 1.2) * rng.choice([-1.0, 1.0])
                seg_count = len(parent) - 1
                branch_len = rng.uniform(0.15, 0.5) * seg_count * step
                branch = _walk(rng, parent[j], heading + turn, branch_len, step)
                peak_b = max(lo, parent_widths[min(j, seg_count - 1)] * rng.uniform(0.4, 0.9))
                widths_b = _width_profile(rng, len(branch) - 1, peak_b, lo, hi, False)
                _draw_path(rng, canvas, cfg, branch, widths_b, depth, soft, drawn)
                paths += 1
                if level < 1:
                    stack.append((branch, widths_b, level + 1))
    return {
        "cracks": n_cracks,
        "paths": paths,
        "faint_cracks": thin,
        "min_width": round(min(drawn), 3) if drawn else None,
        "max_width": round(max(drawn), 3) if drawn else None,
    }


def _noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth zero-mean unit-ish noise with features about ``cell`` px across."""
    gh, gw = int(np.ceil(h / cell)) + 3, int(np.ceil(w / cell)) + 3
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    big = cv2.resize(grid, (int(gw * cell), int(gh * cell)), interpolation=cv2.INTER_CUBIC)
    oy, ox = int(rng.integers(0, int(cell) + 1)), int(rng.integers(0, int(cell) + 1))
    return big[oy : oy + h, ox : ox + w]


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _blobs(
    rng: np.random.Generator, h: int, w: int, count: int, radii: Sequence[int], p: Sequence[float]
) -> np.ndarray:
    """``count`` round blobs of random strength in ``[0, 1]``, radius drawn from ``radii``
    with probabilities ``p``; float32 (H, W)."""
    out = np.zeros((h, w), np.uint8)
    per = np.bincount(rng.choice(len(radii), count, p=p), minlength=len(radii))
    for r, k in zip(radii, per, strict=True):
        seeds = np.zeros((h, w), np.uint8)
        seeds.flat[rng.integers(0, h * w, int(k))] = rng.integers(60, 256, int(k), np.uint8)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        cv2.max(out, cv2.dilate(seeds, kernel), dst=out)
    return cv2.GaussianBlur(out.astype(np.float32), (0, 0), 0.8) * np.float32(1 / 255)


def _surface(rng: np.random.Generator, h: int, w: int, grain: np.ndarray) -> np.ndarray:
    """Concrete-like grey level field: octaves, aggregate, pores and illumination, (H, W).

    ``grain`` is the finest octave (about 3 px), shared with the crack interiors.
    """
    # The coarse octaves are summed at quarter resolution and upsampled once (speed).
    qh, qw = (h + 3) // 4, (w + 3) // 4
    coarse = np.zeros((qh, qw), np.float32)
    for cell, amp in ((80.0, 0.06), (24.0, 0.045), (7.0, 0.035)):
        coarse += np.float32(amp * rng.uniform(0.7, 1.3)) * _noise(rng, qh, qw, cell)
    tex = cv2.resize(coarse, (qw * 4, qh * 4), interpolation=cv2.INTER_LINEAR)[:h, :w]
    tex += 1.0
    tex += np.float32(0.03 * rng.uniform(0.7, 1.3)) * _noise(rng, h, w, 8.0)
    tex += np.float32(0.025 * rng.uniform(0.7, 1.3)) * grain
    # Aggregate: irregular lighter and darker stones from thresholded mid-frequency noise.
    agg = _noise(rng, h, w, 14.0)
    tex += np.clip((agg - 1.0) * np.float32(0.12), 0.0, 0.07)
    tex -= np.clip((-agg - 1.1) * np.float32(0.09), 0.0, 0.05)
    # Pores (dark) and light specks, density per area.
    area = h * w
    tex -= 0.45 * _blobs(rng, h, w, area // 1400, (1, 2, 3, 4), (0.35, 0.35, 0.2, 0.1))
    tex += 0.12 * _blobs(rng, h, w, area // 2500, (1, 2), (0.5, 0.5))
    # Gentle illumination: a linear gradient plus a slight vignette.
    yy = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    gx, gy = rng.uniform(-0.12, 0.12, 2).astype(np.float32)
    vignette = np.float32(rng.uniform(0.0, 0.08) / 2)
    tex *= 1.0 + gx * xx + gy * yy - vignette * (xx * xx + yy * yy)
    return tex


def _distractors(
    rng: np.random.Generator, h: int, w: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Unlabelled stains, joints and shadow: a grey factor (H, W) and a stain map (H, W)."""
    factor = np.ones((h, w), np.float32)
    stain = np.zeros((h, w), np.float32)
    info: dict[str, Any] = {"stains": 0, "joints": 0, "shadow": False}
    if rng.random() < 0.7:  # stains: large low-frequency dark blotches
        qh, qw = (h + 3) // 4, (w + 3) // 4  # low frequency: render at quarter resolution
        blot = _noise(rng, qh, qw, float(rng.uniform(45, 100)))
        blot += 0.3 * _noise(rng, qh, qw, 10.0)
        thr = float(rng.uniform(0.6, 1.1))
        blot = _smoothstep(blot, thr - 0.3, thr + 0.5) * np.float32(rng.uniform(0.12, 0.3))
        stain = cv2.resize(blot, (qw * 4, qh * 4), interpolation=cv2.INTER_LINEAR)[:h, :w]
        factor *= 1.0 - stain
        info["stains"] = 1
    if rng.random() < 0.45:  # joints: straight grooves across the image
        joints = np.zeros((h, w), np.float32)
        lips = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(1, 3))):
            vertical = rng.random() < 0.5
            tilt = np.tan(np.deg2rad(rng.uniform(-2.0, 2.0)))
            thick = int(rng.integers(4, 12))
            if vertical:
                x = rng.uniform(0.1, 0.9) * w
                p0, p1 = (x, -10.0), (x + tilt * (h + 20), h + 10.0)
                shift = np.array([thick * 0.7 + 1, 0.0])
            else:
                y = rng.uniform(0.1, 0.9) * h
                p0, p1 = (-10.0, y), (w + 10.0, y + tilt * (w + 20))
                shift = np.array([0.0, thick * 0.7 + 1])
            a, b = np.array(p0), np.array(p1)
            depth = float(rng.uniform(0.3, 0.55))
            cv2.line(joints, _pt(a), _pt(b), depth, thick, cv2.LINE_AA)
            cv2.line(lips, _pt(a + shift), _pt(b + shift), 0.08, 2, cv2.LINE_AA)
            info["joints"] += 1
        factor *= 1.0 - cv2.GaussianBlur(joints, (0, 0), 1.5)
        factor *= 1.0 + cv2.GaussianBlur(lips, (0, 0), 1.5)
    if rng.random() < 0.35:  # shadow: a large darker region with a soft, wavy edge
        sh, sw = max(h // 8, 8), max(w // 8, 8)
        yy = np.linspace(0.0, 1.0, sh, dtype=np.float32)[:, None]
        xx = np.linspace(0.0, 1.0, sw, dtype=np.float32)[None, :]
        theta = rng.uniform(0, 2 * np.pi)
        signed = (xx - rng.uniform(0.2, 0.8)) * np.cos(theta) + (
            yy - rng.uniform(0.2, 0.8)
        ) * np.sin(theta)
        signed = signed + 0.05 * _noise(rng, sh, sw, max(sw / 4.0, 2.0))
        soft = float(rng.uniform(0.01, 0.06))
        shade = 1.0 / (1.0 + np.exp(-signed / soft))
        shade = cv2.resize(shade.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        factor *= 1.0 - np.float32(rng.uniform(0.15, 0.35)) * shade
        info["shadow"] = True
    return factor, stain, info


def _pt(p: np.ndarray) -> tuple[int, int]:
    return round(float(p[0])), round(float(p[1]))
