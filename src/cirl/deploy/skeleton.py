"""A crack mask's centreline: thinned to one pixel, walked as a graph, short spurs pruned, its
length measured along the path and its orientation fitted, and the polylines themselves
(:func:`_centreline`, what ``NAME_cracks.geojson`` draws).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import cv2
import numpy as np
import skan
from scipy.sparse import csgraph
from skimage.morphology import skeletonize

_EPSILON_PX = 1.0
"""Tolerance of the polyline that replaces a skeleton chain (Douglas-Peucker), in pixels."""

_VERTEX_SPACING_PX = 10.0
"""Longest gap along the chain between two vertices of a centreline polyline (:class:`Polyline`):
the widths are given at the vertices, so a straight crack has some along its length too."""


_ISOTROPIC = 0.01
"""Below this anisotropy, (l1 - l2) / (l1 + l2) of the second moments, a crack has no direction."""


_RING = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=np.float32)
"""Kernel counting a pixel's 8 neighbours."""


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


def _vertex_indices(points: np.ndarray, closed: bool) -> np.ndarray:
    """Which pixels of a chain are the vertices of its centreline polyline.

    Those of :func:`_chain_length`'s polyline (Douglas-Peucker within ``_EPSILON_PX``), and
    more chain pixels between them wherever two would be more than ``_VERTEX_SPACING_PX``
    apart along the chain, evenly spaced, so that the widths at the vertices follow the crack.

    Args:
        points: ``(N, 2)`` int32 pixel coordinates ``(x, y)`` in chain order.
        closed: Whether the chain is a loop.

    Returns:
        Increasing indices into ``points``, the first and (open chain) the last included.
    """
    n = len(points)
    if n <= 2:
        return np.arange(n)
    curve = np.ascontiguousarray(points, dtype=np.int32).reshape(-1, 1, 2)
    kept = cv2.approxPolyDP(curve, _EPSILON_PX, closed).reshape(-1, 2)
    # the kept pixels' places in the chain (a path never visits a pixel twice)
    key = points[:, 0].astype(np.int64) << 32 | points[:, 1].astype(np.int64)
    kept_key = kept[:, 0].astype(np.int64) << 32 | kept[:, 1].astype(np.int64)
    corners = sorted({*np.flatnonzero(np.isin(key, kept_key)).tolist(), 0})
    if not closed:
        corners = sorted({*corners, n - 1})
    # arc length along the chain (its 8-neighbour links), a closed chain's closing link too
    chain = np.vstack([points, points[:1]]) if closed else points
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(chain.astype(np.float64), axis=0).T))])
    stops = [*corners, n] if closed else corners
    out = []
    for a, b in itertools.pairwise(stops):
        out.append(a)
        pieces = math.ceil((arc[b] - arc[a]) / _VERTEX_SPACING_PX - 1e-9)
        for k in range(1, pieces):
            target = arc[a] + (arc[b] - arc[a]) * k / pieces
            i = int(np.searchsorted(arc, target))
            i = i - 1 if i > 0 and target - arc[i - 1] < arc[i] - target else i
            if out[-1] < i < b:
                out.append(i)
    if not closed:
        out.append(stops[-1])
    elif len(out) < 3:  # a tiny ring: a triangle at least, not a line there and back
        out = [0, n // 3, (2 * n) // 3]
    return np.asarray(out, dtype=np.int64)


def _vertex_widths(profile: np.ndarray, vertices: np.ndarray, closed: bool) -> np.ndarray:
    """The width at each vertex: the median of ``profile`` over the chain pixels nearer to it
    than to the vertices before and after it along the chain (a ring wraps around)."""
    n, m = len(profile), len(vertices)
    if m == 1:
        return profile[vertices].astype(np.float64)
    mids = (vertices[:-1] + vertices[1:] + 1) // 2
    lo = np.concatenate([[0], mids])
    hi = np.concatenate([mids, [n]])
    if closed:  # the pixels after the last vertex are nearer to the first: shift them there
        wrap = (int(vertices[-1]) + n + 1) // 2
        hi[-1] = wrap
        lo[0] = wrap - n
    # one row of each vertex's pixels, padded with +inf, sorted: the medians by their counts
    count = hi - lo
    index = lo[:, None] + np.arange(int(count.max()))[None, :]
    values = profile.astype(np.float64)[index % n]
    values[index >= hi[:, None]] = np.inf
    values.sort(axis=1)
    rows = np.arange(m)
    return 0.5 * (values[rows, (count - 1) // 2] + values[rows, count // 2])


@dataclass(frozen=True)
class Polyline:
    """One line of a crack's centreline, in the photo's pixel coordinates.

    The centre of pixel (column, row) is at ``(column, row)``: x to the right, y down, the
    convention of the crack table's ``cx``, ``cy`` and box.

    Attributes:
        points: ``(x, y)`` vertices, skeleton pixel centres, in order along the line: one skan
            path (end or junction to end or junction), the vertices of the polyline its
            length is measured on (within 1 px of the pixels) and more of its pixels where
            those would be more than ``_VERTEX_SPACING_PX`` (10) px apart. A lone-pixel
            skeleton (a small blob) is one point.
        widths: The width at each vertex, aligned with ``points``: the median of the width
            profile ``2 * d - 1`` (``d`` the distance transform the crack's widths are measured
            on) over the skeleton pixels nearer to that vertex than to its neighbours along
            the line, so that the crack's ends and junctions do not read narrow or wide.
        closed: A ring: the line goes on from its last vertex back to its first (which is not
            repeated in ``points``).
        ends: ``(start, stop)``: the length the crack goes on past that vertex, ``d - 0.5``
            where the vertex is a skeleton end (the end correction of the crack's length),
            else 0.
    """

    points: tuple[tuple[int, int], ...]
    widths: tuple[float, ...]
    closed: bool = False
    ends: tuple[float, float] = (0.0, 0.0)

    @property
    def length(self) -> float:
        """Length of the polyline through the vertices (a ring closed), without ``ends``."""
        pts = np.asarray(self.points, dtype=np.float64).reshape(-1, 2)
        if len(pts) < 2:
            return 0.0
        if self.closed:
            pts = np.vstack([pts, pts[:1]])
        return float(np.hypot(*np.diff(pts, axis=0).T).sum())


def _centreline(
    skeleton: np.ndarray,
    graph: skan.Skeleton | None,
    dist: np.ndarray,
    offset: tuple[int, int] = (0, 0),
) -> tuple[Polyline, ...]:
    """A skeleton as polylines (:class:`Polyline`), one per skan path.

    The sum of the polylines' lengths plus their ``ends`` is within a fraction of a percent of
    :func:`_skeleton_length` (the vertices added every 10 px are pixels within 1 px of its
    polyline); a lone pixel is one single-point line with both ends ``d - 0.5``.

    Args:
        skeleton: ``(H, W)`` uint8 0/1.
        graph: skan's graph of ``skeleton``; None when it is a single pixel.
        dist: ``(H, W)`` distance transform of the component.
        offset: ``(x, y)`` added to the coordinates (the component box's place in the photo).

    Returns:
        The lines, in skan's path order.
    """
    ox, oy = offset
    if graph is None:
        rows, cols = np.nonzero(skeleton)
        if not rows.size:
            return ()
        d = float(dist[rows[0], cols[0]])
        point = ((int(cols[0]) + ox, int(rows[0]) + oy),)
        return (Polyline(point, (2.0 * d - 1.0,), False, (d - 0.5, d - 0.5)),)
    lines = []
    for index in range(graph.n_paths):
        points, closed = _path_points(graph, index)
        d = dist[points[:, 1], points[:, 0]].astype(np.float64)
        vertices = _vertex_indices(points, closed)
        widths = _vertex_widths(2.0 * d - 1.0, vertices, closed)
        ends = (0.0, 0.0)
        if not closed:
            path = graph.path(index)
            ends = (
                float(d[0]) - 0.5 if graph.degrees[path[0]] == 1 else 0.0,
                float(d[-1]) - 0.5 if graph.degrees[path[-1]] == 1 else 0.0,
            )
        lines.append(
            Polyline(
                tuple((int(points[i, 0]) + ox, int(points[i, 1]) + oy) for i in vertices),
                tuple(float(w) for w in widths),
                bool(closed),
                ends,
            )
        )
    return tuple(lines)


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


def _straightness(
    ys: np.ndarray, xs: np.ndarray, dist: np.ndarray, angle: float, length: float
) -> float:
    """How straight a crack is: its extent along its main direction over its length, in [0, 1].

    The extent is that of the skeleton pixel centres projected on the direction ``angle``,
    plus ``d - 0.5`` at the two extreme pixels (the length's own end correction), so a straight
    crack of any width scores about 1 and a bent or branched one less (a half circle 0.64, a
    ring 0.32). A crack without a main direction is projected on the x axis.

    Args:
        ys: ``(N,)`` skeleton rows.
        xs: ``(N,)`` skeleton columns.
        dist: Distance transform of the component (same coordinates as ``ys``, ``xs``).
        angle: Main direction in degrees, counter-clockwise with y up (as :func:`_orientation`).
        length: The crack's length (:func:`_skeleton_length`).
    """
    if length <= 0.0 or ys.size == 0:
        return 0.0
    t = math.radians(angle)
    along = xs.astype(np.float64) * math.cos(t) - ys.astype(np.float64) * math.sin(t)
    lo, hi = int(np.argmin(along)), int(np.argmax(along))
    ends = float(dist[ys[lo], xs[lo]]) + float(dist[ys[hi], xs[hi]]) - 1.0
    return min(1.0, float(along[hi] - along[lo] + ends) / length)


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
