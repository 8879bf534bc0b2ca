"""Unit tier: each training arm combines the losses as the method says (Eq. 7 and Eq. 16)."""

from __future__ import annotations

import pytest
import torch

from cirl.method.losses import aseg_loss, ci_loss, masked_bce
from cirl.method.train import TrainConfig, compute_loss
from cirl.models import SegOutput


def _batch_and_output(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n, h, w = 2, 16, 16
    mask = (torch.rand(n, 1, h, w, generator=g) > 0.8).float()
    valid = torch.ones(n, 1, h, w)
    valid[:, :, :, -3:] = 0  # padding on the right
    ambiguous = (torch.rand(n, 1, h, w, generator=g) > 0.7).float() * (1 - mask)
    out = SegOutput(
        logits=torch.randn(n, 1, h, w, generator=g),
        log_var=torch.randn(n, 1, h, w, generator=g),
        features=torch.randn(n, 8, h, w, generator=g),
    )
    batch = {"mask": mask, "valid": valid, "ambiguous": ambiguous}
    return batch, out


def test_bce_baseline_is_bce_on_valid_pixels():
    batch, out = _batch_and_output()
    loss, parts = compute_loss(TrainConfig(loss="bce"), out, batch, None)
    assert loss.item() == pytest.approx(
        masked_bce(out.logits, batch["mask"], batch["valid"]).item()
    )
    assert set(parts) == {"bce"}


def test_phase1_adds_aseg_with_its_weight():
    batch, out = _batch_and_output()
    cfg = TrainConfig(loss="cirl", phase=1, lam=0.3, aseg_weight=0.5)
    loss, parts = compute_loss(cfg, out, batch, None)
    bce = masked_bce(out.logits, batch["mask"], batch["valid"])
    aseg = aseg_loss(torch.sigmoid(out.logits), batch["mask"], out.log_var, 0.3, batch["valid"])
    assert loss.item() == pytest.approx((bce + 0.5 * aseg).item(), rel=1e-6)
    assert parts["aseg"] == pytest.approx(aseg.item())


def test_phase2_is_bce_outside_a_plus_beta_ci_inside():
    batch, out = _batch_and_output()
    cfg = TrainConfig(loss="cirl", phase=2, beta=0.2, k=3, max_pixels=10_000)
    loss, parts = compute_loss(cfg, out, batch, torch.Generator().manual_seed(0))
    a = batch["ambiguous"] * batch["valid"]
    bce = masked_bce(out.logits, batch["mask"], batch["valid"] * (1 - a))
    ci = ci_loss(torch.sigmoid(out.logits), out.features, a > 0.5, k=3, max_pixels=10_000)
    assert loss.item() == pytest.approx((bce + 0.2 * ci).item(), rel=1e-6)
    assert parts["ci"] == pytest.approx(ci.item())
    # the labels of A are never used: flipping them changes nothing
    flipped = dict(batch, mask=torch.where(a > 0, 1 - batch["mask"], batch["mask"]))
    again, _ = compute_loss(cfg, out, flipped, torch.Generator().manual_seed(0))
    assert again.item() == pytest.approx(loss.item(), rel=1e-6)


def test_class_balance_weights_crack_pixels_and_dice_is_added_on_supervised_pixels():
    from cirl.method.losses import soft_dice_loss

    batch, out = _batch_and_output()
    cfg = TrainConfig(loss="bce", pos_weight=4.0, dice=0.5)
    loss, parts = compute_loss(cfg, out, batch, None)
    mask, valid = batch["mask"], batch["valid"]
    per_pixel = torch.nn.functional.binary_cross_entropy_with_logits(
        out.logits, mask, reduction="none"
    )
    weighted = per_pixel * (1 + 3 * mask)  # crack pixels count 4 times
    bce = (weighted * valid).sum() / valid.sum()
    prob = torch.sigmoid(out.logits) * valid
    dice = 1 - (2 * (prob * mask * valid).sum() + 1) / (prob.sum() + (mask * valid).sum() + 1)
    assert parts["bce"] == pytest.approx(bce.item(), rel=1e-6)
    assert parts["dice"] == pytest.approx(dice.item(), rel=1e-6)
    assert soft_dice_loss(torch.sigmoid(out.logits), mask, valid).item() == pytest.approx(
        dice.item(), rel=1e-6
    )
    assert loss.item() == pytest.approx((bce + 0.5 * dice).item(), rel=1e-6)
    # phase II weights the BCE outside A the same way; A still contributes only through CI
    cfg2 = TrainConfig(loss="cirl", phase=2, pos_weight=4.0, k=3, max_pixels=10_000)
    _, parts2 = compute_loss(cfg2, out, batch, torch.Generator().manual_seed(0))
    a = batch["ambiguous"] * valid
    supervised = valid * (1 - a)
    assert parts2["bce"] == pytest.approx(
        ((weighted * supervised).sum() / supervised.sum()).item(), rel=1e-6
    )


def test_soft_dice_is_zero_for_a_perfect_prediction_and_of_an_empty_batch():
    from cirl.method.losses import soft_dice_loss

    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:4, 2:6] = 1
    assert soft_dice_loss(target.clone(), target).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss(1 - target, target).item() > 0.9
    empty = torch.zeros(1, 1, 8, 8)
    assert soft_dice_loss(empty, empty).item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="must match"):
        soft_dice_loss(empty, torch.zeros(1, 1, 4, 4))


def test_cosine_schedule_runs_from_lr_to_zero_and_constant_stays():
    from cirl.method.train import learning_rate

    cosine = TrainConfig(lr=1e-3, lr_schedule="cosine")
    assert learning_rate(cosine, 0, 100) == pytest.approx(1e-3)
    assert learning_rate(cosine, 50, 100) == pytest.approx(5e-4)
    assert 0 < learning_rate(cosine, 99, 100) < 1e-6
    assert learning_rate(TrainConfig(lr=1e-3), 99, 100) == 1e-3
    for key, value in (("lr_schedule", "step"), ("pos_weight", 0.0), ("dice", -1.0)):
        with pytest.raises(ValueError, match=key):
            TrainConfig(**{key: value})
