"""Where a model's exported forms lie beside each other (written by export, read by the engines
and the registry)."""

from __future__ import annotations

import os
from pathlib import Path


def int8_path(path: str | os.PathLike) -> Path:
    """Where ``cirl export --quantize`` writes the int8 copy of ``NAME.onnx``."""
    path = Path(path)
    return path.with_name(path.stem + ".int8.onnx")
