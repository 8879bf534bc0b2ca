"""The CIRL recipe: phase I -> select -> phase II -> evaluate, and which checkpoint each reads.

Every caller of the chain goes through here: the pipeline's tasks (each step in its own KFP
task), the sweep's trials (:mod:`cirl.tuning.sweep`), ``cirl audit --retrain``
(:mod:`cirl.audit.retrain`), and ``dvc.yaml``'s stages (checked against these names by
``tests/test_recipe.py``). So a sweep's best setting is what the pipeline trains, and an audit
retrains what the pipeline trained.

The checkpoints, measured (``docs/method.md``, "Which phase-I checkpoint"):

* selection reads phase I's **last** epoch (:data:`SELECT_FROM`), as the paper: the variance
  of the trained model, after its last learning-rate step;
* phase II starts from phase I's **best** validation epoch (:data:`PHASE2_FROM`), as every
  registered model was trained, so they keep retraining bit for bit;
* evaluation, export and registration take the final training's **best** epoch
  (:data:`SCORED`).

Each is an explicit parameter of :func:`run` and the step functions, for studies of the
alternative; the defaults are the recipe.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SELECT_FROM = "last.pt"
PHASE2_FROM = "best.pt"
SCORED = "best.pt"

# The stages, by the names their runs carry everywhere: MLflow run names, the pipeline's task
# errors, the audit's chain (:mod:`cirl.lineage.schema` gives them to the lineage's readers)
PREPARE = "prepare"
PHASE1 = "train phase 1"
SELECT = "select"
PHASE2 = "train phase 2"
BASELINE = "train baseline"
EVALUATE = "evaluate"
EXPORT = "export"
REGISTER = "register"
CIRL_CHAIN = (PREPARE, PHASE1, SELECT, PHASE2, EVALUATE, EXPORT, REGISTER)
BCE_CHAIN = (PREPARE, BASELINE, EVALUATE, EXPORT, REGISTER)


def training_stage(phase: int | str, loss: str) -> str:
    """The stage name of a training: ``train baseline`` (BCE) or ``train phase N``."""
    return BASELINE if loss == "bce" else f"train phase {phase}"


def selection_checkpoint(phase1: str | os.PathLike, name: str = SELECT_FROM) -> Path:
    """The phase-I checkpoint the selection reads."""
    return Path(phase1) / name


def phase2_init(phase1: str | os.PathLike, name: str = PHASE2_FROM) -> Path:
    """The phase-I checkpoint phase II starts from."""
    return Path(phase1) / name


def scored_checkpoint(folder: str | os.PathLike, name: str = SCORED) -> Path:
    """The checkpoint of a finished training that is evaluated, exported and registered."""
    return Path(folder) / name


def phase1(cfg: Any, data: str | os.PathLike, out: str | os.PathLike, **kwargs: Any) -> Any:
    """Train phase I (or the BCE baseline) into ``out``; ``kwargs`` go to ``train.run``."""
    from cirl.method import train

    return train.run(cfg, data, out, **kwargs)


def select(
    cfg: Any,
    data: str | os.PathLike,
    phase1_out: str | os.PathLike,
    out: str | os.PathLike,
    checkpoint: str = SELECT_FROM,
    fresh_process: bool = False,
    progress: bool = False,
) -> Any:
    """Select the ambiguous pixels with the phase-I model in ``phase1_out``.

    ``fresh_process`` runs it in a new Python process with subnormals as zero, as the pipeline's
    select task runs (a process that has trained cannot switch the mode on for PyTorch's
    threads any more, and without it a trained model's subnormal activations take x86 CPUs
    through a slow path: :func:`cirl.models.inference.subnormals_as_zero`). It then returns the
    selection's summary (a dict) instead of the result object.
    """
    weights = selection_checkpoint(phase1_out, checkpoint)
    if not fresh_process:
        from cirl.method import selection

        return selection.run(cfg, data, weights, out, progress=progress)
    return _fresh(_in_fresh_process, "select", cfg, str(data), str(weights), str(out))


def _fresh(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a new Python process (``spawn``); its errors come back as raised."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(fn, args)


def _in_fresh_process(stage: str, cfg: Any, data: str, weights: str, out: str) -> dict:
    """``select`` or ``evaluate`` as its pipeline task runs it: subnormals as zero from the
    start, before PyTorch creates its threads."""
    from cirl.method import evaluate, selection
    from cirl.models.inference import subnormals_as_zero

    with subnormals_as_zero():
        if stage == "select":
            return selection.run(cfg, data, weights, out, progress=False).summary()
        return evaluate.run(cfg, data, weights, out, progress=False)


def phase2(
    cfg: Any,
    data: str | os.PathLike,
    phase1_out: str | os.PathLike,
    ambiguity: str | os.PathLike | None,
    out: str | os.PathLike,
    init: str = PHASE2_FROM,
    **kwargs: Any,
) -> Any:
    """Train phase II into ``out`` from the phase-I checkpoint ``init``, BCE outside the
    ambiguous pixels of ``ambiguity`` (None: online selection) and the CI loss inside them."""
    from cirl.method import train

    return train.run(
        cfg, data, out, init=phase2_init(phase1_out, init), ambiguity=ambiguity, **kwargs
    )


def evaluate(
    cfg: Any,
    data: str | os.PathLike,
    final_out: str | os.PathLike,
    out: str | os.PathLike,
    checkpoint: str = SCORED,
    progress: bool = False,
    fresh_process: bool = False,
) -> dict:
    """Score the finished training in ``final_out`` (its ``checkpoint``); ``fresh_process``
    as for :func:`select` (the evaluate task's own process, subnormals as zero)."""
    weights = scored_checkpoint(final_out, checkpoint)
    if fresh_process:
        return _fresh(_in_fresh_process, "evaluate", cfg, str(data), str(weights), str(out))
    from cirl.method import evaluate as scoring

    return scoring.run(cfg, data, weights, out, progress=progress)


@dataclass
class ChainResult:
    """What :func:`run` did: each training's result, the selection, the scores, the seconds
    each stage took (``stages``: name, seconds)."""

    final: Any
    summary: dict
    phase1: Any = None
    selection: Any = None
    stages: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class ChainConfigs:
    """The configs of one chain: ``phase1``/``select`` None for the BCE baseline."""

    final: Any
    evaluate: Any
    phase1: Any = None
    select: Any = None


def run(
    configs: ChainConfigs,
    data: str | os.PathLike,
    workdir: str | os.PathLike,
    select_from: str = SELECT_FROM,
    phase2_from: str = PHASE2_FROM,
    scored: str = SCORED,
    progress: bool = False,
    on_stage: Callable[[str], None] | None = None,
) -> ChainResult:
    """Run the chain in ``workdir/{phase1,select,phase2,evaluation}``: phase I, select, phase II
    and evaluate, or the BCE baseline (``configs.phase1`` None) and evaluate.

    ``on_stage`` is called with each stage's name before it starts (``train phase 1``,
    ``select``, ``train phase 2`` or ``train baseline``, ``evaluate``).
    """
    workdir = Path(workdir)
    stages: list[dict] = []

    def timed(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if on_stage is not None:
            on_stage(name)
        started = time.perf_counter()
        out = fn(*args, **kwargs)
        stages.append({"stage": name, "seconds": time.perf_counter() - started})
        return out

    final_out = workdir / "phase2"
    p1 = chosen = None
    if configs.phase1 is None:
        final = timed(BASELINE, phase1, configs.final, data, final_out, progress=progress)
    else:
        p1 = timed(PHASE1, phase1, configs.phase1, data, workdir / "phase1", progress=progress)
        chosen = timed(
            SELECT,
            select,
            configs.select,
            data,
            p1.out,
            workdir / "select",
            select_from,
            progress=progress,
        )
        final = timed(
            PHASE2,
            phase2,
            configs.final,
            data,
            p1.out,
            workdir / "select",
            final_out,
            phase2_from,
            progress=progress,
        )
    summary = timed(
        EVALUATE,
        evaluate,
        configs.evaluate,
        data,
        final.out,
        workdir / "evaluation",
        scored,
        progress=progress,
    )
    return ChainResult(final, summary, p1, chosen, stages)
