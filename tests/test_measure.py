"""Crack measurement: synthetic cracks of known length, width and direction, CSV and summary."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from cirl.deploy.measure import (
    CSV_COLUMNS,
    CSV_COLUMNS_MM,
    STRAIGHT_RATIO,
    Crack,
    cracks_to_rows,
    measure_cracks,
    summarize,
    write_cracks_csv,
)
from cirl.deploy.skeleton import _chain_length as _chain_length  # private: our polyline length
from cirl.deploy.skeleton import _graph as _graph  # private: skan's graph of a skeleton
from cirl.deploy.skeleton import _path_points as _path_points  # private: a skan path's pixels
from cirl.deploy.skeleton import (
    _prune_spurs as _prune_spurs,  # private: tested on a hand-made skeleton
)


def band(
    shape: tuple[int, int],
    centre: tuple[float, float],
    angle: float,
    length: float,
    width: float,
    width_end: float | None = None,
) -> np.ndarray:
    """A straight crack with flat ends: the pixels whose centre lies inside a rotated rectangle.

    Args:
        shape: ``(H, W)`` of the mask.
        centre: ``(x, y)`` centre of the crack.
        angle: Direction in degrees, counter-clockwise on screen (y up), as the module reports.
        length: Extent along the crack, in pixels (odd for an exact axis-aligned crack).
        width: Width across the crack at its start (the end at ``-length / 2``).
        width_end: Width at the other end, growing linearly (a tapered crack); None: constant.

    Returns:
        ``(H, W)`` bool mask.
    """
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    t = math.radians(angle)
    ux, uy = math.cos(t), -math.sin(t)  # image y points down
    dx, dy = xx - centre[0], yy - centre[1]
    along = dx * ux + dy * uy
    across = -dx * uy + dy * ux
    if width_end is None:
        local = np.full(shape, float(width))
    else:
        local = width + (width_end - width) * (along + length / 2) / length
    return (np.abs(along) < length / 2) & (np.abs(across) < local / 2)


def only(mask: np.ndarray, **kwargs) -> Crack:
    """The single crack of a mask (fails when there is not exactly one)."""
    cracks = measure_cracks(mask, **kwargs)
    assert len(cracks) == 1, [c.pixels for c in cracks]
    return cracks[0]


def angle_error(a: float, b: float) -> float:
    """Difference between two undirected angles in degrees, in [0, 90]."""
    d = abs(a - b) % 180.0
    return min(d, 180.0 - d)


# ------------------------------------------------------------------------------------------------
# Length, width, orientation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [1, 3, 5, 9, 15])
def test_horizontal_band_width_and_length(width):
    crack = only(band((80, 260), (130, 40), 0, 201, width))
    assert crack.pixels == 201 * width
    assert crack.length_px == pytest.approx(201, rel=0.02)
    assert crack.mean_width_px == pytest.approx(width, abs=0.5)
    assert crack.max_width_px == pytest.approx(width, abs=0.5)
    assert angle_error(crack.orientation_deg, 0.0) < 0.5


def test_one_pixel_lines_measure_their_pixel_count():
    mask = np.zeros((100, 260), np.uint8)
    cv2.line(mask, (20, 50), (219, 50), 255, 1)  # 200 pixels
    crack = only(mask)
    # N pixels: N - 1 between the end pixel centres plus half a pixel at each end.
    assert crack.length_px == pytest.approx(200, abs=1e-3)
    assert crack.mean_width_px == pytest.approx(1.0, abs=0.01)
    assert crack.bbox == (20, 50, 220, 51)
    assert crack.centroid == pytest.approx((119.5, 50.0))

    vertical = only(mask.T)
    assert vertical.length_px == pytest.approx(200, abs=1e-3)
    assert angle_error(vertical.orientation_deg, 90.0) < 0.5


def test_diagonal_lines():
    down_right = np.zeros((240, 240), np.uint8)
    cv2.line(down_right, (10, 10), (210, 210), 255, 1)
    up_right = np.ascontiguousarray(down_right[::-1])
    truth = math.hypot(200, 200) + 1  # centre to centre, plus half a pixel at each end
    for mask, angle in ((down_right, 135.0), (up_right, 45.0)):
        crack = only(mask)
        assert crack.length_px == pytest.approx(truth, rel=0.03)
        assert crack.max_width_px == pytest.approx(1.0, abs=0.5)
        assert angle_error(crack.orientation_deg, angle) < 0.5


@pytest.mark.parametrize("angle", [0, 30, 45, 90, 135])
def test_thick_band_length_is_its_end_to_end_extent(angle):
    # Zhang-Suen leaves ~width/2 off each end; the d - 0.5 end correction puts it back.
    crack = only(band((301, 301), (150, 150), angle, 201, 9))
    assert crack.length_px == pytest.approx(201, rel=0.03)
    assert angle_error(crack.orientation_deg, angle) < 1.0


def test_two_pixel_wide_diagonal_keeps_its_length():
    # Zhang-Suen thinning (the hand-written one this module had) erodes a two-pixel-wide
    # diagonal staircase down to two pixels: it measured 2 px for this 141-px crack.
    down = np.zeros((120, 120), bool)
    i = np.arange(10, 110)
    down[i, i] = down[i, i + 1] = True
    for mask in (down, np.ascontiguousarray(down[::-1])):
        crack = only(mask)
        assert crack.length_px == pytest.approx(math.hypot(100, 100), rel=0.03)
        assert crack.mean_width_px == pytest.approx(math.sqrt(2), rel=0.05)


@pytest.mark.parametrize("angle", [10, 30, 60])
def test_oblique_width_bias_stays_within_the_documented_bound(angle):
    # the mean (area / length) is orientation-free; the 2 d - 1 profile's maximum reads a little
    # narrow on oblique digital edges
    crack = only(band((301, 301), (150, 150), angle, 201, 9))
    assert crack.mean_width_px == pytest.approx(9.0, rel=0.03)
    assert 8.0 <= crack.max_width_px <= 9.5


@pytest.mark.parametrize("angle", [0, 45, 90, 135])
def test_orientation_convention(angle):
    crack = only(band((241, 241), (120, 120), angle, 151, 5))
    assert 0.0 <= crack.orientation_deg < 180.0
    assert angle_error(crack.orientation_deg, angle) < 1.0


def test_orientation_top_left_to_bottom_right_is_135():
    mask = np.zeros((100, 100), np.uint8)
    mask[np.arange(10, 90), np.arange(10, 90)] = 1  # y grows with x in image coordinates
    assert only(mask).orientation_deg == pytest.approx(135.0, abs=0.5)


def test_ring_perimeter_and_no_direction():
    thin = np.zeros((260, 260), np.uint8)
    cv2.circle(thin, (130, 130), 100, 255, 1)
    yy, xx = np.mgrid[0:260, 0:260]
    thick = np.abs(np.hypot(xx - 130, yy - 130) - 100) < 3.5  # 7 px wide, centre line r = 100
    for mask in (thin, thick):
        crack = only(mask)
        assert crack.length_px == pytest.approx(2 * math.pi * 100, rel=0.05)
        assert crack.orientation_deg == 0.0
    assert only(thick).max_width_px == pytest.approx(7, abs=1.0)


def test_circle_arc_length():
    mask = np.zeros((260, 260), np.uint8)
    cv2.ellipse(mask, (130, 100), (100, 100), 0, 0, 180, 255, 1)  # lower half circle
    crack = only(mask)
    assert crack.length_px == pytest.approx(math.pi * 100, rel=0.05)
    assert angle_error(crack.orientation_deg, 0.0) < 2.0


def test_tapered_crack_width_profile():
    # 301 px long, width growing linearly from 3 to 11 px: max 11, mean 7.
    crack = only(band((60, 340), (170, 30), 0, 301, 3, width_end=11))
    assert crack.max_width_px == pytest.approx(11, abs=0.6)
    assert crack.mean_width_px == pytest.approx(7, rel=0.1)
    assert crack.length_px == pytest.approx(301, rel=0.03)


@pytest.mark.parametrize(("a", "b", "width"), [(0, 90, 5), (45, 135, 5), (30, 100, 1)])
def test_crossing_lines_are_one_crack_with_both_lengths(a, b, width):
    mask = band((301, 301), (150, 150), a, 201, width) | band((301, 301), (150, 150), b, 201, width)
    crack = only(mask)
    assert crack.length_px == pytest.approx(402, rel=0.05)


def test_wobbly_edges_keep_the_length():
    # Edges that wander smoothly by up to 2 px on either side of a 9-px crack.
    rng = np.random.default_rng(0)
    x = np.arange(340)
    knots = np.arange(0, 341, 6)
    top = 4.5 + 2 * np.interp(x, knots, rng.uniform(-1, 1, knots.size))
    bottom = 4.5 + 2 * np.interp(x, knots, rng.uniform(-1, 1, knots.size))
    rows = np.arange(80)[:, None] - 40
    mask = (rows > -top[None]) & (rows < bottom[None])
    mask[:, :20] = False
    mask[:, 321:] = False
    assert only(mask).length_px == pytest.approx(301, rel=0.03)


def test_jagged_edges_spurs_are_pruned():
    # Every column's edges jump by +-1 px at random: the raw Zhang-Suen skeleton grows dozens of
    # side branches (about +35% length); pruning must bring it back near the true 301 px.
    rng = np.random.default_rng(0)
    mask = np.zeros((60, 340), bool)
    for x in range(20, 321):
        up, down = 4 + rng.integers(-1, 2, size=2)
        mask[30 - up : 30 + down + 1, x] = True
    crack = only(mask)
    assert crack.length_px == pytest.approx(301, rel=0.04)
    assert crack.pixels / crack.length_px == pytest.approx(9, rel=0.1)


def test_pinholes_do_not_split_the_skeleton():
    solid = band((60, 340), (170, 30), 0, 301, 9)
    holed = solid.copy()
    holed[30, 100] = False
    holed[29:31, 200:202] = False
    crack = only(holed)
    assert crack.pixels == solid.sum() - 5
    assert crack.length_px == pytest.approx(only(solid).length_px, abs=1.0)
    assert crack.mean_width_px == pytest.approx(9, abs=0.5)


def test_pruning_keeps_one_prong_of_a_forked_end():
    # A hand-made skeleton: a line, a 2-px side spur in its middle, and a two-prong fork at its
    # right end. The side spur goes; of the fork one prong stays, so the crack keeps its end.
    skeleton = np.zeros((9, 30), np.uint8)
    skeleton[4, 2:21] = 1  # 19 px, junction of the fork at (4, 20)
    skeleton[5:7, 10] = 1  # side spur
    skeleton[[3, 2], [21, 22]] = 1  # upper prong
    skeleton[[5, 6], [21, 22]] = 1  # lower prong
    dist = np.full(skeleton.shape, 3.0, np.float32)
    _prune_spurs(skeleton, dist)
    assert skeleton[6, 10] == 0
    assert skeleton[:, 10].sum() == 1  # the line still crosses column 10
    assert skeleton[[2, 6], [22, 22]].sum() == 1  # exactly one prong tip left
    assert skeleton[4, 2] == 1


@pytest.mark.parametrize(("width", "angle"), [(1.5, 45), (2, 30), (2, 45)])
def test_bumps_on_a_thin_crack_are_pruned(width, angle):
    # One-pixel bumps on 30% of the pixels along a thin crack's edges. A bump hanging on the
    # corner of a triangle of junction pixels is a spur from that corner; measured from skan's
    # junction alone (its spanning tree cuts the triangle) it reaches a pixel farther and some
    # stayed: +6% to +12% here.
    mask = band((301, 301), (150, 150), angle, 201, width)
    edge = (cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0) & ~mask
    ys, xs = np.nonzero(edge)
    bump = np.random.default_rng(0).random(ys.size) < 0.3
    mask[ys[bump], xs[bump]] = True
    assert only(mask).length_px == pytest.approx(201, rel=0.04)


def test_skan_paths_and_our_polylines_on_a_cross():
    # Two 81-px lines crossing: skan splits the skeleton into 4 branches from the junction to
    # the ends (type 1), 40 px each; on axis-aligned paths its link sum and our polyline agree.
    mask = np.zeros((101, 101), np.uint8)
    mask[50, 10:91] = 1
    mask[10:91, 50] = 1
    graph = _graph(mask)
    assert graph.n_paths == 4
    for i in range(4):
        path = graph.path(i)
        assert sorted(graph.degrees[[path[0], path[-1]]].tolist()) == [1, 4]
    ours = [_chain_length(*_path_points(graph, i)) for i in range(4)]
    assert ours == pytest.approx(graph.path_lengths().tolist())
    assert ours == pytest.approx([40.0] * 4)
    assert only(mask).length_px == pytest.approx(162, abs=1e-3)  # 2 x (80 + 2 x 0.5)


def test_skan_link_sum_overstates_an_oblique_line_our_polyline_does_not():
    # Why the length stays ours: the 8-neighbour link sum of skan's path follows the staircase
    # of a line at about 22.5 degrees (+8%); the Douglas-Peucker polyline is its true length.
    mask = np.zeros((120, 240), np.uint8)
    cv2.line(mask, (10, 100), (210, 17), 1, 1)
    graph = _graph(mask)
    assert graph.n_paths == 1
    truth = math.hypot(200, 83)
    assert _chain_length(*_path_points(graph, 0)) == pytest.approx(truth, rel=1e-3)
    assert graph.path_lengths()[0] > 1.05 * truth


def test_skan_cycle_is_one_closed_path():
    mask = np.zeros((260, 260), np.uint8)
    cv2.circle(mask, (130, 130), 100, 1, 1)
    graph = _graph(mask)
    assert graph.n_paths == 1
    points, closed = _path_points(graph, 0)
    assert closed
    assert _chain_length(points, closed) == pytest.approx(2 * math.pi * 100, rel=0.005)


def _centreline_shapes() -> dict[str, np.ndarray]:
    ring = np.zeros((260, 260), np.uint8)
    cv2.circle(ring, (130, 130), 90, 1, 5)
    cross = band((301, 301), (150, 150), 30, 201, 5) | band((301, 301), (150, 150), 100, 201, 5)
    return {
        "horizontal": band((61, 301), (150, 30), 0, 201, 9),
        "oblique": band((301, 301), (150, 150), 37, 201, 9),
        "tapered": band((60, 340), (170, 30), 0, 301, 3, width_end=11),
        "cross": cross,
        "ring": ring.astype(bool),
        "line": cv2.line(np.zeros((120, 240), np.uint8), (10, 100), (210, 17), 1, 1) > 0,
    }


@pytest.mark.parametrize("shape", sorted(_centreline_shapes()))
def test_the_centreline_is_the_measured_skeleton(shape):
    mask = _centreline_shapes()[shape]
    crack = only(mask)
    lines = crack.centreline
    assert lines and all(len(line.points) == len(line.widths) >= 2 for line in lines)
    # the polylines plus the end corrections are the length (vertices every 10 px or closer
    # are skeleton pixels within 1 px of the measured polyline)
    total = sum(line.length + sum(line.ends) for line in lines)
    assert total == pytest.approx(crack.length_px, rel=0.005)
    for line in lines:
        xs, ys = np.asarray(line.points).T
        assert mask[ys, xs].all()  # on the crack, in photo coordinates
        steps = np.hypot(*np.diff(np.asarray(line.points, np.float64), axis=0).T)
        assert steps.max() <= 10 * math.sqrt(2) + 1e-9 and steps.min() >= 1.0
        assert max(line.widths) <= crack.max_width_px + 1e-9
    assert (shape == "ring") == any(line.closed for line in lines)
    # an oblique crossing may thin to two junctions joined by a short path
    assert len(lines) in ((4, 5) if shape == "cross" else (1,))


def test_the_centreline_widths_follow_a_tapered_crack():
    crack = only(band((60, 340), (170, 30), 0, 301, 3, width_end=11))
    (line,) = crack.centreline
    xs = np.asarray(line.points)[:, 0]
    widths = np.asarray(line.widths)
    if xs[0] > xs[-1]:
        xs, widths = xs[::-1], widths[::-1]
    assert widths[0] == pytest.approx(3, abs=1) and widths[-1] == pytest.approx(11, abs=1)
    assert np.all(np.diff(widths) >= -1.0)  # growing along the crack, within a pixel
    expected = 3 + 8 * (xs - 20) / 301  # the band starts at x = 19.5
    assert np.abs(widths - expected).max() <= 1.5


def test_the_centreline_does_not_make_cracks_unequal():
    crack = only(band((61, 301), (150, 30), 0, 201, 9))
    bare = Crack(**{k: v for k, v in vars(crack).items() if k != "centreline"})
    assert bare == crack and bare.centreline == ()
    (plain,) = measure_cracks(band((61, 301), (150, 30), 0, 201, 9), centrelines=False)
    assert plain == crack and plain.centreline == ()


def test_small_blob_has_a_length():
    mask = np.zeros((10, 10), bool)
    mask[4:6, 4:6] = True  # Zhang-Suen deletes a 2x2 block entirely
    crack = only(mask, min_pixels=1)
    assert crack.pixels == 4
    assert crack.length_px > 0
    assert crack.max_width_px >= 1


# ------------------------------------------------------------------------------------------------
# Components: filtering, ordering, connectivity, input types
# ------------------------------------------------------------------------------------------------


def test_min_pixels_filters_noise():
    mask = np.zeros((60, 200), bool)
    mask[10, 10:110] = True  # 100 px
    mask[30:34, 10:15] = True  # 20 px
    mask[40:43, 50:56] = True  # 18 px
    mask[50, 150] = True  # 1 px
    assert sorted(c.pixels for c in measure_cracks(mask)) == [20, 100]
    assert sorted(c.pixels for c in measure_cracks(mask, min_pixels=21)) == [100]
    assert sorted(c.pixels for c in measure_cracks(mask, min_pixels=0)) == [1, 18, 20, 100]


def test_regions_wider_than_the_bound_are_reported_not_measured():
    mask = np.zeros((400, 600), bool)
    mask[20, 20:220] = True  # a 1-px crack, 200 px long
    mask[100:380, 300:580] = True  # a 280 x 280 stain
    assert sorted(c.pixels for c in measure_cracks(mask)) == [200, 280 * 280]
    regions: list[dict] = []
    cracks = measure_cracks(mask, max_width_px=100, too_wide=regions)
    assert [c.pixels for c in cracks] == [200] and cracks[0].length_px == pytest.approx(200, abs=1)
    assert len(regions) == 1 and regions[0]["pixels"] == 280 * 280
    assert regions[0]["bbox"] == (300, 100, 580, 380) and regions[0]["max_width_px"] > 100
    # a crack exactly at the bound is still measured
    band_mask = np.zeros((60, 300), bool)
    band_mask[20:35, 20:280] = True  # 15 px wide
    assert len(measure_cracks(band_mask, max_width_px=15)) == 1
    assert measure_cracks(band_mask, max_width_px=14) == []


def test_a_photo_sized_region_is_never_thinned(monkeypatch):
    """The guard exists for this: thinning a 2048 x 1536 all-crack mask took 38 s."""
    import cirl.deploy.measure

    def no_thinning(*args, **kwargs):
        raise AssertionError("a too-wide region reached the skeleton")

    monkeypatch.setattr(cirl.deploy.measure, "_skeleton", no_thinning)
    regions: list[dict] = []
    assert measure_cracks(np.ones((1536, 2048), bool), max_width_px=200, too_wide=regions) == []
    assert len(regions) == 1 and regions[0]["pixels"] == 1536 * 2048


def test_a_perforated_region_is_gated_on_the_width_that_would_be_measured(monkeypatch):
    """Pinholes every 4 px keep the distance transform small (width 5 px) until they are
    filled; filled, the region is 600 px wide and must be reported, not thinned."""
    import cirl.deploy.measure

    mask = np.ones((600, 800), bool)
    mask[2::4, 2::4] = False  # one-pixel holes on a 4 px grid
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = False

    def no_thinning(*args, **kwargs):
        raise AssertionError("a too-wide region reached the skeleton")

    monkeypatch.setattr(cirl.deploy.measure, "_skeleton", no_thinning)
    regions: list[dict] = []
    assert measure_cracks(mask, max_width_px=200, too_wide=regions) == []
    assert len(regions) == 1 and regions[0]["max_width_px"] > 500


def test_ids_follow_length_then_top_left_pixel():
    mask = np.zeros((100, 300), bool)
    mask[10, 10:60] = True  # 50
    mask[20, 10:160] = True  # 150
    mask[30, 10:110] = True  # 100
    mask[60, 200:240] = True  # 40, tie with the next two
    mask[50, 250:290] = True  # 40, higher: first of the three
    mask[60, 100:140] = True  # 40, same row, left of the one at x=200
    cracks = measure_cracks(mask)
    assert [c.id for c in cracks] == [1, 2, 3, 4, 5, 6]
    assert [c.bbox[:2] for c in cracks] == [
        (10, 20),
        (10, 30),
        (10, 10),
        (250, 50),
        (100, 60),
        (200, 60),
    ]
    lengths = [c.length_px for c in cracks]
    assert lengths == sorted(lengths, reverse=True)


@pytest.mark.parametrize("angle", [0, 12, 45, 90, 150])
@pytest.mark.parametrize("width", [1, 5, 9])
def test_a_long_straight_line_across_the_photo_is_flagged_straight(angle, width):
    crack = only(band((300, 300), (150, 150), angle, 280, width))
    assert crack.straightness > STRAIGHT_RATIO
    assert crack.straight


def test_short_bent_and_ring_cracks_are_not_straight():
    short = only(band((300, 400), (200, 150), 20, 120, 3))  # straight, under 150 px
    assert short.straightness > STRAIGHT_RATIO and not short.straight
    arc = np.zeros((300, 400), np.uint8)
    cv2.ellipse(arc, (200, 100), (140, 140), 0, 0, 180, 255, 3)  # half circle, 440 px
    bent = only(arc > 0)
    assert bent.straightness == pytest.approx(2 / math.pi, abs=0.05) and not bent.straight
    ring = np.zeros((300, 400), np.uint8)
    cv2.circle(ring, (200, 150), 100, 255, 3)
    assert only(ring > 0).straightness < 0.4
    # a line across the photo with a branch is a crack pattern, not a joint
    branched = band((300, 300), (150, 150), 0, 280, 3) | band((300, 300), (100, 200), 90, 100, 3)
    assert not only(branched).straight


def test_straight_in_the_rows_and_the_csv(tmp_path: Path):
    mask = band((200, 300), (150, 50), 0, 280, 3) | band((200, 300), (150, 150), 30, 81, 3)
    cracks = measure_cracks(mask)
    rows = cracks_to_rows(cracks)
    assert [r["straight"] for r in rows] == [1, 0]
    assert rows[0]["straightness"] == round(cracks[0].straightness, 3) > STRAIGHT_RATIO
    write_cracks_csv(tmp_path / "c.csv", cracks)
    with (tmp_path / "c.csv").open(newline="") as handle:
        records = list(csv.DictReader(handle))
    assert [r["straight"] for r in records] == ["1", "0"]


def test_anchor_is_on_the_crack_and_seed_is_its_first_pixel():
    mask = np.zeros((200, 200), bool)
    mask[20:120, 30:33] = True  # an L: its centroid lies off the crack
    mask[117:120, 30:150] = True
    crack = only(mask)
    x, y = crack.anchor
    assert mask[y, x]
    cx, cy = crack.centroid
    assert not mask[round(cy), round(cx)]
    assert crack.seed == (30, 20)


def test_connectivity_4_splits_diagonal_contacts():
    mask = np.zeros((60, 60), bool)
    idx = np.arange(5, 55)
    mask[idx, idx] = True
    assert len(measure_cracks(mask, connectivity=8)) == 1
    assert len(measure_cracks(mask, connectivity=4, min_pixels=1)) == 50


def test_bool_and_0_255_masks_agree():
    mask = band((120, 200), (100, 60), 20, 151, 5)
    a = measure_cracks(mask)
    b = measure_cracks(mask.astype(np.uint8) * 255)
    assert a == b
    assert len(a) == 1


def test_empty_mask():
    assert measure_cracks(np.zeros((50, 40), np.uint8)) == []
    assert measure_cracks(np.zeros((0, 0), bool)) == []
    assert summarize([]) == {
        "count": 0,
        "total_length_px": 0.0,
        "max_width_px": 0.0,
        "longest_length_px": 0.0,
    }
    assert summarize([], mm_per_pixel=0.5)["total_length_mm"] == 0.0


# ------------------------------------------------------------------------------------------------
# Rows, CSV, summary, units
# ------------------------------------------------------------------------------------------------


def two_cracks() -> list[Crack]:
    mask = band((200, 300), (150, 50), 0, 201, 5) | band((200, 300), (150, 150), 0, 101, 9)
    cracks = measure_cracks(mask)
    assert len(cracks) == 2
    return cracks


def test_rows_in_pixels_and_mm():
    cracks = two_cracks()
    rows = cracks_to_rows(cracks)
    assert [tuple(r) for r in rows] == [CSV_COLUMNS] * 2
    first = rows[0]
    assert first["id"] == 1
    assert first["pixels"] == 201 * 5
    assert (first["x0"], first["y0"], first["x1"], first["y1"]) == (50, 48, 251, 53)
    assert (first["cx"], first["cy"]) == (150.0, 50.0)
    assert first["length_px"] == round(cracks[0].length_px, 3)

    mm_rows = cracks_to_rows(cracks, mm_per_pixel=0.2)
    assert [tuple(r) for r in mm_rows] == [CSV_COLUMNS_MM] * 2
    for crack, row in zip(cracks, mm_rows, strict=True):
        assert row["length_mm"] == pytest.approx(crack.length_px * 0.2, abs=1e-3)
        assert row["mean_width_mm"] == pytest.approx(crack.mean_width_px * 0.2, abs=1e-3)
        assert row["max_width_mm"] == pytest.approx(crack.max_width_px * 0.2, abs=1e-3)
        assert row["area_mm2"] == pytest.approx(crack.pixels * 0.04, abs=1e-3)
    assert mm_rows[1]["max_width_mm"] == pytest.approx(9 * 0.2, abs=0.1)


def test_rows_round_to_3_decimals():
    crack = Crack(1, 7, 10.123456, 2.98766, 3.00049, 179.99996, (0, 0, 5, 2), (1.23456, 0.5))
    row = cracks_to_rows([crack], mm_per_pixel=0.1)[0]
    assert row["length_px"] == 10.123
    assert row["mean_width_px"] == 2.988
    assert row["max_width_px"] == 3.0
    assert row["orientation_deg"] == 0.0  # 179.99996 rounds to 180, which is 0
    assert row["cx"] == 1.235
    assert row["length_mm"] == 1.012
    assert row["area_mm2"] == 0.07


def test_csv_with_and_without_mm(tmp_path: Path):
    cracks = two_cracks()
    plain = tmp_path / "plain.csv"
    write_cracks_csv(plain, cracks)
    with plain.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 3
    assert rows[1][0] == "1"
    assert float(rows[1][2]) == pytest.approx(cracks[0].length_px, abs=1e-3)

    scaled = tmp_path / "mm.csv"
    write_cracks_csv(scaled, cracks, mm_per_pixel=0.2)
    with scaled.open(newline="") as handle:
        records = list(csv.DictReader(handle))
    assert tuple(records[0]) == CSV_COLUMNS_MM
    assert float(records[0]["area_mm2"]) == pytest.approx(cracks[0].pixels * 0.04, abs=1e-3)

    empty = tmp_path / "empty.csv"
    write_cracks_csv(empty, [])
    assert empty.read_text().splitlines() == [",".join(CSV_COLUMNS)]
    write_cracks_csv(empty, [], mm_per_pixel=1.0)
    assert empty.read_text().splitlines() == [",".join(CSV_COLUMNS_MM)]


def test_summary():
    cracks = two_cracks()
    summary = summarize(cracks, mm_per_pixel=0.2)
    json.dumps(summary)
    total = cracks[0].length_px + cracks[1].length_px
    assert summary["count"] == 2
    assert summary["total_length_px"] == pytest.approx(total, abs=1e-3)
    assert summary["longest_length_px"] == pytest.approx(cracks[0].length_px, abs=1e-3)
    assert summary["max_width_px"] == pytest.approx(9, abs=0.5)
    assert summary["total_length_mm"] == pytest.approx(total * 0.2, abs=1e-3)
    assert summary["longest_length_mm"] == pytest.approx(cracks[0].length_px * 0.2, abs=1e-3)
    assert summary["max_width_mm"] == pytest.approx(summary["max_width_px"] * 0.2, abs=1e-3)
    assert "total_length_mm" not in summarize(cracks)


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


def re_shape(shape: tuple[int, ...]) -> str:
    """A regex matching the tuple ``shape`` as Python prints it."""
    return r"2-D.*" + str(shape).replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize("shape", [(4, 4, 3), (16,), (2, 3, 4, 5)])
def test_mask_must_be_2d(shape):
    with pytest.raises(ValueError, match=re_shape(shape)):
        measure_cracks(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, math.nan, math.inf, -math.inf, "0.2", True])
def test_mm_per_pixel_must_be_positive_and_finite(bad, tmp_path: Path):
    cracks = two_cracks()
    with pytest.raises(ValueError, match="mm_per_pixel"):
        cracks_to_rows(cracks, mm_per_pixel=bad)
    with pytest.raises(ValueError, match="mm_per_pixel"):
        summarize(cracks, mm_per_pixel=bad)
    with pytest.raises(ValueError, match="mm_per_pixel"):
        write_cracks_csv(tmp_path / "x.csv", cracks, mm_per_pixel=bad)


def test_bad_connectivity_and_min_pixels():
    mask = np.ones((5, 5), bool)
    with pytest.raises(ValueError, match="connectivity"):
        measure_cracks(mask, connectivity=6)
    with pytest.raises(ValueError, match="min_pixels"):
        measure_cracks(mask, min_pixels=-1)
    with pytest.raises(ValueError, match="max_width_px"):
        measure_cracks(mask, max_width_px=0)
