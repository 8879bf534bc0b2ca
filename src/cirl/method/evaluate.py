"""Stage ``evaluate``: score a checkpoint on one split of a prepared dataset.

The top-level ``f1``, ``precision`` and ``recall`` of ``metrics.json`` follow the paper's
protocol (JTFN's): probability >= 0.5 is crack, scores per image, mean over images, exact pixel
match, an image with no crack and no prediction scores F1 = 0. The same file also carries the
field's other numbers (pooled P/R/F1, ODS, OIS, AP, IoU) and, with ``tolerance > 0``, all of
them again with that pixel tolerance under ``tolerant``. Only valid pixels count (padding and
pixels outside a field of view are left out). Every image of the prepared split is one image of
the protocol (a tile, or a whole photo when prepared with ``--tile 0``).

Output folder (written to a temporary folder, moved into place when complete)::

    metrics.json      the summary, the protocol sentence, provenance (checkpoint, data, config)
    per_image.csv     one row per image
    pr_curve.csv/png  the pooled precision-recall curve
    overlays/         best and worst images: photo | probability | hits, false positives, misses
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from cirl import __version__
from cirl.config import to_dict
from cirl.errors import CirlError
from cirl.staging import staged_dir


@dataclass(frozen=True)
class EvaluateConfig:
    """Parameters of evaluation (``params.yaml`` group ``evaluate``).

    Attributes:
        split: the split to score (``test``; ``val`` for model selection).
        threshold: the operating threshold of the paper's protocol.
        tolerance: if > 0, also score with this pixel tolerance (2 is common for cracks).
        empty_f1: F1 of an image with no crack and no prediction: 0.0 (JTFN) or 1.0.
        thresholds: number of thresholds of the ODS/OIS/AP sweep (k / (n + 1)).
        overlays: best and worst images to draw.
        calibrate: the split whose best threshold (the one of its best per-image mean F1) is
            the model's calibrated decision threshold, recorded with the scores (and the
            scored split's scores at it), carried by ``cirl export`` into the ONNX model and
            used by ``cirl predict``; ``none``, or the scored split itself, records none.
        device: ``auto``, ``cpu`` or ``cuda``.
        channels_last: on CPU, run the model in NHWC memory format (1.6x faster fp32
            convolutions on an AMD EPYC; probabilities within 1e-6 of NCHW's, which can move
            a pixel near a threshold, so it is recorded and ``cirl audit --verify`` re-scores
            in the recorded layout). Off is the dataclass default so that evaluations
            recorded before the option existed re-score as they ran.
        verify_data: check the split's files against the manifest's SHA-256 first.
    """

    split: Literal["train", "val", "test"] = "test"
    threshold: float = 0.5
    tolerance: int = 0
    empty_f1: float = 0.0
    thresholds: int = 99
    overlays: int = 4
    calibrate: Literal["val", "train", "none"] = "val"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    channels_last: bool = False
    verify_data: bool = True

    def __post_init__(self) -> None:
        if self.split not in ("train", "val", "test"):
            raise ValueError(f"key 'split' must be train, val or test, got {self.split!r}")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"key 'threshold' must be in (0, 1], got {self.threshold}")
        if self.tolerance < 0:
            raise ValueError(f"key 'tolerance' must be >= 0 pixels, got {self.tolerance}")
        if self.empty_f1 not in (0.0, 1.0):
            raise ValueError(f"key 'empty_f1' must be 0 (JTFN) or 1, got {self.empty_f1}")
        if self.thresholds < 1:
            raise ValueError(f"key 'thresholds' must be >= 1, got {self.thresholds}")
        if self.overlays < 0:
            raise ValueError(f"key 'overlays' must be >= 0, got {self.overlays}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"key 'device' must be auto, cpu or cuda, got {self.device!r}")
        if self.calibrate not in ("val", "train", "none"):
            raise ValueError(f"key 'calibrate' must be val, train or none, got {self.calibrate!r}")


@torch.no_grad()
def run(
    cfg: EvaluateConfig,
    data: str | os.PathLike,
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    progress: bool = True,
    on_tile: Callable[[dict, np.ndarray], None] | None = None,
) -> dict:
    """Evaluate ``checkpoint`` on ``cfg.split`` of ``data`` and write the report to ``out``.

    Args:
        cfg: the stage's parameters.
        data: a prepared folder (``cirl prepare``).
        checkpoint: a checkpoint written by ``cirl train``.
        out: the evaluation folder (replaced when complete).
        progress: show a progress bar.
        on_tile: called with each scored tile's item and probability map (how the audit
            compares the ONNX model with the same probabilities without a second pass).

    Returns:
        The content of ``metrics.json``.

    Raises:
        CirlError: on a missing or foreign checkpoint, a split with no tiles, or a file of the
            split that differs from the manifest (``verify_data``).
    """
    from cirl.data.tiles import TileDataset
    from cirl.method.metrics import SegmentationMetrics
    from cirl.method.report import write_report_into
    from cirl.models.checkpoint import build_from_checkpoint, file_sha256, load_checkpoint
    from cirl.models.device import resolve_device

    data, checkpoint = Path(data), Path(checkpoint)
    payload = load_checkpoint(checkpoint)
    device = resolve_device(cfg.device)
    model = build_from_checkpoint(payload, std_head=False).to(device).eval()
    fmt = layout(cfg, device)
    model.to(memory_format=fmt)
    dataset = TileDataset(data, cfg.split)
    if cfg.verify_data:
        from cirl.data.manifest import verify_files

        verify_files(data, dataset.records)
    metrics = SegmentationMetrics(cfg.threshold, cfg.thresholds, 0.0, cfg.empty_f1)
    tolerant = (
        SegmentationMetrics(cfg.threshold, cfg.thresholds, float(cfg.tolerance), cfg.empty_f1)
        if cfg.tolerance > 0
        else None
    )

    by_name: dict[str, int] = {}
    for index, item, prob in _probabilities(
        model, device, dataset, progress, f"evaluate {cfg.split}", fmt
    ):
        truth = item["mask"][0].numpy() > 0.5
        valid = item["valid"][0].numpy() > 0.5
        name = item["tile_id"]
        by_name[name] = index
        metrics.add(name, prob, truth, valid)
        if on_tile is not None:
            on_tile(item, prob)
        if tolerant is not None:
            tolerant.add(name, prob, truth, valid)
    overlays = _overlays(cfg, model, device, dataset, metrics, by_name)
    manifest = data / "manifest.csv"
    extra = {
        "split": cfg.split,
        "params": to_dict(cfg),
        "provenance": {
            "checkpoint": str(checkpoint),
            "checkpoint_sha256": file_sha256(checkpoint),
            "model_config": payload["model_config"],
            "train_config": payload.get("config"),
            "checkpoint_epoch": int(payload.get("epoch", -1)) + 1,
            # what phase II's selection was (an empty one trains plain BCE): cirl.method.trained
            "selection": (payload.get("provenance") or {}).get("selection"),
            "data": str(data),
            "manifest_sha256": file_sha256(manifest),
            "cirl_version": __version__,
        },
    }
    if overlays:
        picks = {stem: name for stem, (name, _) in overlays.items()}
        extra["overlays"] = overlay_captions(dataset, metrics, picks)
        overlays = {stem: picture for stem, (_, picture) in overlays.items()}
    if tolerant is not None:
        extra["tolerant"] = tolerant.summary()
    if cfg.calibrate not in ("none", cfg.split) and len(metrics):
        extra["threshold_calibration"] = calibrate(cfg, data, model, device, metrics, progress)
    if len(metrics) == 0:  # pragma: no cover - TileDataset refuses an empty split
        raise CirlError(f"{data}: no images in split {cfg.split!r}")
    with staged_dir(out) as tmp:
        summary = write_report_into(tmp, metrics, overlays, extra)
    return summary


def _overlays(
    cfg: EvaluateConfig, model: Any, device: Any, dataset: Any, metrics: Any, by_name: dict
) -> dict[str, tuple[str, np.ndarray]]:
    """The best and worst tiles drawn (stem -> tile name, picture): prediction, truth and the
    ignored border."""
    from cirl.method.report import render_overlay, select_overlay_names
    from cirl.models.inference import predict_prob

    overlays = {}
    sources = {r.tile_id: r.source_id for r in dataset.records}
    picks = select_overlay_names(metrics.per_image(), cfg.overlays, groups=sources)
    for stem, name in picks.items():
        item = dataset[by_name[name]]
        prob = predict_prob(model, item["image"][None].to(device))[0, 0].cpu().numpy()
        rgb = (item["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        overlays[stem] = (
            name,
            render_overlay(
                np.ascontiguousarray(rgb[:, :, ::-1]),
                prob,
                item["mask"][0].numpy() > 0.5,
                item["valid"][0].numpy() > 0.5,
                cfg.threshold,
            ),
        )
    return overlays


def overlay_captions(dataset: Any, metrics: Any, picks: Mapping[str, str]) -> list[dict]:
    """What the report says under each overlay: which tile of which photo, and its scores."""
    records = {r.tile_id: r for r in dataset.records}
    rows = {row["name"]: row for row in metrics.per_image()}
    captions = []
    for stem, name in picks.items():
        kind, rank, _ = stem.split("_", 2)
        record, row = records.get(name), rows[name]
        captions.append(
            {
                "file": f"overlays/{stem}.png",
                "kind": kind,
                "rank": int(rank),
                "tile": name,
                "photo": record.source_file if record else None,
                "box": [record.x0, record.y0, record.x1, record.y1] if record else None,
                **{k: row[k] for k in ("f1", "precision", "recall", "crack_pixels")},
            }
        )
    return captions


def calibrate(cfg: EvaluateConfig, data: Path, model, device, scored, progress: bool) -> dict:
    """The calibrated decision threshold: the grid threshold of ``cfg.calibrate``'s best
    per-image mean F1, adopted only when it holds up on photos it was not chosen on, and the
    scored split's scores at the threshold adopted (``scored``: its
    :class:`SegmentationMetrics`).

    The check is leave-one-photo-out on the calibration split
    (:meth:`SegmentationMetrics.held_out_gain`): each photo is scored at the threshold the
    other photos choose, against the operating threshold (0.5). The best threshold is adopted
    when that held-out gain is positive; otherwise the operating threshold is kept (a few
    validation photos choose a threshold that fits them, not the next photos: on the main
    job's 3 synthetic validation photos the best, 0.89, scored 0.23 on test against 0.33 at
    0.5).

    Returns:
        ``split``, ``images``, ``photos``, ``threshold`` (the one adopted; None when the split
        has no images, with ``why``), ``best`` (the split's best threshold), ``adopted``
        (whether ``threshold`` is ``best``), ``held_out`` (the check: folds, gain, each fold's
        threshold), ``why``, ``f1`` (the calibration split's per-image mean F1 at
        ``threshold``) and ``scored`` (the scored split's per-image and pooled scores at it).
    """
    from cirl.data.tiles import TileDataset
    from cirl.method.metrics import SegmentationMetrics

    try:
        dataset = TileDataset(data, cfg.calibrate)
    except CirlError as exc:
        return {"split": cfg.calibrate, "images": 0, "threshold": None, "why": str(exc)}
    if cfg.verify_data:
        from cirl.data.manifest import verify_files

        verify_files(data, dataset.records)
    metrics = SegmentationMetrics(cfg.threshold, cfg.thresholds, 0.0, cfg.empty_f1)
    desc = f"calibrate on {cfg.calibrate}"
    fmt = layout(cfg, device)
    for _, item, prob in _probabilities(model, device, dataset, progress, desc, fmt):
        metrics.add(item["tile_id"], prob, item["mask"][0].numpy() > 0.5,
                    item["valid"][0].numpy() > 0.5)  # fmt: skip
    best, _ = metrics.best_mean_f1()
    held_out = metrics.held_out_gain([record.source_id for record in dataset.records])
    operating = held_out["operating"]
    gain = held_out["gain"]
    if best == operating:
        adopted, why = True, f"the {cfg.calibrate} split's best is the operating threshold"
    elif gain is None:
        adopted = False
        why = (
            f"one {cfg.calibrate} photo cannot check its own best threshold ({best:g}); "
            f"kept {operating:g}"
        )
    elif gain > 0:
        adopted = True
        why = (
            f"chosen on the other photos, it gains {gain:+.4f} per-image F1 over "
            f"{operating:g} on each held-out {cfg.calibrate} photo, on average"
        )
    else:
        adopted = False
        why = (
            f"the {cfg.calibrate} split's best ({best:g}) does not hold up on its own photos: "
            f"chosen on the others, it scores {gain:+.4f} per-image F1 against {operating:g} "
            f"on each held-out photo ({held_out['folds']} photos); kept {operating:g}"
        )
    threshold = best if adopted else operating
    return {
        "split": cfg.calibrate,
        "images": len(metrics),
        "photos": held_out["folds"],
        "threshold": threshold,
        "best": best,
        "adopted": adopted,
        "held_out": held_out,
        "why": why,
        "f1": metrics.scores_at(threshold)["f1"],
        "rule": f"the threshold of the {cfg.calibrate} split's best per-image mean F1 over the "
        "grid (the paper's metric; ties: nearest the operating threshold), adopted when, "
        "chosen leaving each photo out, it beats the operating threshold on that photo on "
        "average",
        "scored": {"split": cfg.split, **scored.scores_at(threshold)},
        # what the rejected best would have scored, for the report (read after the choice)
        "best_scored": {"split": cfg.split, **scored.scores_at(best)},
    }


def layout(cfg: EvaluateConfig, device: torch.device) -> torch.memory_format:
    """The memory format the evaluation runs the model and its inputs in."""
    nhwc = cfg.channels_last and device.type == "cpu"
    return torch.channels_last if nhwc else torch.contiguous_format


def _probabilities(model, device, dataset, progress: bool, desc: str, fmt: torch.memory_format):
    """``(index, item, probability map)`` for every tile of ``dataset``, in order, each input
    in memory format ``fmt`` (the model's, :func:`layout`)."""
    from cirl.models.inference import predict_prob

    indices = range(len(dataset))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=desc, unit="image", leave=False)
    for index in indices:
        item = dataset[index]
        image = item["image"][None].to(device).contiguous(memory_format=fmt)
        yield index, item, predict_prob(model, image)[0, 0].cpu().numpy()
