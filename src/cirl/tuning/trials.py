"""One trial: the recipe (:mod:`cirl.method.recipe`) run for a setting, phase I and the
selection shared through a cache, phase II pruned by its validation F1, and trials that are
the same computation as a finished one reused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from cirl.config import to_dict
from cirl.lineage import schema
from cirl.lineage.schema import Tag
from cirl.method import recipe
from cirl.tuning.space import NUMERIC, OPTIONS, PHASE1_KEYS, PHASE2_KEYS, SweepConfig
from cirl.tuning.study import _digest, _file_lock

log = logging.getLogger(__name__)


class _Runner:
    """Runs trials: shared phase I and selection (cached), phase II per trial."""

    def __init__(self, cfg, train_cfg, select_cfg, data: Path, out: Path, tcfg, parent_run):
        self.cfg, self.train_cfg, self.select_cfg = cfg, train_cfg, select_cfg
        self.data, self.out, self.tcfg, self.parent_run = data, out, tcfg, parent_run
        overrides = {}
        if cfg.epochs:
            overrides["epochs"] = cfg.epochs
        if cfg.steps_per_epoch:
            overrides["steps_per_epoch"] = cfg.steps_per_epoch
        self.base = dataclasses.replace(train_cfg, loss="cirl", **overrides)

    def phase1(self, point: dict) -> Path:
        cfg = dataclasses.replace(self.base, phase=1, **{k: point[k] for k in PHASE1_KEYS})
        key = _digest({"data": str(self.data.resolve()), "train": to_dict(cfg)})
        folder = self.out / "cache" / f"phase1-{key}"
        with _file_lock(self.out / "cache" / f"phase1-{key}.lock"):
            if not (folder / "done").is_file():
                resume = (folder / "last.pt").is_file()
                log.info("phase I %s (%s)", key, {k: point[k] for k in PHASE1_KEYS})
                recipe.phase1(cfg, self.data, folder, resume=resume, progress=False)
                (folder / "done").write_text(json.dumps(to_dict(cfg)) + "\n")
        return folder

    def select(self, point: dict, phase1: Path) -> Path | None:
        if point["selection"] == "online":
            return None
        # each rule reads one threshold: the other keeps its default, so trials that differ only
        # in the unused one share the selection
        variance = point["rule"] == "variance"
        cfg = dataclasses.replace(
            self.select_cfg,
            rule=point["rule"],
            gamma=point["gamma"] if variance else self.select_cfg.gamma,
            lam=self.select_cfg.lam if variance else point["lam"],
            max_tiles=0,  # an offline phase II trains on every tile's A, never on a sample
        )
        key = _digest({"phase1": phase1.name, "select": to_dict(cfg)})
        folder = self.out / "cache" / f"select-{key}"
        with _file_lock(self.out / "cache" / f"select-{key}.lock"):
            if not (folder / "summary.json").is_file():
                # its own process: inference with subnormals as zero (cirl.models.inference),
                # which this training process cannot switch on for its threads any more
                quick = dataclasses.replace(cfg, verify_data=False, overview=0)
                recipe.select(quick, self.data, phase1, folder, fresh_process=True)
        return folder

    def phase2(self, trial, point: dict) -> float:
        import optuna

        phase1 = self.phase1(point)
        ambiguity = self.select(point, phase1)
        if ambiguity is not None:
            summary = json.loads((ambiguity / "summary.json").read_text())
            for name in ("selected_fraction", "crack_share_of_a", "ring_false_positive_rate"):
                trial.set_user_attr(name, summary.get(name))
        cfg = dataclasses.replace(  # checked here: a point it refuses fails, reused or not
            self.base,
            phase=2,
            lam=point["lam"],
            **{k: point[k] for k in PHASE2_KEYS},
        )
        if ambiguity is not None and summary.get("selected_pixels") == 0:
            twin = _empty_a_twin(trial, point)
            if twin is not None:
                return _reuse(trial, twin, "empty_a")
        folder = self.out / "trials" / str(trial.number)
        trial.set_user_attr("folder", str(folder))
        from cirl.lineage import tracking

        with tracking.stage_run(
            schema.SWEEP_TRIAL,
            cfg,
            self.tcfg if self.parent_run else None,
            parent_run_id=self.parent_run,
            run_name=f"trial {trial.number}",
            tags={Tag.TRIAL: trial.number, Tag.POINT: json.dumps(point, default=str)},
        ) as run:

            def on_epoch(record: dict) -> None:
                run.on_epoch(record)
                if "val" in record:
                    trial.report(record["val"]["f1"], record["epoch"])
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"val F1 {record['val']['f1']:.4f} pruned")

            resume = (folder / "last.pt").is_file()
            result = recipe.phase2(
                cfg,
                self.data,
                phase1,
                ambiguity,
                folder,
                resume=resume,
                progress=False,
                on_epoch=on_epoch,
            )
            run.log_metrics({"val_f1": result.best_val_f1})
        return result.best_val_f1


def _empty_a_twin(trial, point: dict):
    """A completed trial whose phase II is this one's computation: the same phase I and an
    empty ambiguous set A from an offline selection.

    With A empty, phase II is BCE on every valid pixel and the CI term is an exact zero: beta,
    K, the CI reduction, the selection rule and its threshold change nothing, so the weights,
    and the val F1, are the same bit for bit (on DeepCrack, six such points of the sensitivity
    study scored 0.6394138535420226 each). None when there is no such trial yet.
    """
    import optuna

    for other in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        settings = other.user_attrs.get("settings") or {}
        if (
            other.number != trial.number
            and all(settings.get(k) == point[k] for k in PHASE1_KEYS)
            and settings.get("selection") == "offline"
            and other.user_attrs.get("selected_fraction") == 0
            and other.value is not None
        ):
            return other
    return None


def _reuse(trial, done, why: str) -> float:
    """Record ``done``'s result as ``trial``'s (its folder, val F1 per epoch and best)."""
    trial.set_user_attr("duplicate_of", done.number)
    trial.set_user_attr("duplicate_because", why)
    for name in ("folder", "selected_fraction", "crack_share_of_a", "ring_false_positive_rate"):
        if name in done.user_attrs:
            trial.set_user_attr(name, done.user_attrs[name])
    for step, value in sorted(done.intermediate_values.items()):
        trial.report(value, step)
    log.info("trial %d: the same run as trial %d (%s)", trial.number, done.number, why)
    return float(done.value)


def _point_of(trial, cfg: SweepConfig, points: list[dict] | None) -> dict:
    """The trial's settings: a grid point (sensitivity) or TPE's suggestions (search)."""
    if points is not None:
        index = trial.suggest_categorical("point", list(range(len(points))))
        return dict(points[index])
    point: dict[str, Any] = {}
    for key in NUMERIC:
        values = getattr(cfg, key)
        low, high = min(values), max(values)
        if low == high:
            point[key] = low
        elif key == "k":
            point[key] = trial.suggest_int(key, int(low), int(high), log=True)
        else:
            point[key] = trial.suggest_float(key, low, high, log=key == "beta")
    for key in OPTIONS:
        values = getattr(cfg, key)
        point[key] = values[0] if len(values) == 1 else trial.suggest_categorical(key, values)
    point["varied"] = trial.user_attrs.get("varied", "search")  # "default": the enqueued start
    return point
