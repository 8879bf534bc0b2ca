"""Crack measurement from a binary crack mask: count, length, width and direction of each crack.

Inspectors grade cracks by their size, so this module turns a segmentation mask into one record
per crack (a connected component of crack pixels) and writes them as a CSV table.

Method, per connected component (``cv2.connectedComponentsWithStats``, 8- or 4-connectivity),
each processed on its own bounding box padded by one background pixel (so the image border
counts as background: a crack cut by the border ends there):

1. **Clean-up.** Enclosed holes no larger than ``max(4, (2 * max(d) - 1) ** 2)`` pixels
   (pinholes in a crack, ``d`` the distance transform below) are filled for the skeleton and
   the widths only; ``pixels`` stays the component's own pixel count. A ring crack's large
   hole is kept.
2. **Skeleton.** ``cv2.ximgproc.thinning`` (Zhang-Suen) when OpenCV's contrib module is
   installed, otherwise a vectorised NumPy Zhang-Suen thinning of our own: the two
   sub-iterations look up the 8-neighbour code of every remaining crack pixel in a 256-entry
   table and delete the marked pixels at once, until a full pass deletes nothing. Only the
   foreground pixels are visited (flat indices plus neighbour offsets), so the cost follows the
   crack's area, not its bounding box. Then:

   - redundant pixels are removed one at a time, keeping the skeleton 8-connected and
     without new holes: staircase corners that Zhang-Suen leaves (a pixel whose two
     perpendicular axial neighbours already touch each other diagonally), so a diagonal is not
     a 4-connected zig-zag, and pixels with 3+ neighbours that all touch each other (one-pixel
     nubs on a line, thick junctions);
   - spurs, the short side branches that rough crack edges grow, are pruned: a branch from an
     end to a junction (junction pixels that touch count as one) goes when it reaches less
     than ``2 * max(d over the junction, median d)`` from the junction, i.e. it sticks out of
     the crack's edge by less than about half the crack's width (details in ``_prune_spurs``).
     Without this, a 9-px crack whose edges jump by +-1 px from column to column measured
     about a third too long (2-3% with it);
   - a component too small to keep any skeleton pixel (a 2x2 block) gets the pixel farthest
     from the background as its skeleton.
3. **Width.** ``d = cv2.distanceTransform(component, cv2.DIST_L2, 5)`` is the distance from a
   pixel centre to the nearest background pixel centre, so the local width at a skeleton pixel
   is about ``2 * d - 1`` (a 1-px line gives 1, a 5-px band gives 5); ``max_width_px`` is the
   maximum of that profile. The profile is exact for horizontal and vertical cracks but its
   values along oblique and meandering cracks scatter below the true width (on a digital edge
   at another angle the nearest background centre lies less than 0.5 px past the edge): a 9-px
   crack at 10-60 degrees has a profile mean of about 7.9 and a maximum of 8 to 9.5. The area
   does not depend on the angle, so ``mean_width_px`` is ``area / length_px`` (the component
   with pinholes filled), within about 1-3% of the true width at every angle. At a junction
   the centre is farther from the background than on either branch, so the maximum there
   over-states the branches' width (by up to about sqrt(2) for a right-angle crossing).
4. **Length.** The skeleton is split into chains of pixels between its nodes (ends and
   junctions; a ring is one closed chain) and each chain is measured as the polyline through
   its pixel centres simplified by Douglas-Peucker within 1 px (``cv2.approxPolyDP``). The
   plain sum of 8-neighbour links (1 axial, sqrt(2) diagonal) follows the pixel staircase and
   over-states lengths by 5.4% on a circle and up to 8% on a straight crack at 22.5 degrees; the
   polyline is exact on digital straight lines and within 0.5% on circles of radius 50 px or
   more. End correction: thinning eats about half the width off each end of a crack, so at
   every skeleton end (a pixel with exactly one skeleton neighbour) the remaining distance to
   the crack's end, ``d - 0.5`` (``d`` at that end pixel), is added. The length is therefore
   the crack's extent end to end, in the same pixel-edge convention as the width: a straight
   1-px line of N pixels measures N (N - 1 between the end pixel centres plus 0.5 at each end),
   a filled 200 x 9 px band about 200 (Zhang-Suen's asymmetry can lose 1 px), and a crack drawn
   with round caps includes its caps. A lone skeleton pixel (a blob) counts as two ends, so its
   length is its width. A ring has no end: its length is that of its centre line.
5. **Orientation.** The principal axis of the skeleton pixels (of the component's pixels when
   the skeleton is a single pixel), from their second central moments. The angle is measured
   counter-clockwise from the image's +x axis (to the right) *as seen on screen*, i.e. with the
   y axis pointing up, in ``[0, 180)``: 0 = horizontal, 90 = vertical, 45 = a crack rising to
   the right on screen (from bottom-left to top-right), 135 = a crack going down to the right on
   screen (from top-left to bottom-right, where image row y grows with x). A crack with no main
   direction (second moments less than 1% anisotropic: a ring, a disk, a single pixel) gets 0.

Cracks are numbered 1..n by decreasing length; equal lengths are ordered by their top-left
pixel (the first pixel in raster order: smallest row, then smallest column). Components with
fewer than ``min_pixels`` pixels are treated as noise and ignored.

Physical units: with ``mm_per_pixel`` (the ground sampling distance), lengths and widths are
multiplied by it and areas by its square.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

_EPSILON_PX = 1.0
"""Tolerance of the polyline that replaces a skeleton chain (Douglas-Peucker), in pixels."""

_ISOTROPIC = 0.01
"""Below this anisotropy, (l1 - l2) / (l1 + l2) of the second moments, a crack has no direction."""

CSV_COLUMNS: tuple[str, ...] = (
    "id",
    "pixels",
    "length_px",
    "mean_width_px",
    "max_width_px",
    "orientation_deg",
    "x0",
    "y0",
    "x1",
    "y1",
    "cx",
    "cy",
)
"""Columns of :func:`write_cracks_csv` without a scale."""

CSV_COLUMNS_MM: tuple[str, ...] = (
    *CSV_COLUMNS,
    "length_mm",
    "mean_width_mm",
    "max_width_mm",
    "area_mm2",
)
"""Columns of :func:`write_cracks_csv` when ``mm_per_pixel`` is given."""


@dataclass(frozen=True)
class Crack:
    """One crack: a connected component of the mask and its measurements, in pixels.

    Attributes:
        id: 1..n, ordered by ``length_px`` descending (ties: by the top-left pixel, raster order).
        pixels: Area of the connected component in pixels.
        length_px: Skeleton length plus the end corrections (see the module docstring).
        mean_width_px: Mean of ``2 * d - 1`` over the skeleton pixels (``d`` the L2 distance
            transform).
        max_width_px: Maximum of ``2 * d - 1`` over the skeleton pixels.
        orientation_deg: Main direction in degrees, in ``[0, 180)``, counter-clockwise from +x
            with the y axis pointing *up* (as seen on screen): 0 = horizontal, 90 = vertical,
            45 = rising to the right on screen, 135 = going down to the right on screen
            (top-left to bottom-right in image coordinates, where y points down).
        bbox: ``(x0, y0, x1, y1)`` in pixels, ``x1`` and ``y1`` exclusive.
        centroid: ``(x, y)`` mean of the component's pixel coordinates.
    """

    id: int
    pixels: int
    length_px: float
    mean_width_px: float
    max_width_px: float
    orientation_deg: float
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]


# ------------------------------------------------------------------------------------------------
# Neighbourhood tables
# ------------------------------------------------------------------------------------------------

# Zhang-Suen neighbour order P2..P9 as (dy, dx): N, NE, E, SE, S, SW, W, NW (clockwise on screen).
# Bit k of a neighbour code is set when neighbour P(k + 2) is a crack pixel.
_NEIGHBOURS: tuple[tuple[int, int], ...] = (
    (-1, 0),
    (-1, 1),
    (0, 1),
    (1, 1),
    (1, 0),
    (1, -1),
    (0, -1),
    (-1, -1),
)


def _code_bits(code: int) -> list[int]:
    """The 8 neighbour bits ``[P2, ..., P9]`` of a neighbour code."""
    return [(code >> k) & 1 for k in range(8)]


def _ring_groups(bits: Sequence[int]) -> int:
    """Number of 8-connected groups formed by the set neighbours within the 3x3 ring."""
    present = [k for k in range(8) if bits[k]]
    parent = {k: k for k in present}

    def find(k: int) -> int:
        while parent[k] != k:
            k = parent[k]
        return k

    for a in present:
        for b in present:
            ya, xa = _NEIGHBOURS[a]
            yb, xb = _NEIGHBOURS[b]
            if a < b and max(abs(ya - yb), abs(xa - xb)) == 1:
                parent[find(a)] = find(b)
    return len({find(k) for k in present})


def _build_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deletion tables of the two Zhang-Suen sub-iterations and of the skeleton clean-up."""
    step1 = np.zeros(256, dtype=bool)
    step2 = np.zeros(256, dtype=bool)
    redundant = np.zeros(256, dtype=bool)
    for code in range(256):
        p2, p3, p4, p5, p6, p7, p8, p9 = bits = _code_bits(code)
        count = sum(bits)
        cyclic = [*bits, bits[0]]
        transitions = sum(1 for a, b in itertools.pairwise(cyclic) if a == 0 and b)
        base = 2 <= count <= 6 and transitions == 1
        step1[code] = base and p2 * p4 * p6 == 0 and p4 * p6 * p8 == 0
        step2[code] = base and p2 * p4 * p8 == 0 and p2 * p6 * p8 == 0
        # Redundant for an 8-connected skeleton: deleting the pixel keeps its neighbours one
        # 8-connected group and opens no hole (a 4-neighbour is background), so it is a simple
        # point; and it is either a staircase corner (two perpendicular axial neighbours with
        # the diagonal between them empty) or has 3+ neighbours (a nub on a line, a thick
        # junction). Pixels with 1 or 2 neighbours otherwise stay, so ends are not eaten.
        corner = (p2 and p4 and not p3) or (p4 and p6 and not p5)
        corner = corner or (p6 and p8 and not p7) or (p8 and p2 and not p9)
        simple = _ring_groups(bits) == 1 and not (p2 and p4 and p6 and p8)
        redundant[code] = simple and (bool(corner) or count >= 3)
    return step1, step2, redundant


_ZS_STEP1, _ZS_STEP2, _REDUNDANT = _build_tables()


def _offsets(width: int) -> np.ndarray:
    """Flat-index offsets of the neighbours P2..P9 in a C-contiguous array ``width`` wide."""
    return np.array([dy * width + dx for dy, dx in _NEIGHBOURS], dtype=np.int64)


def _codes(flat: np.ndarray, idx: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Neighbour codes, shape ``(len(idx),)`` uint8, of the pixels ``idx`` of a 0/1 image."""
    code = np.zeros(idx.shape, dtype=np.uint8)
    for k, off in enumerate(offsets):
        code |= flat[idx + off] << np.uint8(k)
    return code


# ------------------------------------------------------------------------------------------------
# Skeleton
# ------------------------------------------------------------------------------------------------


def _zhang_suen(image: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of a 0/1 image whose border rows and columns are 0.

    Args:
        image: ``(H, W)`` uint8 with values 0/1 and a zero one-pixel frame (not modified).

    Returns:
        ``(H, W)`` uint8 0/1 skeleton.
    """
    if hasattr(cv2, "ximgproc"):  # opencv-contrib: the same algorithm in C++
        return (
            cv2.ximgproc.thinning(image * 255, thinningType=cv2.ximgproc.THINNING_ZHANGSUEN) > 0
        ).astype(np.uint8)
    out = np.ascontiguousarray(image, dtype=np.uint8).copy()
    flat = out.reshape(-1)
    offsets = _offsets(out.shape[1])
    idx = np.flatnonzero(flat)
    while True:
        changed = False
        for table in (_ZS_STEP1, _ZS_STEP2):
            delete = table[_codes(flat, idx, offsets)]
            if delete.any():
                flat[idx[delete]] = 0
                idx = idx[~delete]
                changed = True
        if not changed:
            return out


def _remove_redundant(skeleton: np.ndarray) -> None:
    """Delete redundant pixels (staircase corners, nubs) of a 0/1 skeleton in place.

    One pixel at a time in raster order, each re-checked after the deletions before it, so the
    skeleton stays 8-connected.

    Args:
        skeleton: ``(H, W)`` uint8 0/1, C-contiguous, with a zero one-pixel frame.
    """
    flat = skeleton.reshape(-1)
    offsets = _offsets(skeleton.shape[1])
    steps = offsets.tolist()
    while True:
        idx = np.flatnonzero(flat)
        candidates = idx[_REDUNDANT[_codes(flat, idx, offsets)]]
        removed = 0
        for i in candidates.tolist():
            code = 0
            for k, off in enumerate(steps):
                code |= int(flat[i + off]) << k
            if _REDUNDANT[code]:  # still a corner after the deletions before it
                flat[i] = 0
                removed += 1
        if removed == 0:
            return


def _trace_chains(skeleton: np.ndarray) -> tuple[list[tuple[list[int], bool]], dict[int, int]]:
    """Split a skeleton into chains of pixels running between nodes, and closed loops.

    A node is a skeleton pixel whose number of skeleton neighbours is not 2 (an end, a junction,
    a lone pixel). Each chain runs from a node through pixels of degree 2 to the next node; a
    loop of degree-2 pixels with no node is a closed chain. Two adjacent nodes form a chain of
    two pixels, except a diagonal pair that also shares an axial neighbour (a junction
    triangle), whose shortcut would count the junction twice.

    Args:
        skeleton: ``(H, W)`` uint8 0/1, C-contiguous, with a zero one-pixel frame.

    Returns:
        ``(chains, degree)``: chains as ``(flat indices, closed)``, and the degree (number of
        skeleton neighbours) of every skeleton pixel by flat index.
    """
    width = skeleton.shape[1]
    steps = _offsets(width).tolist()
    axial_steps = (-width, 1, width, -1)
    pixels = set(np.flatnonzero(skeleton.reshape(-1)).tolist())
    neighbours = {i: [i + s for s in steps if i + s in pixels] for i in pixels}
    degree = {i: len(n) for i, n in neighbours.items()}
    chains: list[tuple[list[int], bool]] = []
    visited: set[int] = set()  # degree-2 pixels already in a chain
    for node in sorted(i for i, d in degree.items() if d != 2):
        for nxt in neighbours[node]:
            if degree[nxt] != 2:
                if node < nxt:
                    shared = {node + s for s in axial_steps} & {nxt + s for s in axial_steps}
                    if not (abs(nxt - node) not in (1, width) and shared & pixels):
                        chains.append(([node, nxt], False))
                continue
            if nxt in visited:
                continue
            path = [node]
            prev, cur = node, nxt
            while degree[cur] == 2 and cur not in visited:
                visited.add(cur)
                path.append(cur)
                a, b = neighbours[cur]
                prev, cur = cur, (b if a == prev else a)
            path.append(cur)
            chains.append((path, False))
    for start in sorted(i for i, d in degree.items() if d == 2 and i not in visited):
        if start in visited:
            continue
        path = [start]
        visited.add(start)
        prev, cur = start, neighbours[start][0]
        while cur != start and cur not in visited:
            visited.add(cur)
            path.append(cur)
            a, b = neighbours[cur]
            prev, cur = cur, (b if a == prev else a)
        chains.append((path, cur == start))
    return chains, degree


def _chain_length(points: np.ndarray, closed: bool) -> float:
    """Length of a pixel chain after simplifying it to a polyline within ``_EPSILON_PX``.

    Args:
        points: ``(N, 2)`` int32 pixel coordinates ``(x, y)`` in chain order.
        closed: Whether the chain is a loop (its last pixel touches its first).
    """
    if len(points) < 2:
        return 0.0
    if len(points) == 2:
        return float(np.hypot(*(points[1] - points[0])))
    curve = points.reshape(-1, 1, 2)
    return float(cv2.arcLength(cv2.approxPolyDP(curve, _EPSILON_PX, closed), closed))


def _chain_points(path: Sequence[int], width: int) -> np.ndarray:
    """``(N, 2)`` int32 ``(x, y)`` coordinates of flat pixel indices in an array ``width`` wide."""
    flat = np.asarray(path, dtype=np.int64)
    return np.stack([flat % width, flat // width], axis=1).astype(np.int32)


def _junction_clusters(degree: dict[int, int], width: int) -> dict[int, int]:
    """Group 8-adjacent junction pixels (3+ neighbours) into clusters.

    Args:
        degree: Number of skeleton neighbours of every skeleton pixel, by flat index.
        width: Width of the skeleton array.

    Returns:
        The cluster id (its smallest flat index) of every junction pixel.
    """
    steps = _offsets(width).tolist()
    cluster: dict[int, int] = {}
    for seed in sorted(i for i, d in degree.items() if d >= 3):
        if seed in cluster:
            continue
        cluster[seed] = seed
        stack = [seed]
        while stack:
            i = stack.pop()
            for j in (i + s for s in steps):
                if degree.get(j, 0) >= 3 and j not in cluster:
                    cluster[j] = seed
                    stack.append(j)
    return cluster


def _prune_spurs(skeleton: np.ndarray, dist: np.ndarray, max_passes: int = 50) -> None:
    """Delete, in place, the short side branches that rough crack edges grow on a skeleton.

    Junction pixels (3+ skeleton neighbours) that touch each other form one junction. A terminal
    chain (from an end to a junction ``J``) is a spur when its reach, chain length plus
    ``d - 0.5`` at its end, is below ``2 * max(max d over J, median d)`` (``d`` the distance
    transform, the median over the skeleton before pruning): it sticks out of the crack's edge
    by less than about half the crack's width. All spurs of a junction go, except that when the
    junction would be left with fewer than two branches (a fork at the end of a crack, or a small
    star) the longest one stays. Repeated until nothing changes, so that a forked spur goes in
    two passes (first one prong, then the rest).

    Args:
        skeleton: ``(H, W)`` uint8 0/1, C-contiguous, with a zero one-pixel frame.
        dist: ``(H, W)`` distance transform of the component.
        max_passes: Upper bound on the number of passes.
    """
    width = skeleton.shape[1]
    flat = skeleton.reshape(-1)
    dist_flat = dist.reshape(-1)
    typical = float(np.median(dist_flat[np.flatnonzero(flat)]))
    for _ in range(max_passes):
        chains, degree = _trace_chains(skeleton)
        cluster = _junction_clusters(degree, width)
        scale: dict[int, float] = {}
        for i, c in cluster.items():
            scale[c] = max(scale.get(c, typical), float(dist_flat[i]))
        branches: dict[int, int] = {}
        spurs: dict[int, list[tuple[float, list[int]]]] = {}
        for path, closed in chains:
            if closed:
                continue
            first, last = cluster.get(path[0]), cluster.get(path[-1])
            if first is not None and first == last and len(path) == 2:
                continue  # a link inside one junction
            for c in (first, last):
                if c is not None:
                    branches[c] = branches.get(c, 0) + 1
            if degree[path[0]] == 1 and last is not None:
                path, junction = path[::-1], last
            elif degree[path[-1]] == 1 and first is not None:
                junction = first
            else:
                continue
            end = path[-1]
            reach = _chain_length(_chain_points(path, width), False) + dist_flat[end] - 0.5
            if reach < 2.0 * scale[junction]:
                spurs.setdefault(junction, []).append((float(reach), path))
        removed = False
        for junction, found in spurs.items():
            if branches[junction] - len(found) < 2:
                found.remove(max(found, key=lambda item: item[0]))
            for _, path in found:
                flat[path[1:]] = 0
                removed = True
        if not removed:
            return
        _remove_redundant(skeleton)


def _fill_holes(component: np.ndarray, connectivity: int, max_area: float) -> np.ndarray:
    """The component with its enclosed background holes of at most ``max_area`` pixels filled.

    Args:
        component: ``(H, W)`` uint8 0/1 with a zero one-pixel frame.
        connectivity: Connectivity of the crack pixels (4 or 8); holes use the other one.
        max_area: Largest hole filled, in pixels.

    Returns:
        ``(H, W)`` uint8 0/1, a new array when a hole was filled, else ``component`` itself.
    """
    background = (component == 0).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        background, connectivity=12 - connectivity, ltype=cv2.CV_32S
    )
    outside = labels[0, 0]  # the frame is background and touches every outer region
    small = [i for i in range(1, count) if i != outside and stats[i, cv2.CC_STAT_AREA] <= max_area]
    if not small:
        return component
    filled = component.copy()
    filled[np.isin(labels, small)] = 1
    return filled


def _skeleton(component: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Thin, pruned, 8-connected skeleton of one padded component, never empty.

    Args:
        component: ``(H, W)`` uint8 0/1 with a zero one-pixel frame.
        dist: ``(H, W)`` float32 distance transform of ``component``.

    Returns:
        ``(H, W)`` uint8 0/1 skeleton.
    """
    skeleton = np.ascontiguousarray(_zhang_suen(component), dtype=np.uint8)
    _remove_redundant(skeleton)
    if not skeleton.any():  # Zhang-Suen deletes a 2x2 block entirely
        skeleton.reshape(-1)[int(np.argmax(dist))] = 1
    _prune_spurs(skeleton, dist)
    return skeleton


def _skeleton_length(skeleton: np.ndarray, dist: np.ndarray) -> float:
    """Length of a skeleton: its chains as polylines plus ``d - 0.5`` at each endpoint.

    Args:
        skeleton: ``(H, W)`` uint8 0/1, C-contiguous, with a zero one-pixel frame.
        dist: ``(H, W)`` distance transform of the component.

    Returns:
        Length in pixels.
    """
    width = skeleton.shape[1]
    chains, degree = _trace_chains(skeleton)
    length = 0.0
    for path, closed in chains:
        length += _chain_length(_chain_points(path, width), closed)
    dist_flat = dist.reshape(-1)
    for i, d in degree.items():
        if d <= 1:  # an end; a lone pixel is both ends of its crack
            length += (2 - d) * (float(dist_flat[i]) - 0.5)
    return length


def _orientation(ys: np.ndarray, xs: np.ndarray) -> float | None:
    """Principal-axis angle in degrees, ``[0, 180)``, y up; None without a main direction.

    Args:
        ys: ``(N,)`` row coordinates (image y, pointing down).
        xs: ``(N,)`` column coordinates.
    """
    if ys.size < 2:
        return None
    x = xs.astype(np.float64) - xs.mean()
    y = ys.astype(np.float64) - ys.mean()
    mu20 = float(np.mean(x * x))
    mu02 = float(np.mean(y * y))
    mu11 = float(np.mean(x * y))
    scale = mu20 + mu02
    if scale <= 0.0 or math.hypot(mu20 - mu02, 2.0 * mu11) < _ISOTROPIC * scale:
        return None  # no main direction: a ring, a disk, a square
    # Flip y so the angle is counter-clockwise on screen.
    angle = 0.5 * math.degrees(math.atan2(-2.0 * mu11, mu20 - mu02))
    return _wrap_angle(angle)


def _wrap_angle(angle: float) -> float:
    """An angle in degrees folded into ``[0, 180)``."""
    angle = angle % 180.0
    return 0.0 if angle >= 180.0 else angle


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------


def measure_cracks(
    mask: np.ndarray,
    min_pixels: int = 20,
    connectivity: int = 8,
    max_width_px: float | None = None,
    too_wide: list[dict] | None = None,
) -> list[Crack]:
    """Measure every crack (connected component) of a binary mask.

    Args:
        mask: ``(H, W)`` bool or 0/255 (any numeric dtype: non-zero = crack) array.
        min_pixels: Components with fewer pixels are noise and ignored.
        connectivity: 8 (default) or 4, for the connected components.
        max_width_px: Components wider than this (``2 * max(d) - 1``) are regions, not cracks
            (a stain, a shadow, or a model that does not fit the photos marks whole areas):
            they are not measured. Thinning costs about the area times the half-width, so
            without this bound one photo-sized region takes hours. None measures everything.
        too_wide: When given, each skipped region is appended to it as a dict with
            ``pixels``, ``max_width_px``, ``bbox`` and ``centroid``.

    Returns:
        The cracks, ``id`` 1..n by decreasing length (ties: top-left pixel in raster order).
        An empty list when the mask has no crack pixel.

    Raises:
        ValueError: ``mask`` is not 2-D or not numeric, ``connectivity`` is not 4 or 8, or
            ``min_pixels`` is negative.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D (H, W) array, got shape {mask.shape}")
    if mask.dtype.kind not in "biuf":
        raise ValueError(f"mask must be bool or numeric, got dtype {mask.dtype}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    if min_pixels < 0:
        raise ValueError(f"min_pixels must be >= 0, got {min_pixels!r}")
    if max_width_px is not None and not max_width_px > 0:
        raise ValueError(f"max_width_px must be > 0 or None, got {max_width_px!r}")
    if mask.size == 0:
        return []
    binary = np.ascontiguousarray(mask != 0, dtype=np.uint8)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(
        binary, connectivity=connectivity, ltype=cv2.CV_32S
    )
    found: list[tuple[tuple[float, int, int], dict]] = []
    for label in range(1, count):
        x0, y0, w, h, area = (int(v) for v in stats[label])
        if area < max(min_pixels, 1):
            continue
        component = np.zeros((h + 2, w + 2), dtype=np.uint8)
        component[1:-1, 1:-1] = labels[y0 : y0 + h, x0 : x0 + w] == label
        dist = cv2.distanceTransform(component, cv2.DIST_L2, 5)
        width = float(2.0 * dist.max() - 1.0)
        if max_width_px is not None and width > max_width_px:
            if too_wide is not None:
                too_wide.append(
                    {
                        "pixels": area,
                        "max_width_px": width,
                        "bbox": (x0, y0, x0 + w, y0 + h),
                        "centroid": (float(centroids[label][0]), float(centroids[label][1])),
                    }
                )
            continue
        # Pinholes (holes narrower than the crack) would split the skeleton into loops.
        hole_area = max(4.0, width**2)
        solid = _fill_holes(component, connectivity, hole_area)
        if solid is not component:
            dist = cv2.distanceTransform(solid, cv2.DIST_L2, 5)
        skeleton = _skeleton(solid, dist)
        length = _skeleton_length(skeleton, dist)
        ys, xs = np.nonzero(skeleton)
        widths = 2.0 * dist[ys, xs].astype(np.float64) - 1.0
        # The distance-transform profile reads narrow on average along oblique edges; the
        # area does not depend on the angle, so the mean width is area / length.
        mean_width = float(np.count_nonzero(solid)) / length if length > 0 else widths.mean()
        orientation = _orientation(ys, xs)
        if orientation is None and ys.size < 2:
            orientation = _orientation(*np.nonzero(component))
        first_x = int(np.argmax(component[1]))  # first crack pixel of the top row (raster order)
        found.append(
            (
                (-length, y0, x0 + first_x - 1),
                {
                    "pixels": area,
                    "length_px": length,
                    "mean_width_px": mean_width,
                    "max_width_px": float(widths.max()),
                    "orientation_deg": 0.0 if orientation is None else orientation,
                    "bbox": (x0, y0, x0 + w, y0 + h),
                    "centroid": (float(centroids[label][0]), float(centroids[label][1])),
                },
            )
        )
    found.sort(key=lambda item: item[0])
    return [Crack(id=i, **fields) for i, (_, fields) in enumerate(found, start=1)]


def _check_scale(mm_per_pixel: float | None) -> float | None:
    """``mm_per_pixel`` as a float, or None; ValueError unless it is finite and > 0."""
    if mm_per_pixel is None:
        return None
    if isinstance(mm_per_pixel, bool) or not isinstance(mm_per_pixel, int | float | np.number):
        raise ValueError(f"mm_per_pixel must be a finite number > 0, got {mm_per_pixel!r}")
    value = float(mm_per_pixel)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"mm_per_pixel must be a finite number > 0, got {mm_per_pixel!r}")
    return value


def cracks_to_rows(cracks: Sequence[Crack], mm_per_pixel: float | None = None) -> list[dict]:
    """One dict per crack, keys :data:`CSV_COLUMNS` (or :data:`CSV_COLUMNS_MM` with a scale).

    Args:
        cracks: Measured cracks.
        mm_per_pixel: Millimetres per pixel; adds ``length_mm``, ``mean_width_mm``,
            ``max_width_mm`` and ``area_mm2`` (``pixels * mm_per_pixel ** 2``).

    Returns:
        The rows, floats rounded to 3 decimals.

    Raises:
        ValueError: ``mm_per_pixel`` is given but not finite and > 0.
    """
    scale = _check_scale(mm_per_pixel)
    rows = []
    for crack in cracks:
        x0, y0, x1, y1 = crack.bbox
        orientation = round(crack.orientation_deg, 3)
        row: dict = {
            "id": crack.id,
            "pixels": crack.pixels,
            "length_px": round(crack.length_px, 3),
            "mean_width_px": round(crack.mean_width_px, 3),
            "max_width_px": round(crack.max_width_px, 3),
            "orientation_deg": 0.0 if orientation >= 180.0 else orientation,
            "x0": x0,
            "y0": y0,
            "x1": x1,
            "y1": y1,
            "cx": round(crack.centroid[0], 3),
            "cy": round(crack.centroid[1], 3),
        }
        if scale is not None:
            row["length_mm"] = round(crack.length_px * scale, 3)
            row["mean_width_mm"] = round(crack.mean_width_px * scale, 3)
            row["max_width_mm"] = round(crack.max_width_px * scale, 3)
            row["area_mm2"] = round(crack.pixels * scale * scale, 3)
        rows.append(row)
    return rows


def write_cracks_csv(
    path: str | os.PathLike[str],
    cracks: Sequence[Crack],
    mm_per_pixel: float | None = None,
) -> None:
    """Write the cracks as a CSV table; the header is written even when there is no crack.

    Args:
        path: Output file (its folder must exist).
        cracks: Measured cracks.
        mm_per_pixel: Millimetres per pixel; adds the columns of :data:`CSV_COLUMNS_MM`.

    Raises:
        ValueError: ``mm_per_pixel`` is given but not finite and > 0.
    """
    rows = cracks_to_rows(cracks, mm_per_pixel)
    columns = CSV_COLUMNS if mm_per_pixel is None else CSV_COLUMNS_MM
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def summarize(cracks: Sequence[Crack], mm_per_pixel: float | None = None) -> dict:
    """JSON-able summary of the cracks of one image.

    Args:
        cracks: Measured cracks.
        mm_per_pixel: Millimetres per pixel; adds ``total_length_mm``, ``max_width_mm`` and
            ``longest_length_mm``.

    Returns:
        ``count``, ``total_length_px``, ``max_width_px`` (over all cracks) and
        ``longest_length_px`` (the longest crack's length), floats rounded to 3 decimals; all
        zero when there is no crack.

    Raises:
        ValueError: ``mm_per_pixel`` is given but not finite and > 0.
    """
    scale = _check_scale(mm_per_pixel)
    total = float(sum(c.length_px for c in cracks))
    widest = max((c.max_width_px for c in cracks), default=0.0)
    longest = max((c.length_px for c in cracks), default=0.0)
    summary: dict = {
        "count": len(cracks),
        "total_length_px": round(total, 3),
        "max_width_px": round(widest, 3),
        "longest_length_px": round(longest, 3),
    }
    if scale is not None:
        summary["total_length_mm"] = round(total * scale, 3)
        summary["max_width_mm"] = round(widest * scale, 3)
        summary["longest_length_mm"] = round(longest * scale, 3)
    return summary
