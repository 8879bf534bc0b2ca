"""What every run records about its code and data: the git commit and state, the raw data's
DVC hash, the manifest's SHA-256 and MLflow dataset, a stage's result files and scores as
metrics.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cirl import __version__
from cirl.errors import CirlError
from cirl.host import package_version
from cirl.lineage.schema import SCORES, Tag

log = logging.getLogger(__name__)


REPO_ROOT = Path(__file__).resolve().parents[3]


STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "prepare": ("dataset_card.json", "manifest.csv"),
    "train": ("history.json", "config.json"),
    "select": ("summary.json", "overview.png"),
    "evaluate": ("metrics.json", "per_image.csv", "pr_curve.png", "pr_curve.csv", "overlays"),
}
"""The files (or folders) of a stage's output folder logged as artifacts under ``outputs/``."""


_SCALARS: dict[str, tuple[str, ...]] = {
    # the threshold used is a tag (cirl.selection_threshold): a setting, not a result to chart
    "select": ("tiles", "marginal_pixels", "selected_pixels", "selected_fraction"),
}


EVALUATION_SCORES = SCORES


_RESULT_FILES = {"select": "summary.json", "evaluate": "metrics.json"}


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


def lineage_tags(extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The tags every run and model version carries (absent values are left out).

    ``cirl.git_commit`` (also as MLflow's ``mlflow.source.git.commit``), ``cirl.git_dirty``,
    ``cirl.version``, ``cirl.dvc_data_md5``, ``cirl.python``, ``cirl.torch``,
    ``cirl.onnxruntime``, ``cirl.image_digest`` (``$CIRL_IMAGE_DIGEST``) and
    ``cirl.kfp_run_id`` (``$KFP_RUN_ID``), then ``extra``.
    """
    commit, dirty = git_state()
    tags = {
        Tag.GIT_COMMIT: commit,
        "mlflow.source.git.commit": commit,
        Tag.GIT_DIRTY: dirty,
        Tag.VERSION: __version__,
        Tag.DVC_DATA_MD5: dvc_data_hash(),
        Tag.PYTHON: platform.python_version(),
        Tag.TORCH: package_version("torch"),
        Tag.ONNXRUNTIME: package_version("onnxruntime"),
        Tag.IMAGE_DIGEST: os.environ.get("CIRL_IMAGE_DIGEST"),
        Tag.KFP_RUN_ID: os.environ.get("KFP_RUN_ID"),
    }
    tags.update(extra or {})
    return {k: str(v) for k, v in tags.items() if v is not None and v != ""}


def manifest_sha256(data: str | os.PathLike) -> str:
    """SHA-256 of a prepared folder's ``manifest.csv``.

    Raises:
        CirlError: when the folder has no manifest.
    """
    from cirl.models.checkpoint import file_sha256

    path = Path(data) / "manifest.csv"
    if not path.is_file():
        raise CirlError(f"{path} not found; pass a folder written by `cirl prepare`")
    return file_sha256(path)


def dataset_entity(data: str | os.PathLike, name: str | None = None):
    """The prepared folder as an MLflow dataset: digest = manifest SHA-256 (first 36 digits).

    The profile holds the whole hash and the tile and photo counts of the dataset card.
    """
    data = Path(data)
    sha = manifest_sha256(data)
    profile: dict[str, Any] = {"manifest_sha256": sha}
    card = data / "dataset_card.json"
    if card.is_file():
        with contextlib.suppress(ValueError, OSError):
            loaded = json.loads(card.read_text())
            profile.update({k: loaded[k] for k in ("tiles", "photos", "format") if k in loaded})
    return mlflow_dataset(name or data.name or "prepared", sha, data.resolve().as_uri(), profile)


def mlflow_dataset(name: str, manifest: str, uri: str, profile: Mapping[str, Any]):
    """A prepared dataset as an MLflow dataset entity: its digest is the manifest's SHA-256
    (first 36 digits), its source the folder's URI, its profile JSON."""
    from mlflow.entities import Dataset

    return Dataset(
        name=name,
        digest=manifest[:36],
        source_type="local",
        source=json.dumps({"uri": uri}),
        profile=json.dumps(dict(profile)),
    )


def log_dataset_input(client: Any, run_id: str, entity: Any, context: str, manifest: str) -> None:
    """Record ``entity`` as a dataset input of the run, its role (``context``) and manifest
    SHA-256 as the input's tags."""
    from mlflow.entities import DatasetInput, InputTag

    tags = [InputTag("mlflow.data.context", context), InputTag(Tag.MANIFEST_SHA256, manifest)]
    client.log_inputs(run_id, datasets=[DatasetInput(entity, tags)])


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
