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
    "SELECT",
    "STAGES",
    "SWEEP_TRIAL",
    "Tag",
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

    # A training's arithmetic and CPU (:func:`arithmetic_tags`)
    PRECISION = "cirl.precision"
    CHANNELS_LAST = "cirl.channels_last"
    ARITHMETIC = "cirl.arithmetic"
    ARITHMETIC_MS_PER_STEP = "cirl.arithmetic_ms_per_step"
    CPU = "cirl.cpu"
    CPU_KIND = "cirl.cpu_kind"
    CPU_FEATURES = "cirl.cpu_features"
    CPU_THREADS = "cirl.cpu_threads"

    # A model version's (:mod:`cirl.lineage.registry`)
    MODEL_CONFIG = "cirl.model_config"
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
