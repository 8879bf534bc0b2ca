"""The output contract every model keeps: :class:`SegOutput` and the :class:`SegModel` base.

A model takes ``(N, C, H, W)`` float images in [0, 1] (it normalises them itself, so an exported
model takes the same input), checks that H and W are multiples of its ``stride`` and returns a
:class:`SegOutput` of logits plus the extras CIRL and deep supervision need.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SegOutput(NamedTuple):
    """What a segmentation model returns.

    Attributes:
        logits: ``(N, 1, H, W)`` crack logits at full input resolution (no sigmoid).
        log_var: ``(N, 1, H, W)`` log-variance ``s`` from the std head, unclamped; None when the
            model has no std head.
        features: ``(N, C, H, W)`` last full-resolution decoder feature, the one the seg head and
            the std head read.
        aux_logits: extra crack-logit heads for deep supervision, any resolution (the loss
            upsamples); ``()`` when the model has none.
        boundary_logits: boundary-stream logits (JTFN), any resolution; ``()`` when none.
    """

    logits: torch.Tensor
    log_var: torch.Tensor | None
    features: torch.Tensor
    aux_logits: tuple[torch.Tensor, ...] = ()
    boundary_logits: tuple[torch.Tensor, ...] = ()


class SegModel(nn.Module):
    """Base of every registry model: input normalisation, size check and the optional std head.

    Subclasses set ``self.stride`` and build ``self.std_head`` with :meth:`_make_std_head`.

    Args:
        in_channels: channels of the input image. For 3 channels the ImageNet mean/std are used;
            for any other count every channel gets the mean of the ImageNet values.
    """

    stride: int
    std_head: nn.Conv2d | None
    config: dict[str, Any]

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.in_channels = in_channels
        if in_channels == 3:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            mean = (sum(IMAGENET_MEAN) / 3,) * in_channels
            std = (sum(IMAGENET_STD) / 3,) * in_channels
        # Constants, not weights: kept out of the state_dict, still exported with the graph.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    @staticmethod
    def _make_std_head(channels: int, enabled: bool) -> nn.Conv2d | None:
        """A 1x1 conv from the last full-resolution feature to one log-variance channel."""
        return nn.Conv2d(channels, 1, kernel_size=1) if enabled else None

    def drop_std_head(self) -> None:
        """Remove the std head (phase II, export): ``log_var`` becomes None, no cost at inference.

        Also records ``std_head=False`` in ``self.config`` so a model rebuilt from it has the
        same ``state_dict`` keys.
        """
        self.std_head = None
        config = getattr(self, "config", None)
        if config is not None:
            config["std_head"] = False

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Check ``x`` (N, C, H, W) in [0, 1] and return it standardised with the fixed mean/std.

        Raises:
            ValueError: when ``x`` is not 4-D with ``in_channels`` channels, or H or W is not a
                multiple of ``self.stride``.
        """
        # Skipped while tracing/exporting so dynamic H, W do not become graph guards.
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            if x.dim() != 4 or x.shape[1] != self.in_channels:
                raise ValueError(
                    f"{type(self).__name__} expects input of shape (N, {self.in_channels}, H, W), "
                    f"got {tuple(x.shape)}"
                )
            h, w = int(x.shape[-2]), int(x.shape[-1])
            if h % self.stride or w % self.stride:
                raise ValueError(
                    f"{type(self).__name__} needs H and W divisible by its stride {self.stride}, "
                    f"got {h}x{w}; crop or pad the input to a multiple of {self.stride}"
                )
        return (x - self.mean) / self.std

    def _log_var(self, features: torch.Tensor) -> torch.Tensor | None:
        return None if self.std_head is None else self.std_head(features)
