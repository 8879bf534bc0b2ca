"""``cirl pipeline run --package pipelines/inference.yaml``: the inference pipeline's arguments and
its run through KFP's local runner (:mod:`cirl.orchestration.task_inference`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cirl.errors import CirlError
from cirl.orchestration.inference_io import (
    GROUPS,
    MERGE_FILE,
    PIPELINE_NAME,
    TOP_LEVEL,
)
from cirl.orchestration.task_base import (
    stage_config,
)


def is_inference_package(package: str | os.PathLike | None) -> bool:
    """Whether ``package`` is the compiled inference pipeline (False for anything else,
    including a file that is missing: the training path says why)."""
    from cirl.orchestration.package import load_package

    if package is None:
        return False
    try:
        return load_package(package).get("pipelineInfo", {}).get("name") == PIPELINE_NAME
    except CirlError:
        return False


def pipeline_arguments(
    package: str | os.PathLike,
    source: str | None,
    params: str | os.PathLike | None,
    sets: Sequence[str],
    code_version: str,
    baseline: bool | None = None,
    source_format: str | None = None,
) -> dict[str, Any]:
    """The inference pipeline's arguments from ``--source``, ``--params`` and ``--set``.

    ``--set out=URI``, ``model=URI``, ``shards=N`` set the pipeline's own parameters;
    ``--set predict.KEY=VALUE`` and ``tracking.KEY=VALUE`` its groups (checked by the groups'
    config classes, over the package's compiled defaults or ``--params``).

    Raises:
        CirlError: an option of the training pipeline, an unknown parameter or group, a bad
            value, or no ``out``.
    """
    import yaml

    from cirl import config
    from cirl.data.remote import is_s3_uri
    from cirl.orchestration.package import _package_default

    if baseline is not None or source_format:
        raise CirlError(
            "--baseline and --source-format are options of the training pipeline; the "
            "inference pipeline reads photos from a folder or s3://bucket/prefix"
        )
    top: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for item in sets:
        key, sep, text = item.partition("=")
        group, dot, name = key.partition(".")
        if not sep or (dot and not name):
            raise CirlError(f"--set {item!r}: expected KEY=VALUE or GROUP.KEY=VALUE")
        value = yaml.safe_load(text)
        if dot:
            if group not in GROUPS:
                raise CirlError(
                    f"--set {item!r}: the inference pipeline's groups are {', '.join(GROUPS)}"
                )
            groups.setdefault(group, {})[name.replace("-", "_")] = value
        elif key in TOP_LEVEL:
            top[key] = text if key != "shards" else value
        else:
            raise CirlError(
                f"--set {item!r}: unknown parameter {key!r}; the inference pipeline takes "
                f"{', '.join(TOP_LEVEL)} and the groups {', '.join(GROUPS)} (predict.tile=...)"
            )
    if not top.get("out"):
        raise CirlError(
            "the inference pipeline needs --set out=s3://bucket/prefix (or a folder): where "
            "the masks, overlays, CSVs and reports go"
        )
    if "shards" in top and (not isinstance(top["shards"], int) or top["shards"] < 1):
        raise CirlError(f"--set shards={top['shards']!r}: a whole number >= 1")
    arguments: dict[str, Any] = {}
    if source:
        arguments["source"] = source if is_s3_uri(source) else str(Path(source).resolve())
    for key in ("out", "model"):
        if key in top:
            value = str(top[key])
            local = key == "out" and not is_s3_uri(value)
            arguments[key] = str(Path(value).resolve()) if local else value
    if "shards" in top:
        arguments["shards"] = top["shards"]
    for group in GROUPS:
        given = groups.get(group) or {}
        if params is None and not given:
            continue
        if params is None:
            compiled = _package_default(package, f"{group}_params") or {}
            cfg = stage_config(group, {**compiled, **given})
        else:
            cfg = config.resolve(config.stage_config(group), group, params, given)
        arguments[f"{group}_params"] = config.to_dict(cfg)
    arguments["code_version"] = code_version
    return arguments


def _absolute_registry(package: str | os.PathLike, arguments: dict[str, Any]) -> None:
    """Local tasks may run in other folders: a relative ``sqlite:///mlflow.db`` is made to
    name the file of this working directory (the one ``cirl predict`` here would read)."""
    from cirl.lineage.store import resolve_tracking_uri, sqlite_path
    from cirl.orchestration.package import _package_default

    values = dict(
        arguments.get("tracking_params") or _package_default(package, "tracking_params") or {}
    )
    uri = resolve_tracking_uri(values.get("tracking_uri") or None)
    database = sqlite_path(uri)
    if database is not None:
        values["tracking_uri"] = f"sqlite:///{database.resolve()}"
        arguments["tracking_params"] = values


@contextlib.contextmanager
def _process_state_kept():
    """Undo what KFP's local runner leaves behind when a ``ParallelFor`` runs its iterations in
    threads: each iteration swaps ``builtins.print`` for an indenting one and the root logger's
    handlers for one on the current ``sys.stdout``, and restores what it saw on entry, so two
    overlapping iterations leave the other's swap in place (kfp 2.17.3): every later ``print``
    indented, a handler on a stream that may be closed."""
    import builtins
    import logging

    root = logging.getLogger()
    printer, handlers, level = builtins.print, root.handlers[:], root.level
    try:
        yield
    finally:
        builtins.print = printer
        root.handlers[:] = handlers
        root.setLevel(level)


def run_local(
    package: str | os.PathLike,
    arguments: Mapping[str, Any],
    run_dir: str | os.PathLike,
    runner: str = "subprocess",
) -> dict:
    """Run the compiled inference pipeline here with KFP's local runner (``SubprocessRunner``).

    KFP writes every task's outputs under ``run_dir/kfp/<run>/``; ``run_dir/plan`` and
    ``run_dir/merge`` link to the plan and merge artifacts, ``run_dir/report.html`` is the
    embedded page and ``run_dir/inference_run.json`` records the run. The photos' outputs go
    to the pipeline's ``out``. KFP's local runner runs at most 2 shards at a time, whatever
    the compiled parallelism.

    Returns:
        What the command prints: the counts, the model version used, where everything is.

    Raises:
        CirlError: a task failed (its ``error:`` line is in the log), or the arguments do not
            fit the package.
    """
    from kfp import local
    from kfp.components import load_component_from_file

    from cirl.orchestration.local_run import _quiet_kfp_warnings, _without_retries
    from cirl.orchestration.summary import _plain

    if runner != "subprocess":
        raise CirlError(
            f"--runner {runner}: the inference pipeline runs here with the subprocess runner "
            "only; in containers, submit it to a cluster"
        )
    run_dir = Path(run_dir)
    root = run_dir / "kfp"
    root.mkdir(parents=True, exist_ok=True)
    arguments = dict(arguments)
    _absolute_registry(package, arguments)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        raise_on_error=True,
        enable_caching=False,
    )
    _quiet_kfp_warnings()
    pipeline = load_component_from_file(str(_without_retries(package, root)))
    record: dict[str, Any] = {"package": str(package), "arguments": arguments, "runner": runner}
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr), _process_state_kept():  # stdout: the JSON
            task = pipeline(**arguments)
    except RuntimeError as exc:
        record.update(status="failed", seconds=round(time.perf_counter() - t0, 2),
                      error=_plain(str(exc)))  # fmt: skip
        _write_run(run_dir, record)
        raise CirlError(
            f"the inference pipeline failed: {_plain(str(exc))} Its log above shows the task's "
            "`error:` line; fix the cause and run again (photos already done are skipped)"
        ) from None
    except (TypeError, ValueError) as exc:
        raise CirlError(f"the pipeline's arguments do not fit {package}: {exc}") from None
    seconds = time.perf_counter() - t0
    merged = Path(task.outputs["merged"].path)
    result = json.loads((merged / MERGE_FILE).read_text())
    links = _link_outputs(task, run_dir)
    record.update(status="succeeded", seconds=round(seconds, 2), outputs=links,
                  counts=result["counts"], model=result["model"])  # fmt: skip
    _write_run(run_dir, record)
    return {
        "out": str(run_dir),
        "outputs": result["outputs"],
        "seconds": round(seconds, 1),
        "photos": result["photos"],
        "counts": result["counts"],
        "failed": result["failed"],
        "model": {k: result["model"].get(k) for k in ("requested", "uri", "version", "alias")},
        "shards": result["shards"]["count"],
        "links": {k: str(run_dir / k) for k in links},
    }


def _write_run(run_dir: Path, record: Mapping[str, Any]) -> None:
    """``inference_run.json`` (``pipeline_run.json`` is the training run's record)."""
    tmp = run_dir / ".inference_run.json.partial"
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, run_dir / "inference_run.json")


def _link_outputs(task: Any, run_dir: Path) -> dict[str, str]:
    import shutil

    from cirl.orchestration.local_run import _link

    links = {}
    for output, name in (("plan", "plan"), ("merged", "merge")):
        path = Path(task.outputs[output].path)
        _link(path, run_dir / name)
        links[name] = str(path)
    page = Path(task.outputs["report"].path)
    if page.is_file():
        shutil.copyfile(page, run_dir / "report.html")
        links["report.html"] = str(page)
    return links
