"""``cirl audit --retrain``: the recorded training run again from its records, in a fresh
process, and compared with the registered model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from cirl.audit.checks import (
    _check_files,
    _compare_scores,
    _eval_config,
    _registered_weights,
    _scores,
    _tensors_differ,
    locate_data,
)
from cirl.audit.record import (
    _json_artifact,
    _run_config,
    _store,
    _stored_config,
    _tracking,
)
from cirl.audit.results import AuditConfig, Difference, RetrainResult
from cirl.errors import CirlError
from cirl.host import package_version
from cirl.lineage import schema
from cirl.lineage.tracking import TrackingConfig


def as_trained(cfg: Any, provenance: dict | None) -> Any:
    """A training config with the arithmetic its run resolved (``precision: auto`` and
    ``channels_last: auto`` were measured on the machine that trained: the retrain computes
    what that run computed instead of measuring again)."""
    provenance = provenance or {}
    if provenance.get("precision") not in ("fp32", "bf16"):
        return cfg  # a CUDA run (fp16 amp) or one recorded before the arithmetic was
    return dataclasses.replace(
        cfg,
        precision=provenance["precision"],
        channels_last=bool(provenance.get("channels_last", cfg.channels_last is True)),
    )


def cpu_kind_warning(provenance: dict | None, tolerance: float) -> str | None:
    """Why bit-identical weights are not expected when the recorded CPU is another kind."""
    import torch

    from cirl.host import cpu

    recorded = (provenance or {}).get("machine")
    here = {**cpu(), "threads": torch.get_num_threads()}
    tail = (
        f"so bit-identical weights are not expected: the retrain is judged by test F1 within "
        f"the retrain tolerance {tolerance:g} (every score within the exact tolerance applies "
        "only when the weights come out identical)"
    )
    if not recorded:
        return (
            f"the training run recorded no CPU (trained before cirl recorded it); this is "
            f"{here['cpu']} ({here['kind']}): if that is another kind of CPU, {tail}"
        )
    threads = recorded.get("threads")
    keys = ("cpu", "features") if threads is None else ("cpu", "features", "threads")
    if all(recorded.get(k) == here[k] for k in keys):
        return None
    what = [
        f"{m.get('cpu')} ({', '.join(filter(None, (m.get('cpu_id'), m.get('kind'))))}, "
        f"{m.get('threads')} threads)"
        for m in (recorded, here)
    ]
    return (
        f"trained on {what[0]}, retrained on {what[1]}: the kernels and the order of their "
        f"floating-point sums differ between CPU kinds and thread counts, {tail}"
    )


def _chain_run(record: dict, role: str, why: str) -> dict:
    runs = [r for r in record["chain"]["runs"] if r["role"] == role and r["status"] == "FINISHED"]
    if not runs:
        raise CirlError(
            f"cannot retrain {record['uri']}: no finished {role} run in its lineage ({why}); "
            + (record["chain"].get("note") or "")
            + ". Retraining needs a model registered by a tracked pipeline run "
            "(`cirl pipeline run` with tracking on, or stage commands with --track and "
            "--parent-run-id)"
        )
    return runs[-1]


def _name(path: str | None, default: str) -> str:
    return Path(path).name if path else default


def retrain(
    record: dict,
    cfg: AuditConfig,
    workdir: str | os.PathLike,
    data: str | os.PathLike | None = None,
    tracking: TrackingConfig | None = None,
    progress: bool = False,
) -> RetrainResult:
    """Train the registered model again from its records and compare (``cirl audit --retrain``).

    The registered training config is the one stored with the weights; the phase-I and select
    configs come from the chain's runs; the evaluation's from the registered evaluation. Only
    ``device`` is replaced (``cfg.device``). Checkpoint names follow the records (select reads
    the phase-I checkpoint its run names, phase II starts from the one its provenance names).
    Outputs go to ``workdir/{phase1,select,phase2,evaluation}`` (replaced).

    Compared: the retrained weights with the registered ones, tensor by tensor (the files
    differ anyway: they hold times and paths); test F1 within ``cfg.retrain_tolerance``, and
    every score within ``cfg.tolerance`` when the weights are bit-identical. A recorded git
    commit other than this checkout's is a warning (the code that runs is this checkout's).

    Raises:
        CirlError: when the records lack a stage's config (a version registered outside a
            pipeline run), the data cannot be found, or a stage fails.
    """
    from cirl.method import recipe

    t0 = time.perf_counter()
    tracking = _tracking(tracking)
    workdir = Path(workdir)
    final_cfg, runs = _final_config_and_runs(record)
    folder = locate_data(record, data, workdir, tracking)
    result = RetrainResult(workdir=str(workdir), data=str(folder), tolerance=cfg.retrain_tolerance)
    _code_warnings(record["code"], result)
    checked, found = _check_files(folder, record)
    if found:
        result.differences += found
        result.notes.append(f"{len(found)} of {checked} data files differ: not retrained")
        result.seconds = time.perf_counter() - t0
        return result
    result.notes.append(f"{checked} data files match the recorded manifest")
    for name in ("phase1", "select", "phase2", "evaluation"):
        if (workdir / name).is_dir():
            shutil.rmtree(workdir / name)
    provenance = record["model"].get("provenance") or {}
    warning = cpu_kind_warning(provenance, cfg.retrain_tolerance)
    if warning:
        result.warnings.append(warning)
    if provenance.get("precision") in ("fp32", "bf16"):
        layout = " + channels_last" if provenance.get("channels_last") else ""
        result.notes.append(
            f"trained in the recorded arithmetic: {provenance['precision']}{layout}"
        )
    configs, checkpoints = _chain_configs(
        record, cfg, final_cfg, runs, provenance, tracking, result
    )
    chain = recipe.run(configs, folder, workdir, **checkpoints, progress=progress)
    result.stages += chain.stages
    final, summary = chain.final, chain.summary
    if configs.phase1 is not None:
        result.notes.append(
            f"select read phase-I {checkpoints['select_from']}; phase II started from "
            f"phase-I {checkpoints['phase2_from']}"
        )
    recorded_final = _run_config(record, runs["final"], "train", tracking)
    if dataclasses.replace(recorded_final, device=final_cfg.device) != final_cfg:
        result.differences.append(
            Difference(
                "lineage",
                f"training config of the {runs['final']['role']} run {runs['final']['run_id']}",
                json.dumps(record["model"]["train_config"], sort_keys=True),
                json.dumps(dataclasses.asdict(recorded_final), sort_keys=True),
            )
        )
    epochs = final.history
    if epochs:
        result.notes.append(
            f"phase II / final training: {len(epochs)} epochs, "
            f"{sum(h['seconds'] for h in epochs) / len(epochs):.2f} s per epoch here"
        )
    checkpoint = recipe.scored_checkpoint(final.out, checkpoints["scored"])
    result.weights = _compare_weights(record, tracking, checkpoint, final_cfg.device, result)
    found_scores = _scores(summary)
    result.metrics, found = _compare_scores(
        record["metrics"], found_scores, cfg.retrain_tolerance, names=("f1",)
    )
    result.differences += found
    if result.weights_identical:
        _, exact = _compare_scores(record["metrics"], found_scores, cfg.tolerance)
        result.differences += exact
    result.seconds = time.perf_counter() - t0
    return result


def _final_config_and_runs(record: dict) -> tuple[Any, dict[str, dict]]:
    """The registered training config, and the chain's runs it needs (by role)."""
    from cirl.config import from_mapping
    from cirl.method.train_config import TrainConfig

    train_record = record["model"].get("train_config")
    if not train_record:
        raise CirlError(
            f"cannot retrain {record['uri']}: its register run has no configs/train_config.json "
            "(the training parameters); register models with `cirl register`"
        )
    final_cfg = from_mapping(TrainConfig, train_record, "registered training config")
    if final_cfg.loss == "bce":
        return final_cfg, {
            "final": _chain_run(record, schema.BASELINE, "the baseline's training run")
        }
    return final_cfg, {
        "phase1": _chain_run(record, schema.PHASE1, "phase-I parameters"),
        "select": _chain_run(record, schema.SELECT, "selection parameters"),
        "final": _chain_run(record, schema.PHASE2, "phase-II parameters"),
    }


def _code_warnings(code: dict, result: RetrainResult) -> None:
    """The recorded commit against this checkout's, and uncommitted changes on either side."""
    result.code = {
        "recorded": code.get("git_commit"),
        "recorded_dirty": code.get("git_dirty"),
        "here": code.get("git_commit_here"),
        "here_dirty": code.get("git_dirty_here"),
    }
    if code.get("git_commit") != code.get("git_commit_here"):
        result.warnings.append(
            f"the model was trained from commit {code.get('git_commit') or '(not recorded)'}, "
            f"this checkout is {code.get('git_commit_here') or '(unknown)'}: the code that "
            "retrains is this checkout's. For the recorded code: `git worktree add "
            f"../audit-{str(code.get('git_commit'))[:8]} {code.get('git_commit')}` and run the "
            "audit from there"
        )
    if "true" in (code.get("git_dirty"), code.get("git_dirty_here")):
        result.warnings.append(
            "uncommitted changes (git dirty) when the model was trained or here: the commit "
            "does not fully name the code"
        )


def _chain_configs(
    record: dict,
    cfg: AuditConfig,
    final_cfg: Any,
    runs: dict[str, dict],
    provenance: dict,
    tracking: TrackingConfig,
    result: RetrainResult,
) -> tuple[Any, dict[str, str]]:
    """The recorded chain's configs, in the recorded arithmetic on ``cfg.device``, and the
    checkpoints its records name (the recipe's where a record is older than the name)."""
    from cirl.method import recipe

    def device(c: Any) -> Any:
        if c.device != cfg.device:
            result.notes.append(f"{type(c).__name__}: device {c.device} (recorded) -> {cfg.device}")
        return dataclasses.replace(c, device=cfg.device)

    checkpoints = {
        "scored": _name(record["model"].get("checkpoint"), recipe.SCORED),
        "select_from": recipe.SELECT_FROM,
        "phase2_from": recipe.PHASE2_FROM,
    }
    if "phase1" not in runs:
        final_run_cfg = device(as_trained(final_cfg, provenance))
        configs = recipe.ChainConfigs(final=final_run_cfg, evaluate=_eval_config(record, cfg))
        return configs, checkpoints
    phase1_run, select_run = runs["phase1"], runs["select"]
    phase1_cfg = device(
        as_trained(
            _run_config(record, phase1_run, "train", tracking),
            # the training's own config.json: its config and provenance
            _stored_config(record, phase1_run, tracking, "outputs/config.json"),
        )
    )
    select_cfg = device(_run_config(record, select_run, "select", tracking))
    client, _ = _store(record["uri"], tracking)
    with tempfile.TemporaryDirectory() as tmp:
        summary = _json_artifact(client, select_run["run_id"], "outputs/summary.json", Path(tmp))
    checkpoints["select_from"] = _name((summary or {}).get("checkpoint"), recipe.SELECT_FROM)
    checkpoints["phase2_from"] = _name(provenance.get("init"), recipe.PHASE2_FROM)
    configs = recipe.ChainConfigs(
        final=device(as_trained(final_cfg, provenance)),
        evaluate=_eval_config(record, cfg),
        phase1=phase1_cfg,
        select=select_cfg,
    )
    return configs, checkpoints


def _compare_weights(
    record: dict, tracking: TrackingConfig, checkpoint: Path, device: str, result: RetrainResult
) -> dict:
    """The retrained weights against the registered ones, tensor by tensor."""
    import torch

    from cirl.models.checkpoint import load_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        weights = _registered_weights(record, tracking, Path(tmp))
        registered = load_checkpoint(weights)["model"] if weights is not None else None
    retrained = load_checkpoint(checkpoint)
    if registered is None:
        result.notes.append("no registered weights (checkpoint/model_state.pt): not compared")
        return {"identical": None}
    differ, largest = _tensors_differ(registered, retrained["model"])
    return {
        "identical": not differ,
        "tensors": len(registered),
        "differ": differ,
        "max_abs_diff": largest,
        "checkpoint": str(checkpoint),
        "epoch": int(retrained.get("epoch", -1)) + 1,
        "same_kind_of_run": {
            "torch": record["environment"].get("torch") == package_version("torch"),
            "device": device,
            "cpu_threads_here": torch.get_num_threads(),
        },
    }


def retrain_in_fresh_process(
    record: dict,
    cfg: AuditConfig,
    workdir: str | os.PathLike,
    data: str | os.PathLike | None = None,
    tracking: TrackingConfig | None = None,
    progress: bool = False,
) -> RetrainResult:
    """:func:`retrain` in a new Python process (``spawn``), as each pipeline task trains in one.

    A process that has verified the model carries state that training inherits: onnxruntime's
    and PyTorch's thread pools, the threads' floating-point modes (:mod:`cirl.fpenv`), allocator
    and random-number state. Bit-identical weights are promised for the same code, data, seed
    and machine from a fresh start, so that is where the retrain runs. Errors come back as
    they were raised (a :class:`CirlError` stays one).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(retrain, record, cfg, workdir, data, tracking, progress).result()
