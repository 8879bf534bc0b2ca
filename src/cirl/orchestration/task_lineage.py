"""The tasks around the chain: the pipeline's parent MLflow run opened and closed, the model
registered (and promoted).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cirl.errors import CirlError
from cirl.lineage.schema import Tag
from cirl.method import recipe
from cirl.orchestration.task_base import (
    ArtifactLike,
    TrackingParams,
    _prepare_output,
    stage_config,
    tracking_config,
)


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
    """End the pipeline's parent run FINISHED: the last task, after registration; first its
    stages' headline results are rolled up to it (:func:`cirl.lineage.rollup.roll_up`).

    A stage that fails ends the parent run FAILED itself (see :func:`_tracked`); a rerun that
    completes (KFP's retry, or ``cirl pipeline run --cache``) ends it FINISHED here.
    """
    from cirl.lineage import tracking as layer
    from cirl.lineage.rollup import roll_up

    cfg = tracking_config(tracking)
    if cfg is None or not cfg.track or not parent_run_id:
        return
    summary = roll_up(parent_run_id, cfg)
    warning = summary["tags"].get(Tag.METHOD_WARNING)
    if warning:
        print(f"close-run: WARNING: {warning}", file=sys.stderr)
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
