"""Metrics and report: hand-computed tiny masks, histogram consistency, report files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from cirl.method.metrics import SegmentationMetrics, disk, prf_scores
from cirl.method.report import (
    FALSE_POSITIVE,
    HIT,
    MISS,
    PER_IMAGE_COLUMNS,
    render_overlay,
    select_overlay_names,
    write_report,
)


def masks(*rows: str) -> np.ndarray:
    """A bool mask from strings of '.' and '#'."""
    return np.array([[c == "#" for c in row] for row in rows])


def test_per_image_scores_by_hand():
    truth = masks("....", "####", "....", "....")
    pred = masks("....", "##..", "#...", "....")
    metrics = SegmentationMetrics()
    metrics.add("a", pred.astype(float), truth)
    row = metrics.per_image()[0]
    # 3 predicted, 2 of them crack; 4 crack pixels.
    assert row["precision"] == pytest.approx(2 / 3)
    assert row["recall"] == pytest.approx(1 / 2)
    assert row["f1"] == pytest.approx(4 / 7)
    assert row["iou"] == pytest.approx(2 / 5)
    assert (row["crack_pixels"], row["predicted_pixels"], row["valid_pixels"]) == (4, 3, 16)
    summary = metrics.summary()
    assert summary["f1"] == pytest.approx(4 / 7)
    assert summary["pooled"]["f1"] == pytest.approx(4 / 7)


def test_threshold_is_greater_or_equal():
    metrics = SegmentationMetrics()
    metrics.add("a", np.array([[0.5, 0.4999]]), np.array([[True, True]]))
    assert metrics.per_image()[0]["predicted_pixels"] == 1
    assert "probability >= 0.5" in metrics.summary()["protocol"]


def test_pooled_and_mean_differ():
    metrics = SegmentationMetrics()
    # a: 2 crack pixels, both found, plus 6 false positives: P 1/4, R 1, F1 0.4, IoU 1/4.
    metrics.add("a", masks("####", "####").astype(float), masks("##..", "...."))
    # b: 4 crack pixels, 2 found, nothing wrong: P 1, R 1/2, F1 2/3, IoU 1/2.
    metrics.add("b", masks("##..", "....").astype(float), masks("####", "...."))
    summary = metrics.summary()
    assert summary["precision"] == pytest.approx(0.625)
    assert summary["recall"] == pytest.approx(0.75)
    assert summary["f1"] == pytest.approx((0.4 + 2 / 3) / 2)
    assert summary["iou"] == pytest.approx(0.375)
    # Pooled: 4 hits of 10 predicted, 4 of 6 crack pixels found.
    assert summary["pooled"]["precision"] == pytest.approx(0.4)
    assert summary["pooled"]["recall"] == pytest.approx(2 / 3)
    assert summary["pooled"]["f1"] == pytest.approx(0.5)
    assert summary["pooled"]["iou"] == pytest.approx(4 / 12)
    assert summary["images"] == 2


def test_ods_ois_ap_by_hand():
    metrics = SegmentationMetrics()
    # F1 by threshold: <=0.1: 2/3; <=0.3: 0.8; <=0.6: 0.5; <=0.9: 2/3; above: 0.
    metrics.add("a", np.array([[0.9, 0.3, 0.6, 0.1]]), np.array([[1, 1, 0, 0]]))
    summary = metrics.summary()
    # Best 0.8 on (0.1, 0.3]; ties resolved towards 0.5.
    assert summary["ods"]["f1"] == pytest.approx(0.8)
    assert summary["ods"]["threshold"] == pytest.approx(0.3)
    assert summary["ods"]["precision"] == pytest.approx(2 / 3)
    assert summary["ois"] == pytest.approx(0.8)
    # sklearn average_precision: 0.5 * 1 (at 0.9) + 0.5 * 2/3 (at 0.3).
    assert summary["ap"] == pytest.approx(5 / 6)
    # Second image: best F1 1.0 on (0.1, 0.2].
    metrics.add("b", np.array([[0.2, 0.1]]), np.array([[1, 0]]))
    rows = metrics.per_image()
    assert rows[1]["best_f1"] == pytest.approx(1.0)
    assert rows[1]["best_threshold"] == pytest.approx(0.2)
    assert metrics.summary()["ois"] == pytest.approx(0.9)


def reference_ap(prob: np.ndarray, truth: np.ndarray) -> float:
    """sklearn's step-wise average precision over every distinct score."""
    scores, labels = prob.ravel(), truth.ravel()
    ap, last_recall = 0.0, 0.0
    for t in np.unique(scores)[::-1]:
        pred = scores >= t
        precision = (pred & labels).sum() / pred.sum()
        recall = (pred & labels).sum() / labels.sum()
        ap += (recall - last_recall) * precision
        last_recall = recall
    return ap


def test_ap_matches_step_wise_reference_on_grid_scores():
    rng = np.random.default_rng(3)
    truth = rng.random((3, 20, 20)) < 0.2
    prob = (truth * 30 + rng.integers(0, 71, truth.shape)) / 100  # exactly grid values
    metrics = SegmentationMetrics(thresholds=99)
    for i in range(3):
        metrics.add(str(i), prob[i], truth[i])
    assert metrics.summary()["ap"] == pytest.approx(reference_ap(prob, truth), abs=1e-12)


def test_perfect_and_inverted_probabilities():
    rng = np.random.default_rng(0)
    perfect = SegmentationMetrics()
    inverted = SegmentationMetrics()
    crack = valid = 0
    for i in range(4):
        truth = rng.random((16, 16)) < 0.1
        truth[0, 0] = True
        perfect.add(str(i), truth.astype(float), truth)
        inverted.add(str(i), 1.0 - truth, truth)
        crack, valid = crack + truth.sum(), valid + truth.size
    summary = perfect.summary()
    for key in ("f1", "precision", "recall", "iou", "ois", "ap"):
        assert summary[key] == pytest.approx(1.0)
    assert summary["pooled"]["f1"] == pytest.approx(1.0)
    assert summary["ods"] == pytest.approx(
        {"f1": 1.0, "threshold": 0.5, "precision": 1.0, "recall": 1.0}
    )
    summary = inverted.summary()
    assert summary["f1"] == summary["ods"]["f1"] == summary["ois"] == 0.0
    # Only the "everything predicted" end of the curve has recall, at the crack fraction.
    assert summary["ap"] == pytest.approx(crack / valid)


def test_valid_mask_excludes_pixels():
    truth = masks("#..#", "#..#")
    prob = masks("#.##", "#.##").astype(float)
    valid = masks("###.", "###.")
    metrics = SegmentationMetrics()
    metrics.add("masked", prob, truth, valid)
    cropped = SegmentationMetrics()
    cropped.add("cropped", prob[:, :3], truth[:, :3])
    assert metrics.per_image()[0] == {**cropped.per_image()[0], "name": "masked"}
    row = metrics.per_image()[0]
    assert (row["valid_pixels"], row["crack_pixels"], row["predicted_pixels"]) == (6, 2, 4)
    assert row["precision"] == pytest.approx(0.5)
    assert row["recall"] == pytest.approx(1.0)


@pytest.mark.parametrize("empty_f1", [0.0, 1.0])
def test_empty_image_rule(empty_f1):
    metrics = SegmentationMetrics(empty_f1=empty_f1)
    metrics.add("empty", np.zeros((4, 4)), np.zeros((4, 4), bool))
    metrics.add("false alarm", np.eye(4), np.zeros((4, 4), bool))
    metrics.add("missed", np.zeros((4, 4)), np.eye(4, dtype=bool))
    empty, false_alarm, missed = metrics.per_image()
    assert empty["f1"] == empty["iou"] == empty_f1
    assert empty["precision"] == empty["recall"] == 0.0
    assert false_alarm["f1"] == missed["f1"] == 0.0
    assert false_alarm["precision"] == missed["recall"] == 0.0
    summary = metrics.summary()
    assert summary["f1"] == pytest.approx(empty_f1 / 3)
    assert f"F1 = IoU = {empty_f1:g}" in summary["protocol"]
    assert summary["settings"]["empty_f1"] == empty_f1


def test_empty_f1_only_zero_or_one():
    with pytest.raises(ValueError, match="empty_f1"):
        SegmentationMetrics(empty_f1=0.5)


def test_tolerance_forgives_a_one_pixel_shift():
    truth = np.zeros((12, 12), bool)
    truth[2:10, 5] = True
    shifted = np.roll(truth, 1, axis=1).astype(float)
    strict = SegmentationMetrics()
    strict.add("a", shifted, truth)
    relaxed = SegmentationMetrics(tolerance=2)
    relaxed.add("a", shifted, truth)
    assert strict.summary()["f1"] == 0.0
    summary = relaxed.summary()
    assert summary["f1"] == summary["ods"]["f1"] == summary["ois"] == pytest.approx(1.0)
    assert summary["ap"] == pytest.approx(1.0)
    assert "tolerance 2 px" in summary["protocol"]
    far = SegmentationMetrics(tolerance=2)
    far.add("a", np.roll(truth, 3, axis=1).astype(float), truth)
    assert far.summary()["f1"] == 0.0


def test_tolerance_is_euclidean_and_asymmetric():
    truth = np.zeros((9, 9), bool)
    truth[4, 4] = True
    near, diagonal = np.zeros((9, 9)), np.zeros((9, 9))
    near[4, 6] = 1.0  # distance 2
    diagonal[5, 6] = 1.0  # distance sqrt(5) > 2
    metrics = SegmentationMetrics(tolerance=2)
    metrics.add("near", near, truth)
    metrics.add("diagonal", diagonal, truth)
    assert [r["f1"] for r in metrics.per_image()] == [1.0, 0.0]
    # A thin prediction on a 3-pixel-wide crack: every crack pixel is within 1 px of it.
    wide = np.zeros((9, 9), bool)
    wide[:, 3:6] = True
    thin = np.zeros((9, 9))
    thin[:, 4] = 1.0
    for tolerance, recall in ((0, 1 / 3), (2, 1.0)):
        metrics = SegmentationMetrics(tolerance=tolerance)
        metrics.add("thin", thin, wide)
        row = metrics.per_image()[0]
        assert (row["precision"], row["recall"]) == (1.0, pytest.approx(recall))


@pytest.mark.parametrize("tolerance", [0, 2])
def test_histogram_counts_match_direct_numpy(tolerance):
    rng = np.random.default_rng(1)
    metrics = SegmentationMetrics(tolerance=tolerance, thresholds=99)
    probs, truths, valids = [], [], []
    for i in range(3):
        prob = rng.random((40, 50))
        prob[:3, :3] = [[0.5, 0.29, 0.01], [0.99, 0.0, 1.0], [0.7, 0.3, 0.49]]  # grid values
        truth = rng.random((40, 50)) < 0.1
        valid = rng.random((40, 50)) < 0.9
        metrics.add(str(i), prob, truth, valid)
        probs.append(prob)
        truths.append(truth & valid)
        valids.append(valid)
    kernel = disk(tolerance) if tolerance else np.ones((1, 1), np.uint8)
    rows = metrics.per_image()
    for t in (0.29, 0.5, 0.7):
        expected = dict.fromkeys(("hits", "predicted", "recalled", "crack"), 0)
        for i, (prob, truth, valid) in enumerate(zip(probs, truths, valids, strict=True)):
            pred = (prob >= t) & valid
            near_truth = cv2.dilate(truth.astype(np.uint8), kernel).astype(bool)
            near_pred = cv2.dilate(pred.astype(np.uint8), kernel).astype(bool)
            counts = {
                "hits": int((pred & near_truth).sum()),
                "predicted": int(pred.sum()),
                "recalled": int((truth & near_pred).sum()),
                "crack": int(truth.sum()),
            }
            for key in expected:
                expected[key] += counts[key]
            if t == 0.5:
                direct = prf_scores(**counts)
                assert rows[i]["f1"] == pytest.approx(float(direct.f1), abs=1e-12)
                assert rows[i]["predicted_pixels"] == counts["predicted"]
        assert metrics.counts_at(t) == expected
    curve = metrics.pr_curve()
    at_half = int(np.argmin(np.abs(curve.thresholds - 0.5)))
    assert curve.f1[at_half] == pytest.approx(metrics.summary()["pooled"]["f1"], abs=1e-12)


def test_threshold_grid_and_inputs_are_checked():
    assert SegmentationMetrics(thresholds=9).grid == pytest.approx(np.arange(1, 10) / 10)
    assert SegmentationMetrics(thresholds=[0.25, 0.5]).grid.tolist() == [0.25, 0.5]
    with pytest.raises(ValueError, match="increasing"):
        SegmentationMetrics(thresholds=[0.5, 0.25])
    metrics = SegmentationMetrics()
    with pytest.raises(ValueError, match="no images"):
        metrics.summary()
    with pytest.raises(ValueError, match="sigmoid"):
        metrics.add("logits", np.full((2, 2), 3.0), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="must be equal"):
        metrics.add("shape", np.zeros((2, 2)), np.zeros((2, 3), bool))
    metrics.add("a", np.zeros((2, 2)), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="twice"):
        metrics.add("a", np.zeros((2, 2)), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="not on the grid"):
        metrics.counts_at(0.505)


def test_select_overlay_names():
    rows = [
        {"name": "a/x", "f1": 0.9, "crack_pixels": 5},
        {"name": "b", "f1": 0.1, "crack_pixels": 5},
        {"name": "c", "f1": 0.5, "crack_pixels": 5},
        {"name": "empty", "f1": 0.0, "crack_pixels": 0},
    ]
    assert select_overlay_names(rows, 1) == {"best_01_a_x": "a/x", "worst_01_b": "b"}
    assert select_overlay_names(rows, 1, skip_empty_truth=False)["worst_01_empty"] == "empty"
    assert len(select_overlay_names(rows, 5)) == 6


def test_render_overlay_colours():
    image = np.full((3, 3, 3), 100, np.uint8)
    truth = masks("##.", "...", "...")
    prob = np.array([[0.9, 0.1, 0.8], [0, 0, 0], [0, 0, 0]])
    valid = masks("###", "###", "##.")
    overlay = render_overlay(image, prob, truth, valid)
    assert overlay.shape == (3, 9, 3) and overlay.dtype == np.uint8
    errors = overlay[:, 6:]
    assert tuple(errors[0, 0]) == HIT
    assert tuple(errors[0, 1]) == MISS
    assert tuple(errors[0, 2]) == FALSE_POSITIVE
    assert tuple(errors[1, 1]) == (40, 40, 40)
    assert tuple(overlay[0, 3]) == (230, 230, 230)


def filled_metrics() -> tuple[SegmentationMetrics, dict]:
    rng = np.random.default_rng(2)
    metrics = SegmentationMetrics()
    images = {}
    for i in range(4):
        truth = rng.random((24, 24)) < 0.1
        prob = np.clip(truth * 0.6 + rng.random((24, 24)) * 0.5, 0, 1)
        image = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
        metrics.add(f"tile {i}", prob, truth)
        images[f"tile {i}"] = (image, prob, truth)
    return metrics, images


def test_write_report(tmp_path: Path):
    metrics, images = filled_metrics()
    picks = select_overlay_names(metrics.per_image(), 2)
    overlays = {stem: render_overlay(*images[name]) for stem, name in picks.items()}
    out = write_report(tmp_path / "report", metrics, overlays)
    summary = json.loads((out / "metrics.json").read_text())
    for key in ("f1", "precision", "recall", "iou", "pooled", "ods", "ois", "ap", "images"):
        assert key in summary
    assert set(summary["pooled"]) == {"precision", "recall", "f1", "iou"}
    assert summary["protocol"].startswith("JTFN protocol")
    with (out / "per_image.csv").open() as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == PER_IMAGE_COLUMNS
        assert [row["name"] for row in reader] == list(images)
    assert (out / "pr_curve.png").stat().st_size > 0
    assert (out / "pr_curve.csv").read_text().startswith("threshold,precision,recall,f1")
    written = sorted(p.name for p in (out / "overlays").iterdir())
    assert written == sorted(f"{stem}.png" for stem in picks)
    assert all(stem.startswith(("best_0", "worst_0")) and " " not in stem for stem in picks)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_write_report_leaves_nothing_on_failure(tmp_path: Path):
    with pytest.raises(ValueError, match="no images"):
        write_report(tmp_path / "report", SegmentationMetrics())
    assert list(tmp_path.iterdir()) == []
    metrics, _ = filled_metrics()
    previous = write_report(tmp_path / "report", metrics)
    before = (previous / "metrics.json").read_text()
    with pytest.raises(ValueError, match="uint8"):
        write_report(tmp_path / "report", metrics, {"best_01_x": np.zeros((4, 4), np.float32)})
    assert (previous / "metrics.json").read_text() == before
    assert not (previous / "overlays").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def _photo(crack: list[float], false_positive: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """A 1-row image: crack pixels at the given probabilities, then background pixels."""
    prob = np.array([crack + false_positive + [0.0] * 10], np.float32)
    truth = np.zeros_like(prob, bool)
    truth[0, : len(crack)] = True
    return prob, truth


def test_held_out_gain_rejects_a_threshold_one_photo_chose():
    """Photo a has 40 background pixels at 0.55 (F1 1/3 at 0.5, 1 above 0.55); photos b and c
    have 3 of their 10 crack pixels at 0.52 (F1 1 at 0.5, 0.82 above 0.52). The split's best
    mean F1 is at 0.56 (0.882 against 0.778 at 0.5), but each photo scored at the threshold the
    other two choose loses: a gets 0.5 (gain 0), b and c get 0.56 (-0.176 each)."""
    metrics = SegmentationMetrics()
    metrics.add("a", *_photo([0.95] * 10, [0.55] * 40))
    metrics.add("b", *_photo([0.9] * 7 + [0.52] * 3, []))
    metrics.add("c", *_photo([0.9] * 7 + [0.52] * 3, []))
    best, f1 = metrics.best_mean_f1()
    assert best == pytest.approx(0.56) and f1 == pytest.approx((1 + 2 * 14 / 17) / 3)
    held = metrics.held_out_gain(["a", "b", "c"])
    assert held["folds"] == 3
    assert held["thresholds"] == pytest.approx({"a": 0.5, "b": 0.56, "c": 0.56})
    assert held["gain"] == pytest.approx((0 + 2 * (14 / 17 - 1)) / 3)
    # tiles of one photo are one fold: a threshold is never checked on its own photo
    assert metrics.held_out_gain(["p", "p", "p"]) == {
        "folds": 1,
        "operating": 0.5,
        "gain": None,
        "thresholds": {},
    }
    with pytest.raises(ValueError, match="2 group names for 3 images"):
        metrics.held_out_gain(["a", "b"])


def test_held_out_gain_adopts_a_threshold_every_photo_shares():
    """Every photo has background pixels at 0.55: each fold chooses 0.56 and gains."""
    metrics = SegmentationMetrics()
    for name in "abc":
        metrics.add(name, *_photo([0.95] * 10, [0.55] * 40))
    held = metrics.held_out_gain(list("abc"))
    assert held["thresholds"] == pytest.approx(dict.fromkeys("abc", 0.56))
    assert held["gain"] == pytest.approx(1 - 1 / 3)
