"""Stage ``select``: the ambiguous pixels A = (sigma^2 > gamma) AND M (Eq. 8).

The phase-I model runs over every training tile (whole tile, no augmentation); ``sigma^2 =
exp(s)`` from its std head (``s`` clamped to [-10, 10] as in training) is compared with
``gamma``, and only pixels of the marginal ring M (Eq. 1, inside the valid region) can be
selected. Written once, at the end of phase I, and used by phase II as an extra label map.

Output folder::

    ambiguous/<tile_id>.png   A: 255 = ambiguous, 0 = not
    variance/<tile_id>.png    sigma^2 as 16-bit PNG: value = round(min(sigma^2, 1) * 65535)
    selection.csv             tile_id, marginal_pixels, selected_pixels, selected_fraction
    summary.json              gamma, kernel, totals, the checkpoint and its SHA-256
    overview.png              image, truth, variance and A for a few tiles (the paper's Fig. 2)
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from cirl.checkpoint import build_from_checkpoint, file_sha256, load_checkpoint
from cirl.config import to_dict
from cirl.errors import CirlError
from cirl.staging import staged_dir

VARIANCE_SCALE = 65535


@dataclass(frozen=True)
class SelectConfig:
    """Parameters of region selection (``params.yaml`` group ``select``).

    Attributes:
        gamma: variance threshold (paper 0.4), compared with sigma^2.
        kernel: side of the square dilation that makes the marginal ring (paper 5).
        split: the split to select on (``train``).
        overview: number of tiles in ``overview.png``.
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    gamma: float = 0.4
    kernel: int = 5
    split: str = "train"
    overview: int = 4
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.gamma <= 0:
            raise ValueError(f"key 'gamma' must be > 0, got {self.gamma}")
        if self.kernel < 3 or self.kernel % 2 == 0:
            raise ValueError(f"key 'kernel' must be an odd size >= 3, got {self.kernel}")
        if self.split not in ("train", "val", "test"):
            raise ValueError(f"key 'split' must be train, val or test, got {self.split!r}")


@dataclass(frozen=True)
class SelectResult:
    """Totals of a selection run."""

    out: Path
    tiles: int
    marginal_pixels: int
    selected_pixels: int

    @property
    def selected_fraction(self) -> float:
        """Fraction of the marginal ring M selected as ambiguous."""
        return self.selected_pixels / self.marginal_pixels if self.marginal_pixels else 0.0


def select_ambiguous(
    log_var: np.ndarray,
    mask: np.ndarray,
    valid: np.ndarray,
    gamma: float,
    kernel: int = 5,
    clamp: float = 10.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eq. 8 on one tile.

    Args:
        log_var: ``(H, W)`` log-variance ``s`` from the std head.
        mask: ``(H, W)`` bool ground truth.
        valid: ``(H, W)`` bool valid region.
        gamma: threshold on ``sigma^2 = exp(s)``.
        kernel: dilation size of the marginal ring.
        clamp: ``s`` is clamped to ``[-clamp, clamp]`` as in the loss.

    Returns:
        ``(ambiguous, marginal, variance)``: bool, bool and float32 ``(H, W)`` arrays.
    """
    from cirl.losses import marginal_region

    variance = np.exp(np.clip(log_var, -clamp, clamp)).astype(np.float32)
    marginal = marginal_region(mask, kernel) & valid
    return (variance > gamma) & marginal, marginal, variance


def _overview(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """A grid: one row per tile of photo, truth, variance heat map, A over the photo."""
    panels = []
    for image, mask, variance, ambiguous in rows:
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        truth = cv2.cvtColor(mask.astype(np.uint8) * 255, cv2.COLOR_GRAY2BGR)
        heat = cv2.applyColorMap((np.clip(variance, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
        over = (bgr * 0.5).astype(np.uint8)
        over[mask] = (255, 255, 255)
        over[ambiguous] = (0, 0, 255)
        panels.append(np.hstack([bgr, truth, heat, over]))
    width = max(p.shape[1] for p in panels)
    panels = [np.pad(p, ((0, 4), (0, width - p.shape[1]), (0, 0))) for p in panels]
    return np.vstack(panels)


@torch.no_grad()
def run(
    cfg: SelectConfig,
    data: str | os.PathLike,
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    progress: bool = True,
) -> SelectResult:
    """Write the ambiguity maps of every tile of ``cfg.split`` (see the module docstring).

    Raises:
        CirlError: when the checkpoint has no std head (it must come from phase I).
    """
    from cirl.data.tiles import TileDataset
    from cirl.inference import predict_prob
    from cirl.train import resolve_device

    data, out = Path(data), Path(out)
    payload = load_checkpoint(checkpoint)
    if not payload["model_config"].get("std_head"):
        raise CirlError(
            f"{checkpoint}: this model has no std head; select needs a phase-I checkpoint "
            "(cirl train --phase 1 --loss cirl)"
        )
    device = resolve_device(cfg.device)
    model = build_from_checkpoint(payload).to(device).eval()
    dataset = TileDataset(data, cfg.split)
    csv_buf = io.StringIO()
    writer = csv.writer(csv_buf, lineterminator="\n")
    writer.writerow(["tile_id", "marginal_pixels", "selected_pixels", "selected_fraction"])
    total_m = total_a = 0
    preview = []
    iterator = range(len(dataset))
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="select", unit="tile", leave=False)
    with staged_dir(out) as tmp:
        (tmp / "ambiguous").mkdir()
        (tmp / "variance").mkdir()
        for index in iterator:
            item = dataset[index]
            _, log_var = predict_prob(model, item["image"][None].to(device), with_log_var=True)
            mask = item["mask"][0].numpy() > 0.5
            valid = item["valid"][0].numpy() > 0.5
            ambiguous, marginal, variance = select_ambiguous(
                log_var[0, 0].cpu().numpy(), mask, valid, cfg.gamma, cfg.kernel
            )
            tile_id = item["tile_id"]
            cv2.imwrite(str(tmp / "ambiguous" / f"{tile_id}.png"), ambiguous.astype(np.uint8) * 255)
            scaled = np.round(np.clip(variance, 0, 1) * VARIANCE_SCALE).astype(np.uint16)
            cv2.imwrite(str(tmp / "variance" / f"{tile_id}.png"), scaled)
            n_m, n_a = int(marginal.sum()), int(ambiguous.sum())
            total_m, total_a = total_m + n_m, total_a + n_a
            writer.writerow([tile_id, n_m, n_a, f"{n_a / n_m if n_m else 0.0:.6f}"])
            if len(preview) < cfg.overview:
                image = (item["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
                preview.append((image, mask, variance, ambiguous))
        (tmp / "selection.csv").write_text(csv_buf.getvalue())
        summary = {
            "params": to_dict(cfg),
            "checkpoint": str(checkpoint),
            "checkpoint_sha256": file_sha256(checkpoint),
            "tiles": len(dataset),
            "marginal_pixels": total_m,
            "selected_pixels": total_a,
            "selected_fraction": total_a / total_m if total_m else 0.0,
            "variance_png_scale": f"sigma^2 = value / {VARIANCE_SCALE} (clipped at 1)",
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if preview:
            cv2.imwrite(str(tmp / "overview.png"), _overview(preview))
    return SelectResult(out, len(dataset), total_m, total_a)
