"""Evaluation report: metrics.json, per_image.csv, pr_curve.csv/png and prediction overlays.

Overlays need the images again, and the caller cannot keep a test split in memory, so they
are made in a second pass::

    metrics = SegmentationMetrics()
    for name, image, truth, valid in split:            # first pass: counts only
        metrics.add(name, predict(image), truth, valid)
    picks = select_overlay_names(metrics.per_image(), n=4)
    overlays = {}
    for stem, name in picks.items():                  # second pass: the few picked images
        image, truth, valid = load(name)
        overlays[stem] = render_overlay(image, predict(image), truth, valid)
    write_report(out_dir, metrics, overlays)

Output folder (written to a temporary folder and moved into place when complete)::

    metrics.json                  SegmentationMetrics.summary()
    per_image.csv                 one row per image (PER_IMAGE_COLUMNS)
    pr_curve.csv                  threshold, precision, recall, f1 (pooled)
    pr_curve.png                  the pooled PR curve with the ODS point
    overlays/<stem>.png           best_XX_<name> / worst_XX_<name>: photo | probability |
                                  hits green, false positives red, misses blue
    report.html                   the page of all of it, images linked
                                  (:func:`cirl.method.pages.evaluation_page`)
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from cirl.errors import CirlError
from cirl.method.metrics import SegmentationMetrics, disk
from cirl.staging import staged_dir

PER_IMAGE_COLUMNS = (
    "name",
    "precision",
    "recall",
    "f1",
    "iou",
    "best_f1",
    "best_threshold",
    "crack_pixels",
    "predicted_pixels",
    "valid_pixels",
)

# BGR colours of the overlay.
HIT = (0, 200, 0)
FALSE_POSITIVE = (0, 0, 255)
MISS = (255, 80, 0)
INVALID = (90, 90, 90)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def select_overlay_names(
    per_image: Sequence[Mapping],
    n: int,
    skip_empty_truth: bool = True,
    groups: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Pick the best and worst ``n`` images by F1 at the operating threshold.

    Args:
        per_image: rows of :meth:`SegmentationMetrics.per_image`.
        n: images per end; fewer when the split is small (an image may be both best and worst).
        skip_empty_truth: leave out images without crack pixels, which under the JTFN rule
            score F1 = 0 even when perfect and would crowd the worst end.
        groups: image name -> the photo it was cut from: each end then shows one tile per
            photo first (tiles of one photo only when there are fewer photos than ``n``), so
            four "worst" strips are not four tiles of the same photo.

    Returns:
        Overlay file stem (``best_01_<name>``, ``worst_01_<name>``, name made file-safe) ->
        image name, best first then worst; ties broken by name.
    """
    if n < 0:
        raise ValueError(f"overlay count must be >= 0, got {n}")
    rows = [r for r in per_image if r["crack_pixels"] > 0 or not skip_empty_truth]
    best = _spread(sorted(rows, key=lambda r: (-r["f1"], r["name"])), n, groups)
    worst = _spread(sorted(rows, key=lambda r: (r["f1"], r["name"])), n, groups)
    picks: dict[str, str] = {}
    for label, chosen in (("best", best), ("worst", worst)):
        for rank, row in enumerate(chosen, start=1):
            safe = _UNSAFE.sub("_", str(row["name"])).strip("._") or "image"
            picks[f"{label}_{rank:02d}_{safe}"] = row["name"]
    return picks


def _spread(ranked: list[Mapping], n: int, groups: Mapping[str, str] | None) -> list[Mapping]:
    """The first ``n`` of ``ranked``, one per group first, in rank order."""
    if not groups:
        return ranked[:n]
    first, rest, seen = [], [], set()
    for row in ranked:
        group = groups.get(row["name"], row["name"])
        (rest if group in seen else first).append(row)
        seen.add(group)
    chosen = (first + rest)[:n]
    order = {id(row): i for i, row in enumerate(ranked)}
    return sorted(chosen, key=lambda row: order[id(row)])


def render_overlay(
    image_bgr: np.ndarray,
    prob: np.ndarray,
    truth: np.ndarray,
    valid: np.ndarray | None = None,
    threshold: float = 0.5,
    tolerance: float = 0.0,
) -> np.ndarray:
    """Three panels side by side: the photo, the probability, and the errors over the photo.

    In the third panel the photo is darkened; hits (predicted pixels with a crack within
    ``tolerance``, and crack pixels recalled within it) are green, false positives red, missed
    crack pixels blue; pixels outside ``valid`` grey.

    Args:
        image_bgr: (H, W, 3) or (H, W) uint8 photo.
        prob: (H, W) crack probability in [0, 1].
        truth: (H, W) crack mask (non-zero = crack).
        valid: (H, W) pixels that count; None = all.
        threshold: predicted = ``prob >= threshold``, as in the metrics.
        tolerance: matching distance in pixels, as in the metrics.

    Returns:
        (H, 3W, 3) uint8 BGR image.
    """
    image = np.asarray(image_bgr)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    prob = np.asarray(prob, dtype=np.float64)
    truth = np.asarray(truth) != 0
    valid = np.ones(prob.shape, bool) if valid is None else np.asarray(valid) != 0
    if image.dtype != np.uint8 or image.shape[:2] != prob.shape or image.shape[2] != 3:
        raise ValueError(
            f"image must be (H, W, 3) or (H, W) uint8 matching prob {prob.shape}, "
            f"got {image.shape} {image.dtype}"
        )
    if truth.shape != prob.shape or valid.shape != prob.shape:
        raise ValueError(
            f"prob {prob.shape}, truth {truth.shape} and valid {valid.shape} must be equal"
        )
    truth &= valid
    predicted = (prob >= threshold) & valid
    if tolerance >= 1:
        kernel = disk(tolerance)
        near_truth = cv2.dilate(truth.view(np.uint8), kernel).astype(bool)
        near_predicted = cv2.dilate(predicted.view(np.uint8), kernel).astype(bool)
    else:
        near_truth, near_predicted = truth, predicted
    errors = (image.astype(np.float32) * 0.4).astype(np.uint8)
    errors[predicted & near_truth] = HIT
    errors[truth & near_predicted & ~predicted] = HIT
    errors[predicted & ~near_truth] = FALSE_POSITIVE
    errors[truth & ~near_predicted] = MISS
    errors[~valid] = INVALID
    heat = np.round(np.clip(prob, 0, 1) * 255).astype(np.uint8)
    heat = cv2.cvtColor(heat, cv2.COLOR_GRAY2BGR)
    heat[~valid] = INVALID
    return np.concatenate([image, heat, errors], axis=1)


def _write_per_image(path: Path, rows: Sequence[Mapping]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=PER_IMAGE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()}
            )


def _write_pr_curve(folder: Path, metrics: SegmentationMetrics, summary: Mapping) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curve = metrics.pr_curve()
    with (folder / "pr_curve.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["threshold", "precision", "recall", "f1"])
        for row in zip(curve.thresholds, curve.precision, curve.recall, curve.f1, strict=True):
            writer.writerow([f"{v:.6f}" for v in row])

    figure = Figure(figsize=(6, 6.4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    grid = np.linspace(0.01, 1, 200)
    for level in (0.2, 0.4, 0.6, 0.8):
        recall = grid[grid > level / (2 - level)]
        axes.plot(recall, level * recall / (2 * recall - level), color="0.85", lw=0.8)
    axes.plot(curve.recall, curve.precision, color="C0", lw=1.8, label="pooled PR curve")
    ods = summary["ods"]
    axes.plot(
        ods["recall"],
        ods["precision"],
        "o",
        color="C3",
        label=f"ODS F1 {ods['f1']:.4f} at t = {ods['threshold']:.3g}",
    )
    pooled = summary["pooled"]
    axes.plot(
        pooled["recall"],
        pooled["precision"],
        "s",
        color="C2",
        label=f"pooled F1 {pooled['f1']:.4f} at t = {metrics.threshold:g}",
    )
    calibration = summary.get("threshold_calibration") or {}
    if calibration.get("threshold") is not None:
        at = calibration["scored"]["pooled"]
        axes.plot(
            at["recall"],
            at["precision"],
            "D",
            color="C1",
            label=f"pooled F1 {at['f1']:.4f} at the calibrated t = {calibration['threshold']:g} "
            f"({calibration['split']} split's best)",
        )
    axes.set(xlim=(0, 1.01), ylim=(0, 1.01), xlabel="recall", ylabel="precision")
    axes.legend(loc="lower left", fontsize=8)
    axes.set_title(
        f"{summary['images']} images, crack = prob >= {metrics.threshold:g}, "
        f"tolerance {metrics.tolerance:g} px, empty-image F1 = {metrics.empty_f1:g}\n"
        f"mean per-image F1 {summary['f1']:.4f} (JTFN protocol), OIS {summary['ois']:.4f}, "
        f"AP {summary['ap']:.4f}",
        fontsize=8,
    )
    figure.tight_layout()
    figure.savefig(folder / "pr_curve.png", dpi=120)


def write_report_into(
    folder: Path,
    metrics: SegmentationMetrics,
    overlays: Mapping[str, np.ndarray] | None = None,
    extra: Mapping | None = None,
) -> dict:
    """Write the report files into an existing folder (no staging; see :func:`write_report`).

    For callers that stage their own output folder and add files of their own to it.

    Args:
        folder: an existing, writable folder.
        metrics: the filled accumulator.
        overlays: overlay file stem (as from :func:`select_overlay_names`) -> (H, W', 3) uint8
            BGR image (as from :func:`render_overlay`); None or empty = no overlays.
        extra: JSON-able keys added to ``metrics.json`` (provenance, other protocols); they
            may not replace a key of the summary.

    Returns:
        The content of ``metrics.json``.
    """
    folder = Path(folder)
    summary = metrics.summary()
    clash = sorted(set(extra or {}) & set(summary))
    if clash:
        raise ValueError(f"extra keys {clash} would replace metrics of the summary")
    summary = {**summary, **(extra or {})}
    for stem, picture in (overlays or {}).items():
        if _UNSAFE.search(stem) or stem in ("", ".", ".."):
            raise ValueError(
                f"overlay name {stem!r} is not a safe file stem; use select_overlay_names()"
            )
        picture = np.asarray(picture)
        if picture.dtype != np.uint8 or picture.ndim not in (2, 3):
            raise ValueError(
                f"overlay {stem!r} must be a uint8 image, got {picture.shape} {picture.dtype}"
            )
    (folder / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    _write_per_image(folder / "per_image.csv", metrics.per_image())
    _write_pr_curve(folder, metrics, summary)
    if overlays:
        (folder / "overlays").mkdir()
        for stem, picture in overlays.items():
            path = folder / "overlays" / f"{stem}.png"
            if not cv2.imwrite(str(path), np.asarray(picture)):
                raise CirlError(f"could not write overlay {path}; check the disk and folder")
    from cirl.method.pages import PAGE, evaluation_page

    evaluation_page(folder).write(folder / PAGE)
    return summary


def write_report(
    out_dir: Path,
    metrics: SegmentationMetrics,
    overlays: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write the whole report folder, replacing ``out_dir`` only once everything is written.

    Args:
        out_dir: the report folder (replaced as a whole; a failure leaves it untouched).
        metrics: the filled accumulator (at least one image).
        overlays: overlay file stem -> uint8 BGR image, see :func:`write_report_into`.

    Returns:
        ``out_dir``.
    """
    with staged_dir(out_dir) as folder:
        write_report_into(folder, metrics, overlays)
    return Path(out_dir)
