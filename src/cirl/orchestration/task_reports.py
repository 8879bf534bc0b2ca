"""The HTML reports KFP's UI shows for the tasks (``Output[HTML]``): tables, embedded images,
the calibration's sentence.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cirl.orchestration.task_base import ArtifactLike, _prepare_output


def _img_tag(path: Path, width: int | None = None) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    mime = "image/png" if path.suffix == ".png" else "image/jpeg"
    size = f' width="{width}"' if width else ""
    return f'<img src="data:{mime};base64,{data}"{size} alt="{html.escape(path.name)}">'


def _table(rows: Mapping[str, Any]) -> str:
    cells = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
        for k, v in rows.items()
    )
    return f"<table>{cells}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _write_html(artifact: ArtifactLike, title: str, body: str) -> None:
    path = _prepare_output(artifact)
    style = (
        "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:2px 8px;text-align:left}img{max-width:100%}"
    )
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
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
    return (
        f"Calibrated decision threshold {calibration['threshold']:g}: the {calibration['split']} "
        f"split's best single threshold ({calibration['images']} images, per-image F1 "
        f"{calibration['f1']:.4f}). On the {at['split']} split at it: per-image F1 "
        f"{at['f1']:.4f} (at 0.5, the paper's protocol: {float(summary['f1']):.4f}), pooled F1 "
        f"{at['pooled']['f1']:.4f}. cirl predict decides at it (--threshold auto)."
    )
