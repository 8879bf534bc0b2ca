"""The stages as pipeline tasks: artifacts in, artifacts out, one call per KFP component.

Each function here is what one component of ``components/`` calls, and all it does is adapt:
it builds the stage config from the component's ``params`` mapping (strictly, through the same
frozen dataclass as the CLI and ``params.yaml``), runs the stage function on the artifacts'
local paths, and fills the output artifacts: files, ``metadata`` (shown by the KFP UI),
``Metrics`` and an HTML report. Artifacts are duck-typed (anything with ``path`` and
``metadata``; ``Metrics`` also ``log_metric``), so this module never imports ``kfp`` and its
functions can be called, and tested, without a pipeline.

A stage that fails raises :class:`~cirl.errors.CirlError`; :func:`run_task` prints its
``error: ...`` line to the task log and exits non-zero, so the task fails and nothing
downstream runs.
"""

from __future__ import annotations

import base64
import html
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from cirl.errors import CirlError
from cirl.staging import clean_stale


class ArtifactLike(Protocol):
    """What a task needs of a KFP artifact: a local ``path`` and a ``metadata`` dict."""

    path: str
    metadata: dict


def stage_config(group: str, params: Mapping[str, Any], **overrides: Any) -> Any:
    """The frozen config of ``group`` from a component's ``params`` mapping and fixed overrides.

    Raises:
        CirlError: naming the pipeline parameter and the key on an unknown key or wrong type.
    """
    import typing

    from cirl import config

    cls = config.stage_config(group)
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in dict(params or {}).items():
        # KFP passes mappings as protobuf Structs, whose numbers are all doubles: 512 -> 512.0
        if hints.get(key) is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        values[key] = value
    values.update(overrides)
    return config.from_mapping(cls, values, f"pipeline parameter {group}_params")


@contextmanager
def task_errors(stage: str) -> Iterator[None]:
    """Turn a stage's :class:`CirlError` into its ``error:`` line and a failed task.

    KFP shows the task's stdout and stderr as its log: the user reads the same one-line
    message as on the command line, not a stack trace, and the task exits with status 2.
    """
    try:
        yield
    except CirlError as exc:
        print(f"error: {stage}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _prepare_output(artifact: ArtifactLike) -> Path:
    path = Path(artifact.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path.parent)  # temporaries of this task's killed attempt, if any
    return path


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


def prepare(
    source: str,
    fmt: str,
    params: Mapping[str, Any],
    dataset: ArtifactLike,
) -> dict:
    """Slice and split the raw dataset at ``source`` into the ``dataset`` artifact folder."""
    from cirl import prepare as stage
    from cirl.checkpoint import file_sha256

    cfg = stage_config("prepare", params)
    out = _prepare_output(dataset)
    result = stage.run(cfg, source, fmt, out)
    dataset.metadata.update(
        {
            "source": source,
            "format": fmt,
            "tiles": result.tiles,
            "photos": result.sources,
            "skipped": len(result.skipped),
            "manifest_sha256": file_sha256(out / "manifest.csv"),
        }
    )
    return dataset.metadata


def train(
    dataset: ArtifactLike,
    params: Mapping[str, Any],
    model: ArtifactLike,
    metrics: ArtifactLike | None = None,
    phase: int = 1,
    loss: str = "cirl",
    init: ArtifactLike | None = None,
    ambiguity: ArtifactLike | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict:
    """Train one arm into the ``model`` artifact folder (``best.pt``, ``last.pt``, history).

    A retried task finds its own ``last.pt`` and resumes from it (same parameters), so an
    interrupted training continues instead of starting over.
    """
    from cirl import train as stage

    cfg = stage_config("train", params, phase=phase, loss=loss)
    out = _prepare_output(model)
    resume = (out / "last.pt").is_file()
    result = stage.run(
        cfg,
        dataset.path,
        out,
        init=Path(init.path) / "best.pt" if init is not None else None,
        ambiguity=ambiguity.path if ambiguity is not None else None,
        resume=resume,
        progress=False,
        on_epoch=on_epoch,
    )
    last = result.history[-1] if result.history else {}
    summary = {
        "phase": phase,
        "loss": loss,
        "best_epoch": result.best_epoch,
        "best_val_f1": result.best_val_f1,
        "epochs": len(result.history),
        "last_loss": last.get("loss"),
        "resumed": resume,
    }
    model.metadata.update(summary)
    if metrics is not None:
        metrics.log_metric("best_val_f1", float(result.best_val_f1))
        if last:
            metrics.log_metric("last_loss", float(last["loss"]))
            metrics.log_metric("images_per_s", float(last["images_per_s"]))
    return summary


def select(
    dataset: ArtifactLike,
    phase1: ArtifactLike,
    params: Mapping[str, Any],
    ambiguity: ArtifactLike,
    report: ArtifactLike | None = None,
) -> dict:
    """Select the ambiguous pixels with the phase-I model (its ``last.pt``, as the paper)."""
    from cirl import selection as stage

    cfg = stage_config("select", params)
    out = _prepare_output(ambiguity)
    result = stage.run(cfg, dataset.path, Path(phase1.path) / "last.pt", out, progress=False)
    summary = result.summary()
    ambiguity.metadata.update(summary)
    if report is not None:
        body = _table(summary)
        overview = out / "overview.png"
        if overview.is_file():
            body += "<h2>Photo, truth, log-variance, A</h2>" + _img_tag(overview)
        _write_html(report, "Ambiguous-region selection", body)
    return summary


def evaluate(
    dataset: ArtifactLike,
    model: ArtifactLike,
    params: Mapping[str, Any],
    evaluation: ArtifactLike,
    metrics: ArtifactLike | None = None,
    report: ArtifactLike | None = None,
) -> dict:
    """Score the model's ``best.pt`` on the configured split; metrics, report and overlays."""
    from cirl import evaluate as stage

    cfg = stage_config("evaluate", params)
    out = _prepare_output(evaluation)
    summary = stage.run(cfg, dataset.path, Path(model.path) / "best.pt", out, progress=False)
    scores = {
        k: float(summary[k])
        for k in ("f1", "precision", "recall", "iou", "ods", "ois", "ap")
        if isinstance(summary.get(k), int | float)
    }
    evaluation.metadata.update({"split": cfg.split, **scores})
    if metrics is not None:
        for key, value in scores.items():
            metrics.log_metric(f"{cfg.split}_{key}", value)
    if report is not None:
        body = f"<p>{html.escape(str(summary.get('protocol', '')))}</p>" + _table(scores)
        curve = out / "pr_curve.png"
        if curve.is_file():
            body += "<h2>Precision-recall</h2>" + _img_tag(curve, 480)
        overlays = sorted((out / "overlays").glob("*")) if (out / "overlays").is_dir() else []
        if overlays:
            body += (
                "<h2>Best and worst images</h2><p>photo | probability | hits green, false "
                "positives red, misses blue</p>"
            )
            body += "".join(f"<p>{_img_tag(p)}</p>" for p in overlays)
        _write_html(report, f"Evaluation on the {cfg.split} split", body)
    return summary


def export(
    model: ArtifactLike,
    params: Mapping[str, Any],
    onnx: ArtifactLike,
    dataset: ArtifactLike | None = None,
) -> dict:
    """Export the model's ``best.pt`` to ``onnx``/``model.onnx`` (no std head), parity-checked.

    The artifact is a folder: the model and its ``model.onnx.json`` report side by side.
    """
    from cirl import export as stage

    cfg = stage_config("export", params)
    out = _prepare_output(onnx) / "model.onnx"
    result = stage.run(
        cfg,
        Path(model.path) / "best.pt",
        out,
        data=dataset.path if dataset is not None and cfg.quantize != "none" else None,
    )
    summary = {"opset": cfg.opset, "parity_max_abs_diff": result.parity_max_abs_diff}
    onnx.metadata.update(summary)
    return summary
