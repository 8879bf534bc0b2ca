"""Running the compiled KFP pipeline: on this machine, or on a Kubeflow cluster.

The pipeline is defined in ``pipelines/training.py`` and compiled to a YAML package
(``pipelines/training.yaml``, committed). This module works on such a package:

* :func:`run_local` runs it on this machine with KFP's local runner (``SubprocessRunner``: the
  tasks run as processes of this Python environment, no cluster and no container engine; or
  ``DockerRunner`` through podman, see :mod:`cirl.orchestration.container_runner`), then links
  the outputs that matter to predictable places under ``out``.
* :func:`submit` and :func:`schedule` send it to a Kubeflow Pipelines endpoint through
  ``kfp.Client`` (a one-off run, or a recurring run on a cron schedule).

Run arguments: one mapping per stage group (``prepare_params``, ``train_params``, ...),
resolved from a ``params.yaml`` and ``group.key=value`` overrides through the stages' config
dataclasses, so a typo fails here, before anything runs. ``kfp`` is imported where used.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cirl import __version__
from cirl.config import PIPELINE_GROUPS
from cirl.errors import CirlError, first_line
from cirl.lineage.schema import Tag

STAGE_GROUPS = PIPELINE_GROUPS

# Pipeline output -> stable name under ``out`` (a symlink to the artifact; cached tasks'
# artifacts live in the run that made them).
LINKS = {
    "dataset": "prepared",
    "phase1": "phase1",
    "ambiguity": "select",
    "selection_report": "select.html",
    "phase2": "phase2",
    "evaluation": "eval",
    "report": "report.html",
    "onnx": "export",
    "registration": "registration",
}
# The optional baseline branch has no pipeline output (a conditional one); found in the run.
BRANCH_LINKS = {
    ("train-baseline", "checkpoint"): "baseline",
    ("evaluate-2", "evaluation"): "baseline-eval",
}


def code_version() -> str:
    """``VERSION+HASH``: the cirl version and a hash of the package's source files.

    Recorded by every task and part of KFP's cache key, so cached outputs are reused only for
    the same code (a cluster run passes the image digest instead).
    """
    root = Path(__file__).resolve().parents[1]  # the cirl package, every layer
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def parse_overrides(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["train.lr=0.01", "select.gamma=0.3"]`` -> ``{"train": {"lr": "0.01"}, ...}``.

    Values are parsed as YAML scalars (``0.01`` a number, ``true`` a bool, ``a,b`` a string).

    Raises:
        CirlError: on an item that is not ``GROUP.KEY=VALUE`` or names an unknown group.
    """
    import yaml

    groups: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        group, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise CirlError(f"--set {item!r}: expected GROUP.KEY=VALUE, e.g. train.epochs=5")
        if group not in STAGE_GROUPS:
            raise CirlError(
                f"--set {item!r}: unknown group {group!r}; valid groups are: "
                f"{', '.join(STAGE_GROUPS)}"
            )
        groups.setdefault(group, {})[name.replace("-", "_")] = yaml.safe_load(value)
    return groups


def stage_arguments(
    params: str | os.PathLike | None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    package: str | os.PathLike | None = None,
) -> dict[str, dict[str, Any]]:
    """``{group}_params`` run arguments: each group resolved and checked by its config class.

    Without ``params`` the package's compiled defaults are used; a group named in
    ``overrides`` is those defaults (the dataclass defaults without a ``package``) plus the
    overrides.
    """
    from cirl import config

    arguments: dict[str, dict[str, Any]] = {}
    for group in STAGE_GROUPS:
        given = (overrides or {}).get(group)
        if params is None and not given:
            continue
        cls = config.stage_config(group)
        if params is None and package is not None:
            from cirl.orchestration.tasks import stage_config

            compiled = _package_default(package, f"{group}_params") or {}
            cfg = stage_config(group, {**compiled, **given})
        else:
            cfg = config.resolve(cls, group, params, given)
        arguments[f"{group}_params"] = config.to_dict(cfg)
    return arguments


def default_package() -> Path:
    """The compiled training pipeline to run when none is named: ``pipelines/training.yaml``
    of the checkout in the working directory, else the copy shipped in the package."""
    here = Path("pipelines") / "training.yaml"
    if here.is_file():
        return here
    from importlib.resources import files

    return Path(str(files("cirl.packaged") / "training.yaml"))


def load_package(package: str | os.PathLike) -> dict:
    """The compiled pipeline YAML as a dict (the pipeline spec; a platform spec may follow).

    Raises:
        CirlError: naming the file when it is missing or not a compiled KFP pipeline.
    """
    import yaml

    package = Path(package)
    if not package.is_file():
        raise CirlError(
            f"pipeline package {package} not found; compile it with "
            "`python pipelines/training.py` or pass --package"
        )
    try:
        docs = [d for d in yaml.safe_load_all(package.read_text()) if d]
    except yaml.YAMLError as exc:
        raise CirlError(f"pipeline package {package} is not valid YAML: {exc}") from None
    if not docs or "pipelineInfo" not in docs[0] or "deploymentSpec" not in docs[0]:
        raise CirlError(f"{package} is not a compiled KFP pipeline (no pipelineInfo)")
    return docs[0] | ({"platform_spec": docs[1]} if len(docs) > 1 else {})


def with_image(package: str | os.PathLike, image: str, out: str | os.PathLike) -> Path:
    """Write a copy of ``package`` whose every task runs on ``image``; returns ``out``."""
    import yaml

    package, out = Path(package), Path(out)
    docs = [d for d in yaml.safe_load_all(package.read_text()) if d]
    executors = docs[0]["deploymentSpec"]["executors"]
    for executor in executors.values():
        if "container" in executor:
            executor["container"]["image"] = image
    out.write_text(yaml.safe_dump_all(docs, sort_keys=True))
    return out


def check_image_reference(image: str) -> str | None:
    """A warning when ``image`` is referenced by tag: KFP's cache key holds the reference as
    written, so a re-pushed tag would reuse outputs made by the old image."""
    if "@sha256:" in image:
        return None
    return (
        f"image {image!r} is referenced by tag; on a cluster reference it by digest "
        "(name@sha256:...) so that KFP's cache never reuses outputs of an older image"
    )


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


def _package_default(package: str | os.PathLike, name: str) -> Any:
    """The compiled default of the pipeline parameter ``name`` (None when it has none)."""
    doc = load_package(package)
    spec = doc.get("root", {}).get("inputDefinitions", {}).get("parameters", {}).get(name, {})
    return spec.get("defaultValue")


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
    database = layer.sqlite_path(tracking.tracking_uri) if tracking else None
    if runner == "subprocess":
        kfp_runner = local.SubprocessRunner(use_venv=False)
    elif runner == "docker":
        from cirl.orchestration.container_runner import docker_runner

        source = str(arguments.get("source", ""))
        # KFP mounts only the pipeline root: a local source folder is mounted read-only, the
        # folder of a SQLite tracking store writable
        kfp_runner = docker_runner(
            read_only=[source] if source and "://" not in source else [],
            read_write=[database.parent] if database is not None else [],
        )
    else:
        raise CirlError(f"unknown runner {runner!r}; use subprocess or docker")
    parent = None
    if tracking is not None:
        arguments["tracking_params"] = config_dict(tracking)
        previous = _previous_parent(out) if cache else None
        tags = {Tag.CODE_VERSION: arguments.get("code_version"), Tag.RUNNER: runner}
        if previous:
            parent = layer.reopen_pipeline_run(previous, tracking, tags)
        else:
            parent = layer.start_pipeline_run(
                tracking,
                run_name=f"pipeline {out.name}",
                tags=tags,
                params={"source": arguments.get("source"), "package": str(package)},
            )
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
        record.update(
            status="failed",
            run_dir=str(new[-1].resolve()) if new else None,
            seconds=round(time.perf_counter() - t0, 2),
            error=_plain(str(exc)),
        )
        _write_record(out, record)
        if parent is not None:
            _fail_parent(parent, tracking, exc)
        if isinstance(exc, KeyboardInterrupt):
            raise
        if isinstance(exc, RuntimeError):
            raise CirlError(
                f"the pipeline failed: {_plain(str(exc))} Its log above shows the task's "
                "`error:` line; fix the cause and run again (with --cache, finished tasks are "
                "reused and the MLflow run is continued)"
            ) from None
        raise CirlError(f"the pipeline's arguments do not fit {package}: {exc}") from None
    finally:
        if parent is not None and os.environ.get(layer.PARENT_RUN_ENV) == parent:
            del os.environ[layer.PARENT_RUN_ENV]
    seconds = time.perf_counter() - t0
    new = sorted(p for p in root.iterdir() if p.is_dir() and p.name not in before)
    run_dir = new[-1] if new else root
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
    model = out / "export" / "model.onnx"
    if model.is_file():
        _link(model, out / "model.onnx")
        _link(model.with_name("model.onnx.json"), out / "model.onnx.json")
        links["model.onnx"] = str(model)
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
    registration = out / "registration" / "registration.json"
    record.update(
        status="succeeded",
        run_dir=str(run_dir.resolve()),
        seconds=round(seconds, 2),
        outputs=links,
        reused=reused,
        metrics=metrics,
        registration=json.loads(registration.read_text()) if registration.is_file() else None,
    )
    _write_record(out, record)
    return LocalRun(out, run_dir, links, metrics, seconds, reused, parent, record["registration"])


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
    lines = [f"cirl pipeline run in {out} ({record['seconds']:.0f} s, runner {record['runner']})"]
    for name, label in (("eval", "CIRL"), ("baseline-eval", "BCE baseline")):
        scores = record["metrics"].get(name)
        if not scores:
            continue
        metrics = json.loads((out / name / "metrics.json").read_text())
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
            lines.append(
                f"    decision threshold {calibration['threshold']:g} (the "
                f"{calibration['split']} split's best): per-image F1 "
                f"{calibration['scored']['f1']:.3f} there; predict decides at it"
            )
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
        ("predict", "predictions on unseen photos: masks, overlays, crack measurements"),
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
        lines.append(f"    ls {out / 'predict'}   (NAME_overlay.jpg: cracks in red)")
    return "\n".join(lines)


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
        return [
            f"  ambiguous pixels: selected per batch in phase II (online, squared error > "
            f"lambda {train.get('lam', '?')}); the phase-I model's offline A was "
            f"{fraction:.1%} of the ring"
        ]
    if fraction > 0:
        return [f"  ambiguous pixels: A = {fraction:.1%} of the marginal ring ({summary['rule']})"]
    return [
        f"  WARNING: the selection picked no pixel ({summary.get('rule')} rule, threshold "
        f"{summary.get('threshold')}): phase II trained as plain BCE, so this model is not "
        "CIRL's. Lower select.gamma, use select.rule error, or train.selection online "
        "(docs/method.md)",
        *(f"    {w}" for w in summary.get("warnings", [])),
    ]


def _plain(text: str) -> str:
    """Drop the terminal colour codes KFP puts in its messages."""
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


# ----- a Kubeflow cluster -------------------------------------------------------------------


def client(host: str | None, namespace: str | None = None, token: str | None = None):
    """A ``kfp.Client`` for ``host`` (or ``$KFP_HOST``), checked to answer as a KFP endpoint.

    Auth: ``token`` (or ``$KFP_TOKEN``) as a bearer token; otherwise kfp's own defaults
    (in-cluster service account, ``~/.config/kfp/context.json``). One health check, with a
    timeout: ``kfp.Client`` on its own retries it 5 times, 5 s apart, even on a 404.

    Raises:
        CirlError: naming the host when none is given, it cannot be reached, it answers with
            an HTTP error or with something that is not KFP's JSON (a login page).
    """
    import logging
    import warnings

    import kfp
    import kfp_server_api
    import urllib3

    host = host or os.environ.get("KFP_HOST")
    if not host:
        raise CirlError(
            "no KFP endpoint: pass --host https://kubeflow.example.com/pipeline or set KFP_HOST"
        )
    if not host.startswith(("http://", "https://")):
        raise CirlError(f"KFP host {host!r} must start with http:// or https://")
    host = host.rstrip("/")
    token = token or os.environ.get("KFP_TOKEN")
    healthz = f"{host}/apis/v2beta1/healthz"
    hint = (
        "check --host / KFP_HOST: the pipelines API, e.g. https://kubeflow.example.com/pipeline, "
        "or http://localhost:8080 through `kubectl port-forward -n kubeflow svc/ml-pipeline-ui "
        "8080:80`"
    )

    class Client(kfp.Client):
        """``kfp.Client`` whose health check asks once and wants KFP's JSON back."""

        checked = None

        def get_kfp_healthz(self, sleep_duration: int = 0):
            if self.checked is None:
                response = self._healthz_api.healthz_service_get_healthz(
                    _preload_content=False, _request_timeout=(10, 30)
                )
                try:
                    body = json.loads(response.data)
                except ValueError:
                    body = None
                if not isinstance(body, dict):
                    kind = response.headers.get("Content-Type") or "no content type"
                    raise CirlError(
                        f"{healthz} answered {kind}, not KFP's JSON: {host} is not a KFP "
                        "endpoint, or it wants a login (an auth proxy's page): give a token "
                        f"with --token / KFP_TOKEN; {hint}"
                    )
                self.checked = kfp_server_api.V2beta1GetHealthzResponse(
                    multi_user=body.get("multi_user")
                )
            return self.checked

    # urllib3 logs each retry of a refused connection; the error below says it once
    connection_log = logging.getLogger("urllib3.connectionpool")
    level = connection_log.level
    if not connection_log.isEnabledFor(logging.DEBUG):
        connection_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "This client only works", FutureWarning)
            kfp_client = Client(host=host, namespace=namespace or "kubeflow", existing_token=token)
            kfp_client.get_kfp_healthz()
    except CirlError:
        raise
    except kfp_server_api.ApiException as exc:
        if not exc.status:  # a TLS failure, raised before any answer
            raise CirlError(
                f"cannot reach the KFP endpoint {host} ({_api_error(exc)}); {hint}"
            ) from None
        if exc.status in (401, 403):
            why = (
                f"refused the credentials ({_api_error(exc)}): pass a bearer token with "
                "--token / KFP_TOKEN"
            )
        elif exc.status == 404:
            why = f"has no KFP API: {healthz} answered HTTP 404; {hint}"
        else:
            why = f"answered its health check with {_api_error(exc)}; {hint}"
        raise CirlError(f"KFP endpoint {host} {why}") from None
    except urllib3.exceptions.HTTPError as exc:  # refused, unknown name, timeout
        reason = str(getattr(exc, "reason", None) or exc).split(">: ")[-1]
        raise CirlError(f"cannot reach the KFP endpoint {host} ({reason}); {hint}") from None
    except Exception as exc:  # kfp's own config loading raises many types
        raise CirlError(f"KFP endpoint {host}: {_api_error(exc)}; {hint}") from None
    finally:
        connection_log.setLevel(level)
    return kfp_client


def _api_error(exc: BaseException) -> str:
    """One line for an exception from ``kfp.Client``: for an HTTP error, the status and the
    server's own message (KFP answers ``{"code": 3, "message": "..."}``)."""
    status = getattr(exc, "status", None)
    if not status:  # no HTTP answer: kfp's ApiException(status=0) holds the cause as text
        reason = getattr(exc, "reason", None)
        if isinstance(reason, str) and reason.strip():
            return " ".join(reason.split())[:300]
        return f"{type(exc).__name__}: {first_line(exc)}"
    body = getattr(exc, "body", None) or ""
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    try:
        answer = json.loads(body)
        message = answer.get("message") or answer.get("error") or ""
    except (ValueError, AttributeError):
        message = "" if body.lstrip().startswith("<") else body  # an HTML page says nothing
    message = " ".join(str(message).split())[:500]
    return f"HTTP {status} {getattr(exc, 'reason', '') or ''}".strip() + (
        f": {message}" if message else ""
    )


def _experiment_id(kfp_client, experiment: str, namespace: str | None) -> str:
    """The id of the experiment named ``experiment``, created if absent.

    Raises:
        CirlError: when the endpoint refuses to list or create experiments, or holds several
            of that name.
    """
    try:
        # kfp prints the experiment's link; stdout is for the command's JSON
        with contextlib.redirect_stdout(sys.stderr):
            try:
                found = kfp_client.get_experiment(experiment_name=experiment, namespace=namespace)
            except ValueError as exc:
                if not str(exc).startswith("No experiment is found"):
                    raise CirlError(f"{exc} Pass another --experiment.") from None
                found = kfp_client.create_experiment(name=experiment, namespace=namespace)
    except CirlError:
        raise
    except Exception as exc:
        hint = "" if namespace else "; a multi-user deployment needs --namespace"
        raise CirlError(
            f"KFP endpoint refused to find or create the experiment {experiment!r} "
            f"({_api_error(exc)}){hint}"
        ) from None
    return found.experiment_id


def submit(
    package: str | os.PathLike,
    arguments: Mapping[str, Any],
    host: str | None = None,
    experiment: str = "cirl",
    run_name: str | None = None,
    namespace: str | None = None,
    token: str | None = None,
) -> dict:
    """Start one run of the package on a KFP endpoint; returns its id and URL.

    Raises:
        CirlError: with the endpoint's own message when it refuses the run.
    """
    load_package(package)
    kfp_client = client(host, namespace, token)
    experiment_id = _experiment_id(kfp_client, experiment, namespace)
    name = run_name or f"cirl-training {time.strftime('%Y-%m-%d %H:%M:%S')}"
    try:
        with contextlib.redirect_stdout(sys.stderr):  # kfp prints the run's link
            result = kfp_client.create_run_from_pipeline_package(
                str(package),
                arguments=dict(arguments),
                run_name=name,
                experiment_id=experiment_id,
                namespace=namespace,
                enable_caching=None,
            )
    except Exception as exc:
        raise CirlError(f"KFP endpoint refused the run ({_api_error(exc)})") from None
    url = (host or os.environ.get("KFP_HOST", "")).rstrip("/")
    return {
        "run_id": result.run_id,
        "experiment_id": experiment_id,
        "run_name": name,
        "url": f"{url}/#/runs/details/{result.run_id}",
    }


def schedule(
    package: str | os.PathLike,
    arguments: Mapping[str, Any],
    cron: str,
    host: str | None = None,
    experiment: str = "cirl",
    job_name: str = "cirl-training-scheduled",
    namespace: str | None = None,
    token: str | None = None,
) -> dict:
    """A recurring run on a six-field cron schedule (seconds first), one at a time, no catch-up.

    KFP's cache is off for the scheduled runs: every run has the same arguments (the same
    ``source`` URI and ``code_version``), so with the cache each run after the first would
    reuse the first run's outputs and never see new photos under ``source``.

    Raises:
        CirlError: on a cron expression without six fields, or an endpoint that refuses it.
    """
    fields = cron.split()
    if len(fields) != 6:
        raise CirlError(
            f"--cron {cron!r} has {len(fields)} fields; KFP wants six, seconds first: "
            "'0 0 2 * * *' is every day at 02:00"
        )
    load_package(package)
    kfp_client = client(host, namespace, token)
    experiment_id = _experiment_id(kfp_client, experiment, namespace)
    try:
        job = kfp_client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=job_name,
            cron_expression=cron,
            max_concurrency=1,
            no_catchup=True,
            params=dict(arguments),
            pipeline_package_path=str(package),
            enabled=True,
            enable_caching=False,
        )
    except Exception as exc:
        raise CirlError(f"KFP endpoint refused the schedule ({_api_error(exc)})") from None
    return {
        "recurring_run_id": job.recurring_run_id,
        "experiment_id": experiment_id,
        "cron": cron,
        "max_concurrency": 1,
        "no_catchup": True,
        "enable_caching": False,
    }
