"""Stage ``select``: the ambiguous pixels A = (sigma^2 > gamma) AND M (Eq. 8).

The phase-I model runs over every training tile (whole tile, no augmentation); ``sigma^2 =
exp(s)`` from its std head (``s`` clamped to [-10, 10] as in training) is compared with
``gamma``, and only pixels of the marginal ring M (Eq. 1, inside the valid region) can be
selected. Written once, at the end of phase I, and used by phase II as an extra label map.

``rule=error`` selects where the variance of Eq. 7 converges to instead: A = M and the squared
error ``(p - y)^2`` of the model, averaged over the 8 flips/rotations of the tile, above
``lam``. The summary also gives the mechanism numbers: the share of A the model predicts as
crack and the ring's false-positive rate (:func:`diagnose` gives them for any later model).

Output folder::

    ambiguous/<tile_id>.png   A: 255 = ambiguous, 0 = not
    log_variance/<tile_id>.png  s = log sigma^2 as 16-bit PNG: s = value / 65535 * 20 - 10
                              (only tiles with a marginal ring: a tile without crack has
                              M = A = empty, and the model is not run on it)
    error/<tile_id>.png       rule=error, instead: the mean squared error as value / 65535
    selection.csv             tile_id, marginal_pixels, selected_pixels, selected_fraction
    summary.json              gamma used, kernel, totals, quantiles of sigma^2 on M, warnings,
                              the checkpoint and its SHA-256
    overview.png              image, truth, variance and A for a few tiles (the paper's Fig. 2),
                              with the variance's colour bar
    report.html               the selection's page: warnings, numbers, overview
                              (:func:`cirl.method.pages.selection_page`)

The threshold is ``gamma`` (the paper's 0.4) unless ``fraction`` > 0: then gamma is set to the
variance above which that fraction of the ring's pixels lies on this split, for models whose
learned variances sit on another scale. A selection of nothing, or of nearly the whole ring, is
reported as a warning (the std head learned no contrast at that threshold).

``max_tiles`` > 0 scores a seeded sample of the split's tiles instead of all of them: with
online selection (``train.selection: online``) phase II selects per batch and reads no map,
so the selection is then a report of the A phase II starts from, and a sample tells it for a
fraction of the forward passes (the main job: 96 of its 648 training tiles). Phase II with offline
selection refuses such a folder.

Two passes: the first runs the model and stores the log-variance maps (and a histogram of
``s`` on M), the second thresholds the stored maps; the model runs once per tile with a crack
(in NHWC memory format: the same arithmetic, 1.7x faster convolutions on CPU).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import cv2
import numpy as np
import torch

from cirl.config import to_dict
from cirl.errors import CirlError
from cirl.method.score_maps import (  # noqa: F401  (also importable from here)
    _HIST_BINS,
    LOG_VAR_CLAMP,
    _Codec,
    _quantile_from_histogram,
    _score_histogram_edges,
    decode_error,
    decode_log_var,
    dihedral_views,
    encode_error,
    encode_log_var,
    view_error,
)
from cirl.models.checkpoint import build_from_checkpoint, file_sha256, load_checkpoint
from cirl.staging import staged_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelectConfig:
    """Parameters of region selection (``params.yaml`` group ``select``).

    Attributes:
        rule: ``variance`` (Eq. 8: the std head's sigma^2 above ``gamma``, the paper) or
            ``error`` (the phase-I model's squared error ``(p - y)^2``, averaged over ``views``
            flips/rotations, above ``lam``: where Eq. 7's variance converges to, read off the
            model without waiting for it; any checkpoint, std head or not).
        gamma: variance threshold of ``rule=variance`` (paper 0.4), compared with sigma^2.
        lam: squared-error threshold of ``rule=error`` (Eq. 7's lambda, paper 0.3).
        views: flips/rotations averaged by ``rule=error`` (1, 2, 4 or 8).
        fraction: if > 0, ignore the threshold and select this fraction of the marginal ring
            (the pixels of highest score); 0 uses ``gamma`` or ``lam``.
        kernel: side of the square dilation that makes the marginal ring (paper 5).
        split: the split to select on (``train``).
        overview: number of tiles in ``overview.png``.
        max_tiles: tiles to score: 0 every tile of the split, N a seeded sample of N (a report
            for online selection; phase II with offline selection refuses it). The sample is
            drawn with a fixed seed, so a rerun scores the same tiles, and maps are written for
            those only: a report of the A phase II starts from, for ``train.selection:
            online``, whose phase II selects per batch and reads no maps.
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: the arithmetic of the model's forward pass on CPU: ``fp32``, ``bf16``
            (bfloat16 autocast) or ``auto`` (the precision the checkpoint was trained in, which
            ``cirl train`` timed on this machine: bf16 where it is the faster, fp32 elsewhere).
            Recorded in ``summary.json``. ``fp32`` is the dataclass default so that selections
            recorded before the option existed are repeated as they ran.
        verify_data: check the split's files against the manifest's SHA-256 first.
    """

    rule: Literal["variance", "error"] = "variance"
    gamma: float = 0.4
    lam: float = 0.3
    views: int = 8
    fraction: float = 0.0
    kernel: int = 5
    split: Literal["train", "val", "test"] = "train"
    overview: int = 4
    max_tiles: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    verify_data: bool = True

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"key 'precision' must be auto, fp32 or bf16, got {self.precision!r}")
        if self.rule not in ("variance", "error"):
            raise ValueError(f"key 'rule' must be variance or error, got {self.rule!r}")
        if self.gamma <= 0:
            raise ValueError(f"key 'gamma' must be > 0, got {self.gamma}")
        if not 0 < self.lam < 1:
            raise ValueError(f"key 'lam' must be in (0, 1), got {self.lam}")
        if self.views not in (1, 2, 4, 8):
            raise ValueError(f"key 'views' must be 1, 2, 4 or 8, got {self.views}")
        if not 0 <= self.fraction < 1:
            raise ValueError(f"key 'fraction' must be in [0, 1), got {self.fraction}")
        if self.kernel < 3 or self.kernel % 2 == 0:
            raise ValueError(f"key 'kernel' must be an odd size >= 3, got {self.kernel}")
        if self.split not in ("train", "val", "test"):
            raise ValueError(f"key 'split' must be train, val or test, got {self.split!r}")
        if self.max_tiles < 0:
            raise ValueError(f"key 'max_tiles' must be >= 0 (0: every tile), got {self.max_tiles}")


@dataclass(frozen=True)
class SelectResult:
    """Totals of a selection run."""

    out: Path
    tiles: int
    marginal_pixels: int
    selected_pixels: int
    gamma: float = 0.4
    warnings: tuple[str, ...] = ()

    @property
    def selected_fraction(self) -> float:
        """Fraction of the marginal ring M selected as ambiguous."""
        return self.selected_pixels / self.marginal_pixels if self.marginal_pixels else 0.0

    def summary(self) -> dict:
        """The run's totals as plain values (what the CLI prints and the pipeline records)."""
        return {
            "tiles": self.tiles,
            "marginal_pixels": self.marginal_pixels,
            "selected_pixels": self.selected_pixels,
            "selected_fraction": self.selected_fraction,
            "gamma": self.gamma,
            "warnings": list(self.warnings),
        }


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
    from cirl.method.losses import marginal_region

    variance = np.exp(np.clip(log_var, -clamp, clamp)).astype(np.float32)
    marginal = marginal_region(mask, kernel) & valid
    return (variance > gamma) & marginal, marginal, variance


# the overview's colour scale: log10 of the score from LOW (blue) to HIGH (red)
_SCALE = {"variance": (-4.0, 1.0), "error": (-4.0, 0.0)}


def _overview(
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    rule: str = "variance",
    threshold: float | None = None,
) -> np.ndarray:
    """A grid, one row per tile: photo | truth | score heat map (log) | M and A over the photo;
    a colour bar of the heat map's scale at the right, the threshold marked on it."""
    low, high = _SCALE.get(rule, _SCALE["variance"])
    panels = []
    for image, mask, score, ambiguous, marginal in rows:
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        truth = cv2.cvtColor(mask.astype(np.uint8) * 255, cv2.COLOR_GRAY2BGR)
        level = (np.log10(np.maximum(score, 10.0**low)) - low) / (high - low)
        heat = cv2.applyColorMap((np.clip(level, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
        over = (bgr * 0.45).astype(np.uint8)
        over[marginal] = (0, 200, 230)  # the ring M: yellow
        over[ambiguous] = (0, 0, 255)  # A: red
        if not ambiguous.any():
            _label(over, "A empty")
        panels.append(np.hstack([bgr, truth, heat, over]))
    width = max(p.shape[1] for p in panels)
    panels = [np.pad(p, ((0, 4), (0, width - p.shape[1]), (0, 0))) for p in panels]
    grid = np.vstack(panels)
    if grid.shape[0] < 140:  # room for a readable bar under small tiles
        grid = np.pad(grid, ((0, 140 - grid.shape[0]), (0, 0), (0, 0)), constant_values=255)
    unit = "sigma^2" if rule == "variance" else "(p-y)^2"
    return np.hstack([grid, _colour_bar(grid.shape[0], low, high, threshold, unit)])


def _label(picture: np.ndarray, text: str) -> None:
    """White text with a dark outline in the top-left corner."""
    scale = max(0.5, picture.shape[1] / 400)
    at = (int(10 * scale), int(30 * scale))
    thick = max(1, round(2 * scale))
    cv2.putText(picture, text, at, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 3)
    cv2.putText(picture, text, at, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick)


def _colour_bar(
    height: int, low: float, high: float, threshold: float | None, unit: str = ""
) -> np.ndarray:
    """A vertical bar of the heat map's colours (high at the top), labelled by decade, the
    threshold drawn as a white line; sized to the grid so it reads at the grid's scale."""
    scale = max(1.0, height / 640)
    width, bar_w, left = round(110 * scale), round(22 * scale), round(8 * scale)
    font, thick = 0.42 * scale, max(1, round(scale))
    bar_h = min(height - round(20 * scale), round(0.8 * height))
    top = (height - bar_h) // 2
    column = np.linspace(1.0, 0.0, bar_h)[:, None]
    colours = cv2.applyColorMap((column * 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = np.full((height, width, 3), 255, np.uint8)
    out[top : top + bar_h, left : left + bar_w] = np.repeat(colours, bar_w, axis=1)
    right = left + bar_w

    def y_of(value: float) -> int:
        return top + round((high - value) / (high - low) * (bar_h - 1))

    def text(label: str, y: int, colour: tuple[int, int, int]) -> None:
        at = (right + round(9 * scale), y + round(5 * scale))
        cv2.putText(out, label, at, cv2.FONT_HERSHEY_SIMPLEX, font, colour, thick, cv2.LINE_AA)

    if unit:
        at = (left, max(round(14 * scale), top - round(10 * scale)))
        cv2.putText(out, unit, at, cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), thick, cv2.LINE_AA)
    for decade in range(int(low), int(high) + 1):
        y = y_of(decade)
        cv2.line(out, (right, y), (right + round(6 * scale), y), (0, 0, 0), thick)
        text(f"1e{decade}", y, (0, 0, 0))
    if threshold is not None and threshold > 0:
        y = y_of(float(np.clip(np.log10(threshold), low, high)))
        cv2.line(out, (left - round(4 * scale), y), (right + 4, y), (255, 255, 255), 3 * thick)
        cv2.line(out, (left - round(4 * scale), y), (right + 4, y), (0, 0, 0), thick)
        text(f"{threshold:.3g}", y, (0, 0, 160))
    return out


@torch.no_grad()
def diagnose(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    ambiguity: str | os.PathLike,
    split: str = "train",
    kernel: int = 5,
    device: str = "auto",
) -> dict:
    """How a model predicts on a selection's pixels: the mechanism numbers of CIRL.

    Runs the model of ``checkpoint`` on every tile of ``split`` with a marginal ring and
    returns the size of A relative to the ring M, the share of A the model predicts as crack
    (``p > 0.5``; the CI loss pulls it towards 1/2) and the ring's false-positive rate. Called
    with the phase-I checkpoint it gives the numbers before phase II, with the phase-II
    checkpoint after it.
    """
    from cirl.data.tiles import TileDataset
    from cirl.method.losses import marginal_region
    from cirl.models.device import resolve_device
    from cirl.models.inference import predict_prob

    ambiguity = Path(ambiguity)
    payload = load_checkpoint(checkpoint)
    dev = resolve_device(device)
    model = build_from_checkpoint(payload).to(dev).eval()
    model.to(memory_format=torch.channels_last)
    dataset = TileDataset(data, split, ambiguity=ambiguity)
    n_m = n_a = fp_m = crack_a = 0
    for index in range(len(dataset)):
        item = dataset[index]
        mask = item["mask"][0].numpy() > 0.5
        ring = marginal_region(mask, kernel) & (item["valid"][0].numpy() > 0.5)
        if not ring.any():
            continue
        prob = predict_prob(
            model, item["image"][None].to(dev).contiguous(memory_format=torch.channels_last)
        )
        crack = prob[0, 0].cpu().numpy() > 0.5
        a = (item["ambiguous"][0].numpy() > 0.5) & ring
        n_m, n_a = n_m + int(ring.sum()), n_a + int(a.sum())
        fp_m += int((crack & ring).sum())
        crack_a += int((crack & a).sum())
    return {
        "checkpoint": str(checkpoint),
        "marginal_pixels": n_m,
        "selected_pixels": n_a,
        "selected_fraction": n_a / n_m if n_m else 0.0,
        "crack_share_of_a": crack_a / n_a if n_a else None,
        "ring_false_positive_rate": fp_m / n_m if n_m else 0.0,
    }


def forward_precision(name: str, payload: dict, device: torch.device) -> str:
    """``fp32`` or ``bf16``: the forward pass's precision (``auto``: as the model trained)."""
    if device.type != "cpu":
        return "fp32"
    if name == "auto":
        trained = (payload.get("provenance") or {}).get("precision")
        return "bf16" if trained == "bf16" else "fp32"
    return name


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
        CirlError: when the rule is ``variance`` and the checkpoint has no std head (it must
            come from phase I), or a file of the split differs from the manifest
            (``verify_data``).
    """
    from cirl.data.tiles import TileDataset
    from cirl.models.device import resolve_device

    data, out = Path(data), Path(out)
    payload = load_checkpoint(checkpoint)
    if cfg.rule == "variance" and not payload["model_config"].get("std_head"):
        raise CirlError(
            f"{checkpoint}: this model has no std head; select --rule variance needs a phase-I "
            "checkpoint (cirl train --phase 1 --loss cirl), --rule error takes any model"
        )
    device = resolve_device(cfg.device)
    model = build_from_checkpoint(payload).to(device).eval()
    model.to(memory_format=torch.channels_last)
    precision = forward_precision(cfg.precision, payload, device)
    dataset = TileDataset(data, cfg.split)
    if cfg.verify_data:
        from cirl.data.manifest import verify_files

        verify_files(data, dataset.records)
    codec = _Codec(cfg)
    soft_clamp = payload.get("config", {}).get("std_clamp") == "soft"
    with staged_dir(out) as tmp:
        (tmp / "ambiguous").mkdir()
        (tmp / codec.maps).mkdir()
        # Pass 1: the model's score of every tile, and its histogram on the ring M.
        autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        indices = scored_tiles(len(dataset), cfg.max_tiles)
        scored = _score_tiles(
            cfg, dataset, indices, model, device, autocast_dtype, soft_clamp, codec, tmp, progress
        )
        threshold, to_score = _threshold(cfg, scored.hist, codec.edges)
        # Pass 2: threshold the stored maps.
        totals = _threshold_tiles(
            cfg, dataset, indices, codec, scored.predicted, to_score, tmp, progress
        )
        quantiles = codec.quantiles(scored.hist)
        fraction = totals.a / totals.m if totals.m else 0.0
        warnings = _warnings(cfg, codec, fraction, totals.m, threshold, quantiles)
        summary = {
            "params": to_dict(cfg),
            "rule": cfg.rule,
            "gamma": threshold,
            "threshold": threshold,
            "threshold_on": codec.unit,
            "gamma_from": f"fraction {cfg.fraction}" if cfg.fraction > 0 else "params",
            "checkpoint": str(checkpoint),
            "checkpoint_sha256": file_sha256(checkpoint),
            "checkpoint_epoch": int(payload.get("epoch", -1)) + 1,
            "precision": precision,
            "tiles": len(dataset),
            # fewer than tiles: a sample (max_tiles), maps written for these only
            "tiles_scored": len(indices),
            "marginal_pixels": totals.m,
            "selected_pixels": totals.a,
            "selected_fraction": fraction,
            # the phase-I model's predictions (p > 0.5): the CI loss pulls A's crack share to 1/2
            "crack_share_of_a": totals.crack_a / totals.a if totals.a else None,
            "ring_false_positive_rate": scored.ring_fp / totals.m if totals.m else 0.0,
            (
                "variance_on_marginal_ring" if cfg.rule == "variance" else "error_on_marginal_ring"
            ): quantiles,
            "warnings": warnings,
        }
        if cfg.rule == "variance":
            summary["log_variance_png"] = "s = value / 65535 * 20 - 10, sigma^2 = exp(s)"
        else:
            summary["error_png"] = (
                f"mean over {cfg.views} flips/rotations of (p - y)^2 = value / 65535"
            )
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if totals.preview:
            overview = _overview(totals.preview, cfg.rule, threshold)
            cv2.imwrite(str(tmp / "overview.png"), overview)
        from cirl.method.pages import PAGE, selection_page

        selection_page(tmp).write(tmp / PAGE)
    return SelectResult(out, len(dataset), totals.m, totals.a, threshold, tuple(warnings))


def scored_tiles(n: int, max_tiles: int) -> list[int]:
    """The indices of the tiles a selection scores: all ``n``, or a seeded sample of
    ``max_tiles`` of them in tile order (the same sample for the same split, every run)."""
    if max_tiles <= 0 or max_tiles >= n:
        return list(range(n))
    return sorted(int(i) for i in np.random.default_rng(0).choice(n, max_tiles, replace=False))


def _tiles(indices: list[int], desc: str, progress: bool):
    iterator = indices
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc=desc, unit="tile", leave=False)
    return iterator


def _score_tiles(
    cfg: SelectConfig,
    dataset: Any,
    indices: list[int],
    model: Any,
    device: Any,
    autocast_dtype: Any,
    soft_clamp: bool,
    codec: _Codec,
    tmp: Path,
    progress: bool,
) -> SimpleNamespace:
    """Pass 1: each tile's score map written, its histogram on the ring M, and the model's
    p > 0.5 on the ring (bit-packed per tile, for A's crack share; counted, for the ring's
    false-positive rate)."""
    from cirl.method.losses import clamp_log_var, marginal_region
    from cirl.method.step import _autocast
    from cirl.models.inference import predict_prob

    hist = np.zeros(_HIST_BINS, np.int64)
    predicted: dict[str, np.ndarray] = {}
    ring_fp = 0
    for index in _tiles(indices, f"select: {cfg.rule}", progress):
        item = dataset[index]
        mask = item["mask"][0].numpy() > 0.5
        ring = marginal_region(mask, cfg.kernel) & (item["valid"][0].numpy() > 0.5)
        if not ring.any():  # no crack: nothing can be selected here
            continue
        image = item["image"][None].to(device).contiguous(memory_format=torch.channels_last)
        with _autocast(device, autocast_dtype):
            if cfg.rule == "variance":
                prob, log_var = predict_prob(model, image, with_log_var=True)
                score = clamp_log_var(log_var[0, 0].cpu().numpy(), LOG_VAR_CLAMP, soft_clamp)
            else:
                mask_t = item["mask"][None].to(device)
                error, prob = view_error(model, image, mask_t, cfg.views)
                score = error[0, 0].float().cpu().numpy()
        stored = codec.encode(score)
        cv2.imwrite(str(tmp / codec.maps / f"{item['tile_id']}.png"), stored)
        hist += np.histogram(codec.decode(stored)[ring], bins=codec.edges)[0]
        crack = (prob[0, 0].cpu().numpy() > 0.5) & ring
        ring_fp += int(crack.sum())
        predicted[item["tile_id"]] = np.packbits(crack)
    return SimpleNamespace(hist=hist, predicted=predicted, ring_fp=ring_fp)


def _threshold(cfg: SelectConfig, hist: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
    """The threshold (gamma or lambda, or the one that selects ``fraction`` of the ring), and
    the same on the stored score's scale (log sigma^2 for the variance rule)."""
    if cfg.rule == "variance":
        threshold, to_score = cfg.gamma, float(np.log(cfg.gamma))
    else:
        threshold, to_score = cfg.lam, cfg.lam
    if cfg.fraction > 0 and hist.sum():
        to_score = _quantile_from_histogram(hist, edges, 1.0 - cfg.fraction)
        threshold = float(np.exp(to_score)) if cfg.rule == "variance" else to_score
    return threshold, to_score


def _threshold_tiles(
    cfg: SelectConfig,
    dataset: Any,
    indices: list[int],
    codec: _Codec,
    predicted: dict[str, np.ndarray],
    to_score: float,
    tmp: Path,
    progress: bool,
) -> SimpleNamespace:
    """Pass 2: each tile's A written from its stored map; ``selection.csv``; the totals."""
    from cirl.method.losses import marginal_region

    csv_buf = io.StringIO()
    writer = csv.writer(csv_buf, lineterminator="\n")
    writer.writerow(["tile_id", "marginal_pixels", "selected_pixels", "selected_fraction"])
    total_m = total_a = crack_a = 0
    preview = []
    for index in _tiles(indices, "select: threshold", progress):
        item = dataset[index]
        tile_id = item["tile_id"]
        stored_path = tmp / codec.maps / f"{tile_id}.png"
        mask = item["mask"][0].numpy() > 0.5
        valid = item["valid"][0].numpy() > 0.5
        variance = None
        if stored_path.is_file():
            score = codec.decode(cv2.imread(str(stored_path), cv2.IMREAD_UNCHANGED))
            marginal = marginal_region(mask, cfg.kernel) & valid
            ambiguous = (score > to_score) & marginal
            variance = np.exp(score) if cfg.rule == "variance" else score
            crack = np.unpackbits(predicted[tile_id], count=mask.size).reshape(mask.shape)
            crack_a += int((crack.astype(bool) & ambiguous).sum())
        else:  # a tile without marginal ring (pass 1 skipped it)
            ambiguous = marginal = np.zeros(mask.shape, bool)
        cv2.imwrite(str(tmp / "ambiguous" / f"{tile_id}.png"), ambiguous.astype(np.uint8) * 255)
        n_m, n_a = int(marginal.sum()), int(ambiguous.sum())
        total_m, total_a = total_m + n_m, total_a + n_a
        writer.writerow([tile_id, n_m, n_a, f"{n_a / n_m if n_m else 0.0:.6f}"])
        if len(preview) < cfg.overview and variance is not None:
            image = (item["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            preview.append((image, mask, variance, ambiguous, marginal))
    (tmp / "selection.csv").write_text(csv_buf.getvalue())
    return SimpleNamespace(m=total_m, a=total_a, crack_a=crack_a, preview=preview)


def _warnings(
    cfg: SelectConfig,
    codec: _Codec,
    fraction: float,
    total_m: int,
    threshold: float,
    quantiles: dict[str, float],
) -> list[str]:
    """An empty selection, or one of almost the whole ring, said with the fix."""
    name = "gamma" if cfg.rule == "variance" else "lam"
    warnings = []
    if total_m and fraction == 0:
        warnings.append(
            f"no pixel of the marginal ring has {codec.unit} > {name} = {threshold:.4g} (the "
            f"ring's 99th percentile is {quantiles.get('q99', 0):.3g}); phase 2 will train "
            f"like BCE. Train phase 1 longer, lower --{name}, or select a share with "
            "--fraction"
        )
    elif fraction > 0.9:
        warnings.append(
            f"{fraction:.0%} of the marginal ring is selected ({name} = {threshold:.4g}): "
            f"the phase-I model has not learned where labels are ambiguous; train phase 1 "
            f"longer or raise --{name}"
        )
    for message in warnings:
        log.warning("%s", message)
    return warnings
