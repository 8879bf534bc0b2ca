"""Model registry: names -> constructors, and :func:`build_model`.

Every model takes ``(N, 3, H, W)`` float RGB in [0, 1] (H, W multiples of ``model.stride``),
returns a :class:`SegOutput`, has ``model.std_head`` (a 1x1 conv or None) with
``drop_std_head()``, and after :func:`build_model` carries ``model.config`` (``name`` plus the
keyword arguments) so ``build_model(**model.config)`` rebuilds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from cirl.models.jtfn import JTFN, boundary_target, jtfn_deep_supervision_loss
from cirl.models.output import SegModel, SegOutput
from cirl.models.unet import UNet


def unet_small(**kw: Any) -> UNet:
    """U-Net at base width 16 (about 2 M parameters), trainable on a CPU."""
    return UNet(**{"base_width": 16, **kw})


def jtfn_small(**kw: Any) -> JTFN:
    """JTFN-style network at base width 16 (widths 16/32/64/128/256), trainable on a CPU."""
    return JTFN(**{"base_width": 16, **kw})


MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    "unet-small": unet_small,
    "jtfn": JTFN,
    "jtfn-small": jtfn_small,
}


def build_model(name: str, **kw: Any) -> nn.Module:
    """Build a registry model and record ``{"name": name, **kw}`` as ``model.config``.

    Args:
        name: one of :data:`MODELS`.
        **kw: constructor arguments (``in_channels``, ``base_width``, ``std_head``, ...).

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
    model = MODELS[name](**kw)
    model.config = {"name": name, **kw}
    return model


__all__ = [
    "JTFN",
    "MODELS",
    "SegModel",
    "SegOutput",
    "UNet",
    "boundary_target",
    "build_model",
    "jtfn_deep_supervision_loss",
]
