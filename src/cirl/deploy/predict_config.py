"""``cirl predict``'s parameters, what it returns, and the decision threshold it applies (the
model's calibrated one, or the one asked for).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class PredictConfig:
    """Parameters of prediction (``params.yaml`` group ``predict``).

    Attributes:
        engine: ``auto`` (the fastest engine on this machine that passed the model's
            accuracy gate recorded in its metadata), ``onnx`` (onnxruntime fp32, the
            reference), ``onnx-int8`` (the static int8 copy beside the model), ``openvino``,
            ``openvino-bf16`` or ``torch`` (a ``.pt`` checkpoint).
        tile: sliding-window tile side, a multiple of the model's stride.
        overlap: pixels shared by neighbouring tiles (blended), < tile.
        batch: tiles per forward pass.
        threshold: crack where probability >= threshold; ``auto``: the model's calibrated
            decision threshold (the validation split's best, recorded by ``cirl export
            --evaluation``), else 0.5, the paper's protocol.
        threads: CPU threads of the engine (0 = its default).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        mm_per_pixel: ground sampling distance; > 0 adds millimetre columns, 0 = unknown.
        min_crack_pixels: connected cracks smaller than this are not measured (noise).
        max_crack_width: connected regions wider than this (pixels) are not cracks (stains,
            shadows, or a model that does not fit the photos): reported, not measured.
        overlay_alpha: opacity of the crack colours in the overlay.
        geojson: write ``NAME_cracks.geojson``, each crack's centreline with its widths (the
            rows of ``NAME_cracks.csv`` as GeoJSON features, for inspection and GIS tools).
        geo: coordinates of ``NAME_cracks.geojson``: ``auto``, map coordinates where the photo
            is georeferenced (a GeoTIFF's own tags, or a world file beside it: ``NAME.jgw``,
            ``.pgw``, ``.tfw``, ``.wld``...), else pixels; ``pixel``, always pixels.
        force: use a low-precision engine (int8, bf16) whose accuracy gate failed or never ran.
        resume: skip photos whose outputs are already in the output folder, made from the same
            photo with the same model and parameters.
    """

    engine: str = "auto"
    tile: int = 512
    overlap: int = 64
    batch: int = 4
    threshold: float | Literal["auto"] = "auto"
    threads: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mm_per_pixel: float = 0.0
    min_crack_pixels: int = 20
    max_crack_width: float = 200.0
    overlay_alpha: float = 0.6
    geojson: bool = True
    geo: Literal["auto", "pixel"] = "auto"
    force: bool = False
    resume: bool = True

    def __post_init__(self) -> None:
        from cirl.deploy.engine import ENGINES

        if self.engine not in ENGINES:
            raise ValueError(
                f"key 'engine' must be one of {', '.join(ENGINES)}, got {self.engine!r}"
            )
        if self.tile < 32:
            raise ValueError(f"key 'tile' must be >= 32, got {self.tile}")
        if not 0 <= self.overlap < self.tile // 2:
            raise ValueError(
                f"key 'overlap' must be in 0..{self.tile // 2 - 1} (under half the tile), "
                f"got {self.overlap}"
            )
        if self.batch < 1:
            raise ValueError(f"key 'batch' must be >= 1, got {self.batch}")
        if self.threshold != "auto" and not 0 < self.threshold < 1:
            raise ValueError(
                f"key 'threshold' must be auto or a number in (0, 1), got {self.threshold}"
            )
        if self.threads < 0:
            raise ValueError(f"key 'threads' must be >= 0, got {self.threads}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"key 'device' must be auto, cpu or cuda, got {self.device!r}")
        if not (self.mm_per_pixel >= 0 and np.isfinite(self.mm_per_pixel)):
            raise ValueError(f"key 'mm_per_pixel' must be a number >= 0, got {self.mm_per_pixel}")
        if self.min_crack_pixels < 1:
            raise ValueError(f"key 'min_crack_pixels' must be >= 1, got {self.min_crack_pixels}")
        if not self.max_crack_width > 0:
            raise ValueError(f"key 'max_crack_width' must be > 0, got {self.max_crack_width}")
        if not 0 <= self.overlay_alpha <= 1:
            raise ValueError(f"key 'overlay_alpha' must be in [0, 1], got {self.overlay_alpha}")
        if self.geo not in ("auto", "pixel"):
            raise ValueError(f"key 'geo' must be auto or pixel, got {self.geo!r}")


@dataclass
class PredictResult:
    """What happened to every input."""

    out: Path
    done: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Photos whose outputs an earlier run had already made (``resume``)."""
    engine: str = ""
    """The engine that ran (``auto`` resolved)."""
    engine_choice: dict | None = None
    """Why ``auto`` chose it, with its timings (None for a named engine)."""


def decision_threshold(cfg: PredictConfig, model: dict) -> dict:
    """The threshold a run uses: ``value`` and ``source`` (why that one).

    Args:
        cfg: the stage's parameters (``threshold`` a number, or ``auto``).
        model: the engine's description (``decision_threshold`` where the model records one).
    """
    if cfg.threshold != "auto":
        return {"value": float(cfg.threshold), "source": "given (--threshold)"}
    recorded = model.get("decision_threshold")
    if recorded is None:
        return {
            "value": 0.5,
            "source": "0.5, the paper's protocol: the model records no calibrated threshold "
            "(export it with `cirl export --evaluation EVAL`)",
        }
    calibration = model.get("threshold_calibration") or {}
    if calibration.get("adopted") is False:
        return {
            "value": float(recorded),
            "source": f"{float(recorded):g}, recorded in the model: {calibration.get('why')}",
        }
    return {
        "value": float(recorded),
        "source": f"calibrated on the {calibration.get('split', 'val')} split "
        f"({calibration.get('images', '?')} images, per-image F1 "
        f"{float(calibration.get('f1') or 0):.3f} there), recorded in the model",
    }
