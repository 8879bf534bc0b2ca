"""A registered model by name: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` parsed,
resolved on the registry (the alias every time: it moves) and its ONNX files fetched once
into a local cache.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cirl.errors import CirlError
from cirl.lineage.schema import Tag
from cirl.lineage.tracking import TrackingConfig

DEFAULT_MODEL_NAME = "cirl-crack"


CACHE_ENV = "CIRL_MODEL_CACHE"


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
        raise ValueError(
            f"key 'name' must be letters, digits, '.', '_' or '-' (no '/' or '@'), got {name!r}"
        )


@dataclass(frozen=True)
class FetchedModel:
    """A registered model version resolved to a local file."""

    uri: str
    name: str
    version: str
    path: Path
    run_id: str | None  # the run holding its files (:func:`files_run_id`)
    alias: str | None = None  # the alias ``uri`` named, if any
    training_run_id: str | None = None  # the version's own run: the training that made it
    registry: str | None = None  # the store it was resolved in


def _tracking(tracking: TrackingConfig | None) -> TrackingConfig:
    """Registration always records: the default store when nothing is configured."""
    if tracking is None:
        return TrackingConfig(track=True)
    if not tracking.track:
        from dataclasses import replace

        return replace(tracking, track=True)
    return tracking


# Where a register run keeps the model's gated int8 copy (``cirl export --quantize static``).
INT8_ARTIFACTS = "int8"


def _client(tracking: TrackingConfig | None) -> tuple[Any, str]:
    from cirl.lineage.tracking import open_store

    tracking = _tracking(tracking)
    return open_store(tracking.tracking_uri, tracking.tracking_timeout, tracking.experiment)


def _alias_version(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def resolve_version(
    client: Any,
    store: str,
    uri: str,
    action: str,
    unknown_fix: str = "set --tracking-uri / MLFLOW_TRACKING_URI to the registry that holds it",
    alias_fix: str | None = None,
) -> tuple[Any, str | None]:
    """The model version ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` names on
    ``client``'s registry, and the alias it was named by (None for a version number).

    Raises:
        CirlError: ``cannot {action} {uri}: ...`` for a malformed URI, an unknown model (with
            the models there and ``unknown_fix``), alias (with the aliases and ``alias_fix``)
            or version.
    """
    from mlflow.exceptions import MlflowException

    name, alias, number = parse_model_uri(uri)
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        known = [m.name for m in client.search_registered_models(max_results=20)]
        raise CirlError(
            f"cannot {action} {uri}: no registered model {name!r} at {store} (models there: "
            f"{', '.join(known) or 'none'}); {unknown_fix}"
        ) from None
    if alias is not None:
        version = _alias_version(client, name, alias)
        if version is None:
            fix = alias_fix or f"name a version (models:/{name}/N) or one of the aliases"
            raise CirlError(
                f"cannot {action} {uri}: model {name!r} at {store} has no alias {alias!r} "
                f"(aliases: {', '.join(sorted(model.aliases)) or 'none'}); {fix}"
            )
        return version, alias
    try:
        return client.get_model_version(name, number), None
    except MlflowException:
        raise CirlError(
            f"cannot {action} {uri}: model {name!r} has no version {number} at {store}"
        ) from None


_MODEL_URI = re.compile(r"^models:/([A-Za-z0-9][A-Za-z0-9_.\-]*)(?:@([A-Za-z0-9_\-]+)|/(\d+))$")


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` -> ``(NAME, ALIAS, None)``; ``models:/NAME/VERSION`` ->
    ``(NAME, None, VERSION)``.

    Raises:
        CirlError: for anything else, with an example of the form.
    """
    match = _MODEL_URI.match(uri)
    if not match:
        raise CirlError(
            f"model URI {uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION "
            f"(e.g. models:/{DEFAULT_MODEL_NAME}@champion)"
        )
    name, alias, number = match.groups()
    return name, alias, number


def cache_folder() -> Path:
    """Where fetched models are kept: ``$CIRL_MODEL_CACHE`` or ``~/.cache/cirl/models``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "cirl" / "models")


def fetch_model(
    uri: str,
    tracking_uri: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    timeout: float = 5.0,
    store_setting: str = "--tracking-uri",
) -> FetchedModel:
    """Resolve ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` to a local ``.onnx`` file.

    The alias is resolved on the registry every time (it moves); the version's files are
    downloaded once into ``cache_dir/<name>/<version>-<key>/`` (versions do not change; the
    key tells apart stores and recreated stores).

    Args:
        uri: the model URI.
        tracking_uri: the registry's tracking URI (default ``$MLFLOW_TRACKING_URI``, else
            ``sqlite:///mlflow.db``).
        cache_dir: default :func:`cache_folder`.
        timeout: seconds a server gets to answer the reachability check.

    Raises:
        CirlError: on a malformed URI, a registry that cannot be reached, an unknown model,
            alias or version, or a version without an ONNX file; naming the URI and the fix.
    """

    from cirl.lineage.tracking import artifact_error, mlflow_uri, open_store

    name = parse_model_uri(uri)[0]
    try:
        client, store = open_store(tracking_uri, timeout, must_exist=True)
    except CirlError as exc:
        raise CirlError(f"cannot resolve {uri}: {exc}") from None
    version, alias = resolve_version(
        client,
        store,
        uri,
        "resolve",
        unknown_fix=f"register one with `cirl register`, or set {store_setting} / "
        "MLFLOW_TRACKING_URI to the registry that holds it",
        alias_fix="promote a version with `cirl promote`, or use one of the aliases",
    )
    # versions are immutable, but a store can be recreated with the same names and numbers:
    # the key includes the version's source (its logged model's unique id) and run
    key = hashlib.sha256(f"{store}|{version.source}|{version.run_id}".encode()).hexdigest()[:16]
    folder = Path(cache_dir or cache_folder()) / name / f"{version.version}-{key}"
    found = _fp32_models(folder) if folder.is_dir() else []
    if not found:
        import mlflow

        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version.version}.partial-", dir=folder.parent))
        try:
            with mlflow_uri(store):  # MLflow resolves models:/ through its global registry
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{name}/{version.version}",
                    dst_path=str(staging),
                    tracking_uri=store,
                    registry_uri=store,
                )
            fp32 = _fp32_models(staging)
            if not fp32:
                raise CirlError(
                    f"{uri} (version {version.version}) holds no .onnx file; register models "
                    "with `cirl register`"
                )
            _fetch_int8(client, files_run_id(version), fp32[0], store)
            try:
                staging.rename(folder)
            except OSError:  # fetched meanwhile by another process: keep theirs
                shutil.rmtree(staging, ignore_errors=True)
        except CirlError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        except Exception as exc:  # artifact stores raise their own types
            shutil.rmtree(staging, ignore_errors=True)
            raise artifact_error(exc, f"{uri} (version {version.version})") from None
        found = _fp32_models(folder)
    return FetchedModel(
        uri,
        name,
        str(version.version),
        found[0],
        files_run_id(version),
        alias,
        version.run_id,
        store,
    )


def files_run_id(version: Any) -> str:
    """The run that holds a version's files (weights, configs, int8 copy): its ``register``
    run. A version's own ``run_id`` names the training that produced the model; versions
    registered before that link was made name the register run there."""
    return (version.tags or {}).get(Tag.REGISTER_RUN_ID) or version.run_id


def _fp32_models(folder: Path) -> list[Path]:
    """The ``.onnx`` files of a fetched version other than its int8 copy."""
    return sorted(p for p in folder.rglob("*.onnx") if not p.name.endswith(".int8.onnx"))


def _fetch_int8(client, run_id: str, model: Path, store: str) -> None:
    """Download the register run's int8 copy (if it logged one) to ``NAME.int8.onnx`` beside
    ``model``, where ``--engine onnx-int8`` and ``auto`` look for it (its hash is checked
    against the one the model's accuracy gate pinned before it is used)."""
    import mlflow

    from cirl.models.files import int8_path

    logged = [f.path for f in client.list_artifacts(run_id, INT8_ARTIFACTS) if not f.is_dir]
    if not logged:
        return
    with tempfile.TemporaryDirectory() as tmp:
        got = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=logged[0], dst_path=tmp, tracking_uri=store
        )
        shutil.move(got, int8_path(model))
