"""The lineage's names in one place: stage names and the ``cirl.*`` tag keys.

Whatever writes a tag (tracking, the registry, the tasks) and whatever reads it back (the audit,
``cirl pipeline show``, the registry's promotion) names it through :class:`Tag`, so writer and
reader cannot drift apart; ``tests/test_layers.py`` checks that no module outside this one
spells a ``"cirl.*"`` tag key as a string. The stage names are the recipe's
(:mod:`cirl.method.recipe`), given here to the lineage's readers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cirl.method.recipe import (
    BASELINE,
    BCE_CHAIN,
    CIRL_CHAIN,
    EVALUATE,
    EXPORT,
    PHASE1,
    PHASE2,
    PREPARE,
    REGISTER,
    SELECT,
    training_stage,
)

SWEEP_TRIAL = "sweep-trial"
STAGES = (PREPARE, PHASE1, SELECT, PHASE2, BASELINE, EVALUATE, EXPORT, REGISTER, SWEEP_TRIAL)

__all__ = [
    "BASELINE",
    "BCE_CHAIN",
    "CIRL_CHAIN",
    "EVALUATE",
    "EXPORT",
    "PHASE1",
    "PHASE2",
    "PREPARE",
    "REGISTER",
    "SCORES",
    "SELECT",
    "STAGES",
    "SWEEP_TRIAL",
    "Tag",
    "VersionRecord",
    "VersionTestTags",
    "arithmetic_tags",
    "tag_float",
    "training_stage",
]


class Tag:
    """The ``cirl.*`` tag keys of MLflow runs and model versions."""

    # A stage run's (:mod:`cirl.lineage.tracking`; the pipeline's parent run carries the code's)
    STAGE = "cirl.stage"
    SOURCE = "cirl.source"
    CODE_VERSION = "cirl.code_version"
    VERSION = "cirl.version"
    GIT_COMMIT = "cirl.git_commit"
    GIT_DIRTY = "cirl.git_dirty"
    DVC_DATA_MD5 = "cirl.dvc_data_md5"
    MANIFEST_SHA256 = "cirl.manifest_sha256"
    CHECKPOINT_SHA256 = "cirl.checkpoint_sha256"
    KFP_RUN_ID = "cirl.kfp_run_id"
    KFP_RUN_NAME = "cirl.kfp_run_name"
    IMAGE_DIGEST = "cirl.image_digest"
    RUNNER = "cirl.runner"
    ERROR = "cirl.error"
    RERUNS = "cirl.reruns"
    PYTHON = "cirl.python"
    TORCH = "cirl.torch"
    ONNXRUNTIME = "cirl.onnxruntime"
    TRIAL = "cirl.trial"
    POINT = "cirl.point"
    BEST_CHECKPOINT_SHA256 = "cirl.best_checkpoint_sha256"  # a training's best.pt
    SELECTION_THRESHOLD = "cirl.selection_threshold"  # the gamma (or lambda) a selection used
    SELECTED_FRACTION = "cirl.selected_fraction"  # |A| / |M| of a selection

    # A training's arithmetic and CPU (:func:`arithmetic_tags`)
    PRECISION = "cirl.precision"
    CHANNELS_LAST = "cirl.channels_last"
    ARITHMETIC = "cirl.arithmetic"
    ARITHMETIC_MS_PER_STEP = "cirl.arithmetic_ms_per_step"
    CPU = "cirl.cpu"
    CPU_KIND = "cirl.cpu_kind"
    CPU_ID = "cirl.cpu_id"  # vendor, family, model, stepping (host.cpu)
    CPU_FEATURES = "cirl.cpu_features"
    CPU_THREADS = "cirl.cpu_threads"

    # A model version's (:mod:`cirl.lineage.registry`)
    MODEL_CONFIG = "cirl.model_config"
    REGISTER_RUN_ID = "cirl.register_run_id"  # the run holding the files (its run_id: training)
    METHOD = "cirl.method"  # what the training was (cirl.method.trained), also on runs
    METHOD_WARNING = "cirl.method_warning"
    DECISION_THRESHOLD = "cirl.decision_threshold"
    INT8_SHA256 = "cirl.int8_sha256"
    REGISTERED_MODEL = "cirl.registered_model"
    REGISTERED_VERSION = "cirl.registered_version"
    F1 = "cirl.f1"
    CHAMPION_F1 = "cirl.champion_f1"

    # A promotion decision's
    PROMOTION_DECISION = "cirl.promotion_decision"
    PROMOTION_REASON = "cirl.promotion_reason"
    PROMOTION_CHAMPION_VERSION = "cirl.promotion_champion_version"
    PROMOTION_CHAMPION_F1 = "cirl.promotion_champion_f1"
    PROMOTION_F1 = "cirl.promotion_f1"
    PROMOTION_MARGIN = "cirl.promotion_margin"
    PROMOTION_AT = "cirl.promotion_at"

    # An alias move's (the registry's alias-history runs; ``VERSION`` there is the version
    # the alias moved to)
    MODEL = "cirl.model"
    ALIAS = "cirl.alias"
    # the registered model's tag of one move: this prefix, the time (UTC) and the alias
    ALIAS_MOVE = "cirl.alias_move."
    PREVIOUS_VERSION = "cirl.previous_version"
    MOVED_AT = "cirl.moved_at"
    REASON = "cirl.reason"
    MARGIN = "cirl.margin"

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Every key, in the order above."""
        return tuple(v for k, v in vars(cls).items() if k.isupper() and isinstance(v, str))


def arithmetic_tags(provenance: Mapping[str, Any]) -> dict[str, str]:
    """A training's arithmetic and CPU as tags, from its provenance (``TrainResult.provenance``
    or the ``config.json`` it wrote)."""
    chosen = provenance.get("arithmetic") or {}
    here = provenance.get("machine") or {}
    tags = {
        Tag.PRECISION: provenance.get("precision"),
        Tag.CHANNELS_LAST: provenance.get("channels_last"),
        Tag.ARITHMETIC: chosen.get("why"),
        Tag.ARITHMETIC_MS_PER_STEP: json.dumps(chosen["ms_per_step"])
        if chosen.get("ms_per_step")
        else None,
        Tag.CPU: here.get("cpu"),
        Tag.CPU_KIND: here.get("kind"),
        Tag.CPU_ID: here.get("cpu_id"),
        Tag.CPU_FEATURES: " ".join(here.get("features", [])) or None,
        Tag.CPU_THREADS: here.get("threads"),
    }
    return {k: str(v) for k, v in tags.items() if v is not None}


def tag_float(text: str | None) -> float | None:
    """A tag's value as a number (tags are strings); None when empty or not a number."""
    try:
        return float(text) if text else None
    except ValueError:
        return None


# the scores an evaluation records, and the prefix of a model version's test tags
SCORES = ("f1", "precision", "recall", "iou", "ois", "ap")


class VersionTestTags:
    """A model version's tags about its test data (``test.<score>`` holds each score)."""

    PREFIX = "test."
    SPLIT = "test.split"
    MANIFEST_SHA256 = "test.manifest_sha256"
    DATA = "test.data"
    INFO = (SPLIT, MANIFEST_SHA256, DATA)

    @classmethod
    def score(cls, name: str) -> str:
        return f"{cls.PREFIX}{name}"


@dataclass(frozen=True)
class VersionRecord:
    """A registered model version's tags, typed: what :func:`cirl.lineage.registry.register`
    writes and the audit and the promotion read back (:meth:`from_tags`), so that the two
    sides name each tag once (here) and agree on its type."""

    checkpoint_sha256: str | None = None
    model_config: dict | None = None
    decision_threshold: float | None = None
    int8_sha256: str | None = None
    test_split: str = "test"
    test_manifest_sha256: str | None = None
    test_data: str | None = None
    scores: dict[str, float | None] = field(default_factory=dict)
    git_commit: str | None = None
    git_dirty: str | None = None
    cirl_version: str | None = None
    image_digest: str | None = None
    kfp_run_id: str | None = None
    dvc_data_md5: str | None = None
    python: str | None = None
    torch: str | None = None
    onnxruntime: str | None = None

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> VersionRecord:
        """The record of a version's tags (missing tags are None; scores as numbers)."""
        try:
            config = json.loads(tags[Tag.MODEL_CONFIG]) if tags.get(Tag.MODEL_CONFIG) else None
        except ValueError:  # not written by cirl register
            config = None
        scores = {
            k[len(VersionTestTags.PREFIX) :]: tag_float(v)
            for k, v in sorted(tags.items())
            if k.startswith(VersionTestTags.PREFIX) and k not in VersionTestTags.INFO
        }
        return cls(
            checkpoint_sha256=tags.get(Tag.CHECKPOINT_SHA256),
            model_config=config,
            decision_threshold=tag_float(tags.get(Tag.DECISION_THRESHOLD)),
            int8_sha256=tags.get(Tag.INT8_SHA256),
            test_split=tags.get(VersionTestTags.SPLIT, "test"),
            test_manifest_sha256=tags.get(VersionTestTags.MANIFEST_SHA256),
            test_data=tags.get(VersionTestTags.DATA),
            scores=scores,
            git_commit=tags.get(Tag.GIT_COMMIT),
            git_dirty=tags.get(Tag.GIT_DIRTY),
            cirl_version=tags.get(Tag.VERSION),
            image_digest=tags.get(Tag.IMAGE_DIGEST),
            kfp_run_id=tags.get(Tag.KFP_RUN_ID),
            dvc_data_md5=tags.get(Tag.DVC_DATA_MD5),
            python=tags.get(Tag.PYTHON),
            torch=tags.get(Tag.TORCH),
            onnxruntime=tags.get(Tag.ONNXRUNTIME),
        )

    @staticmethod
    def test_tags(split: str, manifest: str, data: str, scores: Mapping[str, float]) -> dict:
        """The test tags registration writes (scores as ``repr`` of the float)."""
        return {
            VersionTestTags.SPLIT: split,
            VersionTestTags.MANIFEST_SHA256: manifest,
            VersionTestTags.DATA: data,
            **{VersionTestTags.score(k): repr(v) for k, v in scores.items()},
        }
