"""The selection's per-pixel scores as files and numbers: sigma^2 (the variance rule) and the
mean squared error over a tile's eight flips and rotations (the error rule), stored as 16-bit
PNG, histogrammed on the marginal ring, and named in the summary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

LOG_VAR_CLAMP = 10.0


_LEVELS = 65535


_HIST_BINS = 4000


def encode_log_var(log_var: np.ndarray) -> np.ndarray:
    """``s`` clamped to [-10, 10] as uint16: ``round((s + 10) / 20 * 65535)``."""
    scaled = (np.clip(log_var, -LOG_VAR_CLAMP, LOG_VAR_CLAMP) + LOG_VAR_CLAMP) / (2 * LOG_VAR_CLAMP)
    return np.round(scaled * _LEVELS).astype(np.uint16)


def decode_log_var(stored: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_log_var` (to within 20 / 65535 in ``s``)."""
    return stored.astype(np.float32) / _LEVELS * (2 * LOG_VAR_CLAMP) - LOG_VAR_CLAMP


def _quantile_from_histogram(hist: np.ndarray, edges: np.ndarray, q: float) -> float:
    """The ``q`` quantile of values binned in ``hist`` (linear within a bin)."""
    cumulative = np.cumsum(hist)
    target = q * cumulative[-1]
    i = int(np.searchsorted(cumulative, target, side="left"))
    i = min(i, len(hist) - 1)
    before = cumulative[i - 1] if i else 0
    inside = (target - before) / hist[i] if hist[i] else 0.0
    return float(edges[i] + inside * (edges[i + 1] - edges[i]))


def dihedral_views() -> list[tuple[Callable, Callable]]:
    """The 8 flips/rotations of ``(N, C, H, W)`` as (forward, inverse) pairs on the last 2 dims."""
    pairs = []
    for flip in (False, True):
        for k in range(4):

            def forward(x, k=k, flip=flip):
                x = torch.flip(x, dims=(-1,)) if flip else x
                return torch.rot90(x, k, dims=(-2, -1))

            def inverse(x, k=k, flip=flip):
                x = torch.rot90(x, -k, dims=(-2, -1))
                return torch.flip(x, dims=(-1,)) if flip else x

            pairs.append((forward, inverse))
    return pairs


@torch.no_grad()
def view_error(model, image: torch.Tensor, mask: torch.Tensor, views: int) -> tuple:
    """The squared error ``(p - y)^2`` averaged over ``views`` flips/rotations, and ``p``.

    Args:
        model: a registry model in eval mode.
        image: ``(1, 3, H, W)`` float in [0, 1].
        mask: ``(1, 1, H, W)`` {0, 1} on the image's device.
        views: 1, 2, 4 or 8: the first ``views`` of :func:`dihedral_views` (identity first).

    Returns:
        ``(error, prob)``: ``(1, 1, H, W)`` mean squared error and the identity view's
        probabilities.
    """
    from cirl.models.inference import predict_prob

    total, prob = None, None
    for forward, inverse in dihedral_views()[:views]:
        view = forward(image).contiguous(memory_format=torch.channels_last)
        p = inverse(predict_prob(model, view))
        if prob is None:
            prob = p
        error = (p - mask) ** 2
        total = error if total is None else total + error
    return total / views, prob


def _score_histogram_edges(rule: str) -> np.ndarray:
    if rule == "variance":  # on s = log sigma^2
        return np.linspace(-LOG_VAR_CLAMP, LOG_VAR_CLAMP, _HIST_BINS + 1)
    return np.linspace(0.0, 1.0, _HIST_BINS + 1)  # on the squared error


def encode_error(error: np.ndarray) -> np.ndarray:
    """A squared error in [0, 1] as uint16: ``round(e * 65535)``."""
    return np.round(np.clip(error, 0.0, 1.0) * _LEVELS).astype(np.uint16)


def decode_error(stored: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_error` (to within 1 / 65535)."""
    return stored.astype(np.float32) / _LEVELS


class _Codec:
    """How a rule's per-pixel score is stored (16-bit PNG), histogrammed and named."""

    def __init__(self, cfg: Any) -> None:  # a SelectConfig
        variance = cfg.rule == "variance"
        self.variance = variance
        self.edges = _score_histogram_edges(cfg.rule)
        self.maps = "log_variance" if variance else "error"
        self.encode, self.decode = (
            (encode_log_var, decode_log_var) if variance else (encode_error, decode_error)
        )
        self.unit = "sigma^2" if variance else "squared error"

    def from_score(self, v: float) -> float:
        return float(np.exp(v)) if self.variance else float(v)

    def quantiles(self, hist: np.ndarray) -> dict[str, float]:
        if not hist.sum():
            return {}
        return {
            f"q{int(q * 100):02d}": self.from_score(_quantile_from_histogram(hist, self.edges, q))
            for q in (0.5, 0.9, 0.99)
        }
