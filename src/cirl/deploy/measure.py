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
6. **Straightness.** The skeleton's extent along that direction, plus ``d - 0.5`` at its two
   extreme pixels, over the length (``_straightness``): about 1 for a straight crack of any
   width, 0.64 for a half circle. A crack that is nearly a perfect straight line
   (straightness > :data:`STRAIGHT_RATIO`) and longer than half the photo's shorter side is
   flagged ``straight``: a formwork joint, a tile edge or a board's edge, which a model
   trained on cracks may mark, looks like that, and few real cracks do. It is a flag for the
   person reading the table (the overlay's legend says so), not a filter: the crack stays.

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

The centreline itself (thinning, the graph, spur pruning, length, orientation) is
:mod:`cirl.deploy.skeleton`; each crack keeps it as polylines (``Crack.centreline``: the
paths of step 4 with a vertex at least every 10 px, and the width profile's median near each
vertex), which :mod:`cirl.deploy.geo` writes as ``NAME_cracks.geojson``.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from cirl.deploy.skeleton import (
    Polyline,
    _centreline,
    _fill_holes,
    _orientation,
    _skeleton,
    _skeleton_length,
    _straightness,
)

STRAIGHT_RATIO = 0.98
"""Straightness above which a crack longer than half the photo's shorter side is ``straight``."""

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
    "straightness",
    "straight",
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
        anchor: ``(x, y)`` the skeleton pixel nearest the centroid (on the crack even when
            the centroid is not, as for a bent crack): where the overlay puts its number.
            None when not known (a crack built by hand).
        seed: ``(x, y)`` a pixel of the component (its first in raster order), which tells
            the component apart in a label image. None when not known.
        straightness: Extent along the main direction over the length, in ``[0, 1]``.
        straight: ``straightness > STRAIGHT_RATIO`` and longer than half the photo's
            shorter side: possibly a joint or an edge rather than a crack.
        centreline: The skeleton the length was measured on, as polylines in the photo's
            pixel coordinates (:class:`~cirl.deploy.skeleton.Polyline`: one per skeleton
            path, its vertices skeleton pixels, the width at each vertex); what
            ``NAME_cracks.geojson`` draws. Empty when not known (a crack built by hand).
            Not compared: two cracks are equal by their measurements.
    """

    id: int
    pixels: int
    length_px: float
    mean_width_px: float
    max_width_px: float
    orientation_deg: float
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    anchor: tuple[int, int] | None = None
    seed: tuple[int, int] | None = None
    straightness: float = 0.0
    straight: bool = False
    centreline: tuple[Polyline, ...] = field(default=(), compare=False, repr=False)


def measure_cracks(
    mask: np.ndarray,
    min_pixels: int = 20,
    connectivity: int = 8,
    max_width_px: float | None = None,
    too_wide: list[dict] | None = None,
    centrelines: bool = True,
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
        centrelines: Keep each crack's ``centreline`` (about 1 ms a crack); False leaves it
            empty.

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
    side = min(mask.shape)  # a straight crack longer than half of it is flagged
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
        orientation = 0.0 if orientation is None else orientation
        straightness = _straightness(ys, xs, dist, orientation, length)
        cx, cy = where["centroid"]
        near = int(np.argmin((xs + (x0 - 1) - cx) ** 2 + (ys + (y0 - 1) - cy) ** 2))
        first_x = int(np.argmax(component[1]))  # first crack pixel of the top row (raster order)
        found.append(
            (
                (-length, y0, x0 + first_x - 1),
                {
                    **where,
                    "length_px": length,
                    "mean_width_px": mean_width,
                    "max_width_px": float(widths.max()),
                    "orientation_deg": orientation,
                    "anchor": (int(xs[near]) + x0 - 1, int(ys[near]) + y0 - 1),
                    "seed": (x0 + first_x - 1, y0),
                    "straightness": straightness,
                    "straight": straightness > STRAIGHT_RATIO and length > side / 2,
                    "centreline": _centreline(skeleton, graph, dist, (x0 - 1, y0 - 1))
                    if centrelines
                    else (),
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
        The rows, floats rounded to 3 decimals, ``straight`` 1 or 0.

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
            "straightness": round(crack.straightness, 3),
            "straight": int(crack.straight),
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
