"""The losses of CIRL (CVPR 2024) and the masked BCE they sit beside.

* :func:`marginal_region`: the marginal non-crack ring ``M = dilate(y, k x k) - y`` (Eq. 1).
* :func:`aseg_loss`: the ambiguity-aware segmentation loss of phase I (Eq. 7), or a
  non-saturating surrogate with the same decision boundary (``form="logistic"``).
* :func:`clamp_log_var`: the bound on the std head's ``s`` (hard, as first built, or soft).
* :func:`masked_bce`: BCE over the supervised pixels only, normalised by their number.
* :func:`ci_loss`: the clustering-inspired loss of phase II on the ambiguous pixels (Eq. 15),
  the upper bound of Proposition 2 without its constant.

All are pure functions; logits in, except where the paper's formula is on probabilities (Aseg
and CI take ``prob = sigmoid(logits)``, the caller applies it once). Shapes follow
``(N, 1, H, W)`` for per-pixel maps and ``(N, C, H, W)`` for features.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from cirl.distributed import active, global_mean, global_sum

LOG_VAR_CLAMP = 10.0


def marginal_region(mask: np.ndarray, kernel: int = 5) -> np.ndarray:
    """The marginal non-crack region of Eq. 1: ``dilate(mask, kernel x kernel) - mask``.

    Args:
        mask: ``(H, W)`` crack mask (bool or any array, non-zero = crack).
        kernel: side of the square structuring element (paper: 5, a 2-pixel ring).

    Returns:
        ``(H, W)`` bool, True on non-crack pixels within ``kernel // 2`` px (Chebyshev) of a
        crack pixel.
    """
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be an odd size >= 1, got {kernel}")
    crack = np.asarray(mask) != 0
    if crack.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {crack.shape}")
    dilated = cv2.dilate(crack.view(np.uint8), np.ones((kernel, kernel), np.uint8)) != 0
    return dilated & ~crack


def marginal_region_torch(mask: torch.Tensor, kernel: int = 5) -> torch.Tensor:
    """:func:`marginal_region` of ``(N, 1, H, W)`` {0, 1} masks, on their device, as bool."""
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be an odd size >= 1, got {kernel}")
    crack = mask > 0.5
    dilated = F.max_pool2d(crack.float(), kernel, stride=1, padding=kernel // 2) > 0.5
    return dilated & ~crack


@torch.no_grad()
def error_ambiguous(
    prob: torch.Tensor,
    mask: torch.Tensor,
    valid: torch.Tensor,
    lam: float,
    kernel: int = 5,
) -> torch.Tensor:
    """A = M and ``(p - y)^2 > lam`` for a batch (Eq. 8 at the fixed point of Eq. 7).

    On the ring ``y = 0``, so A is the ring's pixels predicted crack with ``p > sqrt(lam)``:
    where Eq. 7's std head converges to (``sigma^2`` grows without bound exactly where the
    expected squared error exceeds ``lam``), read off the model directly.

    Args:
        prob: ``(N, 1, H, W)`` probabilities (a single view, or the mean of ``(p - y)^2`` over
            views is the caller's: see ``cirl select --rule error``).
        mask, valid: ``(N, 1, H, W)`` labels and valid region.
        lam: the threshold on the squared error.
        kernel: dilation of the marginal ring.

    Returns:
        ``(N, 1, H, W)`` float {0, 1}.
    """
    ring = marginal_region_torch(mask, kernel) & (valid > 0.5)
    return (ring & ((prob.float() - mask.float()) ** 2 > lam)).float()


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """The mean of ``values`` over the weighted pixels of the (global) batch."""
    if weight is None:
        return global_mean(values)
    weight = weight.to(values.dtype)
    return global_sum((values * weight).sum()) / global_sum(weight.sum()).clamp_min(1.0)


def clamp_log_var(log_var: torch.Tensor, clamp: float = LOG_VAR_CLAMP, soft: bool = False):
    """Bound the std head's ``s`` to ``[-clamp, clamp]`` (a tensor or a NumPy array).

    ``soft=False``: a hard clamp, whose gradient is zero past the bound (a pixel pushed there
    never comes back). ``soft=True``: ``clamp * tanh(s / clamp)``, smooth, with a gradient that
    only fades past the bound (0.07 at twice it).
    """
    if soft:
        if isinstance(log_var, np.ndarray):
            return (clamp * np.tanh(log_var / clamp)).astype(log_var.dtype, copy=False)
        return clamp * torch.tanh(log_var / clamp)
    if isinstance(log_var, np.ndarray):
        return np.clip(log_var, -clamp, clamp)
    return log_var.clamp(-clamp, clamp)


def aseg_loss(
    prob: torch.Tensor,
    target: torch.Tensor,
    log_var: torch.Tensor,
    lam: float = 0.3,
    valid: torch.Tensor | None = None,
    clamp: float = LOG_VAR_CLAMP,
    form: str = "eq7",
    soft_clamp: bool = False,
) -> torch.Tensor:
    """Ambiguity-aware segmentation loss (Eq. 7), mean over (valid) pixels.

    ``form="eq7"`` (the paper): per pixel ``((p - y)^2 + sigma^2) / (lam + sigma^2)`` with
    ``sigma^2 = exp(s)``. Its derivative in ``sigma^2`` is ``(lam - (p - y)^2) / (lam +
    sigma^2)^2``: where the squared error exceeds ``lam`` the variance is pushed up, elsewhere
    down. With ``q = sigma^2 / (lam + sigma^2) = sigmoid(s - log lam)`` the loss is
    ``q + (1 - q) e^2 / lam``, linear in ``q``: its optimum is ``q`` at 0 or 1 (the std head
    is a classifier of ``E[e^2] > lam``) and its gradient in ``s`` is about ``sigma^2 / lam``
    for a small variance, so a head pushed low by the many easy pixels learns slowly.

    ``form="logistic"``: the same gradient for ``p`` (``(1 - q) e^2 / lam`` with ``q`` held
    fixed), and for the head the cost-weighted logistic loss ``(e^2 / lam) softplus(-z) +
    softplus(z)``, ``z = s - log lam``, ``e^2`` held fixed. Its optimum is ``sigma^2 = E[e^2]``:
    the head regresses the expected squared error, the boundary ``sigma^2 > lam`` is Eq. 7's,
    and the gradient in ``s`` does not vanish for a small variance (it tends to ``-e^2 /
    lam``), so a short phase I reaches it.

    Args:
        prob: ``(N, 1, H, W)`` crack probabilities ``sigmoid(logits)``.
        target: ``(N, 1, H, W)`` labels in {0, 1}.
        log_var: ``(N, 1, H, W)`` log-variance ``s`` from the std head.
        lam: lambda (paper 0.3), > 0.
        valid: optional ``(N, 1, H, W)`` weights (1 = counted, 0 = ignored).
        clamp: bound on ``|s|`` for numerical safety.
        form: ``eq7`` or ``logistic``.
        soft_clamp: bound ``s`` with :func:`clamp_log_var`'s soft clamp instead of a hard one.

    Returns:
        Scalar loss.
    """
    if lam <= 0:
        raise ValueError(f"lam must be > 0, got {lam}")
    if form not in ("eq7", "logistic"):
        raise ValueError(f"form must be 'eq7' or 'logistic', got {form!r}")
    if not (prob.shape == target.shape == log_var.shape):
        raise ValueError(
            f"prob {tuple(prob.shape)}, target {tuple(target.shape)} and log_var "
            f"{tuple(log_var.shape)} must have the same (N, 1, H, W) shape"
        )
    s = clamp_log_var(log_var, clamp, soft_clamp)
    error = (prob - target) ** 2
    if form == "eq7":
        variance = torch.exp(s)
        per_pixel = (error + variance) / (lam + variance)
    else:
        z = s - math.log(lam)
        q = torch.sigmoid(z).detach()
        weight = error.detach() / lam
        per_pixel = (1.0 - q) * error / lam + weight * F.softplus(-z) + F.softplus(z)
    return _weighted_mean(per_pixel, valid)


def masked_bce(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight_mask: torch.Tensor | None = None,
    pos_weight: float = 1.0,
) -> torch.Tensor:
    """Binary cross-entropy on logits over the supervised pixels only.

    Args:
        logits: ``(N, 1, H, W)`` crack logits.
        target: ``(N, 1, H, W)`` labels in {0, 1}.
        weight_mask: ``(N, 1, H, W)`` 1 where a pixel is supervised, 0 where not (padding,
            outside the field of view, the ambiguous set A in phase II); None = all pixels.
        pos_weight: weight of the crack pixels' term (class balance; 1 = plain BCE).

    Returns:
        Scalar: the sum of per-pixel BCE over supervised pixels divided by their number
        (0 when none is supervised).
    """
    if logits.shape != target.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must match"
        )
    weight = None
    if pos_weight != 1.0:
        weight = torch.tensor(float(pos_weight), dtype=logits.dtype, device=logits.device)
    per_pixel = F.binary_cross_entropy_with_logits(
        logits, target.to(logits.dtype), reduction="none", pos_weight=weight
    )
    return _weighted_mean(per_pixel, weight_mask)


def soft_dice_loss(
    prob: torch.Tensor,
    target: torch.Tensor,
    weight_mask: torch.Tensor | None = None,
    smooth: float = 1.0,
) -> torch.Tensor:
    """``1 - soft Dice`` of the crack class over the supervised pixels, one score per batch.

    Pooled over the batch (not per image) so that a crop without crack does not contribute a
    loss that only an all-background prediction can lower.

    Args:
        prob: ``(N, 1, H, W)`` crack probabilities.
        target: ``(N, 1, H, W)`` labels in {0, 1}.
        weight_mask: 1 where a pixel is supervised; None = all pixels.
        smooth: added to numerator and denominator (the loss of an empty batch is 0).
    """
    if prob.shape != target.shape:
        raise ValueError(f"prob {tuple(prob.shape)} and target {tuple(target.shape)} must match")
    target = target.to(prob.dtype)
    if weight_mask is not None:
        weight_mask = weight_mask.to(prob.dtype)
        prob, target = prob * weight_mask, target * weight_mask
    overlap = global_sum((prob * target).sum())
    total = global_sum(prob.sum()) + global_sum(target.sum())
    return 1.0 - (2.0 * overlap + smooth) / (total + smooth)


@torch.no_grad()
def nearest_neighbours(
    features: torch.Tensor, k: int, chunk_elements: int = 1 << 22
) -> torch.Tensor:
    """Indices of the ``k`` most cosine-similar rows of each row, excluding the row itself.

    Computed in row chunks so that at most about ``chunk_elements`` similarities exist at once.

    Args:
        features: ``(S, C)`` feature vectors (normalised here).
        k: neighbours per row, ``k <= S - 1``.
        chunk_elements: bound on the size of one similarity block.

    Returns:
        ``(S, k)`` int64 indices.
    """
    count = features.shape[0]
    if not 1 <= k <= count - 1:
        raise ValueError(f"k must be in 1..{count - 1} for {count} rows, got {k}")
    unit = F.normalize(features.float(), dim=1)
    rows = max(1, chunk_elements // count)
    out = torch.empty(count, k, dtype=torch.long, device=features.device)
    for start in range(0, count, rows):
        stop = min(start + rows, count)
        sim = unit[start:stop] @ unit.T  # (rows, S)
        local = torch.arange(stop - start, device=features.device)
        sim[local, local + start] = float("-inf")
        out[start:stop] = sim.topk(k, dim=1).indices
    return out


def _ci_one_image(prob: torch.Tensor, features: torch.Tensor, k: int) -> torch.Tensor:
    """``L_CI`` of one image (the mean of ``psi_m``) from the ambiguous pixels' probabilities
    (S,) and features (S, C)."""
    count = prob.shape[0]
    pairs = torch.stack([1.0 - prob, prob], dim=1)  # (S, 2): p_m = [1 - p, p]
    neighbours = nearest_neighbours(features, k)  # (S, K), no gradient
    # index_select, not pairs[neighbours]: the backward of advanced indexing is index_put_ with
    # accumulate=True, which on a multi-threaded CPU adds the S * K gradients of repeated
    # neighbours with float atomics in a varying order (run-to-run different weights once
    # S * K * 2 >= 32768); index_select's backward (index_add_) sums in index order.
    near = pairs.index_select(0, neighbours.reshape(-1)).view(count, k, 2)
    near_sum = near.sum(dim=1)  # (S, 2): sum over C_m of p_n
    rest_sum = pairs.sum(dim=0, keepdim=True) - near_sum - pairs  # sum over O_m of p_k
    attract = (pairs * near_sum).sum(dim=1)
    repel = (pairs * rest_sum).sum(dim=1)
    psi = -attract + (k / (count - 1 - k)) * repel
    return psi.mean()


def ci_loss(
    prob: torch.Tensor,
    features: torch.Tensor,
    ambiguous_mask: torch.Tensor,
    k: int = 20,
    max_pixels: int = 4096,
    generator: torch.Generator | None = None,
    reduction: str = "image",
    normaliser: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Clustering-inspired loss (Eq. 15) over the ambiguous pixels of each image.

    For an image, ``S`` are its ambiguous pixels (at most ``max_pixels``, sampled at random
    beyond that), ``f_m`` their L2-normalised features, ``p_m = [1 - p, p]``. ``C_m`` are the
    ``k`` nearest neighbours of ``m`` in ``S`` by cosine similarity (searched without gradient),
    ``O_m`` the other pixels of ``S`` except ``m``. Per pixel::

        psi_m = - sum_{n in C_m} p_m . p_n + (|C_m| / |O_m|) * sum_{o in O_m} p_m . p_o

    ``reduction="image"`` (Eq. 15): the image's loss is the mean of ``psi_m``, the batch loss
    the mean over images with at least ``k + 2`` ambiguous pixels (others are skipped); a pixel
    of A then weighs ``1 / |A|`` of its image, tens of times a supervised pixel's share of a
    per-pixel mean. ``reduction="batch"``: the sum of ``psi_m`` over the ambiguous pixels of the
    batch divided by ``normaliser`` (the number of pixels of the batch the BCE term averages
    over), so each ambiguous pixel weighs what a supervised pixel does; a sampled ``S`` counts
    for all of its image's ambiguous pixels. The sum over ``O_m`` comes from totals, so only
    the neighbour search needs pairwise similarities (in bounded chunks).

    Args:
        prob: ``(N, 1, H, W)`` crack probabilities (gradients flow through them).
        features: ``(N, C, H, W)`` the last full-resolution decoder feature.
        ambiguous_mask: ``(N, 1, H, W)`` bool (or {0, 1}) ambiguous set A.
        k: neighbours K (paper 20).
        max_pixels: cap on ``|S|`` per image.
        generator: CPU generator for the sampling of ``S`` (reproducible runs).
        reduction: ``image`` or ``batch`` (see above).
        normaliser: the denominator of ``reduction="batch"`` (> 0).

    Returns:
        Scalar loss; an exact 0 connected to ``prob`` when no image has enough pixels.
    """
    if reduction not in ("image", "batch"):
        raise ValueError(f"reduction must be 'image' or 'batch', got {reduction!r}")
    if reduction == "batch" and normaliser is None:
        raise ValueError("reduction='batch' needs the normaliser (pixels of the batch)")
    if prob.dim() != 4 or prob.shape[1] != 1:
        raise ValueError(f"prob must be (N, 1, H, W), got {tuple(prob.shape)}")
    if features.shape[0] != prob.shape[0] or features.shape[2:] != prob.shape[2:]:
        raise ValueError(
            f"features {tuple(features.shape)} must be (N, C, H, W) matching prob "
            f"{tuple(prob.shape)}"
        )
    if ambiguous_mask.shape != prob.shape:
        raise ValueError(
            f"ambiguous_mask {tuple(ambiguous_mask.shape)} must match prob {tuple(prob.shape)}"
        )
    if k < 1 or max_pixels < k + 2:
        raise ValueError(f"need k >= 1 and max_pixels >= k + 2, got k={k}, max_pixels={max_pixels}")
    losses = []
    for n in range(prob.shape[0]):
        index = torch.nonzero(ambiguous_mask[n, 0].reshape(-1) != 0).squeeze(1)
        if index.numel() < k + 2:
            continue
        total = index.numel()
        if index.numel() > max_pixels:
            pick = torch.randperm(index.numel(), generator=generator)[:max_pixels]
            index = index[pick.to(index.device)]
        # index_select for the same reason as in _ci_one_image (deterministic backward)
        p = prob[n, 0].reshape(-1).index_select(0, index)
        f = features[n].detach().reshape(features.shape[1], -1).index_select(1, index).T
        mean = _ci_one_image(p, f, k)
        losses.append(mean if reduction == "image" else mean * total)
    if active().size > 1:  # every process sums, also one without an image to add
        summed = torch.stack(losses).sum() if losses else prob.sum() * 0.0
        summed = global_sum(summed)
        if reduction == "batch":
            return summed / normaliser
        images = global_sum(torch.tensor(float(len(losses)), device=prob.device))
        return summed / images.clamp_min(1.0)
    if not losses:
        return prob.sum() * 0.0
    if reduction == "image":
        return torch.stack(losses).mean()
    return torch.stack(losses).sum() / normaliser
