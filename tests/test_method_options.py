"""Unit tier: the method options of issue 10 (selection rule, std head, phase-I loss, CI scale).

Each option is checked against what ``../shared/CIRL.md`` says it must do: the logistic surrogate
has Eq. 7's boundary but its optimum is sigma^2 = E[e^2] and its gradient does not vanish; the
soft clamp keeps a gradient past the bound; the batch reduction of L_CI weighs an ambiguous
pixel like a supervised one; the error rule selects the ring's confident false positives.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cirl.method.losses import (
    aseg_loss,
    ci_loss,
    clamp_log_var,
    error_ambiguous,
    marginal_region,
    marginal_region_torch,
    masked_bce,
)
from cirl.method.train import TrainConfig, _new_model, compute_loss
from cirl.models import SegOutput


def _grad_s(form: str, error: float, s: float, lam: float = 0.3) -> float:
    """d loss / d s of one pixel with squared error ``error`` (y = 0, p = sqrt(error))."""
    log_var = torch.tensor([[[[s]]]], requires_grad=True)
    prob = torch.tensor([[[[math.sqrt(error)]]]])
    aseg_loss(prob, torch.zeros_like(prob), log_var, lam, form=form).backward()
    return float(log_var.grad)


@pytest.mark.parametrize("error", [0.01, 0.2, 0.5, 0.9])
def test_logistic_surrogate_optimum_is_the_squared_error(error):
    # the gradient in s changes sign at sigma^2 = e^2: below it pushes up, above it down
    s_star = math.log(error)
    assert _grad_s("logistic", error, s_star) == pytest.approx(0.0, abs=1e-6)
    assert _grad_s("logistic", error, s_star - 1) < 0 < _grad_s("logistic", error, s_star + 1)


def test_eq7_has_no_interior_optimum_and_saturates_where_logistic_does_not():
    lam = 0.3
    # Eq. 7: one sign everywhere (e^2 > lam: always up; e^2 < lam: always down)
    for s in (-8.0, -2.0, 0.0, 2.0):
        assert _grad_s("eq7", 0.5, s, lam) < 0 < _grad_s("eq7", 0.1, s, lam)
    # a pixel with e^2 = 0.5 > lam but a small variance: Eq. 7's push vanishes, the surrogate's
    # tends to -e^2 / lam
    eq7, logistic = _grad_s("eq7", 0.5, -9.0, lam), _grad_s("logistic", 0.5, -9.0, lam)
    assert abs(eq7) < 1e-3
    assert logistic == pytest.approx(-0.5 / lam, rel=1e-3)
    # both put the decision sigma^2 > lam where e^2 > lam
    assert _grad_s("logistic", 0.5, math.log(lam)) < 0 < _grad_s("logistic", 0.1, math.log(lam))


def test_logistic_surrogate_gives_p_the_gradient_of_eq7_at_fixed_variance():
    g = torch.Generator().manual_seed(1)
    prob = torch.rand(1, 1, 8, 8, generator=g)
    target = (torch.rand(1, 1, 8, 8, generator=g) > 0.7).float()
    log_var = torch.randn(1, 1, 8, 8, generator=g)
    grads = []
    for form in ("eq7", "logistic"):
        p = prob.clone().requires_grad_(True)
        aseg_loss(p, target, log_var, 0.3, form=form).backward()
        grads.append(p.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_soft_clamp_keeps_a_gradient_past_the_bound():
    s = torch.tensor([-15.0, 0.0, 15.0], requires_grad=True)
    clamp_log_var(s, 10.0, soft=False).sum().backward()
    assert s.grad.tolist() == [0.0, 1.0, 0.0]
    s.grad = None
    bounded = clamp_log_var(s, 10.0, soft=True)
    bounded.sum().backward()
    assert bounded.abs().max() < 10 and (s.grad > 0.1).all()
    # the NumPy path (selection) agrees with the tensor path (training)
    np.testing.assert_allclose(
        clamp_log_var(s.detach().numpy(), 10.0, soft=True), bounded.detach().numpy(), rtol=1e-6
    )


def test_std_init_lambda_starts_every_pixel_at_lambda():
    model = _new_model(TrainConfig(loss="cirl", phase=1, lam=0.25, std_init="lambda"))
    out = model(torch.rand(1, 3, 64, 64))
    torch.testing.assert_close(out.log_var, torch.full_like(out.log_var, math.log(0.25)))
    default = _new_model(TrainConfig(loss="cirl", phase=1, lam=0.25))(torch.rand(1, 3, 64, 64))
    assert default.log_var.std() > 0


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n, h, w = 2, 16, 16
    mask = torch.zeros(n, 1, h, w)
    mask[:, :, 6:9, :] = 1  # a horizontal crack in each image
    valid = torch.ones(n, 1, h, w)
    ambiguous = (torch.rand(n, 1, h, w, generator=g) > 0.5).float() * (1 - mask)
    out = SegOutput(
        logits=torch.randn(n, 1, h, w, generator=g) * 3,
        log_var=torch.randn(n, 1, h, w, generator=g),
        features=torch.randn(n, 8, h, w, generator=g),
    )
    return {"mask": mask, "valid": valid, "ambiguous": ambiguous}, out


def test_phase1_aseg_alone_drops_bce_and_forms_are_wired():
    batch, out = _batch()
    mask, valid = batch["mask"], batch["valid"]
    prob = torch.sigmoid(out.logits)
    for form, clamp in (("eq7", "hard"), ("logistic", "soft")):
        cfg = TrainConfig(loss="cirl", phase=1, phase1_loss="aseg", aseg_form=form, std_clamp=clamp)
        loss, parts = compute_loss(cfg, out, batch, None)
        aseg = aseg_loss(prob, mask, out.log_var, 0.3, valid, form=form, soft_clamp=clamp == "soft")
        assert loss.item() == pytest.approx(aseg.item(), rel=1e-6)
        assert parts["bce"] == pytest.approx(masked_bce(out.logits, mask, valid).item())


def test_ci_batch_reduction_weighs_an_ambiguous_pixel_like_a_supervised_one():
    batch, out = _batch()
    prob, a = torch.sigmoid(out.logits), batch["ambiguous"] > 0.5
    per_image = [
        ci_loss(prob[i : i + 1], out.features[i : i + 1], a[i : i + 1], k=3, max_pixels=10_000)
        for i in range(2)
    ]
    counts = [int(a[i].sum()) for i in range(2)]
    expected = sum(m * c for m, c in zip(per_image, counts, strict=True)) / 300.0
    got = ci_loss(prob, out.features, a, k=3, max_pixels=10_000, reduction="batch", normaliser=300)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # wired into phase II with the BCE term's denominator
    cfg = TrainConfig(loss="cirl", phase=2, k=3, max_pixels=10_000, ci_reduction="batch")
    _, parts = compute_loss(cfg, out, batch, torch.Generator().manual_seed(0))
    supervised = batch["valid"] * (1 - batch["ambiguous"])
    ci = ci_loss(
        prob,
        out.features,
        a,
        k=3,
        max_pixels=10_000,
        reduction="batch",
        normaliser=supervised.sum(),
    )
    assert parts["ci"] == pytest.approx(ci.item(), rel=1e-6)
    with pytest.raises(ValueError, match="normaliser"):
        ci_loss(prob, out.features, a, k=3, reduction="batch")


def test_marginal_ring_on_tensors_matches_numpy():
    g = np.random.default_rng(0)
    mask = g.random((2, 1, 20, 24)) > 0.9
    got = marginal_region_torch(torch.from_numpy(mask).float(), 5).numpy()
    for i in range(2):
        np.testing.assert_array_equal(got[i, 0], marginal_region(mask[i, 0], 5))


def test_error_rule_selects_the_rings_confident_false_positives():
    mask = torch.zeros(1, 1, 12, 12)
    mask[..., 5, :] = 1
    prob = torch.zeros(1, 1, 12, 12)
    prob[..., 4, :6] = 0.9  # false positives next to the crack: e^2 = 0.81 > 0.3
    prob[..., 6, :] = 0.4  # unsure, on the ring: e^2 = 0.16 < 0.3
    prob[..., 10, :] = 0.9  # a false positive far from the crack: not in M
    prob[..., 5, :] = 0.1  # a missed crack pixel: in the crack, not in M
    a = error_ambiguous(prob, mask, torch.ones_like(mask), lam=0.3)
    assert a[0, 0, 4, :6].all() and a.sum() == 6


def test_online_selection_needs_no_ambiguity_maps():
    batch, out = _batch()
    del batch["ambiguous"]
    cfg = TrainConfig(loss="cirl", phase=2, k=3, max_pixels=10_000, selection="online", lam=0.3)
    _, parts = compute_loss(cfg, out, batch, torch.Generator().manual_seed(0))
    prob = torch.sigmoid(out.logits)
    a = error_ambiguous(prob, batch["mask"], batch["valid"], 0.3)
    assert a.sum() > 0
    assert parts["ambiguous_fraction"] == pytest.approx(float(a.mean()))
    bce = masked_bce(out.logits, batch["mask"], batch["valid"] * (1 - a))
    assert parts["bce"] == pytest.approx(bce.item(), rel=1e-6)


def test_dihedral_views_invert():
    from cirl.method.selection import dihedral_views

    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    views = dihedral_views()
    assert len(views) == 8
    seen = set()
    for forward, inverse in views:
        y = forward(x)
        seen.add(tuple(y.flatten().tolist()[:24]))
        torch.testing.assert_close(inverse(y), x)
    assert len(seen) == 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny prepared folder and a briefly trained phase-I model (BCE + Aseg, std head)."""
    from cirl.data.prepare import PrepareConfig
    from cirl.data.prepare import run as prepare
    from cirl.data.synth import SynthConfig
    from cirl.data.synth import run as synth
    from cirl.method import train

    root = tmp_path_factory.mktemp("options")
    synth(SynthConfig(n=4, width=256, height=192), root / "raw")
    prepare(PrepareConfig(tile=128, split=(0.5, 0.25, 0.25)), root / "raw", "folder", root / "prep")
    cfg = TrainConfig(
        epochs=1,
        steps_per_epoch=3,
        crop=64,
        device="cpu",
        crack_crops=1.0,
        pos_weight=20,
        std_init="lambda",
        aseg_form="logistic",
        std_clamp="soft",
    )
    train.run(cfg, root / "prep", root / "p1", progress=False)
    return root


def test_select_error_rule_and_its_mechanism_numbers(tiny):
    import json

    import cv2

    from cirl.method import selection

    cfg = selection.SelectConfig(rule="error", lam=0.3, views=8, device="cpu")
    result = selection.run(
        cfg, tiny / "prep", tiny / "p1" / "last.pt", tiny / "sel", progress=False
    )
    summary = json.loads((tiny / "sel" / "summary.json").read_text())
    assert summary["rule"] == "error" and summary["threshold"] == 0.3
    assert set(summary["error_on_marginal_ring"]) == {"q50", "q90", "q99"}
    assert 0 <= summary["ring_false_positive_rate"] <= 1
    assert result.selected_pixels == summary["selected_pixels"]
    maps = sorted((tiny / "sel" / "error").glob("*.png"))
    assert maps, "error maps of tiles with a ring"
    for path in maps:
        error = selection.decode_error(cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
        a = cv2.imread(str(tiny / "sel" / "ambiguous" / path.name), cv2.IMREAD_GRAYSCALE) > 0
        assert (error[a] > 0.3).all()  # A only where the averaged error exceeds lambda
    # diagnose() on the same checkpoint reproduces the numbers select measured
    numbers = selection.diagnose(tiny / "p1" / "last.pt", tiny / "prep", tiny / "sel", device="cpu")
    assert numbers["selected_pixels"] == summary["selected_pixels"]
    assert numbers["ring_false_positive_rate"] == pytest.approx(summary["ring_false_positive_rate"])
    assert numbers["crack_share_of_a"] == summary["crack_share_of_a"]


def test_select_variance_rule_reports_the_mechanism_numbers_too(tiny):
    import json

    # three steps from the lambda init: every ring pixel still has sigma^2 near lambda = 0.3
    from cirl.method import selection

    selection.run(
        selection.SelectConfig(gamma=0.2, device="cpu"),
        tiny / "prep",
        tiny / "p1" / "last.pt",
        tiny / "selv",
        progress=False,
    )
    summary = json.loads((tiny / "selv" / "summary.json").read_text())
    assert summary["rule"] == "variance"
    assert summary["selected_fraction"] == 1.0 and "selected" in summary["warnings"][0]
    numbers = selection.diagnose(
        tiny / "p1" / "last.pt", tiny / "prep", tiny / "selv", device="cpu"
    )
    assert numbers["crack_share_of_a"] == summary["crack_share_of_a"]


def test_view_error_is_the_mean_over_views():
    from cirl.method.selection import view_error

    class Shift(torch.nn.Module):  # a "model" whose output depends on orientation
        stride = 1

        def forward(self, x):
            ramp = torch.linspace(-2, 2, x.shape[-1]).expand_as(x[:, :1])
            return SegOutput(logits=ramp, log_var=None, features=x)

    image, mask = torch.rand(1, 3, 6, 6), torch.zeros(1, 1, 6, 6)
    one, prob = view_error(Shift(), image, mask, 1)
    eight, _ = view_error(Shift(), image, mask, 8)
    torch.testing.assert_close(one, prob**2)
    assert not torch.allclose(one, eight)
    # by symmetry the 8-view mean is invariant to the image's own flips
    flipped, _ = view_error(Shift(), image.flip(-1), mask, 8)
    torch.testing.assert_close(flipped, eight.flip(-1))


def test_online_phase2_trains_without_a_selection_folder(tiny):
    from cirl.method import train

    cfg = TrainConfig(
        phase=2, epochs=1, steps_per_epoch=2, crop=64, device="cpu", selection="online", k=3
    )
    result = train.run(
        cfg, tiny / "prep", tiny / "p2", init=tiny / "p1" / "last.pt", progress=False
    )
    assert "ambiguous_fraction" in result.history[0]
    with pytest.raises(Exception, match="ambiguity"):
        train.run(
            TrainConfig(phase=2, epochs=1, steps_per_epoch=1, crop=64, device="cpu"),
            tiny / "prep",
            tiny / "p2b",
            init=tiny / "p1" / "last.pt",
            progress=False,
        )


def test_a_sampled_selection_reports_for_online_phase2_and_offline_refuses_it(tiny):
    """select.max_tiles: a seeded sample of the split's tiles, the same every run, maps for
    those only; online phase II (which reads no maps) trains with it, offline phase II refuses
    it with the fix, and so does a pipeline whose groups combine the two."""
    import json

    from cirl.data.tiles import TileDataset
    from cirl.errors import CirlError
    from cirl.method import selection, train
    from cirl.method.trained import is_sampled
    from cirl.orchestration.package import check_groups

    n = len(TileDataset(tiny / "prep", "train"))
    assert n >= 3
    cfg = selection.SelectConfig(rule="error", views=1, device="cpu", max_tiles=2)
    for out in ("sample_a", "sample_b"):
        selection.run(cfg, tiny / "prep", tiny / "p1" / "last.pt", tiny / out, progress=False)
    summary = json.loads((tiny / "sample_a" / "summary.json").read_text())
    assert (summary["tiles"], summary["tiles_scored"]) == (n, 2)
    assert is_sampled(summary)
    maps = sorted(p.name for p in (tiny / "sample_a" / "ambiguous").glob("*.png"))
    assert len(maps) == 2
    assert maps == sorted(p.name for p in (tiny / "sample_b" / "ambiguous").glob("*.png"))
    assert selection.scored_tiles(n, 0) == list(range(n)) == selection.scored_tiles(n, n + 5)
    whole = selection.SelectConfig(rule="error", views=1, device="cpu")
    selection.run(whole, tiny / "prep", tiny / "p1" / "last.pt", tiny / "whole", progress=False)
    assert not is_sampled(json.loads((tiny / "whole" / "summary.json").read_text()))
    with pytest.raises(ValueError, match="max_tiles"):
        selection.SelectConfig(max_tiles=-1)

    phase2 = {"phase": 2, "epochs": 1, "steps_per_epoch": 1, "crop": 64, "device": "cpu", "k": 3}
    init, sample = tiny / "p1" / "last.pt", tiny / "sample_a"
    with pytest.raises(CirlError, match=rf"sample of 2 of {n} tiles.*select\.max_tiles 0"):
        train.run(TrainConfig(**phase2), tiny / "prep", tiny / "p2s", init=init,
                  ambiguity=sample, progress=False)  # fmt: skip
    assert not (tiny / "p2s").exists()  # refused before anything was written
    broken = tiny / "broken_selection"
    broken.mkdir()
    (broken / "summary.json").write_text("{not json")
    with pytest.raises(CirlError, match=r"summary\.json: not valid JSON.*cirl select again"):
        train.run(TrainConfig(**phase2), tiny / "prep", tiny / "p2x", init=init,
                  ambiguity=broken, progress=False)  # fmt: skip
    train.run(TrainConfig(**phase2, selection="online"), tiny / "prep", tiny / "p2o", init=init,
              ambiguity=sample, progress=False)  # fmt: skip
    with pytest.raises(CirlError, match=r"select\.max_tiles 0"):
        check_groups({"select_params": {"max_tiles": 96}, "train_params": {"selection": "offline"}})
    check_groups({"select_params": {"max_tiles": 96}, "train_params": {"selection": "online"}})
    check_groups({"select_params": {"max_tiles": 0}, "train_params": {"selection": "offline"}})
