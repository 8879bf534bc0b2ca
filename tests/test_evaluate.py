"""Contract tier: evaluate and select wired to the data contract, checked with oracle models."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch

from cirl.data.prepare import PrepareConfig
from cirl.data.prepare import run as prepare
from cirl.method import evaluate, selection
from cirl.models import build_model
from cirl.models.checkpoint import file_sha256, save_checkpoint


@pytest.fixture(scope="module")
def oracle_data(tmp_path_factory):
    """Photos that are their own masks (white crack on black), prepared whole."""
    root = tmp_path_factory.mktemp("oracle")
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / "raw" / sub).mkdir(parents=True)
    for i in range(8):
        mask = np.zeros((96, 128), np.uint8)
        y = int(rng.integers(10, 86))
        mask[y - 1 : y + 2, 5:120] = 255  # a horizontal crack 3 px wide
        cv2.imwrite(str(root / "raw" / "images" / f"p{i}.png"), cv2.merge([mask] * 3))
        cv2.imwrite(str(root / "raw" / "masks" / f"p{i}.png"), mask)
    prepare(PrepareConfig(tile=0, split=(0.5, 0.25, 0.25)), root / "raw", "folder", root / "prep")
    model = build_model("unet-small", base_width=4, std_head=True)
    payload = {
        "model": model.state_dict(),
        "model_config": dict(model.config),
        "config": {"loss": "cirl", "phase": 1},
        "epoch": 0,
    }
    save_checkpoint(root / "model.pt", payload)
    return root


def _oracle(shift: int = 0, log_var: float | None = None):
    def predict_prob(model, image, with_log_var=False):
        prob = image[:, :1].clone()
        if shift:
            prob = torch.roll(prob, shifts=shift, dims=2)
        if not with_log_var:
            return prob
        return prob, torch.full_like(prob, log_var if log_var is not None else 0.0)

    return predict_prob


def test_perfect_prediction_scores_one(oracle_data, monkeypatch):
    monkeypatch.setattr("cirl.models.inference.predict_prob", _oracle())
    cfg = evaluate.EvaluateConfig(device="cpu", overlays=1)
    summary = evaluate.run(cfg, oracle_data / "prep", oracle_data / "model.pt", oracle_data / "e")
    assert summary["f1"] == pytest.approx(1.0) and summary["ods"]["f1"] == pytest.approx(1.0)
    assert summary["images"] == 2 and "0.5" in summary["protocol"]
    assert summary["provenance"]["checkpoint_sha256"] == file_sha256(oracle_data / "model.pt")
    written = json.loads((oracle_data / "e" / "metrics.json").read_text())
    assert written["f1"] == summary["f1"]
    with (oracle_data / "e" / "per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(float(r["f1"]) == 1.0 for r in rows)
    assert sorted(p.name.split("_")[0] for p in (oracle_data / "e" / "overlays").iterdir()) == [
        "best",
        "worst",
    ]


def test_shifted_prediction_is_forgiven_only_with_a_tolerance(oracle_data, monkeypatch):
    monkeypatch.setattr("cirl.models.inference.predict_prob", _oracle(shift=2))
    cfg = evaluate.EvaluateConfig(device="cpu", tolerance=2, overlays=0)
    summary = evaluate.run(cfg, oracle_data / "prep", oracle_data / "model.pt", oracle_data / "t")
    # a 3 px line moved down by 2 px overlaps on 1 row of 3: P = R = F1 = 1/3
    assert summary["f1"] == pytest.approx(1 / 3)
    assert summary["tolerant"]["f1"] == pytest.approx(1.0)
    assert "tolerance 2 px" in summary["tolerant"]["protocol"]


def test_select_keeps_high_variance_ring_pixels_only(oracle_data, monkeypatch):
    # sigma^2 = e^0 = 1 everywhere: A is the whole marginal ring at gamma 0.4, empty at 2
    monkeypatch.setattr("cirl.models.inference.predict_prob", _oracle(log_var=0.0))
    cfg = selection.SelectConfig(gamma=0.4, device="cpu")
    result = selection.run(cfg, oracle_data / "prep", oracle_data / "model.pt", oracle_data / "s")
    assert result.tiles == 4 and result.selected_fraction == 1.0
    ambiguous = sorted((oracle_data / "s" / "ambiguous").iterdir())
    mask = cv2.imread(str(oracle_data / "prep" / "masks" / ambiguous[0].name), 0) > 0
    a = cv2.imread(str(ambiguous[0]), 0) > 0
    ring = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~mask
    assert np.array_equal(a, ring)
    high = selection.run(
        selection.SelectConfig(gamma=2.0, device="cpu"),
        oracle_data / "prep",
        oracle_data / "model.pt",
        oracle_data / "s2",
    )
    assert high.selected_pixels == 0 and high.marginal_pixels == result.marginal_pixels


def test_select_skips_tiles_without_crack_and_gives_them_an_empty_a(tmp_path, monkeypatch):
    """A tile without crack has no marginal ring, so nothing can be selected there: the model
    is not run on it, its A is empty, and the tiles with a crack are selected as before."""
    root = tmp_path
    for sub in ("images", "masks"):
        (root / "raw" / sub).mkdir(parents=True)
    for i in range(8):
        mask = np.zeros((96, 128), np.uint8)
        if i % 2 == 0:  # even photos have a crack, odd ones none
            mask[40:43, 5:120] = 255
        cv2.imwrite(str(root / "raw" / "images" / f"p{i}.png"), cv2.merge([mask] * 3))
        cv2.imwrite(str(root / "raw" / "masks" / f"p{i}.png"), mask)
    prepare(PrepareConfig(tile=0, split=(0.5, 0.25, 0.25)), root / "raw", "folder", root / "prep")
    model = build_model("unet-small", base_width=4, std_head=True)
    payload = {"model": model.state_dict(), "model_config": dict(model.config), "epoch": 0}
    save_checkpoint(root / "model.pt", payload)
    calls = []
    oracle = _oracle(log_var=0.0)
    monkeypatch.setattr(
        "cirl.models.inference.predict_prob", lambda *a, **k: calls.append(1) or oracle(*a, **k)
    )
    cfg = selection.SelectConfig(gamma=0.4, device="cpu", split="train", verify_data=False)
    result = selection.run(cfg, root / "prep", root / "model.pt", root / "s")
    cracked = {p.stem for p in (root / "prep" / "masks").iterdir() if cv2.imread(str(p), 0).any()}
    ambiguous = {p.stem: cv2.imread(str(p), 0) for p in (root / "s" / "ambiguous").iterdir()}
    assert result.tiles == len(ambiguous) == 4  # every train tile gets a map
    assert len(calls) == len(cracked & set(ambiguous))
    assert 1 <= len(calls) <= 3  # both kinds of tile are in the train split
    for tile_id, a in ambiguous.items():
        assert a.any() == (tile_id in cracked)
    stored = {p.stem for p in (root / "s" / "log_variance").iterdir()}
    assert stored == cracked & set(ambiguous)
    assert result.selected_fraction == 1.0


def test_select_ambiguous_thresholds_variance_not_std():
    mask = np.zeros((7, 7), bool)
    mask[3, :] = True
    log_var = np.full((7, 7), np.log(0.3))  # sigma^2 = 0.3 < 0.4 < sigma = 0.55
    log_var[1, 2] = np.log(0.5)
    valid = np.ones((7, 7), bool)
    valid[5, 0] = False
    a, m, var = selection.select_ambiguous(log_var, mask, valid, gamma=0.4)
    assert np.argwhere(a).tolist() == [[1, 2]]
    assert m.sum() == 4 * 7 - 1 and not m[3].any() and not m[5, 0]
    assert var[1, 2] == pytest.approx(0.5)


def test_select_refuses_a_model_without_std_head(oracle_data, tmp_path):
    from cirl.errors import CirlError

    model = build_model("unet-small", base_width=4, std_head=False)
    save_checkpoint(
        tmp_path / "m.pt", {"model": model.state_dict(), "model_config": dict(model.config)}
    )
    with pytest.raises(CirlError, match="no std head"):
        selection.run(
            selection.SelectConfig(device="cpu"),
            oracle_data / "prep",
            tmp_path / "m.pt",
            tmp_path / "o",
        )


def test_select_by_fraction_takes_the_highest_variance_share(oracle_data, monkeypatch):
    # log-variance grows with the column: the top 30 % of the ring is its right-most part
    def predict_prob(model, image, with_log_var=False):
        prob = image[:, :1].clone()
        w = image.shape[-1]
        s = torch.linspace(-6.0, 2.0, w).expand_as(prob).clone()
        return (prob, s) if with_log_var else prob

    monkeypatch.setattr("cirl.models.inference.predict_prob", predict_prob)
    cfg = selection.SelectConfig(fraction=0.3, device="cpu")
    result = selection.run(cfg, oracle_data / "prep", oracle_data / "model.pt", oracle_data / "f")
    assert result.selected_fraction == pytest.approx(0.3, abs=0.03)
    assert np.log(result.gamma) == pytest.approx(-6.0 + 8.0 * 0.7, abs=0.3)
    summary = json.loads((oracle_data / "f" / "summary.json").read_text())
    assert summary["gamma_from"] == "fraction 0.3" and not summary["warnings"]
    # the paper's gamma on the same maps: sigma^2 > 0.4 where s > -0.92
    paper = selection.run(
        selection.SelectConfig(device="cpu"),
        oracle_data / "prep",
        oracle_data / "model.pt",
        oracle_data / "g",
    )
    assert paper.selected_fraction == pytest.approx((2.0 - np.log(0.4)) / 8.0, abs=0.05)


def test_select_warns_when_nothing_is_selected(oracle_data, monkeypatch):
    monkeypatch.setattr("cirl.models.inference.predict_prob", _oracle(log_var=-5.0))
    result = selection.run(
        selection.SelectConfig(device="cpu"),
        oracle_data / "prep",
        oracle_data / "model.pt",
        oracle_data / "n",
    )
    assert result.selected_pixels == 0
    assert "no pixel of the marginal ring" in result.warnings[0]


def test_log_variance_encoding_round_trip():
    s = np.array([-12.0, -10.0, -3.21, 0.0, 4.5, 10.0, 11.0], np.float32)
    back = selection.decode_log_var(selection.encode_log_var(s))
    assert np.allclose(back, np.clip(s, -10, 10), atol=20 / 65535)


def test_calibration_takes_the_validation_splits_best_threshold(oracle_data, monkeypatch):
    """Crack probabilities of 0.305 score nothing at 0.5; the validation split's best threshold
    (0.30, the grid's nearest to 0.5 with F1 = 1) is recorded, and the test split scored at it."""

    def weak(model, image, with_log_var=False):
        return image[:, :1] * 0.305

    monkeypatch.setattr("cirl.models.inference.predict_prob", weak)
    cfg = evaluate.EvaluateConfig(device="cpu", overlays=0)
    summary = evaluate.run(cfg, oracle_data / "prep", oracle_data / "model.pt", oracle_data / "c")
    calibration = summary["threshold_calibration"]
    assert summary["f1"] == 0.0
    assert calibration["split"] == "val" and calibration["images"] == 2
    assert calibration["threshold"] == pytest.approx(0.30) and calibration["f1"] == 1.0
    assert calibration["scored"]["split"] == "test" and calibration["scored"]["f1"] == 1.0
    assert calibration["scored"]["pooled"]["f1"] == 1.0
    none = evaluate.EvaluateConfig(device="cpu", overlays=0, calibrate="none")
    again = evaluate.run(none, oracle_data / "prep", oracle_data / "model.pt", oracle_data / "n")
    assert "threshold_calibration" not in again
    on_val = evaluate.EvaluateConfig(device="cpu", overlays=0, split="val")
    scored = evaluate.run(on_val, oracle_data / "prep", oracle_data / "model.pt", oracle_data / "v")
    assert "threshold_calibration" not in scored  # a split does not calibrate itself


def test_channels_last_runs_the_model_in_nhwc_and_scores_as_nchw(oracle_data, monkeypatch):
    """evaluate.channels_last: the model and every input in NHWC on CPU, recorded with the
    scores; the scores agree with NCHW's (the same weights, another order of the sums), and an
    evaluation recorded without the key re-scores in NCHW (cirl audit --verify)."""
    from cirl.audit.checks import _eval_config
    from cirl.audit.results import AuditConfig
    from cirl.models import inference

    seen = []
    real = inference.predict_prob

    def spy(model, image, with_log_var=False):
        seen.append(image.is_contiguous(memory_format=torch.channels_last) and image.shape[1] > 1)
        return real(model, image, with_log_var)

    monkeypatch.setattr("cirl.models.inference.predict_prob", spy)
    scores = {}
    for nhwc in (False, True):
        seen.clear()
        cfg = evaluate.EvaluateConfig(device="cpu", overlays=0, channels_last=nhwc)
        out = oracle_data / f"layout_{nhwc}"
        scores[nhwc] = evaluate.run(cfg, oracle_data / "prep", oracle_data / "model.pt", out)
        assert seen and all(seen) == nhwc and any(seen) == nhwc  # test and calibration tiles
        assert scores[nhwc]["params"]["channels_last"] is nhwc
    for key in ("f1", "precision", "recall", "ap", "ois"):
        assert scores[True][key] == pytest.approx(scores[False][key], abs=1e-6), key
    recorded = {"evaluation": {"params": {"split": "test"}}, "data": {"split": "test"}}
    assert _eval_config(recorded, AuditConfig()).channels_last is False
    recorded["evaluation"]["params"]["channels_last"] = True
    assert _eval_config(recorded, AuditConfig()).channels_last is True
