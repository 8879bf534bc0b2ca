"""The sweep pipeline's tasks: a worker of the shared study, and the report once all are done."""

from __future__ import annotations

import html
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cirl.errors import CirlError
from cirl.orchestration.task_base import (
    ArtifactLike,
    TrackingParams,
    _prepare_output,
    stage_config,
    tracking_config,
)
from cirl.orchestration.task_reports import write_page


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
        from cirl.pages import Page

        sheet = Page(f"Sweep {cfg.study}", folder, embed=True)
        best_md = folder / "best.md"
        if best_md.is_file():
            sheet.raw(f"<pre>{html.escape(best_md.read_text())}</pre>")
        for name, caption in (
            ("sensitivity.png", "each parameter against the trials' objective"),
            ("importance.png", "the parameters' importance to the objective (fANOVA)"),
        ):
            if (folder / name).is_file():
                sheet.image(folder / name, caption)
        if not sheet._blocks:
            sheet.paragraph("No completed trial.")
        write_page(page, sheet)
    return summary
