import cv2
import numpy as np
import pytest

from cirl.data.sources import list_sources, load_source
from cirl.errors import CirlError
from conftest import write_pair


def test_folder_matches_stems_across_extensions(tmp_path):
    write_pair(tmp_path, "a", 40, 30, 0, ".jpg")
    write_pair(tmp_path, "b", 40, 30, 1, ".bmp")
    write_pair(tmp_path, "c", 40, 30, 2, ".tif")
    listing = list_sources(tmp_path, "folder")
    assert [s.source_id for s in listing.sources] == ["a", "b", "c"]
    assert all(s.split is None for s in listing.sources)
    loaded = load_source(listing.sources[1])
    assert loaded.image.shape == (30, 40, 3) and loaded.mask.dtype == bool


def test_folder_reports_missing_masks_duplicates_and_orphans(tmp_path):
    write_pair(tmp_path, "good", 40, 30, 0)
    write_pair(tmp_path, "dup", 40, 30, 1, ".jpg")
    write_pair(tmp_path, "dup", 40, 30, 1, ".png")
    write_pair(tmp_path, "lonely", 40, 30, 2)
    (tmp_path / "masks" / "lonely.png").unlink()
    cv2.imwrite(str(tmp_path / "masks" / "orphan.png"), np.zeros((30, 40), np.uint8))
    listing = list_sources(tmp_path, "folder")
    assert [s.source_id for s in listing.sources] == ["good"]
    reasons = {"/".join(s.file.split("/")[-2:]): s.reason for s in listing.skipped}
    assert "duplicate image name 'dup'" in reasons["images/dup.jpg"]
    assert "duplicate image name 'dup'" in reasons["images/dup.png"]
    assert "no mask" in reasons["images/lonely.jpg"]
    assert "mask without an image" in reasons["masks/orphan.png"]


def test_folder_official_split(tmp_path):
    for i, stem in enumerate(["a", "b", "c", "d"]):
        write_pair(tmp_path, stem, 40, 30, i)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("a\nb.jpg\n\n# comment\n")
    (tmp_path / "splits" / "test.txt").write_text("c\nghost\n")
    listing = list_sources(tmp_path, "folder")
    assert {s.source_id: s.split for s in listing.sources} == {
        "a": "train",
        "b": "train",
        "c": "test",
    }
    assert "not listed" in listing.skipped[0].reason and listing.skipped[0].file.endswith("d.jpg")
    assert any("ghost" in note for note in listing.notes)
    (tmp_path / "splits" / "val.txt").write_text("a\n")
    with pytest.raises(CirlError, match=r"val.txt:1: 'a' is already listed in train.txt"):
        list_sources(tmp_path, "folder")


def test_empty_unknown_and_missing(tmp_path):
    with pytest.raises(CirlError, match="does not exist"):
        list_sources(tmp_path / "nope", "folder")
    with pytest.raises(
        CirlError, match="unknown format 'coco'; valid formats are: folder, cfd, drive"
    ):
        list_sources(tmp_path, "coco")
    with pytest.raises(CirlError, match="missing images/ folder"):
        list_sources(tmp_path, "folder")
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(CirlError, match="no usable image/annotation pairs"):
        list_sources(tmp_path, "folder")


def test_mask_of_another_size_names_both_files(tmp_path):
    write_pair(tmp_path, "a", 40, 30, 0)
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), np.zeros((31, 40), np.uint8))
    (source,) = list_sources(tmp_path, "folder").sources
    with pytest.raises(CirlError, match=r"a.png: mask is 40x31 but image .*a.jpg is 40x30"):
        load_source(source)


def test_cfd_layout(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "seg").mkdir()
    for stem in ("001", "002", "003"):
        cv2.imwrite(str(tmp_path / "image" / f"{stem}.jpg"), np.full((3, 5, 3), 128, np.uint8))
    (tmp_path / "seg" / "001.seg").write_text(
        "width 5\nheight 3\nsegments 2\ndata\n0 0 0 4\n1 1 0 4\n0 2 0 4\n"
    )
    listing = list_sources(tmp_path, "cfd")
    assert [s.source_id for s in listing.sources] == ["001"]
    assert len(listing.skipped) == 2 and "no annotation" in listing.skipped[0].reason
    loaded = load_source(listing.sources[0])
    assert loaded.mask.tolist() == [[False] * 5, [True] * 5, [False] * 5]


def test_drive_layout_with_split_and_field_of_view(tmp_path):
    for part, number in (("training", 21), ("test", 1)):
        root = tmp_path / part
        for sub in ("images", "annotation_mask", "ignores"):
            (root / sub).mkdir(parents=True)
        cv2.imwrite(
            str(root / "images" / f"{number:02d}_{part}.tif"), np.zeros((20, 24, 3), np.uint8)
        )
        vessel = np.zeros((20, 24), np.uint8)
        vessel[10, 5:20] = 255
        cv2.imwrite(str(root / "annotation_mask" / f"{number:02d}_manual1.png"), vessel)
        fov = np.zeros((20, 24), np.uint8)
        cv2.circle(fov, (12, 10), 9, 255, -1)
        cv2.imwrite(str(root / "ignores" / f"{number:02d}_{part}_mask.png"), fov)
    listing = list_sources(tmp_path, "drive")
    assert {(s.source_id, s.split) for s in listing.sources} == {
        ("train_21", "train"),
        ("test_01", "test"),
    }
    loaded = load_source(listing.sources[0])
    assert loaded.valid is not None and loaded.valid[10, 12] and not loaded.valid[0, 0]
