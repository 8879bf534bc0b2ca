import pytest

from cirl.data.tiling import axis_starts, tile_grid


def test_exact_multiple_has_no_overlap_or_padding():
    boxes = tile_grid(1024, 512, 512)
    assert [(b.x0, b.y0, b.x1, b.y1) for b in boxes] == [(0, 0, 512, 512), (512, 0, 1024, 512)]
    assert not any(b.padded for b in boxes)


def test_shift_moves_last_tile_inward():
    assert axis_starts(7360, 512, "shift")[-3:] == [6144, 6656, 6848]
    boxes = tile_grid(7360, 4912, 512, "shift")
    assert len(boxes) == 15 * 10
    assert all((b.x1 - b.x0, b.y1 - b.y0) == (512, 512) for b in boxes)
    assert max(b.x1 for b in boxes) == 7360 and max(b.y1 for b in boxes) == 4912


def test_pad_keeps_the_grid_and_clips_the_box():
    boxes = tile_grid(1100, 600, 512, "pad")
    assert len(boxes) == 3 * 2
    last = boxes[-1]
    assert (last.x0, last.y0, last.x1, last.y1) == (1024, 512, 1100, 600)
    assert last.padded and (last.size_w, last.size_h) == (512, 512)
    covered = sum((b.x1 - b.x0) * (b.y1 - b.y0) for b in boxes)
    assert covered == 1100 * 600  # every pixel exactly once


@pytest.mark.parametrize("edge", ["shift", "pad"])
def test_side_smaller_than_tile_is_padded(edge):
    boxes = tile_grid(544, 384, 512, edge)
    assert len(boxes) == 2
    assert all(b.padded and b.y1 == 384 and b.size_h == 512 for b in boxes)
    tiny = tile_grid(100, 80, 512, edge)
    assert len(tiny) == 1 and (tiny[0].x1, tiny[0].y1, tiny[0].size_w) == (100, 80, 512)


def test_tile_zero_keeps_whole_photo():
    (box,) = tile_grid(544, 384, 0)
    assert (box.x1, box.y1, box.size_w, box.size_h, box.padded) == (544, 384, 544, 384, False)


def test_bad_arguments():
    with pytest.raises(ValueError):
        tile_grid(0, 10, 512)
    with pytest.raises(ValueError):
        tile_grid(10, 10, 512, "wrap")
