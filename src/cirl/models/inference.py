"""Running a model on whole tiles of any size: pad to the model's stride, crop back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


@contextlib.contextmanager
def subnormals_as_zero() -> Iterator[None]:
    """Run the block with the CPU's flush-to-zero and denormals-are-zero modes on, then off.

    A trained model's activations can be subnormal floats (below 1.2e-38), which x86 CPUs
    compute through a slow path: a DeepCrack-trained unet-small ran a 544x384 photo in 1.54 s
    instead of 0.11 s on 2 threads. The effect on outputs is below 1e-37. The mode is per
    thread and worker threads copy it when they are created, so it reaches all of PyTorch's
    threads only when entered before the process's first parallel operation: the inference
    commands (``cirl select``, ``evaluate``, ``export``, ``predict`` and those pipeline tasks,
    each its own process) enter it first thing. Training never runs under it, so its weights
    stay bit for bit what they were.
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def pad_to_stride(image: torch.Tensor, stride: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad ``(N, C, H, W)`` at the bottom/right to multiples of ``stride``.

    Returns:
        The padded tensor and the original ``(H, W)``.
    """
    h, w = image.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph or pw:
        image = F.pad(image, (0, pw, 0, ph))
    return image, (h, w)


@torch.no_grad()
def predict_prob(model: nn.Module, image: torch.Tensor, with_log_var: bool = False):
    """Crack probabilities for ``(N, 3, H, W)`` images of any size.

    Args:
        model: a registry model in eval mode.
        image: float RGB in [0, 1].
        with_log_var: also return the std head's log-variance (None without a std head).

    Returns:
        ``(N, 1, H, W)`` probabilities, or ``(prob, log_var)`` when ``with_log_var``.
    """
    padded, (h, w) = pad_to_stride(image, getattr(model, "stride", 1))
    out = model(padded)
    prob = torch.sigmoid(out.logits.float())[..., :h, :w]
    if not with_log_var:
        return prob
    log_var = out.log_var.float()[..., :h, :w] if out.log_var is not None else None
    return prob, log_var
