"""The MLflow store: where it is (:class:`TrackingConfig`, ``$MLFLOW_TRACKING_URI``), whether it
can be reached and used (a server checked in seconds, credentials named), the client and its
experiment, and artifact errors said with their fix.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cirl.errors import CirlError, one_line

log = logging.getLogger(__name__)


DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


DEFAULT_EXPERIMENT = "cirl"


ARTIFACTS_FOLDER = "mlartifacts"


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


def sqlite_path(uri: str) -> Path | None:
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
    database = sqlite_path(uri)
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


# MLflow 3 opens an experiment without a kind in its GenAI view (traces, prompts); these are
# model-training runs. The description is the experiment's note in the UI.
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": (
        "cirl crack-segmentation runs: one parent run per pipeline execution (its headline "
        "scores and key parameters as columns), one nested run per stage; compare pipeline "
        "runs in the table, open a run for its stages, reports (outputs/report.html) and "
        "models. Registered models: the Models tab (cirl-crack)."
    ),
}


def ensure_experiment(client: Any, uri: str, name: str, artifact_location: str = "") -> str:
    """The id of experiment ``name``, created when absent.

    A new experiment on a SQLite store keeps its artifacts in ``mlartifacts/<experiment>/``
    beside the database unless ``artifact_location`` (a folder or a URI) says otherwise; on a
    server, the server's default applies.

    Raises:
        CirlError: when the experiment is deleted or the store refuses, naming the URI.
    """
    from mlflow.exceptions import MlflowException

    database = sqlite_path(uri)
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
                return client.create_experiment(name, location, tags=EXPERIMENT_TAGS)
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
        for key, value in EXPERIMENT_TAGS.items():  # an experiment made before these tags
            if key not in experiment.tags:
                client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    except MlflowException as exc:
        raise CirlError(
            f"MLflow tracking store {uri} cannot be used ({one_line(exc)}); {_fix_hint()}"
        ) from None
