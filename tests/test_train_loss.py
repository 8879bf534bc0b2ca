"""Unit tier: each training arm combines the losses as the method says (Eq. 7 and Eq. 16)."""

from __future__ import annotations

import pytest
import torch

from cirl.losses import aseg_loss, ci_loss, masked_bce
from cirl.models import SegOutput
from cirl.train import TrainConfig, compute_loss


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
