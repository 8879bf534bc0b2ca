"""Checkpoints: ``state_dict`` + configs + optimizer + epoch, never pickled objects.

Loaded with ``torch.load(..., weights_only=True)``; the model is rebuilt from the stored model
config through the registry.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cirl.errors import CirlError
from cirl.hashing import file_sha256  # noqa: F401  (its home before cirl.hashing)
from cirl.staging import staged_file


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` (tensors, numbers, strings, lists, dicts) atomically to ``path``."""
    with staged_file(path) as tmp:
        try:
            torch.save(payload, tmp)
        except (RuntimeError, OSError) as exc:
            # a full disk reaches us as torch's "basic_ios::clear: iostream error"
            free = shutil.disk_usage(tmp.parent).free
            reason = (
                f"the disk is full ({free / 2**20:.1f} MiB free)"
                if free < 64 * 2**20
                else f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            )
            raise CirlError(
                f"could not write checkpoint {path}: {reason}; free space there or choose an "
                "output on another disk (the previous checkpoint, if any, is kept)"
            ) from None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CirlError: naming the file when it is missing or not a cirl checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CirlError(f"checkpoint {path} not found; pass a .pt file written by `cirl train`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign or damaged files
        raise CirlError(
            f"{path}: not a readable cirl checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(payload, dict) or "model" not in payload or "model_config" not in payload:
        raise CirlError(f"{path}: not a cirl checkpoint (no model weights and model config)")
    return payload


def zero_subnormal_(model: nn.Module) -> int:
    """Set the subnormal float weights and buffers of ``model`` to zero, in place.

    Weight decay drives unused weights into the subnormal range (below 1.2e-38 in float32; one
    trained unet-small had 1,919 such weights), which x86 CPUs compute through a slow path
    unless the runtime treats subnormals as zero. Inside cirl that mode is on for inference
    (:func:`cirl.models.inference.subnormals_as_zero`, onnxruntime's
    ``session.set_denormal_as_zero``);
    ``cirl export`` also zeroes them so the deployed model carries none into runtimes that do
    not. Zeroing changes each output by less than 1e-37. Returns the number of values zeroed.
    """
    zeroed = 0
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tiny = (tensor != 0) & (tensor.abs() < torch.finfo(tensor.dtype).tiny)
                count = int(tiny.sum())
                if count:
                    tensor[tiny] = 0
                    zeroed += count
    return zeroed


def build_from_checkpoint(payload: dict[str, Any], std_head: bool | None = None) -> nn.Module:
    """Rebuild the model of a checkpoint and load its weights.

    Args:
        payload: from :func:`load_checkpoint`.
        std_head: force the std head on or off; None keeps what the checkpoint had. Weights of a
            std head absent from the checkpoint stay freshly initialised.
    """
    from cirl.models import build_model

    config = dict(payload["model_config"])
    name = config.pop("name")
    if std_head is not None:
        config["std_head"] = std_head
    model = build_model(name, **config)
    state = payload["model"]
    if model.std_head is None:
        state = {k: v for k, v in state.items() if not k.startswith("std_head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("std_head.")]
    if missing or unexpected:
        raise CirlError(
            f"checkpoint weights do not fit model {name!r}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model
