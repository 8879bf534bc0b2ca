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
"""

from __future__ import annotations

import base64
import html
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from cirl.errors import CirlError
from cirl.lineage import schema
from cirl.lineage.schema import Tag
from cirl.method import recipe
from cirl.staging import clean_stale

TrackingParams = Mapping[str, Any] | None


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
        if isinstance(value, float) and value.is_integer() and _wants_int(hints.get(key)):
            value = int(value)
        elif isinstance(value, list | tuple) and _wants_int_items(hints.get(key)):
            value = [int(v) if isinstance(v, float) and v.is_integer() else v for v in value]
        values[key] = value
    values.update(overrides)
    return config.from_mapping(cls, values, f"pipeline parameter {group}_params")


def _wants_int(hint: Any) -> bool:
    """Whether a field annotation takes integers: ``int``, ``Literal[1, 2]``, ``int | None``."""
    import typing

    if hint is int:
        return True
    return any(a is int or (type(a) is int) for a in typing.get_args(hint))


def _wants_int_items(hint: Any) -> bool:
    """Whether a field annotation is a tuple of integers (``tuple[int, ...]``)."""
    import typing

    return typing.get_origin(hint) is tuple and int in typing.get_args(hint)


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


def tracking_config(tracking: TrackingParams) -> Any:
    """The :class:`~cirl.lineage.tracking.TrackingConfig` of a task's ``tracking`` mapping
    (None: off)."""
    if not tracking:
        return None
    return stage_config("tracking", tracking)


@contextmanager
def _tracked(
    stage: str,
    cfg: Any,
    tracking: TrackingParams,
    parent_run_id: str,
    artifact: ArtifactLike,
    **kwargs: Any,
) -> Iterator[Any]:
    """The stage run (:func:`cirl.orchestration.stage.stage_run`) of a task: its MLflow run id
    on the output artifact, the parent run failed with the task."""
    from cirl.orchestration.stage import stage_run

    with stage_run(
        stage,
        cfg,
        tracking_config(tracking),
        parent_run_id,
        artifact=artifact,
        fail_parent=True,
        **kwargs,
    ) as run:
        yield run


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
        body = "".join(
            f"<p style='color:#a00;font-weight:bold'>Warning: {html.escape(w)}</p>"
            for w in summary.get("warnings", [])
        )
        body += _table({k: v for k, v in summary.items() if k != "warnings"})
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
    if metrics is not None:
        for key, value in scores.items():
            metrics.log_metric(f"{cfg.split}_{key}", value)
    if report is not None:
        body = f"<p>{html.escape(str(summary.get('protocol', '')))}</p>" + _table(scores)
        body += f"<p>{html.escape(calibration_sentence(summary))}</p>"
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


def open_run(
    tracking: TrackingParams,
    parent_run_id: str = "",
    code_version: str = "",
    kfp_run_id: str = "",
    kfp_run_name: str = "",
    source: str = "",
) -> str:
    """Open the pipeline's parent MLflow run and return its id ("" when tracking is off).

    With ``parent_run_id`` (a local rerun of a failed run, see ``cirl pipeline run
    --cache``) that run is reopened instead of a new one made. Either way the run is tagged
    with this KFP run's id, which is how :func:`close_run` finds it.

    Raises:
        CirlError: when the tracking store cannot be used (before any stage runs).
    """
    from cirl.lineage import tracking as layer

    cfg = tracking_config(tracking)
    if cfg is None or not cfg.track:
        return ""
    uri = layer.resolve_tracking_uri(cfg.tracking_uri)
    if os.environ.get("KFP_POD_NAME") and uri.startswith("sqlite:"):
        # in a cluster's pod a SQLite file dies with the pod: every record would be lost
        raise CirlError(
            f"tracking is on but the store is {uri}, a file inside this pod; set "
            "MLFLOW_TRACKING_URI in the secret cirl-credentials (docs/cluster.md), or "
            "tracking_params.tracking_uri, or turn tracking off (tracking.track=false)"
        )
    tags = {
        Tag.KFP_RUN_ID: kfp_run_id,
        Tag.KFP_RUN_NAME: kfp_run_name,
        Tag.CODE_VERSION: code_version,
        Tag.SOURCE: source,
    }
    if parent_run_id:
        return layer.reopen_pipeline_run(parent_run_id, cfg, tags)
    return layer.start_pipeline_run(cfg, run_name=kfp_run_name or None, tags=tags)


def close_run(tracking: TrackingParams, parent_run_id: str) -> None:
    """End the pipeline's parent run FINISHED: the last task, after registration.

    A stage that fails ends the parent run FAILED itself (see :func:`_tracked`); a rerun that
    completes (KFP's retry, or ``cirl pipeline run --cache``) ends it FINISHED here.
    """
    from cirl.lineage import tracking as layer

    cfg = tracking_config(tracking)
    if cfg is None or not cfg.track or not parent_run_id:
        return
    layer.end_pipeline_run(parent_run_id, cfg)


def register(
    onnx: ArtifactLike,
    evaluation: ArtifactLike,
    checkpoint: ArtifactLike,
    params: Mapping[str, Any],
    registration: ArtifactLike,
    tracking: TrackingParams = None,
    parent_run_id: str = "",
) -> dict:
    """Register the exported model (with its evaluation) and, if configured, promote it.

    Writes ``registration.json`` (version, ``models:/`` URI, scores, the promotion's
    decision) into the ``registration`` artifact folder.
    """
    import dataclasses
    import json

    from cirl.lineage import registry
    from cirl.staging import staged_file

    cfg = stage_config("register", params)
    out = _prepare_output(registration)
    tracking_cfg = tracking_config(tracking)
    if tracking_cfg is None or not tracking_cfg.track:
        # the registry lives in the tracking store: nothing to register into
        summary = {"registered": False, "reason": "tracking is off (tracking.track: false)"}
        out.mkdir(parents=True, exist_ok=True)
        with staged_file(out / "registration.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
        registration.metadata.update(summary)
        print(f"register: not registered: {summary['reason']}", file=sys.stderr)
        return summary
    result = registry.register(
        cfg,
        Path(onnx.path) / "model.onnx",
        evaluation.path,
        recipe.scored_checkpoint(checkpoint.path),
        tracking_cfg,
        parent_run_id or None,
    )
    summary = {"registered": True, **dataclasses.asdict(result)}
    out.mkdir(parents=True, exist_ok=True)
    with staged_file(out / "registration.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    registration.metadata.update(
        {
            "model": result.name,
            "version": result.version,
            "uri": result.model_uri,
            "mlflow_run_id": result.run_id,
            **({"alias": result.promotion.alias} if result.promotion else {}),
        }
    )
    return summary


def _sweep_configs(params, train_params, select_params) -> tuple[Any, Any, Any]:
    cfg = stage_config("sweep", params)
    storage = cfg.storage or os.environ.get("CIRL_SWEEP_STORAGE", "")
    if not storage:
        raise CirlError(
            "the sweep pipeline's workers need one shared study storage: set the sweep "
            "group's `storage` (postgresql://USER:PASSWORD@HOST/DB; sqlite:///ABSOLUTE/PATH "
            "only with the local runner on one machine) or CIRL_SWEEP_STORAGE in the "
            "cirl-credentials secret"
        )
    import dataclasses

    cfg = dataclasses.replace(cfg, storage=storage)
    return cfg, stage_config("train", train_params), stage_config("select", select_params)


def sweep_worker(
    dataset: ArtifactLike,
    params: Mapping[str, Any],
    train_params: Mapping[str, Any],
    select_params: Mapping[str, Any],
    out: ArtifactLike,
    tracking: TrackingParams = None,
    parent_run_id: str = "",
) -> dict:
    """One worker of a sweep pipeline: trials of the shared study until it is done.

    Its trials (``trials/<n>/``) and its cache of phase-I runs and selections go into ``out``;
    the test scores are left to :func:`sweep_report` (after every worker).
    """
    import dataclasses

    from cirl.tuning import sweep

    cfg, train_cfg, select_cfg = _sweep_configs(params, train_params, select_params)
    cfg = dataclasses.replace(cfg, test=False)
    folder = _prepare_output(out)
    tracking_cfg = tracking_config(tracking)
    if parent_run_id and tracking_cfg is not None:
        os.environ["CIRL_PARENT_RUN_ID"] = parent_run_id
    result = sweep.run(cfg, train_cfg, select_cfg, dataset.path, folder, tracking_cfg)
    summary = {**result.counts(), "storage": result.storage}
    out.metadata.update(summary)
    return summary


def sweep_report(
    dataset: ArtifactLike,
    workers: list[ArtifactLike],
    params: Mapping[str, Any],
    train_params: Mapping[str, Any],
    select_params: Mapping[str, Any],
    report: ArtifactLike,
    page: ArtifactLike | None = None,
) -> dict:
    """The study's reports after every worker: plots, tables, the best setting's test scores."""
    from cirl.tuning import sweep

    cfg, train_cfg, select_cfg = _sweep_configs(params, train_params, select_params)
    folder = _prepare_output(report)
    roots = tuple(Path(w.path) for w in workers)
    result = sweep.report_study(cfg, train_cfg, select_cfg, dataset.path, folder, roots)
    counts = result.counts()
    report.metadata.update(counts)
    summary = {**counts, "best": result.best}
    if page is not None:
        body = ""
        best_md = folder / "best.md"
        if best_md.is_file():
            body += f"<pre>{html.escape(best_md.read_text())}</pre>"
        for name in ("sensitivity.png", "importance.png"):
            if (folder / name).is_file():
                body += _img_tag(folder / name, 900)
        _write_html(page, f"Sweep {cfg.study}", body or "<p>no completed trial</p>")
    return summary
