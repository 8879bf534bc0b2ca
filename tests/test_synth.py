"""Unit tier: the synthetic dataset is deterministic and its label noise stays near cracks."""

import hashlib
import json

import cv2
import numpy as np
import pytest

from cirl.data.synth import SynthConfig, draw_crack, render_sample, run
from cirl.errors import CirlError

SMALL = SynthConfig(n=3, width=320, height=240)


def _digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_files(tmp_path):
    run(SMALL, tmp_path / "a")
    run(SMALL, tmp_path / "again")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "again")
    # the pixels do not depend on the number of worker processes (the card records it)
    run(SynthConfig(**{**SMALL.__dict__, "workers": 2}), tmp_path / "b")
    pixels = {k: v for k, v in _digest(tmp_path / "a").items() if k != "synth_card.json"}
    assert pixels == {k: v for k, v in _digest(tmp_path / "b").items() if k != "synth_card.json"}
    run(SynthConfig(**{**SMALL.__dict__, "seed": 1}), tmp_path / "c")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_image_does_not_depend_on_n():
    one, _, _ = render_sample(SynthConfig(n=1, width=200, height=160), 0)
    five, _, _ = render_sample(SynthConfig(n=5, width=200, height=160), 0)
    assert np.array_equal(one, five)


def test_folder_layout_and_card(tmp_path):
    result = run(SMALL, tmp_path / "raw")
    images = sorted((tmp_path / "raw" / "images").iterdir())
    masks = sorted((tmp_path / "raw" / "masks").iterdir())
    assert (
        [p.stem for p in images]
        == [p.stem for p in masks]
        == [
            "synth_0000",
            "synth_0001",
            "synth_0002",
        ]
    )
    image = cv2.imread(str(images[0]))
    mask = cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED)
    assert image.shape == (240, 320, 3) and mask.shape == (240, 320)
    assert set(np.unique(mask).tolist()) <= {0, 255}
    card = json.loads((tmp_path / "raw" / "synth_card.json").read_text())
    assert card["images"] == 3 and card["config"]["width"] == 320
    assert result.crack_fraction == pytest.approx(card["crack_fraction_mean"], abs=1e-6)
    assert 0 < result.crack_fraction < 0.3


@pytest.mark.parametrize("index", range(4))
def test_label_noise_stays_in_the_ring_around_true_cracks(index):
    cfg = SynthConfig(n=4, width=384, height=288, label_noise=2)
    image, label, info = render_sample(cfg, index, return_truth=True)
    truth = info["truth"]
    assert truth.any()
    label = label > 0
    # label and truth differ only within label_noise (+1 for rounding) px of the true crack
    reach = 2 * cfg.label_noise + 3
    near = cv2.dilate(truth.astype(np.uint8), np.ones((reach, reach), np.uint8)) > 0
    assert not (label & ~near).any()
    # every true crack component keeps some label: noise never removes a crack
    count, parts = cv2.connectedComponents(truth.astype(np.uint8))
    for k in range(1, count):
        assert label[parts == k].any()
    # cracks are darker than the surface: the label lies on darker pixels
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(float)
    assert grey[truth].mean() < grey[~near].mean() - 5
    assert cfg.min_crack_width <= info["min_width"] <= info["max_width"] <= cfg.max_crack_width


def test_without_label_noise_label_equals_truth():
    _, label, info = render_sample(
        SynthConfig(width=200, height=160, label_noise=0), 1, return_truth=True
    )
    assert np.array_equal(label > 0, info["truth"])


def test_draw_crack_known_length_and_width():
    mask = np.zeros((100, 200), np.uint8)
    length = draw_crack(mask, [(20, 50), (180, 50)], width=5)
    assert length == pytest.approx(160)
    columns = mask[:, 100] > 0
    assert columns.sum() == 5 and np.flatnonzero(columns).tolist() == [48, 49, 50, 51, 52]
    with pytest.raises(ValueError, match="width"):
        draw_crack(mask, [(0, 0), (5, 5)], width=0)


@pytest.mark.parametrize(
    ("key", "value"),
    [("n", 0), ("width", 10), ("max_crack_width", 0), ("label_noise", 9), ("jpeg_quality", 0)],
)
def test_bad_parameters_are_rejected_by_key(key, value):
    from cirl.config import from_mapping

    with pytest.raises(CirlError, match=key):
        from_mapping(SynthConfig, {key: value}, "params.yaml:synth")
