"""Smoke tier: the stages compose on a tiny synthetic dataset, through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from cirl.errors import CirlError
from cirl.models.checkpoint import load_checkpoint
from cirl.orchestration.cli import main

pytestmark = pytest.mark.smoke

TRAIN = [
    "--model",
    "unet-small",
    "--width",
    "8",
    "--epochs",
    "1",
    "--steps-per-epoch",
    "3",
    "--batch-size",
    "2",
    "--crop",
    "64",
    "--k",
    "4",
    "--device",
    "cpu",
    "-q",
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    assert (
        main(["synth", "--out", str(root / "raw"), "--n", "6", "--width", "256", "--height", "192"])
        == 0
    )
    assert (
        main(
            [
                "prepare",
                "--source",
                str(root / "raw"),
                "--format",
                "folder",
                "--out",
                str(root / "prep"),
                "--tile",
                "128",
                "--split",
                "0.6,0.2,0.2",
                "-q",
            ]
        )
        == 0
    )
    return root


def test_prepare_train_select_train_evaluate(prepared, capsys):
    root, data = prepared, str(prepared / "prep")
    assert main(["train", "--data", data, "--phase", "1", "--out", str(root / "p1"), *TRAIN]) == 0
    p1 = load_checkpoint(root / "p1" / "best.pt")
    assert p1["model_config"]["std_head"] and any(k.startswith("std_head.") for k in p1["model"])
    assert (
        main(
            [
                "select",
                "--data",
                data,
                "--checkpoint",
                str(root / "p1" / "best.pt"),
                "--out",
                str(root / "sel"),
                "--device",
                "cpu",
                "-q",
            ]
        )
        == 0
    )
    summary = json.loads((root / "sel" / "summary.json").read_text())
    assert summary["marginal_pixels"] > 0 and 0 <= summary["selected_fraction"] <= 1
    assert (root / "sel" / "overview.png").stat().st_size > 0
    assert (
        main(
            [
                "train",
                "--data",
                data,
                "--phase",
                "2",
                "--init",
                str(root / "p1" / "best.pt"),
                "--ambiguity",
                str(root / "sel"),
                "--out",
                str(root / "p2"),
                *TRAIN,
            ]
        )
        == 0
    )
    p2 = load_checkpoint(root / "p2" / "best.pt")
    assert not p2["model_config"]["std_head"] and not any(
        k.startswith("std_head.") for k in p2["model"]
    )
    assert p2["provenance"]["init"].endswith("best.pt")
    assert (
        main(
            [
                "evaluate",
                "--data",
                data,
                "--checkpoint",
                str(root / "p2" / "best.pt"),
                "--out",
                str(root / "eval"),
                "--device",
                "cpu",
                "-q",
            ]
        )
        == 0
    )
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    for key in ("f1", "precision", "recall"):
        assert 0.0 <= metrics[key] <= 1.0
    assert "0.5" in metrics["protocol"]
    assert (root / "eval" / "per_image.csv").exists() and (root / "eval" / "pr_curve.png").exists()
    capsys.readouterr()


def test_bce_baseline_has_no_std_head(prepared):
    assert (
        main(
            [
                "train",
                "--data",
                str(prepared / "prep"),
                "--loss",
                "bce",
                "--out",
                str(prepared / "bce"),
                *TRAIN,
            ]
        )
        == 0
    )
    ckpt = load_checkpoint(prepared / "bce" / "last.pt")
    assert not ckpt["model_config"]["std_head"]


def test_resume_continues_exactly(prepared):
    from cirl.method.train import TrainConfig, run

    cfg = TrainConfig(
        model="unet-small", width=8, epochs=2, steps_per_epoch=2, crop=64, device="cpu", seed=5
    )
    data = prepared / "prep"
    run(cfg, data, prepared / "straight", progress=False)
    one = TrainConfig(**{**cfg.__dict__, "epochs": 1})
    run(one, data, prepared / "resumed", progress=False)
    assert load_checkpoint(prepared / "resumed" / "last.pt")["epoch"] == 0
    other = TrainConfig(**{**cfg.__dict__, "lr": 1e-4})
    with pytest.raises(CirlError, match=r"other parameters \(lr\)"):
        run(other, data, prepared / "resumed", resume=True, progress=False)
    # extending the run to 2 epochs gives exactly the run trained for 2 epochs straight
    result = run(cfg, data, prepared / "resumed", resume=True, progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2]
    a = load_checkpoint(prepared / "straight" / "last.pt")["model"]
    b = load_checkpoint(prepared / "resumed" / "last.pt")["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # resuming a finished run trains nothing; shrinking it is refused
    again = run(cfg, data, prepared / "resumed", resume=True, progress=False)
    assert len(again.history) == 2
    with pytest.raises(CirlError, match="already holds 2 epochs"):
        run(one, data, prepared / "resumed", resume=True, progress=False)


def test_interrupted_run_of_the_main_recipe_resumes_exactly(prepared):
    """Cosine schedule, class weights, crack-centred crops, bf16 and NHWC: a run cut after its
    first epoch and resumed ends with the weights of the run that was never interrupted."""
    from cirl.method.train import TrainConfig, run

    recipe = {
        "lr_schedule": "cosine",
        "pos_weight": 10.0,
        "crack_crops": 0.5,
        "precision": "bf16",
        "channels_last": True,
    }
    cfg = TrainConfig(
        model="unet-small", width=8, epochs=2, steps_per_epoch=3, crop=64, device="cpu", **recipe
    )
    data = prepared / "prep"
    run(cfg, data, prepared / "recipe_straight", progress=False)

    class CutError(Exception):
        pass

    def stop(record):
        raise CutError

    with pytest.raises(CutError):
        run(cfg, data, prepared / "recipe_cut", progress=False, on_epoch=stop)
    assert load_checkpoint(prepared / "recipe_cut" / "last.pt")["epoch"] == 0
    result = run(cfg, data, prepared / "recipe_cut", resume=True, progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2]
    a = load_checkpoint(prepared / "recipe_straight" / "last.pt")["model"]
    b = load_checkpoint(prepared / "recipe_cut" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_and_keeps_checkpoint(prepared, monkeypatch):
    from cirl.method import train

    cfg = train.TrainConfig(
        model="unet-small", width=8, epochs=2, steps_per_epoch=2, crop=64, device="cpu", loss="bce"
    )
    out = prepared / "nan"
    train.run(
        train.TrainConfig(**{**cfg.__dict__, "epochs": 1}), prepared / "prep", out, progress=False
    )
    before = (out / "last.pt").read_bytes()
    real = train.compute_loss

    def exploding(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        return loss * float("nan"), parts

    monkeypatch.setattr(train, "compute_loss", exploding)
    with pytest.raises(CirlError, match=r"loss became nan at epoch 1 step 1.*last good checkpoint"):
        train.run(cfg, prepared / "prep", out, progress=False)
    assert (out / "last.pt").read_bytes() == before


def test_phase2_requires_its_inputs(prepared):
    from cirl.method.train import TrainConfig, run

    with pytest.raises(CirlError, match="phase 2 needs --init"):
        run(TrainConfig(phase=2), prepared / "prep", prepared / "x", progress=False)
