"""``cirl pipeline run``: the compiled pipeline on this machine through KFP's local runner
(subprocess, or containers through podman), tracked under one parent MLflow run, its outputs
linked to predictable places under ``out``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cirl.errors import CirlError
from cirl.lineage.schema import Tag
from cirl.orchestration.package import _package_default, load_package
from cirl.orchestration.summary import _plain, method_warning

# Pipeline output -> stable name under ``out`` (a symlink to the artifact; cached tasks'
# artifacts live in the run that made them).
LINKS = {
    "dataset": "prepared",
    "phase1": "phase1",
    "ambiguity": "select",
    "phase2": "phase2",
    "evaluation": "eval",
    "onnx": "export",
    "registration": "registration",
}

# The pages under ``out``: real .html files (a browser types a symlink by its target's name,
# and KFP's HTML artifacts have none), read from the stage folder's linked page, else the
# task's embedded one. Page name -> (linked stage folder, the task's HTML output).
PAGES = {"report.html": ("eval", "report"), "select.html": ("select", "selection_report")}


# The optional baseline branch has no pipeline output (a conditional one); found in the run.
BRANCH_LINKS = {
    ("train-baseline", "checkpoint"): "baseline",
    ("evaluate-2", "evaluation"): "baseline-eval",
}


@dataclasses.dataclass(frozen=True)
class LocalRun:
    """Where a local pipeline run left its outputs."""

    out: Path
    run_dir: Path
    links: dict[str, str]
    metrics: dict[str, Any]
    seconds: float
    reused: list[str] = dataclasses.field(default_factory=list)
    parent_run_id: str | None = None
    registration: dict | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)


def _quiet_kfp_warnings() -> None:
    import warnings

    # Resource requests, display names and the image name have no effect on a local run;
    # KFP warns about each of them for every task.
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
    warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")


def _link(target: Path, link: Path) -> None:
    tmp = link.with_name(f".{link.name}.partial-link")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(target, link.parent))
    os.replace(tmp, link)


def local_tracking(package: str | os.PathLike, arguments: Mapping[str, Any]) -> Any:
    """The run's tracking config with the store made absolute (None when tracking is off).

    Local tasks run in other folders (and containers): a relative ``sqlite:///mlflow.db``
    must name the same file for all of them, the one in this working directory.
    """
    from cirl import config
    from cirl.lineage.tracking import TrackingConfig, resolve_tracking_uri, sqlite_path

    values = arguments.get("tracking_params")
    if values is None:
        values = _package_default(package, "tracking_params") or {}
    cfg = config.from_mapping(TrackingConfig, dict(values), "pipeline parameter tracking_params")
    if not cfg.track:
        return None
    uri = resolve_tracking_uri(cfg.tracking_uri)
    database = sqlite_path(uri)
    if database is not None:
        uri = f"sqlite:///{database.resolve()}"
    return dataclasses.replace(cfg, tracking_uri=uri)


def _previous_parent(out: Path) -> str | None:
    """The parent run of the last run in ``out`` when that run failed (a rerun continues it)."""
    record = out / "pipeline_run.json"
    if not record.is_file():
        return None
    with contextlib.suppress(ValueError, OSError):
        previous = json.loads(record.read_text())
        if previous.get("status") == "failed":
            return previous.get("parent_run_id") or None
    return None


def _write_record(out: Path, record: Mapping[str, Any]) -> None:
    tmp = out / ".pipeline_run.json.partial"
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, out / "pipeline_run.json")


def run_local(
    package: str | os.PathLike,
    arguments: Mapping[str, Any],
    out: str | os.PathLike,
    runner: str = "subprocess",
    cache: bool = False,
) -> LocalRun:
    """Run the compiled pipeline on this machine and link its outputs under ``out``.

    With tracking on (``tracking_params.track``), the MLflow parent run of the execution is
    opened here, before any task, so that a store that cannot be used fails at once, and so
    that the run is known even when a task fails. With ``cache``, a rerun after a failed run
    continues that run's parent run: the tasks' inputs are then the same as in the failed
    run, so KFP's cache reuses the tasks that finished.

    Args:
        package: the compiled pipeline YAML.
        arguments: the run's arguments (``source`` at least).
        out: the run's folder: KFP writes every task's outputs under ``out/kfp/<run>/``, and
            stable links (``prepared``, ``phase1``, ``select``, ``phase2``, ``eval``,
            ``report.html``, ``export``, ``registration`` and ``model.onnx``) point at the
            latest run's.
        runner: ``subprocess`` (processes of this environment) or ``docker`` (the tasks'
            image through podman's Docker-compatible socket, ``DOCKER_HOST``).
        cache: reuse outputs of earlier local runs of the same task with the same inputs and
            code (KFP's local cache under ``out/kfp/.kfp_cache``).

    Raises:
        CirlError: when a task fails (its ``error:`` line is in the log above), the package
            is not a pipeline, or the tracking store cannot be used.
    """
    from kfp import local
    from kfp.components import load_component_from_file

    from cirl.lineage import tracking as layer

    load_package(package)  # a clear message for a missing or foreign file
    out = Path(out)
    root = out / "kfp"
    root.mkdir(parents=True, exist_ok=True)
    arguments = dict(arguments)
    tracking = local_tracking(package, arguments)
    kfp_runner = _runner(runner, arguments, tracking)
    parent = None
    if tracking is not None:
        arguments["tracking_params"] = config_dict(tracking)
        parent = _open_parent(package, arguments, out, runner, cache, tracking)
        arguments["parent_run_id"] = parent
    local.init(
        runner=kfp_runner,
        pipeline_root=str(root),
        raise_on_error=True,
        enable_caching=cache,
    )
    _quiet_kfp_warnings()
    pipeline = load_component_from_file(str(_without_retries(package, root)))
    before = {p.name for p in root.iterdir()}
    record: dict[str, Any] = {
        "package": str(package),
        "arguments": copy.deepcopy(arguments),
        "runner": runner,
        "cache": cache,
        "parent_run_id": parent,
        "tracking_uri": tracking.tracking_uri if tracking else None,
    }
    t0 = time.perf_counter()
    try:
        # KFP logs every task to stdout; stdout is for the command's JSON summary
        with contextlib.redirect_stdout(sys.stderr):
            task = pipeline(**arguments)
    except (RuntimeError, TypeError, ValueError, KeyboardInterrupt) as exc:
        new = sorted(p for p in root.iterdir() if p.is_dir() and p.name not in before)
        _failed(out, record, exc, new[-1] if new else None, time.perf_counter() - t0)
        if parent is not None:
            _fail_parent(parent, tracking, exc)
        _raise_failure(exc, package)
    finally:
        if parent is not None and os.environ.get(layer.PARENT_RUN_ENV) == parent:
            del os.environ[layer.PARENT_RUN_ENV]
    seconds = time.perf_counter() - t0
    new = sorted(p for p in root.iterdir() if p.is_dir() and p.name not in before)
    run_dir = new[-1] if new else root
    links, reused = _link_outputs(task, out, run_dir)
    metrics = _scores(out, links)
    registration = out / "registration" / "registration.json"
    warning = method_warning(out)
    record.update(
        status="succeeded",
        run_dir=str(run_dir.resolve()),
        seconds=round(seconds, 2),
        outputs=links,
        reused=reused,
        metrics=metrics,
        registration=json.loads(registration.read_text()) if registration.is_file() else None,
        warnings=[warning] if warning else [],
    )
    _write_record(out, record)
    for message in record["warnings"]:
        print(f"warning: {message}", file=sys.stderr)
    return LocalRun(
        out,
        run_dir,
        links,
        metrics,
        seconds,
        reused,
        parent,
        record["registration"],
        record["warnings"],
    )


def _runner(runner: str, arguments: Mapping[str, Any], tracking: Any) -> Any:
    """KFP's local runner: processes of this environment, or the image through podman."""
    from kfp import local

    from cirl.lineage import tracking as layer

    database = layer.sqlite_path(tracking.tracking_uri) if tracking else None
    if runner == "subprocess":
        return local.SubprocessRunner(use_venv=False)
    if runner == "docker":
        from cirl.orchestration.container_runner import docker_runner

        source = str(arguments.get("source", ""))
        # KFP mounts only the pipeline root: a local source folder is mounted read-only, the
        # folder of a SQLite tracking store writable
        return docker_runner(
            read_only=[source] if source and "://" not in source else [],
            read_write=[database.parent] if database is not None else [],
        )
    raise CirlError(f"unknown runner {runner!r}; use subprocess or docker")


def _open_parent(
    package: Any, arguments: Mapping[str, Any], out: Path, runner: str, cache: bool, tracking: Any
) -> str:
    """The run's parent MLflow run: the failed run's again with ``cache``, else a new one."""
    from cirl.lineage import tracking as layer

    previous = _previous_parent(out) if cache else None
    tags = {Tag.CODE_VERSION: arguments.get("code_version"), Tag.RUNNER: runner}
    if previous:
        return layer.reopen_pipeline_run(previous, tracking, tags)
    return layer.start_pipeline_run(
        tracking,
        run_name=f"pipeline {out.name}",
        tags=tags,
        params={"source": arguments.get("source"), "package": str(package)},
    )


def _failed(
    out: Path, record: dict, exc: BaseException, run_dir: Path | None, seconds: float
) -> None:
    """The failed run's record: where its outputs are, how long it ran, its error."""
    record.update(
        status="failed",
        run_dir=str(run_dir.resolve()) if run_dir else None,
        seconds=round(seconds, 2),
        error=_plain(str(exc)),
    )
    _write_record(out, record)


def _raise_failure(exc: BaseException, package: Any) -> None:
    if isinstance(exc, KeyboardInterrupt):
        raise exc
    if isinstance(exc, RuntimeError):
        raise CirlError(
            f"the pipeline failed: {_plain(str(exc))} Its log above shows the task's "
            "`error:` line; fix the cause and run again (with --cache, finished tasks are "
            "reused and the MLflow run is continued)"
        ) from None
    raise CirlError(f"the pipeline's arguments do not fit {package}: {exc}") from None


def _link_outputs(task: Any, out: Path, run_dir: Path) -> tuple[dict[str, str], list[str]]:
    """Stable links under ``out`` to the run's outputs; which of them KFP's cache reused."""
    links = {}
    for output, artifact in task.outputs.items():
        name = LINKS.get(output)
        if name and Path(artifact.path).exists():
            _link(Path(artifact.path), out / name)
            links[name] = artifact.path
    # outputs from KFP's cache live in the earlier run that made them
    reused = sorted(
        n for n, p in links.items() if not Path(p).resolve().is_relative_to(run_dir.resolve())
    )
    for (task_name, output), name in BRANCH_LINKS.items():
        target = run_dir / task_name / output
        if target.exists():
            _link(target, out / name)
            links[name] = str(target)
        elif (out / name).is_symlink():
            (out / name).unlink()  # a baseline of an earlier run is not this run's
    _write_pages(task, out, links)
    model = out / "export" / "model.onnx"
    if model.is_file():
        _link(model, out / "model.onnx")
        _link(model.with_name("model.onnx.json"), out / "model.onnx.json")
        links["model.onnx"] = str(model)
    return links, reused


def _write_pages(task: Any, out: Path, links: dict[str, str]) -> None:
    """``out/report.html`` and ``out/select.html`` as files a browser opens as pages."""
    import shutil

    from cirl.method.pages import PAGE
    from cirl.pages import rebase
    from cirl.staging import staged_file

    for name, (folder, output) in PAGES.items():
        page, target = out / folder / PAGE, out / name
        if target.is_symlink():  # the link an earlier version made
            target.unlink()
        if folder in links and page.is_file():
            rebase(page, target)
        elif output in task.outputs and Path(task.outputs[output].path).is_file():
            with staged_file(target) as tmp:  # a cached task of an earlier version
                shutil.copyfile(task.outputs[output].path, tmp)
        else:
            continue
        links[name] = str(target)


def _scores(out: Path, links: Mapping[str, str]) -> dict[str, dict]:
    metrics = {}
    for name in ("eval", "baseline-eval"):
        path = out / name / "metrics.json"
        if name in links and path.is_file():
            summary = json.loads(path.read_text())
            metrics[name] = {
                k: summary[k]
                for k in ("f1", "precision", "recall", "ods", "ois", "ap")
                if k in summary
            }
    return metrics


def config_dict(cfg: Any) -> dict:
    """A config dataclass as the plain mapping a pipeline parameter takes."""
    from cirl.config import to_dict

    return to_dict(cfg)


def _fail_parent(parent: str, tracking: Any, exc: BaseException) -> None:
    """Mark the parent run FAILED unless the failing stage already did (with its error)."""
    from cirl.lineage import tracking as layer

    with contextlib.suppress(Exception):  # the store may be what failed: keep the first error
        client, _ = layer.open_store(tracking.tracking_uri, tracking.tracking_timeout)
        if client.get_run(parent).info.status == "RUNNING":
            layer.end_pipeline_run(parent, tracking, CirlError(_plain(str(exc))[:2000]))


def _without_retries(package: str | os.PathLike, folder: Path) -> Path:
    """A copy of ``package`` without retry policies: they are for a cluster's transient
    faults; here a failing task would only fail again after the backoff."""
    import yaml

    docs = [d for d in yaml.safe_load_all(Path(package).read_text()) if d]

    def strip(node: Any) -> None:
        if isinstance(node, dict):
            node.pop("retryPolicy", None)
            for value in node.values():
                strip(value)
        elif isinstance(node, list):
            for value in node:
                strip(value)

    strip(docs[0])
    local_package = folder / ".local-pipeline.yaml"
    local_package.write_text(yaml.safe_dump_all(docs, sort_keys=True))
    return local_package
