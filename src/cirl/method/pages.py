"""The report pages of evaluation and selection, read from their output folders.

Each page is a function of what its stage wrote (``metrics.json`` and the images of
``cirl evaluate``; ``summary.json`` and ``overview.png`` of ``cirl select``), so the stage
writes it into its folder (``report.html``, images linked) and anything later can render it
again embedded (a KFP ``Output[HTML]``, an MLflow artifact) from the same folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cirl.method.trained import is_sampled, trained_as
from cirl.pages import Page

PAGE = "report.html"
"""The page's name in its stage's folder."""

# the overlay's colours (cirl.method.report), as CSS
_LEGEND = (
    ("rgb(0,200,0)", "hit (crack found)"),
    ("rgb(255,0,0)", "false positive"),
    ("rgb(0,80,255)", "missed crack"),
    ("rgb(90,90,90)", "not scored (outside the photo)"),
)


def calibration_sentence(summary: Mapping[str, Any]) -> str:
    """What the evaluation says about the calibrated decision threshold, in one sentence."""
    calibration = summary.get("threshold_calibration") or {}
    if not calibration:
        return "No calibrated decision threshold (calibrate: none): predict decides at 0.5."
    if calibration.get("threshold") is None:
        return (
            f"No calibrated decision threshold: {calibration.get('why')}; predict decides at 0.5."
        )
    at = calibration["scored"]
    if calibration.get("adopted") is False:  # the held-out check kept the operating threshold
        return (
            f"Decision threshold {calibration['threshold']:g}, not calibrated: "
            f"{calibration['why']}. On the {at['split']} split the {calibration['split']} "
            f"split's best ({calibration['best']:g}) would score per-image F1 "
            f"{float(calibration.get('best_scored', {}).get('f1', float('nan'))):.4f} against "
            f"{at['f1']:.4f}. cirl predict decides at {calibration['threshold']:g}."
        )
    held = f" ({calibration['why']})" if calibration.get("why") else ""
    text = (
        f"Calibrated decision threshold {calibration['threshold']:g}: the {calibration['split']} "
        f"split's best single threshold ({calibration['images']} images, per-image F1 "
        f"{calibration['f1']:.4f}){held}. On the {at['split']} split at it: per-image F1 "
        f"{at['f1']:.4f} (at 0.5, the paper's protocol: {float(summary['f1']):.4f}), pooled F1 "
        f"{at['pooled']['f1']:.4f}. cirl predict decides at it (--threshold auto)."
    )
    worse = calibration_worse(summary)
    return f"{text} {worse}" if worse else text


def calibration_worse(summary: Mapping[str, Any]) -> str | None:
    """Said when the calibrated threshold scores below 0.5 on the scored split: the
    calibration split did not represent it (too few photos, other conditions)."""
    calibration = summary.get("threshold_calibration") or {}
    if calibration.get("threshold") is None:
        return None
    at = float(calibration["scored"]["f1"])
    if at >= float(summary["f1"]):
        return None
    return (
        f"The calibrated threshold scores lower on the {calibration['scored']['split']} "
        f"split than 0.5 ({at:.4f} < {float(summary['f1']):.4f}): the "
        f"{calibration['split']} split ({calibration['images']} images) does not represent it; "
        "calibrate on a larger split, or predict with --threshold 0.5."
    )


def score_rows(summary: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
    """The headline scores of an evaluation: (name, value, what it means)."""
    ods, pooled = summary.get("ods") or {}, summary.get("pooled") or {}
    threshold = (summary.get("settings") or {}).get("threshold", 0.5)
    rows = [
        ("per-image F1", summary.get("f1"), f"mean over images at {threshold:g} (the paper's)"),
        ("precision", summary.get("precision"), "mean over images"),
        ("recall", summary.get("recall"), "mean over images"),
        ("IoU", summary.get("iou"), "mean over images"),
        ("ODS F1", ods.get("f1"), f"best single threshold for the split ({ods.get('threshold')})"),
        ("OIS F1", summary.get("ois"), "best threshold per image, averaged"),
        ("AP", summary.get("ap"), "area under the pooled precision-recall curve"),
        ("pooled F1", pooled.get("f1"), f"all pixels of the split together at {threshold:g}"),
    ]
    calibration = summary.get("threshold_calibration") or {}
    if calibration.get("threshold") is not None:
        rows.append(
            (
                "per-image F1, calibrated",
                calibration["scored"]["f1"],
                f"at {calibration['threshold']:g}, the {calibration['split']} split's best: "
                "what cirl predict decides at",
            )
        )
    return rows


def evaluation_page(folder: str | os.PathLike, embed: bool = False) -> Page:
    """The evaluation report of a ``cirl evaluate`` folder.

    Args:
        folder: the folder (``metrics.json``, ``pr_curve.png``, ``overlays/``).
        embed: images as inline thumbnails (one self-contained file) instead of links.
    """
    folder = Path(folder)
    summary = json.loads((folder / "metrics.json").read_text())
    provenance = summary.get("provenance") or {}
    split = summary.get("split", "test")
    page = Page(f"Evaluation on the {split} split", folder, embed)
    method = trained_as(provenance.get("train_config"), provenance.get("selection"))
    if method.warning:
        page.warning(method.warning)
    model = provenance.get("model_config") or {}
    page.fields(
        {
            "model": f"{model.get('name', '?')}, trained as {method.label}",
            "checkpoint": _epoch(provenance.get("checkpoint"), provenance.get("checkpoint_epoch")),
            "scored": f"{summary.get('images')} images of the {split} split",
        }
    )
    page.heading("Scores")
    page.table(score_rows(summary), header=("score", "value", "meaning"))
    page.paragraph(calibration_sentence(summary))
    page.paragraph(str(summary.get("protocol", "")), css="note")
    if (folder / "pr_curve.png").is_file():
        page.heading("Precision and recall")
        page.image(
            folder / "pr_curve.png",
            "Pooled precision-recall curve of the split, with F1 contours; the points: ODS, "
            "the fixed threshold, the calibrated threshold.",
        )
    captions = summary.get("overlays") or []
    if captions:
        page.heading("Best and worst tiles")
        page.paragraph(
            "Each strip: the photo tile | the crack probability (white = 1) | the errors at "
            f"{(summary.get('settings') or {}).get('threshold', 0.5):g}. At most one tile per "
            "photo at each end while the split has enough photos; tiles without cracks are "
            "left out (their F1 is 0 by the protocol)."
        )
        page.legend(_LEGEND)
        for entry in captions:
            page.image(folder / entry["file"], _caption(entry), alt=entry["tile"])
    return page


def _epoch(checkpoint: Any, epoch: Any) -> str:
    return f"{checkpoint} (epoch {epoch})" if epoch is not None else str(checkpoint)


def _caption(entry: Mapping[str, Any]) -> str:
    where = ""
    if entry.get("photo"):
        box = entry.get("box") or []
        span = f", x {box[0]}-{box[2]}, y {box[1]}-{box[3]}" if len(box) == 4 else ""
        where = f" from photo {entry['photo']}{span}"
    return (
        f"{entry['kind']} {entry['rank']}: tile {entry['tile']}{where}: F1 {entry['f1']:.3f} "
        f"(precision {entry['precision']:.3f}, recall {entry['recall']:.3f}), "
        f"{entry['crack_pixels']} crack pixels"
    )


def selection_page(folder: str | os.PathLike, embed: bool = False) -> Page:
    """The selection report of a ``cirl select`` folder (``summary.json``, ``overview.png``)."""
    folder = Path(folder)
    summary = json.loads((folder / "summary.json").read_text())
    page = Page("Ambiguous-region selection", folder, embed)
    for message in summary.get("warnings") or []:
        page.warning(message)
    rule = summary.get("rule", "variance")
    unit = summary.get("threshold_on", "sigma^2")
    name = "gamma" if rule == "variance" else "lambda"
    fraction = float(summary.get("selected_fraction") or 0.0)
    quantiles = summary.get(
        "variance_on_marginal_ring" if rule == "variance" else "error_on_marginal_ring"
    )
    share = summary.get("crack_share_of_a")
    page.fields(
        {
            "rule": f"{rule}: A = ({unit} > {name}) and the marginal ring M",
            name: summary.get("threshold"),
            "threshold from": summary.get("gamma_from"),
            "phase I": _epoch(summary.get("checkpoint"), summary.get("checkpoint_epoch")),
            "tiles": summary.get("tiles")
            if not is_sampled(summary)
            else f"{summary['tiles_scored']} of {summary['tiles']} (a seeded sample, "
            "select.max_tiles: phase II selects online, per batch)",
            "marginal ring M (pixels)": summary.get("marginal_pixels"),
            "selected A (pixels)": summary.get("selected_pixels"),
            "|A| / |M|": f"{fraction:.2%}",
            "share of A the phase-I model calls crack": "-" if share is None else f"{share:.1%}",
            "ring false-positive rate": summary.get("ring_false_positive_rate"),
        }
    )
    if quantiles:
        page.heading(f"{unit} on the marginal ring")
        page.table([(k, v) for k, v in quantiles.items()], header=("quantile", unit), digits=4)
    if (folder / "overview.png").is_file():
        page.heading("Examples")
        page.image(
            folder / "overview.png",
            f"Per tile: the photo | the crack truth | {unit} (log colour scale, bar at the "
            f"right; the {name} marked) | the marginal ring M (yellow) and the selected A (red) "
            "over the photo.",
        )
    return page
