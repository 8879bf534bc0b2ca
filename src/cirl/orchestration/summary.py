"""``cirl pipeline show``: what a local pipeline run did, in words."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cirl.errors import CirlError


def summary_text(out: str | os.PathLike) -> str:
    """A short human summary of a local run folder: scores, where things are, how to look."""
    out = Path(out)
    record_path = out / "pipeline_run.json"
    if not record_path.is_file():
        raise CirlError(f"{record_path} not found; run `cirl pipeline run --out {out}` first")
    record = json.loads(record_path.read_text())
    if record.get("status") == "failed":
        return (
            f"cirl pipeline run in {out} FAILED after {record['seconds']:.0f} s: "
            f"{record.get('error', '')}\n  task outputs so far: {record.get('run_dir')}\n"
            "  fix the cause and rerun with --cache: finished tasks are reused"
        )
    from cirl.method.pages import calibration_worse
    from cirl.method.trained import trained_as

    lines = [f"cirl pipeline run in {out} ({record['seconds']:.0f} s, runner {record['runner']})"]
    warning = method_warning(out)
    if warning:
        lines.append(f"  WARNING: {warning}")
    for name in ("eval", "baseline-eval"):
        scores = record["metrics"].get(name)
        if not scores:
            continue
        metrics = json.loads((out / name / "metrics.json").read_text())
        provenance = metrics.get("provenance") or {}
        label = trained_as(provenance.get("train_config"), provenance.get("selection")).label
        ods = scores.get("ods")
        ods = ods.get("f1") if isinstance(ods, dict) else ods
        lines.append(
            f"  {label} on the {metrics.get('split', 'test')} split ({metrics.get('images', '?')} "
            f"tiles): per-image F1 {scores['f1']:.3f} (P {scores['precision']:.3f}, "
            f"R {scores['recall']:.3f}), ODS {ods:.3f}, OIS {scores['ois']:.3f}, "
            f"AP {scores['ap']:.3f}"
        )
        calibration = metrics.get("threshold_calibration") or {}
        if calibration.get("threshold") is not None:
            chosen = (
                f"the {calibration['split']} split's best"
                if calibration.get("adopted", True)
                else f"not calibrated: the {calibration['split']} split's best, "
                f"{calibration['best']:g}, did not hold up on its held-out photos"
            )
            lines.append(
                f"    decision threshold {calibration['threshold']:g} ({chosen}; predict "
                f"decides at it): per-image F1 {calibration['scored']['f1']:.3f} on the "
                f"{metrics.get('split', 'test')} split at it"
            )
            worse = calibration_worse(metrics)
            if worse:
                lines.append(f"    WARNING: {worse}")
    lines.extend(selection_lines(out))
    registration = record.get("registration") or {}
    if registration.get("registered"):
        promotion = registration.get("promotion") or {}
        alias = f", now {promotion['alias']}" if promotion.get("alias") else ""
        lines.append(f"  registered: {registration['model_uri']}{alias}")
        if promotion.get("reason"):
            lines.append(f"    {promotion['reason']}")
    elif registration:
        lines.append(f"  not registered: {registration.get('reason')}")
    where = [
        ("model.onnx", "deployable model (ONNX, no std head)"),
        ("phase2", "phase-II checkpoints (best.pt, last.pt, history.json)"),
        ("eval", "metrics.json, per_image.csv, pr_curve.png, overlays/"),
        ("report.html", "evaluation report: scores, PR curve, best/worst overlays"),
        ("select.html", "ambiguous-region selection report"),
        ("predict", "predictions on unseen photos: masks, overlays, cracks as CSV and GeoJSON"),
        ("audit", "audit.md, audit.json: lineage of the champion, data and scores verified"),
    ]
    lines.append("  outputs:")
    for name, text in where:
        if (out / name).exists():
            lines.append(f"    {out / name}: {text}")
    lines.append(f"    {record['run_dir']}: every task's outputs (KFP local run)")
    lines.append("  look at them:")
    lines.append(f"    open {out / 'report.html'} in a browser")
    uri = record.get("tracking_uri")
    if uri and record.get("parent_run_id"):
        store = f"--backend-store-uri {uri}" if uri.startswith("sqlite:") else ""
        lines.append(
            f"    mlflow ui {store}".rstrip()
            + f"   (MLflow run {record['parent_run_id']}: one nested run per stage)"
        )
    if registration.get("registered"):
        name = registration["name"]
        lines.append(f"    cirl audit models:/{name}@champion   (lineage of the deployed model)")
    if (out / "predict").is_dir():
        lines.append(
            f"    ls {out / 'predict'}   (NAME_overlay.jpg: numbered cracks, rows of "
            "NAME_cracks.csv)"
        )
    return "\n".join(lines)


def method_warning(out: str | os.PathLike) -> str | None:
    """Why the run's model is not what its name says (a phase II that trained as plain BCE),
    from the evaluation's record of the scored checkpoint; None when it is."""
    from cirl.method.trained import trained_as

    try:
        provenance = json.loads((Path(out) / "eval" / "metrics.json").read_text())["provenance"]
    except (OSError, ValueError, KeyError):
        return None
    return trained_as(provenance.get("train_config"), provenance.get("selection")).warning


def selection_lines(out: Path) -> list[str]:
    """What phase II's ambiguous set was, said loudly when it was empty: a phase II without A
    is plain BCE, and the model is then not CIRL's whatever the run is called."""
    try:
        summary = json.loads((out / "select" / "summary.json").read_text())
    except (OSError, ValueError):
        return []
    try:
        train = json.loads((out / "phase2" / "config.json").read_text()).get("train") or {}
    except (OSError, ValueError):
        train = {}
    fraction = float(summary.get("selected_fraction") or 0.0)
    if train.get("selection") == "online":
        from cirl.method.trained import is_sampled

        sample = (
            f" (on a sample of {summary['tiles_scored']} of {summary['tiles']} tiles)"
            if is_sampled(summary)
            else ""
        )
        return [
            f"  ambiguous pixels: selected per batch in phase II (online, squared error > "
            f"lambda {train.get('lam', '?')}); the phase-I model's offline A was "
            f"{fraction:.1%} of the ring{sample}"
        ]
    if fraction > 0:
        return [f"  ambiguous pixels: A = {fraction:.1%} of the marginal ring ({summary['rule']})"]
    from cirl.method.trained import selection_record, trained_as

    method = trained_as({**train, "phase": 2}, selection_record(summary))
    top = method_warning(out)
    return [
        f"  WARNING: {method.warning}" if method.warning != top else "  ambiguous pixels: none",
        *(f"    {w}" for w in summary.get("warnings", [])),
    ]


def _plain(text: str) -> str:
    """Drop the terminal colour codes KFP puts in its messages."""
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)
