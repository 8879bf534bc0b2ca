"""The pipeline run's own columns: its stages' headline results rolled up to it.

MLflow's run table shows a parent run's metrics and params, not its children's: without this,
pipeline runs cannot be compared without expanding each. :func:`roll_up` runs as the
pipeline's last step (the ``close-run`` task, after registration) and reads only the tracking
store, so it works the same on a laptop and on a cluster:

* metrics: the evaluation's scores (``test_f1``, ``test_ods``, ``test_ap``...; the baseline's as
  ``baseline_test_*``), each training's ``best_val_f1`` (``phase1_``, ``phase2_``,
  ``baseline_``), the selection's ``selected_fraction``;
* params: the final training's key settings and the selection's threshold;
* tags: what the model was trained as (``cirl.method``, and ``cirl.method_warning`` when a
  model called CIRL trained as plain BCE), the registered version, the run's description;
* artifacts: the evaluation and selection pages under ``reports/``.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from cirl.errors import one_line
from cirl.lineage.schema import Tag
from cirl.lineage.store import TrackingConfig, connect

log = logging.getLogger(__name__)

# run name -> prefix of its metrics on the parent
_TRAININGS = {"train phase 1": "phase1_", "train phase 2": "phase2_", "train baseline": "baseline_"}
_EVALUATIONS = {"evaluate CIRL": "", "evaluate": "", "evaluate baseline": "baseline_"}
KEY_PARAMS = (
    "model",
    "loss",
    "epochs",
    "steps_per_epoch",
    "batch_size",
    "crop",
    "lr",
    "lr_schedule",
    "pos_weight",
    "dice",
    "selection",
    "ci_reduction",
    "lam",
    "beta",
    "k",
    "seed",
)
SELECT_PARAMS = ("rule", "lam", "gamma", "fraction")
NOTE = "mlflow.note.content"


def _children(client: Any, parent: Any) -> list[Any]:
    query = f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and attributes.status = 'FINISHED'"
    runs, token = [], None
    while True:
        page = client.search_runs([parent.info.experiment_id], query, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return sorted(runs, key=lambda r: r.info.start_time)


def summarize(children: list[Any]) -> dict[str, Any]:
    """What the parent shows, from its finished stage runs: metrics, params, tags, pages
    (artifact path -> (run id, path in that run))."""
    metrics: dict[str, float] = {}
    params: dict[str, str] = {}
    tags: dict[str, str] = {}
    pages: dict[str, tuple[str, str]] = {}
    final_train = None
    for run in children:
        name, data = run.info.run_name, run.data
        stage = data.tags.get(Tag.STAGE)
        if stage == "train" and name in _TRAININGS:
            prefix = _TRAININGS[name]
            if "best_val_f1" in data.metrics:
                metrics[f"{prefix}best_val_f1"] = data.metrics["best_val_f1"]
            if prefix != "baseline_":
                final_train = run
        elif stage == "select":
            if "selected_fraction" in data.metrics:
                metrics["selected_fraction"] = data.metrics["selected_fraction"]
            params.update(
                {f"select.{k}": data.params[k] for k in SELECT_PARAMS if k in data.params}
            )
            pages["reports/select.html"] = (run.info.run_id, "outputs/report.html")
        elif stage == "evaluate" and name in _EVALUATIONS:
            prefix = _EVALUATIONS[name]
            metrics.update({f"{prefix}{k}": v for k, v in data.metrics.items()})
            if not prefix:
                pages["reports/report.html"] = (run.info.run_id, "outputs/report.html")
        elif stage == "register":
            for key in (Tag.REGISTERED_MODEL, Tag.REGISTERED_VERSION):
                if data.tags.get(key):
                    tags[key] = data.tags[key]
    if final_train is not None:
        data = final_train.data
        params.update({f"train.{k}": data.params[k] for k in KEY_PARAMS if k in data.params})
        for key in (Tag.METHOD, Tag.METHOD_WARNING, Tag.PRECISION, Tag.CPU_KIND):
            if data.tags.get(key):
                tags[key] = data.tags[key]
    tags[NOTE] = _description(metrics, tags)
    return {"metrics": metrics, "params": params, "tags": tags, "pages": pages}


def _description(metrics: dict[str, float], tags: dict[str, str]) -> str:
    parts = [tags.get(Tag.METHOD, "pipeline run")]
    if "test_f1" in metrics:
        scores = [f"per-image F1 {metrics['test_f1']:.4f}"]
        scores += [
            f"{k.upper()} {metrics[f'test_{k}']:.4f}"
            for k in ("ods", "ap")
            if f"test_{k}" in metrics
        ]
        parts.append("test: " + ", ".join(scores))
    if "baseline_test_f1" in metrics:
        parts.append(f"BCE baseline per-image F1 {metrics['baseline_test_f1']:.4f}")
    if tags.get(Tag.REGISTERED_VERSION):
        parts.append(
            f"registered as {tags.get(Tag.REGISTERED_MODEL)} v{tags[Tag.REGISTERED_VERSION]}"
        )
    text = "; ".join(parts) + "."
    if tags.get(Tag.METHOD_WARNING):
        text = f"WARNING: {tags[Tag.METHOD_WARNING]}\n\n{text}"
    return text


def roll_up(parent_run_id: str, tracking: TrackingConfig) -> dict[str, Any]:
    """Log the stages' headline results on the pipeline run ``parent_run_id``; returns them.

    A param already logged with another value (a rerun that changed a setting) is left as
    it was: MLflow params are write-once. Pages that cannot be copied are skipped with a
    warning; the rollup never fails the pipeline for them.
    """
    from mlflow.entities import Metric, Param, RunTag

    connection = connect(tracking)
    client = connection.client
    parent = client.get_run(parent_run_id)
    summary = summarize(_children(client, parent))
    now = int(time.time() * 1000)
    existing = parent.data.params
    params = [Param(k, str(v)[:6000]) for k, v in summary["params"].items() if k not in existing]
    client.log_batch(
        parent_run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in summary["metrics"].items()],
        params=params,
        tags=[RunTag(k, v) for k, v in summary["tags"].items()],
    )
    with tempfile.TemporaryDirectory() as tmp:
        for target, (run_id, path) in summary["pages"].items():
            try:
                local = Path(client.download_artifacts(run_id, path, tmp))
                folder, name = target.rsplit("/", 1)
                renamed = Path(tmp) / folder / name
                renamed.parent.mkdir(parents=True, exist_ok=True)
                local.replace(renamed)
                client.log_artifact(parent_run_id, str(renamed), folder)
            except Exception as exc:  # an artifact store that fails here loses only the copy
                with contextlib.suppress(Exception):
                    log.warning("could not copy %s of run %s: %s", path, run_id, one_line(exc))
    return summary


def evaluation_to_parent(
    parent_run_id: str, tracking: TrackingConfig, run_name: str | None, metrics: dict
) -> None:
    """Log an evaluation's scores on its pipeline run as soon as it ends (the baseline's
    branch of the DAG may end after ``close-run``, which cannot wait for a conditional task).
    """
    from mlflow.entities import Metric

    prefix = _EVALUATIONS.get(run_name or "evaluate")
    if prefix is None or not parent_run_id:
        return
    client = connect(tracking).client
    now = int(time.time() * 1000)
    client.log_batch(
        parent_run_id,
        metrics=[Metric(f"{prefix}{k}", float(v), now, 0) for k, v in metrics.items()],
    )
