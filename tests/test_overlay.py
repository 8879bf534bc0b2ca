"""The overlay of ``cirl predict``: cracks numbered as in the CSV, legend, scale bar."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from cirl.deploy.measure import cracks_to_rows, measure_cracks
from cirl.deploy.photo_outputs import (
    PALETTE_BGR,
    UNMEASURED_BGR,
    format_length,
    render_overlay,
    scale_bar,
)


def photo(h: int, w: int) -> np.ndarray:
    """A grey photo with mild noise: no pixel is near white or near black."""
    rng = np.random.default_rng(0)
    return rng.integers(100, 157, (h, w, 3), dtype=np.uint8)


def three_lines(h: int = 300, w: int = 400) -> np.ndarray:
    """Three separate cracks away from the corners: horizontal, vertical, diagonal."""
    mask = np.zeros((h, w), np.uint8)
    cv2.line(mask, (int(0.35 * w), int(0.3 * h)), (int(0.65 * w), int(0.3 * h)), 255, 3)
    cv2.line(mask, (int(0.25 * w), int(0.45 * h)), (int(0.25 * w), int(0.8 * h)), 255, 3)
    cv2.line(mask, (int(0.55 * w), int(0.5 * h)), (int(0.75 * w), int(0.75 * h)), 255, 2)
    return mask > 0


def render(image, mask, **kwargs):
    cracks = measure_cracks(mask)
    layout: list = []
    out = render_overlay(image, mask, cracks, layout=layout, **kwargs)
    return out, cracks, layout[0]


def white(image: np.ndarray) -> np.ndarray:
    return (image >= 230).all(axis=2)


def longest_white_run(image: np.ndarray) -> int:
    """The longest horizontal run of pure white pixels."""
    best = 0
    for row in (image == 255).all(axis=2):
        padded = np.concatenate([[0], row.astype(np.int8), [0]])
        edges = np.flatnonzero(np.diff(padded))
        if edges.size:
            best = max(best, int((edges[1::2] - edges[::2]).max()))
    return best


# ------------------------------------------------------------------------------------------------
# Scale bar
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mm_per_px", "width", "expected"),
    [(0.2, 800, (50.0, 250)), (0.1, 1000, (20.0, 200)), (0.05, 4000, (50.0, 1000))],
)
def test_scale_bar_known_cases(mm_per_px, width, expected):
    assert scale_bar(mm_per_px, width) == expected


@pytest.mark.parametrize("mm_per_px", [0.0137, 0.05, 0.1, 0.33, 1.0, 2.5, 17.0])
@pytest.mark.parametrize("width", [200, 640, 1000, 4032, 8000])
def test_scale_bar_is_round_and_a_fifth_to_a_quarter_of_the_width(mm_per_px, width):
    mm, px = scale_bar(mm_per_px, width)
    mantissa = mm / 10 ** math.floor(math.log10(mm))
    assert round(mantissa, 9) in (1.0, 2.0, 5.0)
    assert abs(px - mm / mm_per_px) <= 0.5
    assert 0.14 <= px / width <= 0.36


@pytest.mark.parametrize(("mm_per_px", "width"), [(0, 100), (-1, 100), (math.nan, 100), (1, 0)])
def test_scale_bar_refuses_bad_input(mm_per_px, width):
    with pytest.raises(ValueError):
        scale_bar(mm_per_px, width)


def test_format_length():
    assert [format_length(v) for v in (0.5, 5, 20, 100, 2000)] == [
        "0.5 mm",
        "5 mm",
        "2 cm",
        "10 cm",
        "2 m",
    ]


def test_scale_bar_only_with_mm_per_pixel_and_its_pixels_match_its_label():
    image, mask = photo(300, 400), three_lines()
    out, _, layout = render(image, mask, mm_per_pixel=0.2)
    mm, px = scale_bar(0.2, 400)
    assert layout.scale_bar == (mm, px)
    x0, y0, x1, y1 = layout.scale_bar_box
    assert x1 > 400 * 0.6 and y1 > 300 * 0.8  # bottom-right: no crack there
    # the bar is the one long white run of the image, in that box, of exactly px pixels
    assert longest_white_run(out[y0:y1, x0:x1]) == px
    assert longest_white_run(out) == px
    assert abs(px * 0.2 - mm) <= 0.2  # within one pixel of its label
    assert format_length(mm) == "2 cm"  # 100 px of the 400

    plain, _, no_bar = render(image, mask)
    assert no_bar.scale_bar is None and no_bar.bar is None
    assert longest_white_run(plain[y0:y1, x0:x1]) < px // 2
    assert "lengths in px" in no_bar.legend_lines
    assert not any("lengths in px" in line for line in layout.legend_lines)


# ------------------------------------------------------------------------------------------------
# Numbers, colours, legend
# ------------------------------------------------------------------------------------------------


def test_each_crack_is_numbered_with_its_csv_id_beside_it():
    image, mask = photo(300, 400), three_lines()
    out, cracks, layout = render(image, mask)
    rows = cracks_to_rows(cracks)
    assert len(rows) == 3
    assert [label.id for label in layout.labels] == [row["id"] for row in rows]
    assert [label.text for label in layout.labels] == [str(row["id"]) for row in rows]
    _, components = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    drawn = white(out)
    for crack, label in zip(cracks, layout.labels, strict=True):
        # the anchor is on crack k, and the number's box is beside it
        own = components[crack.seed[1], crack.seed[0]]
        assert components[label.anchor[1], label.anchor[0]] == own
        x0, y0, x1, y1 = label.box
        size = math.hypot(x1 - x0, y1 - y0)
        assert not label.leader
        # the number is nearer crack k than any other crack
        centre = ((x0 + x1) / 2, (y0 + y1) / 2)
        distances = []
        for other in cracks:
            ys, xs = np.nonzero(components == components[other.seed[1], other.seed[0]])
            distances.append(np.hypot(xs - centre[0], ys - centre[1]).min())
        assert int(np.argmin(distances)) == crack.id - 1
        assert distances[crack.id - 1] <= size
        # and it is drawn: white strokes inside the box, black outline around them
        assert drawn[y0:y1, x0:x1].sum() >= 5
        assert (out[y0:y1, x0:x1] < 40).all(axis=2).sum() >= 5
    boxes = [label.box for label in layout.labels]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
    # no white anywhere else but in the legend
    allowed = np.zeros(mask.shape, bool)
    for x0, y0, x1, y1 in [*boxes, layout.legend_box]:
        allowed[y0:y1, x0:x1] = True
    assert not (drawn & ~allowed).any()


def test_labels_stay_apart_where_cracks_are_crowded():
    mask = np.zeros((300, 400), bool)
    for k in range(6):
        mask[150, 100 + 30 * k : 120 + 30 * k] = True  # six short cracks 10 px apart
    _, cracks, layout = render(
        photo(300, 400),
        mask,
    )
    assert len(layout.labels) == len(cracks) == 6
    boxes = [label.box for label in layout.labels]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_neighbouring_cracks_get_different_colours_and_noise_is_grey():
    mask = np.zeros((200, 300), bool)
    mask[100:103, 50:250] = True
    mask[110:113, 50:250] = True  # a neighbour 7 px away
    mask[30:33, 40:44] = True  # 12 px: too small to be measured
    image = np.full((200, 300, 3), 128, np.uint8)
    out, cracks, layout = render(image, mask, alpha=1.0)
    assert len(cracks) == 2 and layout.unmeasured == 1
    assert layout.colours[0] != layout.colours[1]
    free = np.ones(mask.shape, bool)  # pixels under no number
    for x0, y0, x1, y1 in [label.box for label in layout.labels]:
        free[y0:y1, x0:x1] = False
    for crack, colour in zip(cracks, layout.colours, strict=True):
        x0, y0, x1, y1 = crack.bbox
        seen = out[y0:y1, x0:x1][free[y0:y1, x0:x1] & mask[y0:y1, x0:x1]]
        assert len(seen) > 300 and (seen == PALETTE_BGR[colour]).all()
    assert tuple(out[31, 42]) == UNMEASURED_BGR
    assert "grey: 1 not measured" in layout.legend_lines
    assert len(layout.labels) == 2


def test_legend_in_a_free_corner_says_count_threshold_and_extremes():
    image, mask = photo(300, 400), three_lines()
    out, cracks, layout = render(image, mask, threshold=0.37, mm_per_pixel=0.5)
    x0, y0, x1, y1 = layout.legend_box
    assert (x0, y0) == (4, 4) or (x0, y0) == (3, 3)  # top-left: no crack under it
    box = out[y0:y1, x0:x1]
    assert (box > 200).all(axis=2).sum() > 50  # its text
    assert np.median(box) < 0.5 * np.median(image)  # its dark background
    assert not mask[y0:y1, x0:x1].any()
    lines = layout.legend_lines
    assert lines[0] == "3 cracks: # = id"
    assert "threshold: p >= 0.37" in lines
    longest = f"longest: #1, {cracks[0].length_px * 0.5:.1f} mm"
    assert longest in lines
    assert any(line.startswith("widest: #") and line.endswith(" mm") for line in lines)


def test_straight_lines_are_marked_and_explained():
    mask = three_lines()
    mask[20:24, 5:395] = True  # a joint across the photo
    _, cracks, layout = render(photo(300, 400), mask)
    joint = [c for c in cracks if c.straight]
    assert [c.bbox for c in joint] == [(5, 20, 395, 24)]
    assert [label.text for label in layout.labels if label.text.endswith("*")] == [
        f"{joint[0].id}*"
    ]
    assert "possibly a joint or edge" in layout.legend_lines


def test_same_inputs_same_overlay_and_size_kept():
    image, mask = photo(300, 400), three_lines()
    cracks = measure_cracks(mask)
    a = render_overlay(image, mask, cracks, mm_per_pixel=0.3, threshold=0.5)
    b = render_overlay(image.copy(), mask.copy(), cracks, mm_per_pixel=0.3, threshold=0.5)
    assert a.shape == image.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    jpeg = [cv2.imencode(".jpg", x, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for x in (a, b)]
    assert jpeg[0] == jpeg[1]
    assert np.array_equal(image, photo(300, 400))  # the photo itself is not drawn on


@pytest.mark.parametrize(("h", "w"), [(120, 150), (64, 64), (40, 300)])
def test_small_photos_keep_their_size_and_numbers(h, w):
    mask = np.zeros((h, w), bool)
    mask[h // 2, w // 4 : 3 * w // 4] = True
    out, cracks, layout = render(photo(h, w), mask, mm_per_pixel=0.1)
    assert out.shape == (h, w, 3)
    assert len(layout.labels) == len(cracks) == 1
    if layout.legend_box is not None:
        x0, y0, x1, y1 = layout.legend_box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


def test_no_crack():
    out, cracks, layout = render(photo(100, 100), np.zeros((100, 100), bool))
    assert cracks == [] and layout.labels == []
    assert out.shape == (100, 100, 3)
