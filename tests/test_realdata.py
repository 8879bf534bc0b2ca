"""Real-data tier: prepare the real datasets under ../shared/datasets and check the counts."""

import json

import pytest

from cirl.data.manifest import read_manifest
from cirl.data.prepare import PrepareConfig, run

pytestmark = pytest.mark.realdata


def test_prepare_deepcrack_honours_official_split(datasets_dir, tmp_path):
    root = datasets_dir / "deepcrack"
    result = run(PrepareConfig(workers=2), root, "folder", tmp_path / "dc")
    official = {
        split: set((root / "splits" / f"{split}.txt").read_text().split())
        for split in ("train", "test")
    }
    assert len(official["train"]) == 300 and len(official["test"]) == 237
    assert result.sources == {"train": 284, "val": 16, "test": 237}
    # 544x384 photos at tile 512: two columns (the second shifted inward), height padded
    assert result.tiles == {"train": 568, "val": 32, "test": 474}
    for r in read_manifest(tmp_path / "dc"):
        expected = "test" if r.source_id in official["test"] else ("train", "val")
        assert r.split in expected
        assert r.source_id in official["train"] | official["test"]
        assert r.valid and r.valid_fraction == pytest.approx(384 / 512)
        assert 0 < r.crack_fraction < 0.5
    card = json.loads((tmp_path / "dc" / "dataset_card.json").read_text())
    assert card["official_split"] and card["image_sizes"] == {"544x384": 537}
    assert 0.02 < card["crack_pixel_fraction"]["train"] < 0.06


def test_prepare_cfd_reports_unlabelled_images(datasets_dir, tmp_path):
    result = run(PrepareConfig(tile=0, workers=2), datasets_dir / "cfd", "cfd", tmp_path / "cfd")
    assert sum(result.sources.values()) == 118
    assert result.sources == {"train": 106, "val": 6, "test": 6}
    assert len(result.skipped) == 37
    assert all("no annotation" in s.reason for s in result.skipped)
    records = read_manifest(tmp_path / "cfd")
    assert len(records) == 118
    assert all((r.x1, r.y1, r.valid) == (480, 320, "") for r in records)
    first = next(r for r in records if r.source_id == "001")
    assert first.crack_fraction == pytest.approx(1831 / (480 * 320), abs=1e-6)
