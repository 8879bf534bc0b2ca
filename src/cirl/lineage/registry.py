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
* MLflow keeps no history of alias moves, so every move is recorded as a tag of the registered
  model (``cirl.alias_move.<time>-<alias>``: alias, version, previous holder, time UTC, both
  scores, reason). :func:`alias_history` lists them; :func:`champion_at` answers "which version
  was champion at time X".
* :func:`fetch_model` resolves ``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``) to a local
  ``.onnx`` file, downloaded once per version into a cache folder (with the int8 copy beside
  it, so that ``--engine auto`` and ``onnx-int8`` can use it): what ``cirl predict --model
  models:/cirl-crack@champion`` runs.

Modules: this one registers; :mod:`cirl.lineage.promotion` moves aliases;
:mod:`cirl.lineage.fetch` resolves and fetches a model by name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cirl.errors import CirlError

# what this module held before it was split, for callers that import it from here
from cirl.lineage.fetch import (  # noqa: F401
    CACHE_ENV,
    DEFAULT_MODEL_NAME,
    INT8_ARTIFACTS,
    FetchedModel,
    _check_name,
    _client,
    _fetch_int8,
    _fp32_models,
    _tracking,
    cache_folder,
    fetch_model,
    parse_model_uri,
    resolve_version,
)
from cirl.lineage.promotion import (  # noqa: F401
    CHALLENGER,
    CHAMPION,
    HISTORY_EXPERIMENT,
    AliasMove,
    PromoteConfig,
    Promotion,
    alias_history,
    champion_at,
    holder_at,
    previous_holder,
    promote,
    version_uri_at,
)
from cirl.lineage.schema import Tag, VersionRecord
from cirl.lineage.tracking import TrackingConfig
from cirl.method.trained import trained_as


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
class RegisterResult:
    """The new version and where it came from."""

    name: str
    version: str
    model_uri: str
    run_id: str
    metrics: dict
    manifest_sha256: str
    promotion: Promotion | None = None


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
    from cirl.lineage import tracking as tracking_layer

    tracking = _tracking(tracking)
    model = Path(model)
    proto, meta = _onnx_metadata(model)
    metrics_path, metrics = _read_evaluation(evaluation)
    provenance = metrics["provenance"]
    _check_same_checkpoint(model, meta, metrics_path, provenance, checkpoint)
    split = str(metrics.get("split", "test"))
    manifest = str(provenance["manifest_sha256"])
    scores = tracking_layer.evaluation_scores(metrics)
    version_tags = _version_tags(meta, provenance, split, scores)
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

        from cirl.lineage.records import log_dataset_input, mlflow_dataset

        client = run.client
        entity = mlflow_dataset(
            Path(str(provenance.get("data") or "prepared")).name,
            manifest,
            str(provenance.get("data", "")),
            {"manifest_sha256": manifest, "split": split},
        )
        log_dataset_input(client, run.run_id, entity, "evaluation", manifest)
        run.log_metrics({f"{split}_{k}": v for k, v in scores.items()})
        training = _training_run(client, run, meta["checkpoint_sha256"])
        method = trained_as(provenance.get("train_config"), provenance.get("selection"))
        version_tags[Tag.REGISTER_RUN_ID] = run.run_id
        version_tags[Tag.METHOD] = method.label
        if method.warning:
            version_tags[Tag.METHOD_WARNING] = method.warning
        info = _log_onnx(cfg, run, proto, meta, training)
        version_tags.update(_log_files(run, model, meta, metrics_path, checkpoint))
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
        _describe(client, cfg.name, version.version, method, split, scores, training, run.run_id)
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


def _check_same_checkpoint(
    model: Path, meta: dict, metrics_path: Path, provenance: dict, checkpoint: Any
) -> None:
    """The evaluation, the model and the weights must come from one checkpoint."""
    from cirl.hashing import file_sha256

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


def _version_tags(meta: dict, provenance: dict, split: str, scores: dict) -> dict[str, str]:
    """The version's tags: lineage (code, data), the model's hashes and config, its decision
    threshold, the test split and its scores."""
    from cirl.lineage import tracking as tracking_layer

    tags = {k: v for k, v in tracking_layer.lineage_tags().items() if not k.startswith("mlflow.")}
    tags.update(
        {
            Tag.CHECKPOINT_SHA256: meta["checkpoint_sha256"],
            Tag.MODEL_CONFIG: meta.get("model_config", ""),
            # the threshold predict decides at (calibrated on the validation split), if any
            **(
                {Tag.DECISION_THRESHOLD: meta["decision_threshold"]}
                if meta.get("decision_threshold")
                else {}
            ),
            **VersionRecord.test_tags(
                split, str(provenance["manifest_sha256"]), str(provenance.get("data", "")), scores
            ),
        }
    )
    return tags


def _training_run(client: Any, run: Any, checkpoint_sha256: str) -> str | None:
    """The training run whose best checkpoint the model was exported from (its tag
    ``cirl.best_checkpoint_sha256``): the one of this pipeline run (same parent) when there
    are several, else the earliest; None when no tracked training made it."""
    query = (
        f"tags.`{Tag.BEST_CHECKPOINT_SHA256}` = '{checkpoint_sha256}' "
        "and attributes.status = 'FINISHED'"
    )
    try:
        found = client.search_runs([run.experiment_id], query, max_results=50)
    except Exception:  # a store that cannot search tags: no link, the register run stays
        return None
    if not found:
        return None
    parent = client.get_run(run.run_id).data.tags.get("mlflow.parentRunId")
    same = [r for r in found if parent and r.data.tags.get("mlflow.parentRunId") == parent]
    chosen = same or sorted(found, key=lambda r: r.info.start_time)
    return chosen[0].info.run_id


def _describe(
    client: Any,
    name: str,
    version: Any,
    method: Any,
    split: str,
    scores: dict,
    training: str | None,
    register_run: str,
) -> None:
    """The version's description in the registry: what it is, how good, where it came from."""
    text = (
        f"{method.label}. On the {split} split: per-image F1 {scores.get('f1', float('nan')):.4f}"
        f", ODS {scores.get('ods', float('nan')):.4f}, AP {scores.get('ap', float('nan')):.4f}. "
        + (f"Trained by run {training}; " if training else "")
        + f"files (ONNX, weights, configs) in run {register_run}."
    )
    if method.warning:
        text = f"WARNING: {method.warning}\n\n{text}"
    client.update_model_version(name, str(version), description=text)


def _log_onnx(
    cfg: RegisterConfig, run: Any, proto: Any, meta: dict, training: str | None = None
) -> Any:
    """The ONNX model logged as the run's MLflow model, with its signature and an example.

    Its source run (and so the registered version's ``run_id``) is the training that made the
    weights when known, else the register run itself; the files are the register run's."""
    import mlflow
    import numpy as np

    from cirl.lineage import tracking as tracking_layer

    stride = int(meta["stride"])
    side = cfg.example_size or 2 * stride
    side = max(stride, side // stride * stride)
    example = np.random.default_rng(0).random((1, 3, side, side), dtype=np.float32)
    try:
        # created here so that it belongs to the run's experiment (MLflow would put it in
        # the process's active experiment, which need not be the run's)
        logged = run.client.create_logged_model(
            run.experiment_id,
            name="model",
            source_run_id=training or run.run_id,
            model_type="onnx",
        )
        with tracking_layer.mlflow_uri(run.tracking.uri):
            return mlflow.onnx.log_model(
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


def _log_files(
    run: Any, model: Path, meta: dict, metrics_path: Path, checkpoint: Any
) -> dict[str, str]:
    """The int8 copy, the weights and the configs as the run's artifacts; the int8 copy's
    hash as a version tag."""
    from cirl.hashing import file_sha256
    from cirl.models.files import int8_path

    tags = {}
    quantized = int8_path(model)
    if quantized.is_file():  # the gated int8 copy: fetched beside the model for predict
        run.log_artifact(quantized, INT8_ARTIFACTS)
        tags[Tag.INT8_SHA256] = file_sha256(quantized)
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
    return tags
