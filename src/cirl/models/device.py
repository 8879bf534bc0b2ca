"""Where a model runs: the device a stage's ``device`` parameter names."""

from __future__ import annotations

import torch

from cirl.errors import CirlError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CirlError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    return torch.device(name)
