"""What a sweep varies: :class:`SweepConfig` (the values of lambda, gamma, K, beta and the
method's options; the mode, budget and storage), the default point and the sensitivity
grid, and what a sweep returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

# Keys that belong to phase I (and so decide which phase-I run a trial shares).
PHASE1_KEYS = ("lam", "aseg_form", "phase1_loss", "std_init", "std_clamp")


# Keys of the selection (cirl select), on top of phase I.
SELECT_KEYS = ("rule", "gamma")


# Keys of phase II only.
PHASE2_KEYS = ("beta", "k", "ci_reduction", "selection")


NUMERIC = ("lam", "gamma", "k", "beta")


OPTIONS = ("rule", "aseg_form", "phase1_loss", "std_init", "std_clamp", "ci_reduction", "selection")


@dataclass(frozen=True)
class SweepConfig:
    """Parameters of a sweep (``params.yaml`` group ``sweep``).

    Attributes:
        mode: ``sensitivity`` (one parameter at a time) or ``search`` (TPE over all jointly).
        n_trials: trials this worker runs; 0 = sensitivity: until every point is done,
            search: 20.
        study: the study's name in the storage.
        storage: Optuna storage URL; empty = ``$CIRL_SWEEP_STORAGE``, else
            ``sqlite:///OUT/study.db`` (one worker). Use a ``postgresql://user:password@host/db``
            URL for workers on several machines (the environment variable keeps the password
            out of command lines and params files).
        epochs: epochs of each phase of a trial; 0 = the ``train`` group's.
        steps_per_epoch: optimizer steps per epoch of a trial; 0 = the ``train`` group's.
        lam, gamma, k, beta: the values of the sensitivity mode; the search mode draws
            between the smallest and the largest (``k`` as an integer, ``beta`` on a log
            scale).
        rule: selection rules to try (``variance``, ``error``).
        aseg_form, phase1_loss, std_init, std_clamp, ci_reduction, selection: the method
            options to try (each a ``train`` key; one value = fixed at it).
        seed: seed of the sampler (the trials' training seed is the ``train`` group's).
        pruner: ``median`` (stop a trial whose validation F1 trails the median of the others
            at the same epoch) or ``none``.
        heartbeat: seconds between a worker's heartbeats (0 = none: a killed worker's trial
            then stays RUNNING).
        grace: seconds without a heartbeat after which a running trial counts as dead and is
            queued again.
        max_retry: times a dead trial is queued again.
        test: score the best setting and the default on the test split once, at the end.
    """

    mode: Literal["sensitivity", "search"] = "sensitivity"
    n_trials: int = 0
    study: str = "cirl-sweep"
    storage: str = ""
    epochs: int = 0
    steps_per_epoch: int = 0
    lam: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
    gamma: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4, 0.6)
    k: tuple[int, ...] = (5, 10, 20, 40)
    beta: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.5)
    rule: tuple[str, ...] = ("variance", "error")
    aseg_form: tuple[str, ...] = ("eq7", "logistic")
    phase1_loss: tuple[str, ...] = ("bce+aseg",)
    std_init: tuple[str, ...] = ("default",)
    std_clamp: tuple[str, ...] = ("hard",)
    ci_reduction: tuple[str, ...] = ("image", "batch")
    selection: tuple[str, ...] = ("offline",)
    seed: int = 0
    pruner: Literal["median", "none"] = "median"
    heartbeat: int = 30
    grace: int = 90
    max_retry: int = 2
    test: bool = True

    def __post_init__(self) -> None:
        from cirl.method.selection import SelectConfig
        from cirl.method.train import TrainConfig

        for key in NUMERIC + OPTIONS:
            values = getattr(self, key)
            if not values:
                raise ValueError(f"key {key!r} needs at least one value")
            for value in values:  # each value must make a valid stage config
                try:
                    if key in ("rule", "gamma"):
                        SelectConfig(**{key: value})
                    else:
                        TrainConfig(**{key: value})
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"key {key!r}: value {value!r} is not valid: {exc}") from None
        checks = {
            "mode": self.mode in ("sensitivity", "search"),
            "n_trials": self.n_trials >= 0,
            "epochs": self.epochs >= 0,
            "steps_per_epoch": self.steps_per_epoch >= 0,
            "pruner": self.pruner in ("median", "none"),
            "heartbeat": self.heartbeat >= 0,
            "grace": self.grace > self.heartbeat,
            "max_retry": self.max_retry >= 0,
            "study": bool(self.study.strip()),
        }
        bad = [key for key, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"key {bad[0]!r} has an invalid value {getattr(self, bad[0])!r}")


@dataclass(frozen=True)
class SweepResult:
    """What a worker did and where the reports are."""

    out: Path
    storage: str
    trials: int
    complete: int
    failed: int
    pruned: int
    best: dict | None

    def counts(self) -> dict[str, int]:
        """Trials started, complete, failed and pruned (what the command and tasks report)."""
        return {
            "trials": self.trials,
            "complete": self.complete,
            "failed": self.failed,
            "pruned": self.pruned,
        }


def defaults_point(train_cfg, select_cfg) -> dict[str, Any]:
    """The settings of the default point: the ``train`` and ``select`` groups' values."""
    point = {key: getattr(train_cfg, key) for key in PHASE1_KEYS + PHASE2_KEYS}
    point.update({key: getattr(select_cfg, key) for key in SELECT_KEYS})
    return point


def sensitivity_points(cfg: SweepConfig, default: dict[str, Any]) -> list[dict[str, Any]]:
    """The default point, then each listed value of each parameter with the others at default.

    Values equal to the default are not repeated; each point carries ``varied`` (the
    parameter it varies, ``default`` for the first).
    """
    points = [{**default, "varied": "default"}]
    for key in NUMERIC + OPTIONS:
        for value in getattr(cfg, key):
            if value == default[key]:
                continue
            points.append({**default, key: value, "varied": key})
    return points


def _result(study, out: Path, url: str, best: dict | None) -> SweepResult:
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    return SweepResult(
        out,
        url.split("@")[-1],
        len(trials),
        states.count("COMPLETE"),
        states.count("FAIL"),
        states.count("PRUNED"),
        best,
    )
