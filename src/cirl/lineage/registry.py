"""Stage ``register`` / ``promote``: exported models as versions of an MLflow registered model.

* :func:`register` logs an exported ONNX model with ``mlflow.onnx`` (signature and input
  example), its gated int8 copy when ``cirl export --quantize static`` wrote one
  (``int8/NAME.int8.onnx``), the PyTorch weights (``checkpoint/model_state.pt``: state dict
  and configs, no optimizer) and the configs and reports as artifacts of a ``register`` run,
  and registers a new version of a named model. The version carries the lineage tags of
  :func:`cirl.lineage.tracking.lineage_tags`, the test metrics of the evaluation (``test.f1``,
  ``test.precision``...), the test split and the manifest SHA-256 of the test data
  (``test.split``, ``test.manifest_sha256``), and the checkpoint's SHA-256. The model and the
  evaluation must come from the same checkpoint (checked through the hashes both record).
* :func:`promote` compares a version with the holder of the alias ``champion`` on the same
  test data (same manifest hash and split, else it refuses) and moves ``champion`` when
  ``F1 >= champion F1 - margin``; otherwise it gives the version the alias ``challenger`` and
  records why (tags ``cirl.promotion_*``). The first version becomes champion. Aliases and tags
  only: MLflow's deprecated stages are never used.
* MLflow keeps no history of alias moves, so every move is recorded as a run of the
  experiment ``cirl-model-aliases`` (model, alias, version, previous holder, time UTC, both
  scores, reason). :func:`alias_history` lists them; :func:`champion_at` answers "which version
  was champion at time X".
* :func:`fetch_model` resolves ``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``) to a local
  ``.onnx`` file, downloaded once per version into a cache folder (with the int8 copy beside
  it, so that ``--engine auto`` and ``onnx-int8`` can use it): what ``cirl predict --model
  models:/cirl-crack@champion`` runs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cirl.errors import CirlError
from cirl.lineage.schema import Tag, tag_float
from cirl.lineage.tracking import TrackingConfig

DEFAULT_MODEL_NAME = "cirl-crack"
CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_EXPERIMENT = "cirl-model-aliases"
CACHE_ENV = "CIRL_MODEL_CACHE"


@dataclass(frozen=True)
class RegisterConfig:
    """Parameters of model registration (``params.yaml`` group ``register``).

    Attributes:
        name: registered model name (created at the first registration).
        promote: right after registering, compare with the champion and move the aliases (see
            ``cirl promote``).
        margin: promotion margin: the new version becomes champion when its test F1 >=
            the champion's F1 - margin.
        example_size: side of the logged input example in pixels (0 = twice the model's
            stride).
    """

    name: str = DEFAULT_MODEL_NAME
    promote: bool = False
    margin: float = 0.0
    example_size: int = 0

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not 0 <= self.margin < 1:
            raise ValueError(f"key 'margin' must be in [0, 1), got {self.margin}")
        if self.example_size < 0:
            raise ValueError(f"key 'example_size' must be >= 0, got {self.example_size}")


@dataclass(frozen=True)
class PromoteConfig:
    """Parameters of promotion (``params.yaml`` group ``promote``).

    Attributes:
        name: registered model name.
        margin: the version becomes champion when its test F1 >= the champion's F1 - margin;
            otherwise it becomes the challenger.
    """

    name: str = DEFAULT_MODEL_NAME
    margin: float = 0.0

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not 0 <= self.margin < 1:
            raise ValueError(f"key 'margin' must be in [0, 1), got {self.margin}")


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
        raise ValueError(
            f"key 'name' must be letters, digits, '.', '_' or '-' (no '/' or '@'), got {name!r}"
        )


@dataclass(frozen=True)
class Promotion:
    """What :func:`promote` decided.

    ``alias`` is ``champion`` or ``challenger`` (the alias the version holds now); ``moved`` is
    False when the version already held it.
    """

    name: str
    version: str
    alias: str
    moved: bool
    previous_champion: str | None
    f1: float
    champion_f1: float | None
    margin: float
    reason: str


@dataclass(frozen=True)
class RegisterResult:
    """The new version and where it came from."""

    name: str
    version: str
    model_uri: str
    run_id: str
    metrics: dict
    manifest_sha256: str
    promotion: Promotion | None = None


@dataclass(frozen=True)
class AliasMove:
    """One recorded alias move (a run of the ``cirl-model-aliases`` experiment)."""

    model: str
    alias: str
    version: str | None
    previous: str | None
    moved_at: dt.datetime
    reason: str
    f1: float | None
    champion_f1: float | None
    run_id: str


@dataclass(frozen=True)
class FetchedModel:
    """A registered model version resolved to a local file."""

    uri: str
    name: str
    version: str
    path: Path
    run_id: str | None


def _tracking(tracking: TrackingConfig | None) -> TrackingConfig:
    """Registration always records: the default store when nothing is configured."""
    if tracking is None:
        return TrackingConfig(track=True)
    if not tracking.track:
        from dataclasses import replace

        return replace(tracking, track=True)
    return tracking


def _read_evaluation(evaluation: str | os.PathLike) -> tuple[Path, dict]:
    path = Path(evaluation)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise CirlError(
            f"{path} not found; pass the folder (or metrics.json) written by `cirl evaluate`"
        )
    try:
        metrics = json.loads(path.read_text())
        provenance = metrics["provenance"]
        if not (
            isinstance(metrics["f1"], int | float)
            and provenance["manifest_sha256"]
            and provenance["checkpoint_sha256"]
        ):
            raise KeyError("f1")
    except (ValueError, KeyError, TypeError):
        raise CirlError(
            f"{path}: not a metrics.json of `cirl evaluate` (needs f1 and provenance with "
            "manifest_sha256 and checkpoint_sha256); evaluate the model again"
        ) from None
    return path, metrics


def _onnx_metadata(model: Path) -> tuple[Any, dict[str, str]]:
    import onnx

    if not model.is_file() or model.suffix != ".onnx":
        raise CirlError(f"model {model} not found; pass the .onnx file written by `cirl export`")
    try:
        proto = onnx.load(str(model))
    except Exception as exc:  # onnx raises DecodeError and friends
        raise CirlError(f"{model}: not a readable ONNX model ({type(exc).__name__})") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if "checkpoint_sha256" not in meta or "stride" not in meta:
        raise CirlError(
            f"{model}: no cirl metadata (checkpoint_sha256, stride); export it with `cirl export`"
        )
    return proto, meta


def _signature(proto: Any) -> Any:
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema(
            [TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1), proto.graph.input[0].name)]
        ),
        outputs=Schema(
            [TensorSpec(np.dtype(np.float32), (-1, 1, -1, -1), proto.graph.output[0].name)]
        ),
    )


def _weights_file(checkpoint: Path, folder: Path) -> Path:
    """The checkpoint without its optimizer state: weights, configs, provenance."""
    import torch

    from cirl.models.checkpoint import load_checkpoint

    payload = load_checkpoint(checkpoint)
    keep = ("model", "model_config", "config", "epoch", "best_val_f1", "provenance")
    path = folder / "model_state.pt"
    torch.save({k: payload[k] for k in keep if k in payload}, path)
    return path


# Where a register run keeps the model's gated int8 copy (``cirl export --quantize static``).
INT8_ARTIFACTS = "int8"


def register(
    cfg: RegisterConfig,
    model: str | os.PathLike,
    evaluation: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    tracking: TrackingConfig | None = None,
    parent_run_id: str | None = None,
) -> RegisterResult:
    """Log the exported model and register it as a new version of ``cfg.name``.

    Args:
        cfg: name, promotion and example size.
        model: the ``.onnx`` file of ``cirl export``.
        evaluation: the ``cirl evaluate`` folder (or its ``metrics.json``) of the same
            checkpoint: its scores and test-data hash go on the version.
        checkpoint: the ``.pt`` the model was exported from (its weights are logged; checked
            against the hash in the model).
        tracking: where to record (the default store when None; always on).
        parent_run_id: the pipeline run to nest the ``register`` run under.

    Returns:
        The version, its ``models:/`` URI, the run, the scores; with ``cfg.promote`` the
        promotion's decision too.

    Raises:
        CirlError: on missing or mismatched inputs (model, evaluation and checkpoint from
            different checkpoints) or a tracking store that cannot be used.
    """
    import numpy as np

    from cirl.hashing import file_sha256
    from cirl.lineage import tracking as tracking_layer
    from cirl.models.files import int8_path

    tracking = _tracking(tracking)
    model = Path(model)
    proto, meta = _onnx_metadata(model)
    metrics_path, metrics = _read_evaluation(evaluation)
    provenance = metrics["provenance"]
    if provenance["checkpoint_sha256"] != meta["checkpoint_sha256"]:
        raise CirlError(
            f"{metrics_path} scores checkpoint {provenance['checkpoint_sha256'][:12]} "
            f"({provenance.get('checkpoint')}) but {model} was exported from "
            f"{meta['checkpoint_sha256'][:12]}; evaluate the checkpoint the model was exported "
            "from, or export the evaluated one"
        )
    if checkpoint is not None and file_sha256(checkpoint) != meta["checkpoint_sha256"]:
        raise CirlError(
            f"--checkpoint {checkpoint} is not the checkpoint {model} was exported from "
            f"(SHA-256 {meta['checkpoint_sha256'][:12]}); pass that one, or leave it out"
        )
    split = str(metrics.get("split", "test"))
    manifest = str(provenance["manifest_sha256"])
    scores = tracking_layer.evaluation_scores(metrics)
    version_tags = {
        k: v for k, v in tracking_layer.lineage_tags().items() if not k.startswith("mlflow.")
    }
    version_tags.update(
        {
            Tag.CHECKPOINT_SHA256: meta["checkpoint_sha256"],
            Tag.MODEL_CONFIG: meta.get("model_config", ""),
            # the threshold predict decides at (calibrated on the validation split), if any
            **(
                {Tag.DECISION_THRESHOLD: meta["decision_threshold"]}
                if meta.get("decision_threshold")
                else {}
            ),
            "test.split": split,
            "test.manifest_sha256": manifest,
            "test.data": str(provenance.get("data", "")),
            **{f"test.{k}": repr(v) for k, v in scores.items()},
        }
    )
    stride = int(meta["stride"])
    side = cfg.example_size or 2 * stride
    side = max(stride, side // stride * stride)
    example = np.random.default_rng(0).random((1, 3, side, side), dtype=np.float32)
    with tracking_layer.stage_run(
        "register",
        cfg,
        tracking,
        parent_run_id=parent_run_id,
        run_name=f"register {cfg.name}",
        tags={
            Tag.MANIFEST_SHA256: manifest,
            Tag.CHECKPOINT_SHA256: meta["checkpoint_sha256"],
        },
    ) as run:
        import mlflow
        from mlflow.entities import Dataset, DatasetInput, InputTag

        client = run.client
        client.log_inputs(
            run.run_id,
            datasets=[
                DatasetInput(
                    Dataset(
                        name=Path(str(provenance.get("data") or "prepared")).name,
                        digest=manifest[:36],
                        source_type="local",
                        source=json.dumps({"uri": str(provenance.get("data", ""))}),
                        profile=json.dumps({"manifest_sha256": manifest, "split": split}),
                    ),
                    [
                        InputTag("mlflow.data.context", "evaluation"),
                        InputTag(Tag.MANIFEST_SHA256, manifest),
                    ],
                )
            ],
        )
        run.log_metrics({f"{split}_{k}": v for k, v in scores.items()})
        try:
            # created here so that it belongs to the run's experiment (MLflow would put it in
            # the process's active experiment, which need not be the run's)
            logged = client.create_logged_model(
                run.experiment_id, name="model", source_run_id=run.run_id, model_type="onnx"
            )
            with tracking_layer.mlflow_uri(run.tracking.uri):
                info = mlflow.onnx.log_model(
                    proto,
                    name="model",
                    model_id=logged.model_id,
                    signature=_signature(proto),
                    input_example=example,
                    run_id=run.run_id,
                    save_as_external_data=False,
                    metadata={k: meta[k] for k in ("stride", "checkpoint_sha256", "cirl_version")},
                )
        except CirlError:
            raise
        except Exception as exc:  # artifact stores raise their own types
            raise tracking_layer.artifact_error(
                exc, f"model of run {run.run_id}", run.artifact_uri
            ) from None
        quantized = int8_path(model)
        if quantized.is_file():  # the gated int8 copy: fetched beside the model for predict
            run.log_artifact(quantized, INT8_ARTIFACTS)
            version_tags[Tag.INT8_SHA256] = file_sha256(quantized)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            if checkpoint is not None:
                run.log_artifact(_weights_file(Path(checkpoint), folder), "checkpoint")
            configs = folder / "configs"
            configs.mkdir()
            shutil.copy(metrics_path, configs / "metrics.json")
            report = model.with_name(model.name + ".json")
            if report.is_file():
                shutil.copy(report, configs / "export.json")
            for key in ("model_config", "train_config", "provenance"):
                if meta.get(key):
                    (configs / f"{key}.json").write_text(meta[key] + "\n")
            run.log_artifact(configs)
        # the KFP run and code version of the pipeline run this one is nested under
        run_tags = client.get_run(run.run_id).data.tags
        version_tags.update(
            {k: run_tags[k] for k in tracking_layer.INHERITED_TAGS if run_tags.get(k)}
        )
        try:
            with tracking_layer.mlflow_uri(run.tracking.uri):
                version = mlflow.register_model(info.model_uri, cfg.name, tags=version_tags)
        except Exception as exc:  # the registry's errors: name the store
            raise CirlError(
                f"could not register {cfg.name!r} at {run.tracking.uri} "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"
            ) from None
        run.set_tags({Tag.REGISTERED_MODEL: cfg.name, Tag.REGISTERED_VERSION: version.version})
    promotion = None
    if cfg.promote:
        promotion = promote(PromoteConfig(cfg.name, cfg.margin), version.version, tracking)
    return RegisterResult(
        cfg.name,
        str(version.version),
        f"models:/{cfg.name}/{version.version}",
        run.run_id,
        scores,
        manifest,
        promotion,
    )


def _client(tracking: TrackingConfig | None) -> tuple[Any, str]:
    from cirl.lineage.tracking import open_store

    tracking = _tracking(tracking)
    return open_store(tracking.tracking_uri, tracking.tracking_timeout, tracking.experiment)


def _version(client: Any, name: str, version: str | int) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise CirlError(
            f"model {name!r} has no version {version} at {client.tracking_uri}; list the versions "
            f"with `mlflow models` / the MLflow UI, or register one with `cirl register`"
        ) from None


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


def _score(version: Any, uri: str) -> tuple[float, str, str]:
    tags = version.tags
    try:
        return float(tags["test.f1"]), tags["test.manifest_sha256"], tags.get("test.split", "test")
    except (KeyError, ValueError):
        raise CirlError(
            f"version {version.version} of {version.name!r} at {uri} has no test scores "
            "(tags test.f1, test.manifest_sha256); register it with `cirl register`, which "
            "records its evaluation"
        ) from None


def promote(
    cfg: PromoteConfig,
    version: str | int,
    tracking: TrackingConfig | None = None,
) -> Promotion:
    """Compare ``version`` with the champion and move ``champion`` or ``challenger`` to it.

    The version becomes champion when there is none, or when its test F1 >= the champion's
    test F1 - ``cfg.margin`` on the same test data; otherwise it becomes the challenger. The
    decision, the reason and both scores are set as version tags (``cirl.promotion_*``) and
    each alias move is recorded (:func:`alias_history`).

    Raises:
        CirlError: when the version or its scores are missing, or the champion was evaluated
            on other test data (another manifest hash or split): not comparable.
    """
    client, uri = _client(tracking)
    new = _version(client, cfg.name, version)
    f1, manifest, split = _score(new, uri)
    champion = _alias_version(client, cfg.name, CHAMPION)
    version = str(new.version)
    if champion is None:
        reason = "first champion: the model had no champion"
        champion_f1 = None
        decision = CHAMPION
    elif str(champion.version) == version:
        reason = "already the champion"
        champion_f1 = f1
        decision = CHAMPION
    else:
        champion_f1, champion_manifest, champion_split = _score(champion, uri)
        if (champion_manifest, champion_split) != (manifest, split):
            raise CirlError(
                f"cannot compare version {version} of {cfg.name!r} with champion version "
                f"{champion.version}: they were scored on different test data (manifest "
                f"{manifest[:12]} split {split} vs {champion_manifest[:12]} split "
                f"{champion_split}); evaluate both checkpoints on the same prepared folder and "
                "split, register the result, then promote"
            )
        threshold = champion_f1 - cfg.margin
        if f1 >= threshold:
            decision = CHAMPION
            reason = (
                f"F1 {f1:.4f} >= champion v{champion.version} F1 {champion_f1:.4f} - margin "
                f"{cfg.margin:g}"
            )
        else:
            decision = CHALLENGER
            reason = (
                f"F1 {f1:.4f} < champion v{champion.version} F1 {champion_f1:.4f} - margin "
                f"{cfg.margin:g}"
            )
    previous = str(champion.version) if champion is not None else None
    holder = _alias_version(client, cfg.name, decision)
    moved = holder is None or str(holder.version) != version
    result = Promotion(
        cfg.name, version, decision, moved, previous, f1, champion_f1, cfg.margin, reason
    )
    for key, value in {
        Tag.PROMOTION_DECISION: decision,
        Tag.PROMOTION_REASON: reason,
        Tag.PROMOTION_F1: repr(f1),
        Tag.PROMOTION_CHAMPION_VERSION: previous or "",
        Tag.PROMOTION_CHAMPION_F1: "" if champion_f1 is None else repr(champion_f1),
        Tag.PROMOTION_MARGIN: repr(cfg.margin),
        Tag.PROMOTION_AT: _now().isoformat(),
    }.items():
        client.set_model_version_tag(cfg.name, version, key, value)
    if moved:
        _move_alias(client, uri, result, decision, version, previous_holder(holder))
    if decision == CHAMPION:
        challenger = _alias_version(client, cfg.name, CHALLENGER)
        if challenger is not None and str(challenger.version) == version:
            _move_alias(client, uri, result, CHALLENGER, None, version)
    return result


def previous_holder(version: Any | None) -> str | None:
    """The version number of an alias holder (None when the alias was free)."""
    return None if version is None else str(version.version)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _move_alias(
    client: Any,
    uri: str,
    promotion: Promotion,
    alias: str,
    version: str | None,
    previous: str | None,
) -> None:
    """Point ``alias`` at ``version`` (None: remove it), recording the move first.

    The record is a run that stays RUNNING until the alias has moved, then FINISHED (FAILED if
    the move failed); :func:`alias_history` reads only FINISHED records.
    """
    from cirl.lineage.tracking import ensure_experiment, lineage_tags

    name = promotion.name
    experiment = ensure_experiment(client, uri, HISTORY_EXPERIMENT)
    reason = promotion.reason if version else f"version {previous} became {CHAMPION}"
    tags = {
        Tag.MODEL: name,
        Tag.ALIAS: alias,
        Tag.VERSION: version or "",
        Tag.PREVIOUS_VERSION: previous or "",
        Tag.MOVED_AT: _now().isoformat(),
        Tag.REASON: reason,
        Tag.F1: repr(promotion.f1),
        Tag.CHAMPION_F1: "" if promotion.champion_f1 is None else repr(promotion.champion_f1),
        Tag.MARGIN: repr(promotion.margin),
        **{f"lineage.{k}": v for k, v in lineage_tags().items() if k.startswith("cirl.")},
    }
    target = f"v{version}" if version else "(removed)"
    record = client.create_run(experiment, tags=tags, run_name=f"{name}@{alias} -> {target}")
    try:
        if version:
            client.set_registered_model_alias(name, alias, version)
        else:
            client.delete_registered_model_alias(name, alias)
    except Exception as exc:  # registry errors of any kind
        client.set_terminated(record.info.run_id, "FAILED")
        raise CirlError(
            f"could not move alias {alias!r} of {name!r} at {uri} "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"
        ) from None
    client.set_terminated(record.info.run_id, "FINISHED")


def alias_history(
    name: str = DEFAULT_MODEL_NAME,
    tracking: TrackingConfig | None = None,
    alias: str | None = None,
) -> list[AliasMove]:
    """Every recorded move of the aliases of model ``name`` (of ``alias`` only if given), oldest
    first. Moves made outside cirl (MLflow UI, API) are not in it."""
    try:
        _check_name(name)
    except ValueError as exc:
        raise CirlError(str(exc).replace("key 'name'", "the model name")) from None
    client, _ = _client(tracking)
    experiment = client.get_experiment_by_name(HISTORY_EXPERIMENT)
    if experiment is None:
        return []
    query = f"tags.`cirl.model` = '{name}' and attributes.status = 'FINISHED'"
    if alias:
        query += f" and tags.`cirl.alias` = '{alias}'"
    moves, token = [], None
    while True:
        page = client.search_runs(
            [experiment.experiment_id], query, max_results=1000, page_token=token
        )
        for run in page:
            tags = run.data.tags
            moves.append(
                AliasMove(
                    model=tags[Tag.MODEL],
                    alias=tags[Tag.ALIAS],
                    version=tags.get(Tag.VERSION) or None,
                    previous=tags.get(Tag.PREVIOUS_VERSION) or None,
                    moved_at=dt.datetime.fromisoformat(tags[Tag.MOVED_AT]),
                    reason=tags.get(Tag.REASON, ""),
                    f1=tag_float(tags.get(Tag.F1)),
                    champion_f1=tag_float(tags.get(Tag.CHAMPION_F1)),
                    run_id=run.info.run_id,
                )
            )
        token = page.token
        if not token:
            break
    return sorted(moves, key=lambda m: m.moved_at)


def _as_utc(when: dt.datetime | str) -> dt.datetime:
    if isinstance(when, str):
        try:
            when = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
        except ValueError:
            raise CirlError(
                f"time {when!r} is not ISO 8601; write it like 2026-01-31T14:00:00Z"
            ) from None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def champion_at(
    name: str,
    when: dt.datetime | str,
    tracking: TrackingConfig | None = None,
) -> str | None:
    """The version that held ``champion`` at ``when`` (naive times are UTC); None before the
    first recorded champion."""
    return holder_at(name, CHAMPION, when, tracking)


def holder_at(
    name: str,
    alias: str,
    when: dt.datetime | str,
    tracking: TrackingConfig | None = None,
) -> str | None:
    """The version that held ``alias`` at ``when`` (naive times are UTC), by the recorded
    moves; None before the first recorded move of that alias."""
    when = _as_utc(when)
    holder = None
    for move in alias_history(name, tracking, alias):
        if move.moved_at > when:
            break
        holder = move.version
    return holder


def version_uri_at(uri: str, when: str, tracking: TrackingConfig | None = None) -> str:
    """``models:/NAME@ALIAS`` as it resolved at ``when``: ``models:/NAME/VERSION``.

    Raises:
        CirlError: for a URI without an alias, or a time before the alias's first move.
    """
    name, alias, _ = parse_model_uri(uri.strip())
    if alias is None:
        raise CirlError(f"--at needs a models:/NAME@ALIAS URI, got {uri!r}")
    version = holder_at(name, alias, when, tracking)
    if version is None:
        history = alias_history(name, tracking, alias)
        first = f"; its first recorded move was at {history[0].moved_at}" if history else ""
        raise CirlError(f"no version of {name!r} held {alias!r} at {when}{first}")
    return f"models:/{name}/{version}"


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
    version, _ = resolve_version(
        client,
        store,
        uri,
        "resolve",
        unknown_fix="register one with `cirl register`, or set --tracking-uri / "
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
            _fetch_int8(client, version.run_id, fp32[0], store)
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
    return FetchedModel(uri, name, str(version.version), found[0], version.run_id)


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
