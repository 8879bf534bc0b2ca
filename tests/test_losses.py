"""Unit tier: the CIRL losses on hand-computed tensors, and CI against a brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cirl.method.losses import aseg_loss, ci_loss, marginal_region, masked_bce, nearest_neighbours


def test_marginal_region_is_a_two_pixel_ring():
    mask = np.zeros((9, 9), bool)
    mask[4, 4] = True
    ring = marginal_region(mask, 5)
    assert ring.sum() == 24 and not ring[4, 4]
    assert ring[2:7, 2:7].sum() == 24 and not ring[1, :].any()
    # a vertical line 1 px wide: 2 px on each side, and 2 px beyond its ends
    line = np.zeros((10, 10), np.uint8)
    line[3:6, 5] = 255
    ring = marginal_region(line, 5)
    assert ring.sum() == 7 * 5 - 3
    assert ring[4, 3] and ring[4, 7] and not ring[4, 2] and not ring[4, 8]
    # at the border the ring is simply cut
    edge = np.zeros((5, 5), bool)
    edge[0, 0] = True
    assert marginal_region(edge, 5).sum() == 8
    with pytest.raises(ValueError, match="odd"):
        marginal_region(mask, 4)


def test_aseg_hand_computed():
    prob = torch.tensor([0.9, 0.2, 0.5, 0.0]).view(1, 1, 2, 2)
    target = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 2, 2)
    log_var = torch.tensor([0.0, math.log(0.5), 20.0, -20.0]).view(1, 1, 2, 2)
    lam = 0.3
    # s clamped to [-10, 10]
    var = [1.0, 0.5, math.exp(10), math.exp(-10)]
    err = [0.01, 0.64, 0.25, 0.0]
    expected = np.mean([(e + v) / (lam + v) for e, v in zip(err, var, strict=True)])
    assert aseg_loss(prob, target, log_var, lam).item() == pytest.approx(expected, rel=1e-6)
    valid = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 2, 2)
    expected_valid = np.mean([(e + v) / (lam + v) for e, v in zip(err[:2], var[:2], strict=True)])
    assert aseg_loss(prob, target, log_var, lam, valid).item() == pytest.approx(
        expected_valid, rel=1e-6
    )


def test_aseg_raises_variance_only_where_the_error_exceeds_lambda():
    prob = torch.tensor([0.95, 0.3]).view(1, 1, 1, 2)  # errors 0.0025 and 0.49 vs target 1
    target = torch.ones(1, 1, 1, 2)
    log_var = torch.zeros(1, 1, 1, 2, requires_grad=True)
    aseg_loss(prob, target, log_var, lam=0.3).backward()
    grad = log_var.grad.view(-1)
    assert grad[0] > 0  # small error: descending lowers the variance
    assert grad[1] < 0  # error above lambda: descending raises the variance
    # so the loss is monotone in s: falling for an error above lambda, rising below it
    grid = torch.linspace(-8, 8, 33)

    def curve(p):
        return [
            aseg_loss(
                torch.tensor(p).view(1, 1, 1, 1), torch.ones(1, 1, 1, 1), s.view(1, 1, 1, 1)
            ).item()
            for s in grid
        ]

    assert np.all(np.diff(curve(0.0)) < 0)
    assert np.all(np.diff(curve(0.9)) > 0)


def test_masked_bce_normalises_by_supervised_pixels():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0]).view(1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 2, 2)
    weight = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 2, 2)
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2
    assert masked_bce(logits, target, weight).item() == pytest.approx(expected, rel=1e-6)
    full = F.binary_cross_entropy_with_logits(logits, target)
    assert masked_bce(logits, target).item() == pytest.approx(full.item(), rel=1e-6)
    assert masked_bce(logits, target, torch.zeros_like(weight)).item() == 0.0


def ci_reference(prob, features, ambiguous, k):
    """Eq. 15 written out pixel by pixel, with the full similarity matrix."""
    losses = []
    for n in range(prob.shape[0]):
        ys, xs = torch.nonzero(ambiguous[n, 0], as_tuple=True)
        count = len(ys)
        if count < k + 2:
            continue
        f = F.normalize(features[n][:, ys, xs].T, dim=1)
        p = prob[n, 0, ys, xs]
        vec = torch.stack([1 - p, p], dim=1)
        sim = (f @ f.T).detach()
        total = 0.0
        for m in range(count):
            order = [j for j in torch.argsort(sim[m], descending=True).tolist() if j != m]
            near, rest = order[:k], order[k:]
            attract = sum(vec[m] @ vec[j] for j in near)
            repel = sum(vec[m] @ vec[j] for j in rest)
            total = total + (-attract + (len(near) / len(rest)) * repel)
        losses.append(total / count)
    return torch.stack(losses).mean()


def _random_case(seed, n=2, c=6, h=7, w=9, density=0.6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    prob = torch.rand(n, 1, h, w, generator=g, dtype=dtype)
    features = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    ambiguous = torch.rand(n, 1, h, w, generator=g) < density
    return prob, features, ambiguous


@pytest.mark.parametrize(("seed", "k"), [(0, 1), (1, 3), (2, 5), (3, 8)])
def test_ci_matches_brute_force(seed, k):
    prob, features, ambiguous = _random_case(seed)
    got = ci_loss(prob, features, ambiguous, k=k, max_pixels=10_000)
    want = ci_reference(prob, features, ambiguous, k)
    assert got.item() == pytest.approx(want.item(), rel=1e-9, abs=1e-12)


def test_ci_gradient_matches_brute_force_and_gradcheck():
    prob, features, ambiguous = _random_case(7)
    a = prob.clone().requires_grad_(True)
    b = prob.clone().requires_grad_(True)
    ci_loss(a, features, ambiguous, k=4, max_pixels=10_000).backward()
    ci_reference(b, features, ambiguous, 4).backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-9, atol=1e-12)
    assert a.grad[~ambiguous].abs().max() == 0  # only ambiguous pixels receive gradient
    torch.autograd.gradcheck(
        lambda p: ci_loss(p, features, ambiguous, k=4, max_pixels=10_000),
        (prob.clone().requires_grad_(True),),
    )


def test_ci_features_get_no_gradient_through_the_search():
    prob, features, ambiguous = _random_case(3, dtype=torch.float32)
    features.requires_grad_(True)
    loss = ci_loss(prob.requires_grad_(True), features, ambiguous, k=3)
    loss.backward()
    assert features.grad is None or features.grad.abs().max() == 0


def test_ci_clusters_neighbours_to_the_same_label():
    # two feature clusters; the loss is lower when each cluster agrees on its label
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.arange(40) % 2
    feats = centres[labels] + 0.05 * torch.randn(40, 3, generator=g)
    features = feats.T.reshape(1, 3, 5, 8)
    ambiguous = torch.ones(1, 1, 5, 8, dtype=torch.bool)
    agree = labels.float().reshape(1, 1, 5, 8) * 0.9 + 0.05
    shuffled = agree.flatten()[torch.randperm(40, generator=g)].reshape(1, 1, 5, 8)
    low = ci_loss(agree, features, ambiguous, k=5)
    high = ci_loss(shuffled, features, ambiguous, k=5)
    assert low < high


def test_ci_skips_images_with_too_few_pixels_and_stays_connected():
    prob = torch.rand(2, 1, 4, 4, requires_grad=True)
    features = torch.randn(2, 3, 4, 4)
    ambiguous = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    ambiguous[0, 0, 0, :3] = True  # 3 pixels < k + 2
    loss = ci_loss(prob, features, ambiguous, k=2)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    # one image with enough pixels: the batch loss is that image's loss alone
    ambiguous[1] = True
    both = ci_loss(prob, features, ambiguous, k=2)
    alone = ci_loss(prob[1:], features[1:], ambiguous[1:], k=2)
    assert both.item() == pytest.approx(alone.item())


def test_ci_caps_pixels_reproducibly():
    prob, features, ambiguous = _random_case(5, n=1, h=20, w=20, density=1.0, dtype=torch.float32)
    a = ci_loss(
        prob, features, ambiguous, k=3, max_pixels=50, generator=torch.Generator().manual_seed(1)
    )
    b = ci_loss(
        prob, features, ambiguous, k=3, max_pixels=50, generator=torch.Generator().manual_seed(1)
    )
    c = ci_loss(
        prob, features, ambiguous, k=3, max_pixels=50, generator=torch.Generator().manual_seed(2)
    )
    assert a.item() == b.item() and a.item() != c.item()


def test_nearest_neighbours_in_chunks_equal_one_block():
    features = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    whole = nearest_neighbours(features, 5, chunk_elements=10**9)
    chunked = nearest_neighbours(features, 5, chunk_elements=1000)
    assert torch.equal(whole, chunked)
    assert not (whole == torch.arange(300)[:, None]).any()  # never the pixel itself
    with pytest.raises(ValueError, match="k must be"):
        nearest_neighbours(features[:3], 3)
