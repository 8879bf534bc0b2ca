import hashlib
import json
import os

import cv2
import numpy as np
import pytest

from cirl.data.manifest import COLUMNS, read_manifest
from cirl.data.prepare import PrepareConfig, run
from cirl.errors import CirlError
from conftest import write_pair


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_tiles_and_hashes(folder_dataset, tmp_path):
    out = tmp_path / "prepared"
    result = run(PrepareConfig(tile=128), folder_dataset, "folder", out)
    records = read_manifest(out)
    # 300x200 photos with 128 tiles: 3 columns x 2 rows, shifted inward, no padding
    assert len(records) == 20 * 6
    assert result.tiles == {"train": 108, "val": 6, "test": 6}
    assert (out / "manifest.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    for r in records:
        assert r.valid == "" and r.valid_fraction == 1.0
        assert r.x1 - r.x0 == 128 and r.y1 - r.y0 == 128 and r.x1 <= 300 and r.y1 <= 200
        assert _sha(out / r.image) == r.image_sha256 and _sha(out / r.mask) == r.mask_sha256
        mask = cv2.imread(str(out / r.mask), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(mask)) <= {0, 255}
        assert abs((mask > 0).mean() - r.crack_fraction) < 1e-6
    # the tile holds exactly the source pixels of its crop box (no resizing)
    r = records[5]
    src = cv2.imread(str(folder_dataset / r.source_file))
    tile = cv2.imread(str(out / r.image))
    assert np.array_equal(tile, src[r.y0 : r.y1, r.x0 : r.x1])
    card = json.loads((out / "dataset_card.json").read_text())
    assert card["tiles"] == result.tiles and card["params"]["tile"] == 128
    assert card["image_sizes"] == {"300x200": 20}


def test_split_is_grouped_by_photo(folder_dataset, tmp_path):
    run(PrepareConfig(tile=128), folder_dataset, "folder", tmp_path / "p")
    splits = {}
    for r in read_manifest(tmp_path / "p"):
        splits.setdefault(r.source_id, set()).add(r.split)
    assert all(len(s) == 1 for s in splits.values())
    run(PrepareConfig(tile=128, split_by="tile"), folder_dataset, "folder", tmp_path / "t")
    per_photo = {}
    for r in read_manifest(tmp_path / "t"):
        per_photo.setdefault(r.source_id, set()).add(r.split)
    assert any(len(s) > 1 for s in per_photo.values())


def test_reproducible_byte_identical_manifest(folder_dataset, tmp_path):
    run(PrepareConfig(tile=128, seed=3), folder_dataset, "folder", tmp_path / "a")
    run(PrepareConfig(tile=128, seed=3, workers=2), folder_dataset, "folder", tmp_path / "b")
    run(PrepareConfig(tile=128, seed=4), folder_dataset, "folder", tmp_path / "c")
    a = (tmp_path / "a" / "manifest.csv").read_bytes()
    assert a == (tmp_path / "b" / "manifest.csv").read_bytes()
    assert a != (tmp_path / "c" / "manifest.csv").read_bytes()


def test_pad_policy_writes_valid_region_masks(tmp_path):
    write_pair(tmp_path / "raw", "big", 300, 200, 0)
    write_pair(tmp_path / "raw", "small", 90, 70, 1)
    write_pair(tmp_path / "raw", "third", 128, 128, 2)
    cfg = PrepareConfig(tile=128, edge="pad", split=(1.0, 0.0, 0.0))
    run(cfg, tmp_path / "raw", "folder", tmp_path / "p")
    records = {r.tile_id: r for r in read_manifest(tmp_path / "p")}
    assert len(records) == 3 * 2 + 1 + 1
    corner = records["big_r01_c02"]
    assert (corner.x0, corner.y0, corner.x1, corner.y1) == (256, 128, 300, 200)
    valid = cv2.imread(str(tmp_path / "p" / corner.valid), cv2.IMREAD_UNCHANGED)
    assert valid.shape == (128, 128) and (valid[:72, :44] == 255).all()
    assert (valid[72:] == 0).all() and (valid[:, 44:] == 0).all()
    assert corner.valid_fraction == pytest.approx(44 * 72 / 128**2, abs=1e-6)
    image = cv2.imread(str(tmp_path / "p" / corner.image))
    assert (image[72:] == 0).all()
    assert records["small_r00_c00"].valid and not records["third_r00_c00"].valid


def test_skips_are_recorded_and_strict_fails(folder_dataset, tmp_path):
    images = folder_dataset / "images"
    (images / "img00.jpg").write_bytes((images / "img00.jpg").read_bytes()[:500])  # truncated
    cv2.imwrite(str(folder_dataset / "masks" / "img01.png"), np.zeros((10, 10), np.uint8))
    cv2.imwrite(str(folder_dataset / "masks" / "img02.png"), np.full((200, 300), 255, np.uint8))
    soft = np.zeros((200, 300), np.uint8)
    soft[50:60] = 180
    cv2.imwrite(str(folder_dataset / "masks" / "img03.png"), soft)
    result = run(PrepareConfig(tile=128), folder_dataset, "folder", tmp_path / "p")
    card = json.loads((tmp_path / "p" / "dataset_card.json").read_text())
    reasons = {os.path.basename(s["file"]): s["reason"] for s in card["skipped"]}
    assert "truncated" in reasons["img00.jpg"]
    assert "mask is 10x10 but image" in reasons["img01.jpg"]
    assert "every pixel as crack" in reasons["img02.png"]
    assert len(result.skipped) == 3
    assert any("img03.png: mask was not binary" in w for w in card["warnings"])
    assert {r.source_id for r in read_manifest(tmp_path / "p")}.isdisjoint(
        {"img00", "img01", "img02"}
    )
    before = (tmp_path / "p" / "manifest.csv").read_bytes()
    with pytest.raises(CirlError, match=r"(?s)--strict: 1 file.*img00.jpg: JPEG is truncated"):
        run(PrepareConfig(tile=128, strict=True), folder_dataset, "folder", tmp_path / "p")
    assert (tmp_path / "p" / "manifest.csv").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["p", "raw"]


def test_interrupted_run_keeps_previous_output(folder_dataset, tmp_path, monkeypatch):
    out = tmp_path / "p"
    run(PrepareConfig(tile=128), folder_dataset, "folder", out)
    before = (out / "manifest.csv").read_bytes()
    import cirl.data.prepare as prepare_module

    real_encode = prepare_module.encode_png
    calls = {"n": 0}

    def failing_encode(array, level=1):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt
        return real_encode(array, level)

    monkeypatch.setattr(prepare_module, "encode_png", failing_encode)
    with pytest.raises(KeyboardInterrupt):
        run(PrepareConfig(tile=64), folder_dataset, "folder", out)
    assert (out / "manifest.csv").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["p", "raw"]


def test_too_few_photos_for_split(tmp_path):
    write_pair(tmp_path / "raw", "only", 64, 64, 0)
    with pytest.raises(CirlError, match="too few"):
        run(PrepareConfig(tile=64), tmp_path / "raw", "folder", tmp_path / "p")
    assert not (tmp_path / "p").exists()
