"""Crack-centred crop sampling (``crack_crops``): share, determinism, fallback, bounds."""

import numpy as np
import pytest

from cirl.data.manifest import TileRecord
from cirl.data.tiles import TileDataset, _random_crop
from cirl.errors import CirlError
from cirl.method.train import TrainConfig


def _record(w: int = 128, h: int = 128) -> TileRecord:
    return TileRecord(
        "t", "train", "s", "s.jpg", 0, 0, w, h, w, h, "i.png", "m.png", "", 1.0, 0.0, "", "", ""
    )


def _tile(crack: tuple[int, int] | None, size: int = 128) -> dict:
    """A tile whose only crack pixel is ``crack``; the image holds each pixel's (y, x)."""
    ys, xs = np.mgrid[0:size, 0:size]
    mask = np.zeros((size, size), bool)
    if crack is not None:
        mask[crack] = True
    image = np.stack([ys, xs, np.zeros_like(ys)], axis=-1).astype(np.int32)
    return {"image": image, "mask": mask, "valid": np.ones_like(mask)}


def _sees_crack(crop: dict) -> bool:
    return bool(crop["mask"].any())


@pytest.mark.parametrize("share", [0.0, 0.3, 0.7, 1.0])
def test_share_of_crack_centred_crops(share):
    # one crack pixel in a corner: a uniform 32^2 crop of a 128^2 tile contains it 1/97^2 of
    # the time, a centred one always
    tile, record = _tile((5, 120)), _record()
    n = 2000
    hits = sum(
        _sees_crack(_random_crop(tile, 32, record, np.random.default_rng([0, 0, i]), share))
        for i in range(n)
    )
    assert abs(hits / n - share) < 0.04


def test_centred_crop_holds_the_crack_pixel_and_stays_inside_the_tile():
    record = _record(100, 90)  # real pixels 100 x 90 of a 128 x 128 padded tile
    for crack in [(0, 0), (89, 99), (45, 50), (2, 97)]:
        tile = _tile(crack)
        for i in range(50):
            crop = _random_crop(tile, 64, record, np.random.default_rng([1, 0, i]), 1.0)
            assert crop["mask"].sum() == 1
            y0, x0 = crop["image"][0, 0, :2]
            assert 0 <= y0 <= 90 - 64 and 0 <= x0 <= 100 - 64
            if 32 <= crack[0] <= 90 - 32 and 32 <= crack[1] <= 100 - 32:
                assert (crop["mask"][32, 32]) and tuple(crop["image"][32, 32, :2]) == crack


def test_tile_without_crack_falls_back_to_uniform():
    tile, record = _tile(None), _record()
    corners = {
        tuple(_random_crop(tile, 32, record, np.random.default_rng([2, 0, i]), 1.0)["image"][0, 0])
        for i in range(200)
    }
    assert len(corners) > 100  # uniform positions, not one fixed window


def test_same_seed_same_crops_and_zero_share_keeps_the_uniform_stream():
    tile, record = _tile((60, 60)), _record()
    for share in (0.0, 0.5):
        a = [
            _random_crop(tile, 32, record, np.random.default_rng([3, 1, i]), share)
            for i in range(20)
        ]
        b = [
            _random_crop(tile, 32, record, np.random.default_rng([3, 1, i]), share)
            for i in range(20)
        ]
        assert all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, b, strict=True))
    # crack_crops=0 draws exactly as the sampling did before the option existed
    rng = np.random.default_rng([3, 1, 0])
    y, x = int(rng.integers(0, 97)), int(rng.integers(0, 97))
    crop = _random_crop(tile, 32, record, np.random.default_rng([3, 1, 0]), 0.0)
    assert tuple(crop["image"][0, 0, :2]) == (y, x)


def test_share_is_validated():
    with pytest.raises(ValueError, match="crack_crops"):
        TrainConfig(crack_crops=1.5)
    with pytest.raises(CirlError, match="crack_crops"):
        TileDataset(".", "train", crack_crops=-0.1)
