"""MLflow tracking beside the stages: one run per stage, nested under one run per pipeline.

The stage functions know nothing of MLflow; this layer wraps them. The CLI and the KFP tasks
open a :func:`stage_run` around a stage call and hand its :meth:`StageRun.on_epoch` to
``cirl.method.train.run``::

    with stage_run("train", cfg, tracking, data=data, out=out) as run:
        train.run(cfg, data, out, on_epoch=run.on_epoch)

Where runs go (:func:`resolve_tracking_uri`): ``tracking_uri`` if given, else
``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory, with the
artifacts of new experiments in ``mlartifacts/<experiment>/`` beside the database file. A server
(``http(s)://``) is probed before anything runs (``/health`` and one API call, with a short
timeout), so a server that is down, a wrong URL or refused credentials fail in seconds with a
:class:`~cirl.errors.CirlError`, not after MLflow's retries and not after training. The
artifact store is probed at the start of each stage run too (the resolved config is written as
``config.json``), so wrong S3 credentials or a missing bucket also fail before the stage runs.

What a stage run records:

* params: the resolved stage config (``cirl.config.to_dict``), and ``config.json``;
* tags (:func:`lineage_tags`): git commit and dirty flag (``git``, else ``$CIRL_GIT_COMMIT`` /
  ``$CIRL_GIT_DIRTY`` baked into the image), cirl version, the DVC hash of ``data.dvc``,
  python/torch/onnxruntime versions, ``$CIRL_IMAGE_DIGEST``, ``$KFP_RUN_ID``, the stage, and
  the manifest SHA-256 of the dataset it read or wrote;
* the prepared dataset as an MLflow dataset input whose digest is the manifest SHA-256
  (its first 36 hex digits: MLflow caps digests at 36 characters; the whole hash is in the
  dataset's profile, an input tag and the run tag ``cirl.manifest_sha256``);
* metrics: every training epoch's record with ``step`` = epoch (loss parts, ``val_f1``,
  ``val_precision``, ``val_recall``, ``images_per_s``, ``seconds``), and the scalar results of
  select and evaluate;
* artifacts under ``outputs/`` (:data:`STAGE_OUTPUTS`);
* status FINISHED, or FAILED (KILLED on Ctrl-C) with the error text in the tag ``cirl.error``.

A pipeline execution is one parent run (:func:`pipeline_run`, or :func:`start_pipeline_run` and
:func:`end_pipeline_run` when the steps are separate processes); stage runs find it through the
``parent_run_id`` argument or ``$CIRL_PARENT_RUN_ID``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cirl.errors import CirlError, one_line

# what this module held before it was split (store: the MLflow store; records: what runs record)
from cirl.lineage.records import (  # noqa: F401
    _RESULT_FILES,
    _SCALARS,
    EVALUATION_SCORES,
    REPO_ROOT,
    STAGE_OUTPUTS,
    _numbers,
    dataset_entity,
    dvc_data_hash,
    epoch_metrics,
    evaluation_scores,
    git_state,
    lineage_tags,
    log_dataset_input,
    manifest_sha256,
)
from cirl.lineage.schema import Tag
from cirl.lineage.store import (  # noqa: F401
    ARTIFACTS_FOLDER,
    DEFAULT_EXPERIMENT,
    DEFAULT_TRACKING_URI,
    Tracking,
    TrackingConfig,
    _fix_hint,
    artifact_error,
    check_server,
    connect,
    ensure_experiment,
    mlflow_uri,
    open_store,
    resolve_tracking_uri,
    sqlite_path,
)

log = logging.getLogger(__name__)


PARENT_RUN_ENV = "CIRL_PARENT_RUN_ID"


class NullRun:
    """The stand-in when tracking is off: every method does nothing."""

    run_id: str | None = None

    def on_epoch(self, record: Mapping[str, Any]) -> None:
        """Nothing."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Nothing."""

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Nothing."""

    def log_dataset(self, data: str | os.PathLike, context: str) -> None:
        """Nothing."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Nothing."""

    def log_outputs(self, stage: str, out: str | os.PathLike) -> None:
        """Nothing."""


class StageRun(NullRun):
    """An open MLflow run of one stage (from :func:`stage_run`).

    Metric writes that fail during training are kept and sent again with the next epoch, so a
    tracking server that blinks does not stop training; what cannot be sent by the end of the
    stage fails it with a :class:`CirlError` (the stage's own outputs are complete by then).
    """

    def __init__(self, tracking: Tracking, run: Any, stage: str) -> None:
        self.tracking = tracking
        self.client = tracking.client
        self.run_id: str = run.info.run_id
        self.experiment_id: str = run.info.experiment_id
        self.artifact_uri: str = run.info.artifact_uri
        self.stage = stage
        self._pending: list[Any] = []

    def on_epoch(self, record: Mapping[str, Any]) -> None:
        """``cirl.method.train.run``'s ``on_epoch``: the epoch's record as metrics at step epoch."""
        self.log_metrics(epoch_metrics(record), step=int(record["epoch"]))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numbers (non-finite ones are skipped: MLflow stores them, plots choke on them)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [
            Metric(key, float(value), now, step or 0)
            for key, value in metrics.items()
            if math.isfinite(float(value))
        ]
        self._flush(final=False)

    def _flush(self, final: bool) -> None:
        while self._pending:
            batch = self._pending[:1000]
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except Exception as exc:  # the store's or the HTTP client's own errors
                if final:
                    raise CirlError(
                        f"could not record {len(self._pending)} metric value(s) of run "
                        f"{self.run_id} at {self.tracking.uri} ({one_line(exc)}); the "
                        "stage's outputs are complete on disk"
                    ) from None
                log.warning(
                    "MLflow at %s: metrics not recorded yet, retried next epoch (%s)",
                    self.tracking.uri,
                    one_line(exc),
                )
                return
            del self._pending[: len(batch)]

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a file or a folder.

        Raises:
            CirlError: when the artifact store refuses (credentials, bucket), with the fix.
        """
        path = Path(path)
        try:
            if path.is_dir():
                self.client.log_artifacts(
                    self.run_id, str(path), "/".join(p for p in (artifact_path, path.name) if p)
                )
            else:
                self.client.log_artifact(self.run_id, str(path), artifact_path)
        except Exception as exc:  # boto3, requests and MLflow all raise their own types
            location = self.artifact_uri
            raise artifact_error(exc, f"run {self.run_id} ({location})", location) from None

    def log_dataset(self, data: str | os.PathLike, context: str) -> None:
        """Record a prepared folder as a dataset input of this run (``context``: its role)."""
        entity = dataset_entity(data)
        sha = json.loads(entity.profile)["manifest_sha256"]
        log_dataset_input(self.client, self.run_id, entity, context, sha)
        self.set_tags({Tag.MANIFEST_SHA256: sha})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values as strings)."""
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_outputs(self, stage: str, out: str | os.PathLike) -> None:
        """Log what a stage wrote to ``out`` (:data:`STAGE_OUTPUTS`) and its scalar results."""
        out = Path(out)
        if stage == "export":  # out is the .onnx file: its report, not the model
            report = out.with_name(out.name + ".json")
            if report.is_file():
                self.log_artifact(report, "outputs")
            return
        for name in STAGE_OUTPUTS.get(stage, ()):
            if (out / name).exists():
                self.log_artifact(out / name, "outputs")
        if stage == "prepare" and (out / "manifest.csv").is_file():
            self.log_dataset(out, "prepared")
        if stage in _RESULT_FILES and (out / _RESULT_FILES[stage]).is_file():
            result = json.loads((out / _RESULT_FILES[stage]).read_text())
            if stage == "evaluate":
                split = result.get("split", "test")
                self.log_metrics({f"{split}_{k}": v for k, v in evaluation_scores(result).items()})
            else:
                self.log_metrics(_numbers(result, _SCALARS[stage]))
        if stage == "train" and (out / "history.json").is_file():
            history = json.loads((out / "history.json").read_text())
            scores = [h["val"]["f1"] for h in history if "val" in h]
            if scores:
                self.log_metrics({"best_val_f1": max(scores)})
        self.set_tags(_outcome_tags(stage, out))
        if stage in ("select", "evaluate"):
            self._log_page(stage, out)

    def _log_page(self, stage: str, out: Path) -> None:
        """The stage's report page, embedded (MLflow's artifact view follows no relative link),
        as ``outputs/report.html``."""
        from cirl.method import pages

        render = pages.selection_page if stage == "select" else pages.evaluation_page
        with tempfile.TemporaryDirectory() as tmp:
            try:
                page = render(out, embed=True).write(Path(tmp) / pages.PAGE)
            except (CirlError, KeyError, TypeError, ValueError) as exc:  # a page, not the stage
                log.warning("no report page for the %s run: %s", stage, one_line(exc))
                return
            self.log_artifact(page, "outputs")


NOTE = "mlflow.note.content"
"""MLflow's tag for a run's (or an experiment's) description."""


def _outcome_tags(stage: str, out: Path) -> dict[str, str]:
    """Tags of what a finished stage was: a training's method and best checkpoint, a
    selection's threshold and size; the run's description (said loudly when a model called
    CIRL trained as plain BCE)."""
    from cirl.method.trained import trained_as

    tags: dict[str, str] = {}
    if stage == "train" and (out / "config.json").is_file():
        config = json.loads((out / "config.json").read_text())
        method = trained_as(config.get("train"), config.get("selection"))
        tags[Tag.METHOD] = method.label
        if (out / "best.pt").is_file():
            from cirl.hashing import file_sha256

            tags[Tag.BEST_CHECKPOINT_SHA256] = file_sha256(out / "best.pt")
        tags[NOTE] = method.label + (f"\n\nWARNING: {method.warning}" if method.warning else "")
        if method.warning:
            tags[Tag.METHOD_WARNING] = method.warning
    elif stage == "select" and (out / "summary.json").is_file():
        summary = json.loads((out / "summary.json").read_text())
        fraction = float(summary.get("selected_fraction") or 0.0)
        tags[Tag.SELECTION_THRESHOLD] = str(summary.get("threshold", summary.get("gamma")))
        tags[Tag.SELECTED_FRACTION] = repr(fraction)
        text = (
            f"Ambiguous pixels A: {fraction:.2%} of the marginal ring ({summary.get('rule')} rule,"
            f" threshold {summary.get('threshold')})."
        )
        warnings = summary.get("warnings") or []
        tags[NOTE] = "\n\n".join([text, *(f"WARNING: {w}" for w in warnings)])
        if warnings:
            tags[Tag.METHOD_WARNING] = warnings[0]
    return tags


def _params(cfg: Any) -> dict[str, str]:
    from cirl.config import to_dict

    values = to_dict(cfg) if cfg is not None else {}
    return {k: json.dumps(v) if isinstance(v, list | dict) else str(v) for k, v in values.items()}


# Tags of the pipeline run its stage runs carry too: which KFP run and which code.
INHERITED_TAGS = (Tag.KFP_RUN_ID, Tag.KFP_RUN_NAME, Tag.CODE_VERSION)


def _parent(
    tracking: Tracking, parent_run_id: str | None
) -> tuple[str | None, str, dict[str, str]]:
    """The parent run id (argument, else ``$CIRL_PARENT_RUN_ID``), its experiment id, and the
    tags of it that stage runs inherit (:data:`INHERITED_TAGS`)."""
    from mlflow.exceptions import MlflowException

    parent = parent_run_id or os.environ.get(PARENT_RUN_ENV) or None
    if parent is None:
        return None, tracking.experiment_id, {}
    try:
        run = tracking.client.get_run(parent)
    except MlflowException:
        source = "--parent-run-id" if parent_run_id else f"${PARENT_RUN_ENV}"
        raise CirlError(
            f"parent run {parent} ({source}) not found at {tracking.uri}; pass the id printed "
            f"by the pipeline's start, or unset {PARENT_RUN_ENV} to record a top-level run"
        ) from None
    inherited = {k: run.data.tags[k] for k in INHERITED_TAGS if run.data.tags.get(k)}
    return parent, run.info.experiment_id, inherited


@contextlib.contextmanager
def stage_run(
    stage: str,
    cfg: Any = None,
    tracking: TrackingConfig | None = None,
    *,
    data: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Iterator[StageRun | NullRun]:
    """One MLflow run around one stage; a :class:`NullRun` when ``tracking`` is off or None.

    On entry (before the stage runs): checks the store, creates the run (nested under
    ``parent_run_id`` or ``$CIRL_PARENT_RUN_ID``), logs the config as params and
    ``config.json`` (which probes the artifact store), the lineage tags, and ``data`` (a
    prepared folder the stage reads) as a dataset input. On a normal exit: logs the stage's
    outputs in ``out`` and ends the run FINISHED. On an exception: ends it FAILED (KILLED for
    Ctrl-C) with the error text in the tag ``cirl.error``, and re-raises.

    Args:
        stage: the stage name (``prepare``, ``train``, ``select``, ``evaluate``, ``export``,
            ``register``...), the ``cirl.stage`` tag.
        cfg: the stage's resolved config dataclass.
        tracking: where to record; None or ``track=False`` records nothing.
        data: the prepared folder the stage reads (context ``training`` for train, else
            ``evaluation``).
        out: the stage's output folder (file for export), logged on success.
        parent_run_id: the pipeline run to nest under.
        run_name: default: the stage name.
        tags: more run tags.

    Raises:
        CirlError: when the tracking or artifact store cannot be used (before the stage runs).
    """
    if tracking is None or not tracking.track:
        yield NullRun()
        return
    connection = connect(tracking)
    client = connection.client
    parent, experiment_id, inherited = _parent(connection, parent_run_id)
    run_tags = lineage_tags(
        {**inherited, Tag.STAGE: stage, "mlflow.parentRunId": parent, **(tags or {})}
    )
    run_tags.setdefault("mlflow.user", _user())
    run_tags.setdefault("mlflow.source.name", f"cirl {stage}")
    try:
        created = client.create_run(experiment_id, tags=run_tags, run_name=run_name or stage)
    except Exception as exc:  # store errors of any kind: name the URI
        raise CirlError(
            f"MLflow at {connection.uri} could not create a run ({one_line(exc)}); {_fix_hint()}"
        ) from None
    run = StageRun(connection, created, stage)
    try:
        from mlflow.entities import Param

        params = _params(cfg)
        if params:
            client.log_batch(run.run_id, params=[Param(k, v) for k, v in params.items()])
        with tempfile.TemporaryDirectory() as tmp:
            config_path = Path(tmp) / "config.json"
            config_path.write_text(json.dumps({"stage": stage, stage: _cfg_dict(cfg)}, indent=2))
            run.log_artifact(config_path)
        if data is not None:
            run.log_dataset(data, "training" if stage == "train" else "evaluation")
        yield run
        if out is not None:
            run.log_outputs(stage, out)
        run._flush(final=True)
    except BaseException as exc:
        _end(client, run.run_id, exc)
        raise
    client.set_terminated(run.run_id, "FINISHED")


def _cfg_dict(cfg: Any) -> dict:
    from cirl.config import to_dict

    return to_dict(cfg) if cfg is not None else {}


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _end(client: Any, run_id: str, exc: BaseException | None) -> None:
    """End a run FINISHED, or FAILED / KILLED with the error as the tag ``cirl.error``."""
    status = "FINISHED"
    try:
        if exc is not None:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, CirlError) else str(exc)
            client.set_tag(run_id, Tag.ERROR, text[:5000])
        client.set_terminated(run_id, status)
    except Exception as other:  # the store may be the thing that failed: keep the first error
        log.warning("could not mark MLflow run %s %s: %s", run_id, status, one_line(other))


def start_pipeline_run(
    tracking: TrackingConfig | None = None,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
) -> str:
    """Create the parent run of one pipeline execution and return its id.

    Also sets ``$CIRL_PARENT_RUN_ID`` in this process (so stage runs started here, and child
    processes, nest under it). Separate processes (KFP tasks) get the id as a parameter.

    Raises:
        CirlError: when the store cannot be used, naming the URI and the fix.
    """
    connection = connect(tracking or TrackingConfig(track=True))
    run_tags = lineage_tags({Tag.STAGE: "pipeline", **(tags or {})})
    run_tags.setdefault("mlflow.user", _user())
    run_tags.setdefault("mlflow.source.name", "cirl pipeline")
    try:
        run = connection.client.create_run(
            connection.experiment_id, tags=run_tags, run_name=run_name or "pipeline"
        )
        if params:
            from mlflow.entities import Param

            connection.client.log_batch(
                run.info.run_id,
                params=[
                    Param(k, json.dumps(v) if isinstance(v, list | dict) else str(v))
                    for k, v in params.items()
                ],
            )
    except Exception as exc:  # store errors of any kind: name the URI
        raise CirlError(
            f"MLflow at {connection.uri} could not create the pipeline run "
            f"({one_line(exc)}); {_fix_hint()}"
        ) from None
    os.environ[PARENT_RUN_ENV] = run.info.run_id
    return run.info.run_id


def reopen_pipeline_run(
    run_id: str, tracking: TrackingConfig | None = None, tags: Mapping[str, Any] | None = None
) -> str:
    """Mark an earlier pipeline run RUNNING again (a rerun that continues it) and tag it.

    Raises:
        CirlError: when the run does not exist or is not a pipeline run.
    """
    from mlflow.entities import RunTag
    from mlflow.exceptions import MlflowException

    connection = connect(tracking or TrackingConfig(track=True))
    client = connection.client
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise CirlError(
            f"pipeline run {run_id} not found at {connection.uri}; run without the parent run "
            "id to open a new one"
        ) from None
    if run.data.tags.get(Tag.STAGE) != "pipeline":
        raise CirlError(f"run {run_id} at {connection.uri} is not a pipeline run")
    values = {k: str(v) for k, v in (tags or {}).items() if v not in (None, "")}
    if run.info.status != "RUNNING":  # continues an attempt that ended
        values[Tag.RERUNS] = str(int(run.data.tags.get(Tag.RERUNS, "0")) + 1)
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in values.items()])
    if Tag.ERROR in run.data.tags:  # the error of the attempt this one continues
        client.delete_tag(run_id, Tag.ERROR)
    client.update_run(run_id, status="RUNNING")
    os.environ[PARENT_RUN_ENV] = run_id
    return run_id


def find_pipeline_run(kfp_run_id: str, tracking: TrackingConfig | None = None) -> str | None:
    """The id of the pipeline run tagged with KFP run ``kfp_run_id`` (None when there is none)."""
    if not kfp_run_id:
        return None
    connection = connect(tracking or TrackingConfig(track=True))
    value = kfp_run_id.replace("'", "")
    runs = connection.client.search_runs(
        [connection.experiment_id],
        filter_string=f"tags.`cirl.stage` = 'pipeline' and tags.`cirl.kfp_run_id` = '{value}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def end_pipeline_run(
    run_id: str,
    tracking: TrackingConfig | None = None,
    error: BaseException | str | None = None,
) -> None:
    """End the parent run: FINISHED, or FAILED with ``error`` as the tag ``cirl.error``."""
    connection = connect(tracking or TrackingConfig(track=True))
    if isinstance(error, str):
        error = CirlError(error)
    if error is None:  # a rerun that completed: the error of the failed attempt is history
        with contextlib.suppress(Exception):
            if Tag.ERROR in connection.client.get_run(run_id).data.tags:
                connection.client.delete_tag(run_id, Tag.ERROR)
    _end(connection.client, run_id, error)
    if os.environ.get(PARENT_RUN_ENV) == run_id:
        del os.environ[PARENT_RUN_ENV]


@contextlib.contextmanager
def pipeline_run(
    tracking: TrackingConfig | None = None,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
) -> Iterator[str | None]:
    """The parent run around one pipeline execution in this process; yields its id.

    Yields None (and records nothing) when ``tracking`` is off or None.
    """
    if tracking is None or not tracking.track:
        yield None
        return
    previous = os.environ.get(PARENT_RUN_ENV)
    run_id = start_pipeline_run(tracking, run_name, tags, params)
    try:
        yield run_id
    except BaseException as exc:
        end_pipeline_run(run_id, tracking, exc)
        raise
    else:
        end_pipeline_run(run_id, tracking)
    finally:
        if previous is not None:
            os.environ[PARENT_RUN_ENV] = previous
