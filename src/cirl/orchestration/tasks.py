"""The stages as pipeline tasks: artifacts in, artifacts out, one call per KFP component.

Each function here is what one component of ``components/`` calls, and all it does is adapt:
it builds the stage config from the component's ``params`` mapping (strictly, through the same
frozen dataclass as the CLI and ``params.yaml``), runs the stage function on the artifacts'
local paths, and fills the output artifacts: files, ``metadata`` (shown by the KFP UI),
``Metrics`` and an HTML report. Artifacts are duck-typed (anything with ``path`` and
``metadata``; ``Metrics`` also ``log_metric``), so this module never imports ``kfp`` and its
functions can be called, and tested, without a pipeline.

A stage that fails raises :class:`~cirl.errors.CirlError`; :func:`task_errors` prints its
``error: ...`` line to the task log and exits non-zero, so the task fails and nothing
downstream runs.

Tracking: every stage task takes the pipeline's ``tracking`` mapping (the ``tracking`` group
of ``params.yaml``) and ``parent_run_id`` (the run :func:`open_run` opened); with ``track`` on,
the stage is one MLflow run nested under it (:func:`cirl.lineage.tracking.stage_run`), which records
the config, lineage tags, per-epoch metrics and outputs, and ends FAILED with the error when
the stage fails. :func:`close_run` (the pipeline's exit handler) ends the parent run with the
pipeline's final state; :func:`register` registers and promotes the exported model.

The stage tasks are here; :mod:`~cirl.orchestration.task_lineage` (tracking runs,
registration) and :mod:`~cirl.orchestration.task_sweep` hold the others, importable from here
as the components call them (``tasks.register``, ``tasks.sweep_worker``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cirl.lineage import schema
from cirl.lineage.schema import Tag
from cirl.method import recipe
from cirl.orchestration.task_base import (
    ArtifactLike,
    TrackingParams,
    _prepare_output,
    _tracked,
    stage_config,
    tracking_config,
)
from cirl.orchestration.task_reports import write_page


def prepare(
    source: str,
    fmt: str,
    params: Mapping[str, Any],
    dataset: ArtifactLike,
    tracking: TrackingParams = None,
    parent_run_id: str = "",
) -> dict:
    """Slice and split the raw dataset at ``source`` into the ``dataset`` artifact folder."""
    from cirl.data import prepare as stage
    from cirl.models.checkpoint import file_sha256

    cfg = stage_config("prepare", params)
    out = _prepare_output(dataset)
    with _tracked(
        "prepare", cfg, tracking, parent_run_id, dataset, out=out, tags={Tag.SOURCE: source}
    ):
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
    tracking: TrackingParams = None,
    parent_run_id: str = "",
) -> dict:
    """Train one arm into the ``model`` artifact folder (``best.pt``, ``last.pt``, history).

    A retried task finds its own ``last.pt`` and resumes from it (same parameters), so an
    interrupted training continues instead of starting over.
    """
    from cirl.method import train as stage

    cfg = stage_config("train", params, phase=phase, loss=loss)
    out = _prepare_output(model)
    resume = (out / "last.pt").is_file()
    name = schema.training_stage(phase, loss)
    with _tracked(
        "train", cfg, tracking, parent_run_id, model, data=dataset.path, out=out, run_name=name
    ) as run:

        def report(record: dict) -> None:
            run.on_epoch(record)
            if on_epoch is not None:
                on_epoch(record)

        result = stage.run(
            cfg,
            dataset.path,
            out,
            init=recipe.phase2_init(init.path) if init is not None else None,
            ambiguity=ambiguity.path if ambiguity is not None else None,
            resume=resume,
            progress=False,
            on_epoch=report,
        )
        run.set_tags(schema.arithmetic_tags(result.provenance))
    last = result.history[-1] if result.history else {}
    summary = {
        "phase": phase,
        "loss": loss,
        "best_epoch": result.best_epoch,
        "best_val_f1": result.best_val_f1,
        "epochs": len(result.history),
        "last_loss": last.get("loss"),
        "resumed": resume,
        "precision": result.provenance.get("precision"),
        "channels_last": result.provenance.get("channels_last"),
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
    tracking: TrackingParams = None,
    parent_run_id: str = "",
) -> dict:
    """Select the ambiguous pixels with the phase-I model (the checkpoint the recipe names:
    :data:`cirl.method.recipe.SELECT_FROM`)."""
    from cirl.method import selection as stage

    cfg = stage_config("select", params)
    out = _prepare_output(ambiguity)
    with _tracked("select", cfg, tracking, parent_run_id, ambiguity, data=dataset.path, out=out):
        weights = recipe.selection_checkpoint(phase1.path)
        result = stage.run(cfg, dataset.path, weights, out, progress=False)
    summary = result.summary()
    ambiguity.metadata.update(summary)
    if report is not None:
        from cirl.method.pages import selection_page

        write_page(report, selection_page(out, embed=True))
    return summary


def evaluate(
    dataset: ArtifactLike,
    model: ArtifactLike,
    params: Mapping[str, Any],
    evaluation: ArtifactLike,
    metrics: ArtifactLike | None = None,
    report: ArtifactLike | None = None,
    tracking: TrackingParams = None,
    parent_run_id: str = "",
    run_name: str | None = None,
) -> dict:
    """Score the model's ``best.pt`` on the configured split; metrics, report and overlays."""
    from cirl.method import evaluate as stage

    cfg = stage_config("evaluate", params)
    out = _prepare_output(evaluation)
    with _tracked(
        "evaluate",
        cfg,
        tracking,
        parent_run_id,
        evaluation,
        data=dataset.path,
        out=out,
        run_name=run_name or None,
    ):
        weights = recipe.scored_checkpoint(model.path)
        summary = stage.run(cfg, dataset.path, weights, out, progress=False)
    scores = {
        k: float(summary[k])
        for k in ("f1", "precision", "recall", "iou", "ods", "ois", "ap")
        if isinstance(summary.get(k), int | float)
    }
    calibration = summary.get("threshold_calibration") or {}
    if calibration.get("threshold") is not None:
        scores["calibrated_threshold"] = float(calibration["threshold"])
        scores["f1_calibrated"] = float(calibration["scored"]["f1"])
    evaluation.metadata.update({"split": cfg.split, **scores})
    tracking_cfg = tracking_config(tracking)
    if parent_run_id and tracking_cfg is not None and tracking_cfg.track:
        from cirl.lineage.rollup import evaluation_to_parent

        evaluation_to_parent(
            parent_run_id,
            tracking_cfg,
            run_name,
            {f"{cfg.split}_{k}": v for k, v in scores.items()},
        )
    if metrics is not None:
        for key, value in scores.items():
            metrics.log_metric(f"{cfg.split}_{key}", value)
    if report is not None:
        from cirl.method.pages import evaluation_page

        write_page(report, evaluation_page(out, embed=True))
    return summary


def export(
    model: ArtifactLike,
    params: Mapping[str, Any],
    onnx: ArtifactLike,
    dataset: ArtifactLike | None = None,
    tracking: TrackingParams = None,
    parent_run_id: str = "",
    evaluation: ArtifactLike | None = None,
) -> dict:
    """Export the model's ``best.pt`` to ``onnx``/``model.onnx`` (no std head), parity-checked,
    with the accuracy gate of the faster engines run on the dataset's validation split and the
    decision threshold ``evaluation`` calibrated.

    The artifact is a folder: the model and its ``model.onnx.json`` report side by side (and
    ``model.int8.onnx`` with ``quantize``).
    """
    from cirl.deploy import export as stage

    cfg = stage_config("export", params)
    out = _prepare_output(onnx) / "model.onnx"
    with _tracked("export", cfg, tracking, parent_run_id, onnx, out=out):
        result = stage.run(
            cfg,
            recipe.scored_checkpoint(model.path),
            out,
            data=dataset.path
            if dataset is not None and (cfg.gate or cfg.quantize != "none")
            else None,
            evaluation=evaluation.path if evaluation is not None else None,
        )
    summary = {"opset": cfg.opset, "parity_max_abs_diff": result.parity_max_abs_diff}
    calibration = result.report.get("threshold_calibration")
    if calibration:
        summary["decision_threshold"] = calibration["threshold"]
    gate = result.report.get("accuracy_gate", {})
    for name, entry in gate.get("engines", {}).items():
        if entry.get("passed") is not None:
            summary[f"gate_{name}"] = "passed" if entry["passed"] else "failed"
    onnx.metadata.update(summary)
    return summary


# the components call every task as ``tasks.<name>``; the helpers keep their old home too
from cirl.orchestration.task_base import (  # noqa: E402, F401
    task_errors,
)
from cirl.orchestration.task_lineage import close_run, open_run, register  # noqa: E402, F401
from cirl.orchestration.task_sweep import sweep_report, sweep_worker  # noqa: E402, F401
