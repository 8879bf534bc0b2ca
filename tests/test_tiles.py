import cv2
import numpy as np
import pytest
import torch

from cirl.data.manifest import read_manifest
from cirl.data.prepare import PrepareConfig, run
from cirl.data.tiles import TileDataset
from cirl.errors import CirlError
from conftest import write_pair


@pytest.fixture
def prepared(tmp_path):
    for i in range(6):
        write_pair(tmp_path / "raw", f"p{i}", 150, 100, i)
    run(
        PrepareConfig(tile=128, edge="pad", split=(0.6, 0.2, 0.2)),
        tmp_path / "raw",
        "folder",
        tmp_path / "prep",
    )
    return tmp_path / "prep"


def _ambiguity_from_image(prepared, out):
    """An 'ambiguity map' equal to the image's red channel > 128, to check alignment."""
    (out / "ambiguous").mkdir(parents=True)
    for r in read_manifest(prepared):
        image = cv2.imread(str(prepared / r.image))
        cv2.imwrite(
            str(out / "ambiguous" / f"{r.tile_id}.png"),
            (image[:, :, 2] > 128).astype(np.uint8) * 255,
        )


def test_augmented_fields_stay_aligned(prepared, tmp_path):
    _ambiguity_from_image(prepared, tmp_path / "sel")
    ds = TileDataset(prepared, "train", crop=64, augment=True, ambiguity=tmp_path / "sel", seed=1)
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (1, 64, 64)
            red = (item["image"][0] * 255).round() > 128  # RGB order: channel 0 is red
            assert torch.equal(
                red & (item["valid"][0] > 0), (item["ambiguous"][0] > 0) & (item["valid"][0] > 0)
            )
            # padding is invalid and black
            assert (item["image"][:, item["valid"][0] == 0] == 0).all()


def test_epoch_streams_are_reproducible_and_differ(prepared):
    a = TileDataset(prepared, "train", crop=64, augment=True, seed=0)
    b = TileDataset(prepared, "train", crop=64, augment=True, seed=0)
    a.set_epoch(2)
    b.set_epoch(2)
    assert torch.equal(a[1]["image"], b[1]["image"])
    b.set_epoch(3)
    assert not all(torch.equal(a[i]["image"], b[i]["image"]) for i in range(len(a)))


def test_crop_stays_inside_real_pixels_when_possible(prepared):
    ds = TileDataset(prepared, "train", crop=64, augment=False, seed=0)
    for epoch in range(5):
        ds.set_epoch(epoch)
        for i, r in enumerate(ds.records):
            if r.x1 - r.x0 >= 64 and r.y1 - r.y0 >= 64:
                assert ds[i]["valid"].all()
            else:  # the 22-pixel-wide edge tile of a padded grid
                assert not ds[i]["valid"].all() and ds[i]["valid"].any()


def test_whole_tiles_for_evaluation_and_errors(prepared, tmp_path):
    ds = TileDataset(prepared, "test")
    assert ds[0]["image"].shape == (3, 128, 128)
    with pytest.raises(CirlError, match="no tiles in split 'nope'"):
        TileDataset(prepared, "nope")
    with pytest.raises(CirlError, match="no ambiguous/ folder"):
        TileDataset(prepared, "train", ambiguity=tmp_path)
