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
2. **Skeleton.** Lee's thinning, ``skimage.morphology.skeletonize(method="lee")``: an
   8-connected, one-pixel-thin skeleton without the staircase corners and one-pixel nubs that
   Zhang-Suen leaves (scikit-image's default 2-D method, a Zhang-Suen variant, leaves short
   side branches on straight oblique bands: 2 extra ends and 5 junction pixels on a 9-px band
   at 10 degrees, where Lee leaves a clean line). Its graph is ``skan.Skeleton``: the pixel
   adjacency graph, with the edges among touching junction pixels reduced to their minimum
   spanning tree, split into paths between nodes (ends and junctions; a ring is one closed
   path). Then:

   - spurs, the short side branches that rough crack edges grow, are pruned on skan's branch
     table: a branch from an end to a junction (skan's branch type 1; junction pixels that
     touch count as one) goes when it reaches less than ``2 * max(d over the junction,
     median d)`` from the junction, i.e. it sticks out of the crack's edge by less than about
     half the crack's width (details in ``_prune_spurs``); the skeleton is thinned again after
     each pass. Without this, a 9-px crack whose edges jump by +-1 px from column to column
     measured about a third too long (2-3% with it);
   - a component too small to keep any skeleton pixel gets the pixel farthest from the
     background as its skeleton.
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
4. **Length.** Each of skan's paths is measured as the polyline through its pixel centres
   simplified by Douglas-Peucker within 1 px (``cv2.approxPolyDP``). The
   plain sum of 8-neighbour links (1 axial, sqrt(2) diagonal) follows the pixel staircase and
   over-states lengths by 5.4% on a circle and up to 8% on a straight crack at 22.5 degrees; the
   polyline is exact on digital straight lines and within 0.5% on circles of radius 50 px or
   more. End correction: thinning eats about half the width off each end of a crack, so at
   every skeleton end (a pixel with exactly one skeleton neighbour) the remaining distance to
   the crack's end, ``d - 0.5`` (``d`` at that end pixel), is added. The length is therefore
   the crack's extent end to end, in the same pixel-edge convention as the width: a straight
   1-px line of N pixels measures N (N - 1 between the end pixel centres plus 0.5 at each end),
   a filled 200 x 9 px band about 200 (thinning can lose 1 px), and a crack drawn
   with round caps includes its caps. A lone skeleton pixel (a blob) counts as two ends, so its
   length is its width. A ring has no end: its length is that of its centre line.
5. **Orientation.** The principal axis of the skeleton pixels (of the component's pixels when
   the skeleton is a single pixel), from their second central moments. The angle is measured
   counter-clockwise from the image's +x axis (to the right) *as seen on screen*, i.e. with the
   y axis pointing up, in ``[0, 180)``: 0 = horizontal, 90 = vertical, 45 = a crack rising to
   the right on screen (from bottom-left to top-right), 135 = a crack going down to the right on
   screen (from top-left to bottom-right, where image row y grows with x). A crack with no main
   direction (second moments less than 1% anisotropic: a ring, a disk, a single pixel) gets 0.

What is the libraries' and what is ours: the thinning is scikit-image's and the skeleton graph
(paths, node degrees, junction spanning trees, branch types) is skan's. The hand-written
Zhang-Suen thinning they replace also erased two-pixel-wide diagonal cracks (a 141-px one
measured 2 px). Ours are the rules that make the numbers crack measurements: pinhole filling
(``cv2`` components; ``skimage.morphology.remove_small_holes`` changed its size argument in
0.26, and the project allows 0.24), the spur rule with its junction clusters and the
re-thinning after each pruning pass, the polyline length with the ``d - 0.5`` end correction
(skan's branch length is the link sum, up to 8% long), the widths, the orientation and the
table. ``skan.Skeleton.prune_paths`` is not used: it re-thins with Zhang-Suen and rebuilds the
graph per call; nor is ``skan.summarize`` (see ``_spurs``).

Cost (``benchmarks/measure_bench.py``): importing skan takes about 1.2 s and numba compiles its
graph code on the first call in a process, about 2 s more. After that the label mask of a
36 MP photo takes about as long as before (0.6 s, half of it OpenCV's component labelling),
but each component costs about 0.7 ms more (skan's graph building), so a mask of many small
cracks is slower: 0.54 s against 0.32 s for 325 components.

Cracks are numbered 1..n by decreasing length; equal lengths are ordered by their top-left
pixel (the first pixel in raster order: smallest row, then smallest column). Components with
fewer than ``min_pixels`` pixels are treated as noise and ignored.

Physical units: with ``mm_per_pixel`` (the ground sampling distance), lengths and widths are
multiplied by it and areas by its square.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import skan
from scipy.sparse import csgraph
from skimage.morphology import skeletonize

_EPSILON_PX = 1.0
"""Tolerance of the polyline that replaces a skeleton chain (Douglas-Peucker), in pixels."""

_ISOTROPIC = 0.01
"""Below this anisotropy, (l1 - l2) / (l1 + l2) of the second moments, a crack has no direction."""

_RING = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=np.float32)
"""Kernel counting a pixel's 8 neighbours."""

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
        mean_width_px: Area (pinholes filled) divided by ``length_px``.
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
# Skeleton and its graph
# ------------------------------------------------------------------------------------------------


def _thin(image: np.ndarray) -> np.ndarray:
    """Lee's thinning (``skimage.morphology.skeletonize(method="lee")``) as a 0/1 uint8 array."""
    return skeletonize(image.astype(bool, copy=False), method="lee").view(np.uint8)


def _graph(skeleton: np.ndarray) -> skan.Skeleton | None:
    """skan's pixel graph of a 0/1 skeleton, its paths and degrees; None below two pixels."""
    if np.count_nonzero(skeleton) < 2:  # skan needs an edge
        return None
    return skan.Skeleton(skeleton.astype(bool, copy=False), keep_images=False)


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


def _path_points(graph: skan.Skeleton, index: int) -> tuple[np.ndarray, bool]:
    """``(x, y)`` int32 pixel centres of one skan path, and whether it is a closed loop.

    skan repeats the first pixel of a cycle at its end; it is dropped for the closed polyline.
    """
    rc = graph.path_coordinates(index)
    closed = len(rc) > 2 and graph.path(index)[0] == graph.path(index)[-1]
    if closed:
        rc = rc[:-1]
    return np.ascontiguousarray(rc[:, ::-1], dtype=np.int32), closed


def _junction_clusters(graph: skan.Skeleton) -> np.ndarray:
    """Cluster id of every node, -1 for nodes that are not junctions (fewer than 3 neighbours).

    skan already replaces the edges among touching junction pixels by their minimum spanning
    tree; the junction pixels that still touch each other are one junction of the crack.
    """
    junctions = np.flatnonzero(graph.degrees >= 3)
    cluster = np.full(graph.degrees.shape, -1, dtype=np.int64)
    if junctions.size:
        sub = graph.graph[junctions][:, junctions]
        _, cluster[junctions] = csgraph.connected_components(sub, directed=False)
    return cluster


def _spurs(
    skeleton: np.ndarray, graph: skan.Skeleton, dist: np.ndarray, typical: float
) -> list[np.ndarray]:
    """The ``(row, col)`` pixels to delete for the spurs of one pass (see :func:`_prune_spurs`).

    The branch table is skan's: its paths and their ends' degrees, typed as ``skan.summarize``
    types them (0 end-end, 1 end-junction, 2 junction-junction, 3 cycle). ``skan.summarize``
    itself is not called: it builds a pandas table of statistics we do not use (about 1 ms a
    call) and, under pandas 3, warns on every call.
    """
    indptr, indices = graph.paths.indptr, graph.paths.indices
    src, dst = indices[indptr[:-1]], indices[indptr[1:] - 1]
    tip_src, tip_dst = graph.degrees[src] == 1, graph.degrees[dst] == 1
    kind = np.where(tip_src & tip_dst, 0, np.where(tip_src | tip_dst, 1, 2))
    kind[src == dst] = 3
    coords = graph.coordinates.astype(np.int64, copy=False)
    d = dist[coords[:, 0], coords[:, 1]].astype(np.float64)
    # skan breaks a triangle of junction pixels by its minimum spanning tree, so the corner
    # pixel a bump hangs on can look like a plain path pixel; the spur starts at the last
    # pixel with 3+ skeleton neighbours, as the crack's edge sees it.
    neighbours = cv2.filter2D(skeleton, -1, _RING, borderType=cv2.BORDER_CONSTANT)
    crowded = neighbours[coords[:, 0], coords[:, 1]] >= 3
    cluster = _junction_clusters(graph)
    n_clusters = int(cluster.max()) + 1
    scale = np.full(n_clusters, typical)
    np.maximum.at(scale, cluster[cluster >= 0], d[cluster >= 0])
    # branches per junction: the ends of every path on it, except links inside one junction
    inside = (cluster[src] >= 0) & (cluster[src] == cluster[dst]) & (np.diff(indptr) == 2)
    keep = (kind != 3) & ~inside
    ends = cluster[np.concatenate([src[keep], dst[keep]])]
    branches = np.bincount(ends[ends >= 0], minlength=n_clusters)
    found: dict[int, list[tuple[float, np.ndarray]]] = {}
    for i in np.flatnonzero(kind == 1):
        path = graph.path(i)
        if tip_src[i]:
            path = path[::-1]  # junction first
        junction = int(cluster[path[0]])
        root = int(np.argmin(crowded[path])) - 1  # last pixel of the junction's clump
        steps = np.diff(coords[path[root:]], axis=0)
        reach = float(np.hypot(steps[:, 0], steps[:, 1]).sum() + d[path[-1]] - 0.5)
        if reach < 2.0 * max(scale[junction], float(d[path[root]])):
            found.setdefault(junction, []).append((reach, path[root + 1 :]))
    wipe = []
    for junction, spurs in found.items():
        if branches[junction] - len(spurs) < 2:  # keep the longest: the crack keeps its end
            spurs.pop(max(range(len(spurs)), key=lambda k: spurs[k][0]))
        wipe.extend(coords[pixels] for _, pixels in spurs)
    return wipe


def _prune_spurs(
    skeleton: np.ndarray, dist: np.ndarray, max_passes: int = 50
) -> skan.Skeleton | None:
    """Delete, in place, the short side branches that rough crack edges grow on a skeleton.

    Junction pixels (3+ skeleton neighbours) that touch each other form one junction. A branch
    from an end to a junction ``J`` (skan's branch type 1) is a spur when its reach, its length
    plus ``d - 0.5`` at its end, is below ``2 * max(max d over J, median d)`` (``d`` the distance
    transform, the median over the skeleton before pruning): it sticks out of the crack's edge
    by less than about half the crack's width. All spurs of a junction go, except that when the
    junction would be left with fewer than two branches (a fork at the end of a crack, or a small
    star) the longest one stays. After each pass the skeleton is thinned again (the junction
    pixel a spur leaves can be a one-pixel nub), and passes repeat until nothing changes, so
    that a forked spur goes in two passes (first one prong, then the rest).

    Args:
        skeleton: ``(H, W)`` uint8 0/1 with a zero one-pixel frame.
        dist: ``(H, W)`` distance transform of the component.
        max_passes: Upper bound on the number of passes.

    Returns:
        skan's graph of the pruned skeleton, or None when it has fewer than two pixels.
    """
    typical = float(np.median(dist[skeleton != 0]))
    graph = _graph(skeleton)
    for _ in range(max_passes):
        wipe = [] if graph is None else _spurs(skeleton, graph, dist, typical)
        if not wipe:
            break
        rows, cols = np.concatenate(wipe).T
        skeleton[rows, cols] = 0
        skeleton[...] = _thin(skeleton)
        graph = _graph(skeleton)
    return graph


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


def _skeleton(component: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, skan.Skeleton | None]:
    """Thin, pruned, 8-connected skeleton of one padded component, never empty, and its graph.

    Args:
        component: ``(H, W)`` uint8 0/1 with a zero one-pixel frame.
        dist: ``(H, W)`` float32 distance transform of ``component``.

    Returns:
        ``(skeleton, graph)``: ``(H, W)`` uint8 0/1 skeleton and skan's graph of it (None for a
        single pixel).
    """
    skeleton = _thin(component)
    if not skeleton.any():  # a safeguard: Lee's thinning keeps a pixel of every component
        skeleton.reshape(-1)[int(np.argmax(dist))] = 1
    return skeleton, _prune_spurs(skeleton, dist)


def _skeleton_length(skeleton: np.ndarray, graph: skan.Skeleton | None, dist: np.ndarray) -> float:
    """Length of a skeleton: its paths as polylines plus ``d - 0.5`` at each endpoint.

    Args:
        skeleton: ``(H, W)`` uint8 0/1.
        graph: skan's graph of ``skeleton``; None when it is a single pixel.
        dist: ``(H, W)`` distance transform of the component.

    Returns:
        Length in pixels.
    """
    if graph is None:  # a lone pixel is both ends of its crack
        return 2.0 * (float(dist[skeleton != 0].max()) - 0.5)
    length = sum(_chain_length(*_path_points(graph, i)) for i in range(graph.n_paths))
    rows, cols = graph.coordinates[graph.degrees == 1].astype(np.int64).T
    return float(length + np.sum(dist[rows, cols].astype(np.float64) - 0.5))


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
        where = {
            "pixels": area,
            "bbox": (x0, y0, x0 + w, y0 + h),
            "centroid": (float(centroids[label][0]), float(centroids[label][1])),
        }
        if max_width_px is not None and width > max_width_px:
            if too_wide is not None:
                too_wide.append({**where, "max_width_px": width})
            continue
        # Pinholes (holes narrower than the crack) would split the skeleton into loops.
        hole_area = max(4.0, width**2)
        solid = _fill_holes(component, connectivity, hole_area)
        if solid is not component:
            dist = cv2.distanceTransform(solid, cv2.DIST_L2, 5)
            # the width is measured on the filled component: gate that one too (a perforated
            # region is narrow between its holes and photo-wide once they are filled)
            width = float(2.0 * dist.max() - 1.0)
            if max_width_px is not None and width > max_width_px:
                if too_wide is not None:
                    too_wide.append({**where, "max_width_px": width})
                continue
        skeleton, graph = _skeleton(solid, dist)
        length = _skeleton_length(skeleton, graph, dist)
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
                    **where,
                    "length_px": length,
                    "mean_width_px": mean_width,
                    "max_width_px": float(widths.max()),
                    "orientation_deg": 0.0 if orientation is None else orientation,
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
