"""Data integrity on every read: manifest paths stay in the prepared folder, and the files a
stage reads match the manifest's SHA-256 (train, select and evaluate check them first)."""

from __future__ import annotations

import csv
import io
import re
import shutil
from pathlib import Path

import cv2
import pytest

from cirl.data.manifest import read_manifest, verify_files
from cirl.errors import CirlError
from cirl.method import evaluate, selection, train
from cirl.models import build_model
from cirl.models.checkpoint import file_sha256, save_checkpoint

TRAIN = {
    "model": "unet-small",
    "width": 8,
    "epochs": 1,
    "steps_per_epoch": 1,
    "crop": 64,
    "loss": "bce",
    "device": "cpu",
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A tiny prepared folder and a phase-I checkpoint next to it (never modified)."""
    from cirl.data.prepare import PrepareConfig
    from cirl.data.prepare import run as prepare
    from cirl.data.synth import SynthConfig
    from cirl.data.synth import run as synth

    root = tmp_path_factory.mktemp("integrity")
    synth(SynthConfig(n=4, width=256, height=192), root / "raw")
    prepare(PrepareConfig(tile=128, split=(0.5, 0.25, 0.25)), root / "raw", "folder", root / "prep")
    model = build_model("unet-small", base_width=4, std_head=True)
    save_checkpoint(
        root / "model.pt",
        {"model": model.state_dict(), "model_config": dict(model.config), "epoch": 0},
    )
    return root


@pytest.fixture
def prep(pristine, tmp_path) -> Path:
    """A copy of the prepared folder that a test may damage."""
    return Path(shutil.copytree(pristine / "prep", tmp_path / "prep"))


def _rewrite_row(prep: Path, index: int, **changes: str) -> tuple[str, int]:
    """Change columns of data row ``index``; returns its tile id and its line number."""
    rows = list(csv.DictReader(io.StringIO((prep / "manifest.csv").read_text())))
    rows[index].update(changes)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    (prep / "manifest.csv").write_text(buf.getvalue())
    return rows[index]["tile_id"], index + 2


def _tamper(prep: Path, split: str) -> tuple[Path, str, str]:
    """Change one pixel of the first image of ``split`` (still a valid PNG).

    Returns:
        The file, the manifest's SHA-256 and the new one.
    """
    record = next(r for r in read_manifest(prep) if r.split == split)
    path = prep / record.image
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    image[0, 0] = 255 - image[0, 0]
    assert cv2.imwrite(str(path), image)
    return path, record.image_sha256, file_sha256(path)


def test_clean_data_passes(prep):
    records = read_manifest(prep)
    files = sum(bool(r.image) + bool(r.mask) + bool(r.valid) for r in records)
    assert verify_files(prep, records) == files
    tests = [r for r in records if r.split == "test"]
    assert verify_files(prep, records, split="test") == 2 * len(tests) + sum(
        bool(r.valid) for r in tests
    )
    assert verify_files(prep, records, split=("train", "val")) == files - verify_files(
        prep, records, split="test"
    )


def test_escaping_path_is_refused_naming_the_row(pristine, prep, tmp_path):
    tile_id, line = _rewrite_row(prep, 2, image="../../../../etc/hostname")
    expected = (
        rf"manifest\.csv:{line} \(tile '{tile_id}'\).*outside the prepared folder.*cirl prepare"
    )
    with pytest.raises(CirlError, match=expected):
        read_manifest(prep)
    # the reported case: evaluate must not open the file outside
    with pytest.raises(CirlError, match=expected):
        evaluate.run(
            evaluate.EvaluateConfig(device="cpu"),
            prep,
            pristine / "model.pt",
            tmp_path / "eval",
            progress=False,
        )
    assert not (tmp_path / "eval").exists()


def test_absolute_path_is_refused(prep):
    tile_id, line = _rewrite_row(prep, 0, mask=str((prep / "masks").resolve() / "x.png"))
    with pytest.raises(CirlError, match=rf"manifest\.csv:{line} \(tile '{tile_id}'\).*absolute"):
        read_manifest(prep)


def test_symlink_escaping_is_refused(prep, tmp_path):
    record = read_manifest(prep)[1]
    outside = tmp_path / "outside.png"
    shutil.copyfile(prep / record.image, outside)
    (prep / record.image).unlink()
    (prep / record.image).symlink_to(outside)
    with pytest.raises(CirlError, match=rf"manifest\.csv:3 \(tile '{record.tile_id}'\).*symlink"):
        read_manifest(prep)


def test_links_that_stay_inside_are_accepted(prep, tmp_path):
    """A prepared folder reached through a symlink, or a tile linked within it, is fine."""
    link = tmp_path / "linked_prep"
    link.symlink_to(prep)
    assert len(read_manifest(link)) == len(read_manifest(prep))
    first, second = read_manifest(prep)[:2]
    (prep / second.mask).unlink()
    (prep / second.mask).symlink_to(prep / first.mask)
    assert len(read_manifest(prep)) == len(read_manifest(link))


def test_tampered_tile_is_detected_by_train_select_and_evaluate(pristine, prep, tmp_path):
    path, expected, actual = _tamper(prep, "train")
    message = rf"{re.escape(str(path))}: SHA-256 mismatch.*{expected}.*{actual}.*cirl prepare"
    with pytest.raises(CirlError, match=message):
        train.run(train.TrainConfig(**TRAIN), prep, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()
    with pytest.raises(CirlError, match=message):
        selection.run(
            selection.SelectConfig(device="cpu"),
            prep,
            pristine / "model.pt",
            tmp_path / "sel",
            progress=False,
        )
    path, expected, actual = _tamper(prep, "test")
    with pytest.raises(CirlError, match=rf"{re.escape(str(path))}: SHA-256 mismatch.*{actual}"):
        evaluate.run(
            evaluate.EvaluateConfig(device="cpu"),
            prep,
            pristine / "model.pt",
            tmp_path / "eval",
            progress=False,
        )


def test_missing_tile_is_named(prep):
    record = next(r for r in read_manifest(prep) if r.split == "val")
    (prep / record.mask).unlink()
    with pytest.raises(CirlError, match=rf"{re.escape(str(prep / record.mask))}: cannot read"):
        verify_files(prep, read_manifest(prep), split="val")


def test_verify_data_false_skips_the_check(pristine, prep, tmp_path):
    _tamper(prep, "train")
    _tamper(prep, "test")
    cfg = train.TrainConfig(**TRAIN, verify_data=False)
    result = train.run(cfg, prep, tmp_path / "run", progress=False)
    assert result.last.is_file()
    summary = evaluate.run(
        evaluate.EvaluateConfig(device="cpu", overlays=0, verify_data=False),
        prep,
        pristine / "model.pt",
        tmp_path / "eval",
        progress=False,
    )
    assert 0.0 <= summary["f1"] <= 1.0
