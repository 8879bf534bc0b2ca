"""MLflow tracking beside the stages: one run per stage, nested under one run per pipeline.

The stage functions know nothing of MLflow; this layer wraps them. The CLI and the KFP tasks
open a :func:`stage_run` around a stage call and hand its :meth:`StageRun.on_epoch` to
``cirl.train.run``::

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
import platform
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cirl import __version__
from cirl.errors import CirlError

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "cirl"
ARTIFACTS_FOLDER = "mlartifacts"
PARENT_RUN_ENV = "CIRL_PARENT_RUN_ID"
REPO_ROOT = Path(__file__).resolve().parents[2]

# MLflow retries a failing HTTP request 7 times with a backoff factor of 2 (minutes in all);
# for a tracking layer beside training a few seconds is enough. Set only where the user did not.
# Its per-file progress bars are noise in task logs, and the run links it writes to stdout when
# a run ends would corrupt the JSON the commands print there.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}

STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "prepare": ("dataset_card.json", "manifest.csv"),
    "train": ("history.json", "config.json"),
    "select": ("summary.json", "overview.png"),
    "evaluate": ("metrics.json", "per_image.csv", "pr_curve.png", "pr_curve.csv", "overlays"),
}
"""The files (or folders) of a stage's output folder logged as artifacts under ``outputs/``."""

_SCALARS: dict[str, tuple[str, ...]] = {
    "select": ("tiles", "marginal_pixels", "selected_pixels", "selected_fraction", "gamma"),
}
EVALUATION_SCORES = ("f1", "precision", "recall", "iou", "ois", "ap")
_RESULT_FILES = {"select": "summary.json", "evaluate": "metrics.json"}


@dataclass(frozen=True)
class TrackingConfig:
    """Whether and where stage runs are recorded in MLflow (``params.yaml`` group ``tracking``).

    Attributes:
        track: record each stage as an MLflow run (off: the stages run exactly as without
            MLflow).
        tracking_uri: MLflow tracking URI (``http://host:5000``, ``sqlite:///mlflow.db``...);
            empty = ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working
            directory.
        experiment: MLflow experiment of the runs (created if absent).
        artifact_location: artifact root of a newly created experiment on a local store (a
            folder or ``s3://bucket/prefix``); empty = ``mlartifacts/<experiment>/`` beside the
            database, or the server's default.
        tracking_timeout: seconds to wait for a tracking server to answer the reachability
            check.
    """

    track: bool = False
    tracking_uri: str = ""
    experiment: str = DEFAULT_EXPERIMENT
    artifact_location: str = ""
    tracking_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not self.experiment.strip():
            raise ValueError("key 'experiment' must be a non-empty name")
        if not (self.tracking_timeout > 0 and math.isfinite(self.tracking_timeout)):
            raise ValueError(f"key 'tracking_timeout' must be > 0, got {self.tracking_timeout}")


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI in effect: ``uri``, else ``$MLFLOW_TRACKING_URI``, else the SQLite file."""
    return (uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI).strip()


def _fix_hint() -> str:
    return (
        "start the server, or point --tracking-uri / MLFLOW_TRACKING_URI at a reachable one "
        f"(or at {DEFAULT_TRACKING_URI} for a local file), or run without --track"
    )


def _auth_headers() -> dict[str, str]:
    """The credentials MLflow's client would send (token, else basic auth)."""
    import base64

    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = (
        os.environ.get("MLFLOW_TRACKING_USERNAME"),
        os.environ.get("MLFLOW_TRACKING_PASSWORD"),
    )
    if user and password:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    return {}


def check_server(uri: str, timeout: float = 5.0, experiment: str = DEFAULT_EXPERIMENT) -> None:
    """Fail fast unless the MLflow server at ``uri`` answers ``/health`` and its REST API.

    Plain HTTP with ``timeout`` seconds and no retries, so a server that is down costs
    milliseconds (refused) or ``timeout`` seconds (unroutable), not MLflow's minutes of retries.

    Raises:
        CirlError: naming ``uri``, what went wrong and the fix.
    """
    import ssl
    import urllib.error
    import urllib.parse
    import urllib.request

    base = uri.rstrip("/")
    context = None
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        context = ssl._create_unverified_context()

    def get(path: str) -> tuple[int, str]:
        request = urllib.request.Request(base + path, headers=_auth_headers())
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                return response.status, response.read(2000).decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(2000).decode("utf-8", "replace")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CirlError(
                f"MLflow tracking server {uri} is not reachable ({reason}); {_fix_hint()}"
            ) from None

    status, _ = get("/health")
    if status in (401, 403):
        raise CirlError(_auth_message(uri, status))
    if status != 200:
        raise CirlError(
            f"{uri} answered /health with HTTP {status}: is it an MLflow tracking server? "
            f"{_fix_hint()}"
        )
    query = urllib.parse.urlencode({"experiment_name": experiment})
    status, body = get(f"/api/2.0/mlflow/experiments/get-by-name?{query}")
    if status in (401, 403):
        raise CirlError(_auth_message(uri, status))
    if status != 200 and "RESOURCE_DOES_NOT_EXIST" not in body:
        raise CirlError(
            f"MLflow tracking server {uri} does not answer its REST API (HTTP {status}: "
            f"{body.strip()[:200]}); check the URL (no path after the port unless the server is "
            "mounted there) and the server's log"
        )


def _auth_message(uri: str, status: int) -> str:
    return (
        f"MLflow tracking server {uri} refused the request (HTTP {status}); set "
        "MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, to "
        "credentials it accepts"
    )


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for in-memory or other schemes)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?")[0]
    return Path(path) if path and path != ":memory:" else None


def artifact_error(exc: BaseException, where: str, location: str = "") -> CirlError:
    """A :class:`CirlError` for a failed artifact upload or download, with the likely fix.

    Args:
        exc: what the artifact client raised.
        where: what was being stored or fetched (a run, a model URI), for the message.
        location: the artifact URI (``s3://...``, ``mlflow-artifacts:/...``), if known.
    """
    text = f"{type(exc).__name__}: {exc}"
    first = " ".join(text.split())[:300]
    proxied = location.startswith("mlflow-artifacts:") or "/mlflow-artifacts/" in text
    if any(
        code in text
        for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "(403)")
    ):
        fix = (
            "the S3 store rejected the credentials: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (and MLFLOW_S3_ENDPOINT_URL for a non-AWS store) to valid ones"
        )
    elif "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        fix = (
            "the bucket does not exist: create it (e.g. `aws s3 mb s3://BUCKET`) or point the "
            "artifact location at an existing bucket"
        )
    elif "NoCredentialsError" in text or "Unable to locate credentials" in text:
        fix = "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    elif "EndpointConnectionError" in text or "Could not connect to the endpoint" in text:
        fix = "the S3 endpoint is not reachable: check MLFLOW_S3_ENDPOINT_URL"
    elif proxied:
        fix = (
            "the tracking server could not store or serve the artifact (it keeps artifacts in "
            "its --artifacts-destination and answers only 'Internal Server Error'): read the "
            "server's log for the cause, typically its S3 credentials (AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY, MLFLOW_S3_ENDPOINT_URL in the server's environment) or a "
            "bucket that does not exist"
        )
    else:
        fix = "check the artifact location, its credentials and the tracking server's log"
    return CirlError(f"artifact store of {where} failed ({first}); {fix}")


def _set_http_defaults() -> None:
    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


@dataclass(frozen=True)
class Tracking:
    """A checked connection: the MLflow client, its URI and the experiment of the runs."""

    client: Any
    uri: str
    experiment_id: str


def open_store(
    uri: str | None = None,
    timeout: float = 5.0,
    experiment: str = DEFAULT_EXPERIMENT,
    must_exist: bool = False,
) -> tuple[Any, str]:
    """A checked MLflow client for ``uri`` (resolved by :func:`resolve_tracking_uri`).

    Leaves MLflow's process-wide URI alone (see :func:`mlflow_uri`).

    Args:
        uri: the tracking URI; None or empty: ``$MLFLOW_TRACKING_URI``, else the SQLite file.
        timeout: seconds a server gets to answer the reachability check.
        experiment: the experiment name the API probe asks a server for.
        must_exist: refuse a SQLite file that does not exist yet (reading, not recording).

    Returns:
        ``(client, uri)``.

    Raises:
        CirlError: when the store cannot be reached or used, naming the URI and the fix.
    """
    import mlflow

    uri = resolve_tracking_uri(uri)
    _set_http_defaults()
    if uri.startswith(("http://", "https://")):
        check_server(uri, timeout, experiment)
    database = _sqlite_path(uri)
    if database is not None:
        if not database.resolve().parent.is_dir():
            raise CirlError(
                f"tracking URI {uri}: folder {database.resolve().parent} does not exist; create "
                "it or use another --tracking-uri"
            )
        if must_exist and not database.is_file():
            raise CirlError(
                f"tracking URI {uri}: no database {database.resolve()}; run from the folder that "
                "holds it, or set --tracking-uri / MLFLOW_TRACKING_URI to the store that holds "
                "the model"
            )
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri), uri


@contextlib.contextmanager
def mlflow_uri(uri: str) -> Iterator[None]:
    """Make ``uri`` MLflow's process-wide tracking and registry URI inside the block only.

    For MLflow functions that take no URI (``mlflow.onnx.log_model``,
    ``mlflow.register_model``); MLflow keeps the URI in globals and in the environment
    (``MLFLOW_TRACKING_URI``, ``MLFLOW_REGISTRY_URI``), both restored on exit.
    """
    import mlflow

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def connect(cfg: TrackingConfig | None = None) -> Tracking:
    """Check the tracking store named by ``cfg`` and return a client and the experiment.

    The experiment is created when absent (:func:`ensure_experiment`).

    Raises:
        CirlError: when the store cannot be reached or used, naming the URI and the fix.
    """
    cfg = cfg or TrackingConfig(track=True)
    client, uri = open_store(cfg.tracking_uri, cfg.tracking_timeout, cfg.experiment)
    return Tracking(
        client, uri, ensure_experiment(client, uri, cfg.experiment, cfg.artifact_location)
    )


def ensure_experiment(client: Any, uri: str, name: str, artifact_location: str = "") -> str:
    """The id of experiment ``name``, created when absent.

    A new experiment on a SQLite store keeps its artifacts in ``mlartifacts/<experiment>/``
    beside the database unless ``artifact_location`` (a folder or a URI) says otherwise; on a
    server, the server's default applies.

    Raises:
        CirlError: when the experiment is deleted or the store refuses, naming the URI.
    """
    from mlflow.exceptions import MlflowException

    database = _sqlite_path(uri)
    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            location = artifact_location or None
            if location is None and database is not None:
                folder = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
                location = (database.resolve().parent / ARTIFACTS_FOLDER / folder).as_uri()
            elif location and "://" not in location:
                location = Path(location).resolve().as_uri()
            try:
                return client.create_experiment(name, location)
            except MlflowException as exc:  # created meanwhile by another process
                if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                    raise
                return client.get_experiment_by_name(name).experiment_id
        if experiment.lifecycle_stage == "deleted":
            raise CirlError(
                f"MLflow experiment {name!r} at {uri} is deleted; restore it "
                f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) or "
                "pass another --experiment"
            )
        return experiment.experiment_id
    except MlflowException as exc:
        raise CirlError(
            f"MLflow tracking store {uri} cannot be used ({_first_line(exc)}); {_fix_hint()}"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> tuple[str | None, str | None]:
    """``(commit, dirty)`` of the checkout the package runs from, else from the environment.

    In a container there is no ``.git``: the image bakes ``CIRL_GIT_COMMIT`` and
    ``CIRL_GIT_DIRTY`` in at build time. ``dirty`` is ``"true"`` when tracked files differ from
    the commit.
    """
    commit = _git("rev-parse", "HEAD") if (REPO_ROOT / ".git").exists() else None
    if commit:
        status = _git("status", "--porcelain", "--untracked-files=no")
        return commit, None if status is None else str(bool(status)).lower()
    dirty = os.environ.get("CIRL_GIT_DIRTY")
    return os.environ.get("CIRL_GIT_COMMIT") or None, dirty.lower() if dirty else None


def dvc_data_hash(search: tuple[Path, ...] | None = None) -> str | None:
    """The md5 of the first ``outs`` entry of ``data.dvc`` (working directory, then repo root)."""
    import yaml

    for folder in search or (Path.cwd(), REPO_ROOT):
        path = folder / "data.dvc"
        if not path.is_file():
            continue
        try:
            doc = yaml.safe_load(path.read_text()) or {}
            outs = doc.get("outs") or []
            value = outs[0].get("md5") if outs and isinstance(outs[0], dict) else None
        except (OSError, yaml.YAMLError, AttributeError):
            log.warning("%s is not a readable .dvc file; no DVC hash recorded", path)
            return None
        return str(value) if value else None
    return os.environ.get("CIRL_DVC_DATA_MD5") or None


def _package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def lineage_tags(extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The tags every run and model version carries (absent values are left out).

    ``cirl.git_commit`` (also as MLflow's ``mlflow.source.git.commit``), ``cirl.git_dirty``,
    ``cirl.version``, ``cirl.dvc_data_md5``, ``cirl.python``, ``cirl.torch``,
    ``cirl.onnxruntime``, ``cirl.image_digest`` (``$CIRL_IMAGE_DIGEST``) and
    ``cirl.kfp_run_id`` (``$KFP_RUN_ID``), then ``extra``.
    """
    commit, dirty = git_state()
    tags = {
        "cirl.git_commit": commit,
        "mlflow.source.git.commit": commit,
        "cirl.git_dirty": dirty,
        "cirl.version": __version__,
        "cirl.dvc_data_md5": dvc_data_hash(),
        "cirl.python": platform.python_version(),
        "cirl.torch": _package_version("torch"),
        "cirl.onnxruntime": _package_version("onnxruntime"),
        "cirl.image_digest": os.environ.get("CIRL_IMAGE_DIGEST"),
        "cirl.kfp_run_id": os.environ.get("KFP_RUN_ID"),
    }
    tags.update(extra or {})
    return {k: str(v) for k, v in tags.items() if v is not None and v != ""}


def manifest_sha256(data: str | os.PathLike) -> str:
    """SHA-256 of a prepared folder's ``manifest.csv``.

    Raises:
        CirlError: when the folder has no manifest.
    """
    from cirl.checkpoint import file_sha256

    path = Path(data) / "manifest.csv"
    if not path.is_file():
        raise CirlError(f"{path} not found; pass a folder written by `cirl prepare`")
    return file_sha256(path)


def dataset_entity(data: str | os.PathLike, name: str | None = None):
    """The prepared folder as an MLflow dataset: digest = manifest SHA-256 (first 36 digits).

    The profile holds the whole hash and the tile and photo counts of the dataset card.
    """
    from mlflow.entities import Dataset

    data = Path(data)
    sha = manifest_sha256(data)
    profile: dict[str, Any] = {"manifest_sha256": sha}
    card = data / "dataset_card.json"
    if card.is_file():
        with contextlib.suppress(ValueError, OSError):
            loaded = json.loads(card.read_text())
            profile.update({k: loaded[k] for k in ("tiles", "photos", "format") if k in loaded})
    return Dataset(
        name=name or data.name or "prepared",
        digest=sha[:36],
        source_type="local",
        source=json.dumps({"uri": data.resolve().as_uri()}),
        profile=json.dumps(profile),
    )


def epoch_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """A training history record as flat metrics (``val.f1`` -> ``val_f1``; ``epoch`` dropped)."""
    metrics: dict[str, float] = {}
    for key, value in record.items():
        if key == "epoch":
            continue
        if isinstance(value, Mapping):
            for inner, v in value.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    metrics[f"{key}_{inner}"] = float(v)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            metrics[key] = float(value)
    return metrics


def _numbers(result: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, float]:
    return {
        k: float(result[k])
        for k in keys
        if isinstance(result.get(k), int | float) and not isinstance(result.get(k), bool)
    }


def evaluation_scores(result: Mapping[str, Any]) -> dict[str, float]:
    """The scores of an evaluation's ``metrics.json``: the paper's per-image means (``f1``,
    ``precision``, ``recall``, ``iou``), ``ois``, ``ap``, and ``ods`` with ``ods_threshold``."""
    scores = _numbers(result, EVALUATION_SCORES)
    ods = result.get("ods")
    if isinstance(ods, Mapping):
        scores.update(
            {
                f"ods{'' if k == 'f1' else '_' + k}": v
                for k, v in _numbers(ods, ("f1", "threshold")).items()
            }
        )
    elif isinstance(ods, int | float) and not isinstance(ods, bool):
        scores["ods"] = float(ods)
    calibration = result.get("threshold_calibration")
    if isinstance(calibration, Mapping) and calibration.get("threshold") is not None:
        # the decision threshold of the validation split, and this split's scores at it
        at = calibration.get("scored") or {}
        scores["calibrated_threshold"] = float(calibration["threshold"])
        scores.update({f"{k}_calibrated": v for k, v in _numbers(at, ("f1",)).items()})
        if isinstance(at.get("pooled"), Mapping):
            scores.update(
                {f"pooled_{k}_calibrated": v for k, v in _numbers(at["pooled"], ("f1",)).items()}
            )
    return scores


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
        """``cirl.train.run``'s ``on_epoch``: the epoch's record as metrics at step = epoch."""
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
                        f"{self.run_id} at {self.tracking.uri} ({_first_line(exc)}); the "
                        "stage's outputs are complete on disk"
                    ) from None
                log.warning(
                    "MLflow at %s: metrics not recorded yet, retried next epoch (%s)",
                    self.tracking.uri,
                    _first_line(exc),
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
        from mlflow.entities import DatasetInput, InputTag

        entity = dataset_entity(data)
        sha = json.loads(entity.profile)["manifest_sha256"]
        self.client.log_inputs(
            self.run_id,
            datasets=[
                DatasetInput(
                    entity,
                    [
                        InputTag("mlflow.data.context", context),
                        InputTag("cirl.manifest_sha256", sha),
                    ],
                )
            ],
        )
        self.set_tags({"cirl.manifest_sha256": sha})

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


def _params(cfg: Any) -> dict[str, str]:
    from cirl.config import to_dict

    values = to_dict(cfg) if cfg is not None else {}
    return {k: json.dumps(v) if isinstance(v, list | dict) else str(v) for k, v in values.items()}


# Tags of the pipeline run its stage runs carry too: which KFP run and which code.
INHERITED_TAGS = ("cirl.kfp_run_id", "cirl.kfp_run_name", "cirl.code_version")


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
        {**inherited, "cirl.stage": stage, "mlflow.parentRunId": parent, **(tags or {})}
    )
    run_tags.setdefault("mlflow.user", _user())
    run_tags.setdefault("mlflow.source.name", f"cirl {stage}")
    try:
        created = client.create_run(experiment_id, tags=run_tags, run_name=run_name or stage)
    except Exception as exc:  # store errors of any kind: name the URI
        raise CirlError(
            f"MLflow at {connection.uri} could not create a run ({_first_line(exc)}); {_fix_hint()}"
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
            client.set_tag(run_id, "cirl.error", text[:5000])
        client.set_terminated(run_id, status)
    except Exception as other:  # the store may be the thing that failed: keep the first error
        log.warning("could not mark MLflow run %s %s: %s", run_id, status, _first_line(other))


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
    run_tags = lineage_tags({"cirl.stage": "pipeline", **(tags or {})})
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
            f"({_first_line(exc)}); {_fix_hint()}"
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
    if run.data.tags.get("cirl.stage") != "pipeline":
        raise CirlError(f"run {run_id} at {connection.uri} is not a pipeline run")
    values = {k: str(v) for k, v in (tags or {}).items() if v not in (None, "")}
    if run.info.status != "RUNNING":  # continues an attempt that ended
        values["cirl.reruns"] = str(int(run.data.tags.get("cirl.reruns", "0")) + 1)
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in values.items()])
    if "cirl.error" in run.data.tags:  # the error of the attempt this one continues
        client.delete_tag(run_id, "cirl.error")
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
            if "cirl.error" in connection.client.get_run(run_id).data.tags:
                connection.client.delete_tag(run_id, "cirl.error")
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
