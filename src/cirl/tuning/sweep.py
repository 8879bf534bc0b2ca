"""``cirl sweep``: Optuna studies over CIRL's lambda, gamma, K, beta and its method options.

Two modes (``params.yaml`` group ``sweep`` holds the values and ranges):

* ``sensitivity``: one parameter at a time over its listed values, the others at their
  defaults (the ``train`` and ``select`` groups), like the paper's Fig. 4. The default point is
  one trial; each other value of each parameter is another. A grid over those points
  (Optuna's ``GridSampler``), so parallel workers take different points and the study stops
  when every point is done.
* ``search``: TPE over all of them jointly: the numeric parameters between the smallest and
  largest listed value, the method options among their listed choices.

A trial trains phase I, selects, trains phase II and returns phase II's best per-image F1 at
0.5 on the **validation** split; each phase-II epoch reports its validation F1 so that the
median pruner stops trials that trail the others. Phase I depends only on the phase-I keys
(``lam`` and the std-head options) and the selection only on phase I and the selection keys,
so trials share them: each is computed once per distinct value, under a file lock, and
reused (``OUT/cache/``). A trial that raises is recorded as failed (its error in the trial's
``error`` attribute) and the study goes on; a point already completed is not run again (its
value is reused). Workers record a heartbeat: the trial of a worker that was killed becomes
stale after ``grace`` seconds and is queued again, so an interrupted sweep resumes where it
stopped when started again with the same ``--out`` (and ``--storage``).

Storage: ``sqlite:///OUT/study.db`` by default, for one worker. Workers on several machines
share a PostgreSQL (or MySQL) URL: Optuna's FAQ advises against SQLite for parallel workers.

When tracking is on, the sweep is an MLflow run and each trial a nested run under it.

Outputs under ``OUT``::

    study.db              the study (default storage)
    trials.csv            every trial: number, state, settings, value, seconds, error
    sensitivity.png/.csv  sensitivity mode: val F1 against each parameter, the default marked
    importance.png/.csv   parameter importances (search: fANOVA; sensitivity: the F1 range of
                          each parameter's points)
    best.md / best.csv    the best setting and the default with their val F1 and their test
                          F1, scored once, after the choice
    trials/<n>/           each trial's phase II (checkpoints, history)
    cache/                shared phase-I runs and selections
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cirl.config import to_dict
from cirl.errors import CirlError
from cirl.lineage import schema
from cirl.lineage.schema import Tag
from cirl.method import recipe

log = logging.getLogger(__name__)

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


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between the workers of one machine (``fcntl.flock`` on ``path``)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _storage(cfg: SweepConfig, out: Path):
    """The Optuna storage: RDB with heartbeats and the retry of dead trials."""
    import optuna

    url = (
        cfg.storage
        or os.environ.get("CIRL_SWEEP_STORAGE", "")
        or f"sqlite:///{(out / 'study.db').resolve()}"
    )
    # SQLite: wait for a busy database (workers of one machine) instead of failing at once
    engine = (
        {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    )
    last: Exception | None = None
    # Workers starting together on an empty database race to create Optuna's tables (one
    # fails with "already exists"); the tables are there when it tries again.
    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                kwargs: dict[str, Any] = {}
                if cfg.heartbeat:
                    kwargs = {
                        "heartbeat_interval": cfg.heartbeat,
                        "grace_period": cfg.grace,
                        "heartbeat_stale_trial_callback": (
                            optuna.storages.RetryHeartbeatStaleTrialCallback(
                                max_retry=cfg.max_retry
                            )
                        ),
                    }
                return url, optuna.storages.RDBStorage(url, engine_kwargs=engine, **kwargs)
        except Exception as exc:  # SQLAlchemy raises many types: name the URL and the fix
            last = exc
            time.sleep(1.0 + attempt)
    shown = url.split("@")[-1]
    raise CirlError(
        f"sweep storage {shown} could not be opened ({type(last).__name__}: "
        f"{str(last).splitlines()[0]}); check --storage (sqlite:///FILE for one worker, "
        "postgresql://USER:PASSWORD@HOST/DB for several) and that the server is reachable"
    ) from None


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
    point["varied"] = "search"
    return point


def _same_point_done(study, number: int, point: dict, grace: int):
    """A completed trial of the same settings (to reuse instead of running them again).

    A trial of the same settings still running in another worker is waited for; if it ends
    other than complete (failed, pruned, its worker dead) this trial runs the point itself.
    """
    import optuna

    state = optuna.trial.TrialState
    while True:
        running = False
        for other in study.get_trials(deepcopy=False):
            settings = other.user_attrs.get("settings")
            if other.number == number or not settings or not _same_settings(settings, point):
                continue
            if other.state == state.COMPLETE:
                return other
            running |= other.state == state.RUNNING
        if not running:
            return None
        time.sleep(min(5.0, max(1.0, grace / 10)))
        _fail_stale_trials(study)


def _fail_stale_trials(study) -> None:
    """Fail the RUNNING trials whose heartbeat stopped (dead workers); the retry callback
    queues each again. Heartbeats are "experimental" in Optuna since 2.8: its warning is not
    the user's concern."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _points_left(study, count: int) -> bool:
    """Whether a sensitivity study has a point no trial has taken, or a trial queued again.

    Trials of dead workers are failed first (heartbeats) and, by the retry callback, queued
    again. Without this check a finished grid would still start one more trial (Optuna's grid
    sampler only stops the study after a trial).
    """
    import optuna

    _fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    if any(t.state == optuna.trial.TrialState.WAITING for t in trials):
        return True
    taken = {t.params.get("point") for t in trials}
    return not taken >= set(range(count))


def _same_settings(a: dict, b: dict) -> bool:
    keys = NUMERIC + OPTIONS
    return all(a.get(k) == b.get(k) for k in keys)


def open_study(cfg: SweepConfig, train_cfg, select_cfg, out: Path):
    """Create, load or join the study; returns ``(url, study, points, default)``.

    ``points`` is None in search mode.

    Raises:
        CirlError: on an unreachable storage, or a study of the same name started with
            another mode or other sensitivity points.
    """
    import optuna

    url, storage = _storage(cfg, out)
    default = defaults_point(train_cfg, select_cfg)
    points = sensitivity_points(cfg, default) if cfg.mode == "sensitivity" else None
    if points is not None:
        # the same seed in every worker: it orders the grid, which the workers share by index
        sampler = optuna.samplers.GridSampler({"point": list(range(len(points)))}, seed=cfg.seed)
    else:
        # one worker (the default storage): the seed as given, a repeatable sequence; workers
        # sharing a storage: each its own stream (or all would draw the same next point), and
        # the running trials count as done at their mean (constant liar)
        shared = bool(cfg.storage or os.environ.get("CIRL_SWEEP_STORAGE"))
        seed = cfg.seed if not shared else cfg.seed * 1_000_003 + os.getpid()
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=shared)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
        if cfg.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        study_name=cfg.study,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction="maximize",
        load_if_exists=True,
    )
    plain = json.loads(json.dumps(points, default=str)) if points is not None else None
    recorded = study.user_attrs.get("mode")
    if recorded and recorded != cfg.mode:
        raise CirlError(
            f"study {cfg.study!r} in {url.split('@')[-1]} is a {recorded} sweep; use another "
            "--study name or the same --mode"
        )
    if not recorded:
        study.set_user_attr("mode", cfg.mode)
        study.set_user_attr("default", json.loads(json.dumps(default, default=str)))
        if plain is not None:
            study.set_user_attr("points", plain)
    elif plain is not None and study.user_attrs.get("points") != plain:
        raise CirlError(
            f"study {cfg.study!r} was started with other sensitivity points (another params "
            "file?); use another --study name or the same parameters"
        )
    return url, study, points, default


def _check_data(data: Path) -> None:
    from cirl.data.manifest import read_manifest

    if not any(r.split == "val" for r in read_manifest(data)):
        raise CirlError(f"{data}: no val split; a sweep chooses on the val split (cirl prepare)")


def run(
    cfg: SweepConfig,
    train_cfg,
    select_cfg,
    data: str | os.PathLike,
    out: str | os.PathLike,
    tracking_cfg=None,
) -> SweepResult:
    """Run (or resume, or join) the study and write the reports (see the module docstring).

    Args:
        cfg: the sweep's parameters.
        train_cfg: the ``train`` group: the recipe of every trial and the defaults.
        select_cfg: the ``select`` group: the selection's defaults.
        data: a prepared folder (``cirl prepare``) with train, val and test splits.
        out: the sweep folder (shared by the workers of one machine).
        tracking_cfg: MLflow tracking (None or ``track=False``: none).

    Raises:
        CirlError: on an unreachable storage, a study of another mode under the same name, or
            a prepared folder without a val split.
    """
    import optuna

    from cirl.lineage import tracking

    data, out = Path(data), Path(out)
    _check_data(data)
    out.mkdir(parents=True, exist_ok=True)
    url, study, points, default = open_study(cfg, train_cfg, select_cfg, out)

    with contextlib.ExitStack() as stack:
        parent = study.user_attrs.get("mlflow_run_id")
        if tracking_cfg is not None and tracking_cfg.track and not parent:
            run = stack.enter_context(
                tracking.stage_run("sweep", cfg, tracking_cfg, data=data, run_name="sweep")
            )
            parent = run.run_id
            study.set_user_attr("mlflow_run_id", parent)
        runner = _Runner(
            cfg, train_cfg, select_cfg, data, out, tracking_cfg, parent if tracking_cfg else None
        )

        def objective(trial) -> float:
            point = _point_of(trial, cfg, points)
            trial.set_user_attr("settings", json.loads(json.dumps(point, default=str)))
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
            done = _same_point_done(study, trial.number, point, cfg.grace)
            if done is not None:
                return _reuse(trial, done, "same_settings")
            t0 = time.perf_counter()
            try:
                return runner.phase2(trial, point)
            except optuna.TrialPruned:
                raise
            except Exception as exc:
                trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
                raise
            finally:
                trial.set_user_attr("seconds", time.perf_counter() - t0)

        n_trials = cfg.n_trials or (None if points is not None else 20)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if points is None or _points_left(study, len(points)):
            study.optimize(objective, n_trials=n_trials, catch=(Exception,))
        best = report(study, cfg, out, data, default)
    return _result(study, out, url, best)


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


def report_study(
    cfg: SweepConfig,
    train_cfg,
    select_cfg,
    data: str | os.PathLike,
    out: str | os.PathLike,
    trial_roots: tuple[Path, ...] = (),
) -> SweepResult:
    """Write the reports of a study whose trials ran elsewhere (the sweep pipeline's last task).

    Args:
        trial_roots: folders holding the workers' ``trials/<n>/`` (their outputs), searched
            for the checkpoint of a trial whose recorded folder is not on this machine.
    """
    data, out = Path(data), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    url, study, _, default = open_study(cfg, train_cfg, select_cfg, out)
    best = report(study, cfg, out, data, default, trial_roots)
    return _result(study, out, url, best)


def _settings_label(key: str, value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _test_f1(study, trial, data: Path, trial_roots: tuple[Path, ...] = ()) -> dict | None:
    """The test scores of a trial's phase II, scored once (kept in the study)."""
    stored = study.user_attrs.get(f"test_{trial.number}")
    if stored:
        return stored
    number = trial.user_attrs.get("duplicate_of", trial.number)
    candidates = [Path(trial.user_attrs.get("folder", ""))]
    candidates += [Path(root) / "trials" / str(number) for root in trial_roots]
    folder = next((c for c in candidates if recipe.scored_checkpoint(c).is_file()), None)
    if folder is None:
        log.warning("trial %d: no checkpoint found for its test score", trial.number)
        return None
    out = folder / "test"
    if not (out / "metrics.json").is_file():
        from cirl.method.evaluate import EvaluateConfig

        cfg = EvaluateConfig(split="test", overlays=0, verify_data=False)
        recipe.evaluate(cfg, data, folder, out, fresh_process=True)
    metrics = json.loads((out / "metrics.json").read_text())
    scores = {
        "f1": metrics["f1"],
        "ods": metrics["ods"]["f1"],
        "ois": metrics["ois"],
        "ap": metrics["ap"],
    }
    study.set_user_attr(f"test_{trial.number}", scores)
    return scores


def report(
    study,
    cfg: SweepConfig,
    out: Path,
    data: Path,
    default: dict,
    trial_roots: tuple[Path, ...] = (),
) -> dict | None:
    """Write trials.csv, the sensitivity/importance plots and tables, and best.md/best.csv."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    keys = list(NUMERIC + OPTIONS)
    rows = []
    for t in trials:
        settings = t.user_attrs.get("settings", {})
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "varied": settings.get("varied", ""),
                **{k: settings.get(k, "") for k in keys},
                "val_f1": "" if t.value is None else f"{t.value:.6f}",
                "selected_fraction": t.user_attrs.get("selected_fraction", ""),
                "crack_share_of_a": t.user_attrs.get("crack_share_of_a", ""),
                "seconds": f"{t.user_attrs.get('seconds', 0):.1f}",
                "duplicate_of": t.user_attrs.get("duplicate_of", ""),
                "error": t.user_attrs.get("error", ""),
            }
        )
    _write_csv(out / "trials.csv", rows)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return None
    _plots(study, cfg, out, complete, default)

    defaults = [t for t in complete if _same_settings(t.user_attrs.get("settings", {}), default)]
    # ties go to the default (no change without a measured gain), then to the earlier trial
    best = max(complete, key=lambda t: (t.value, t in defaults, -t.number))
    table = [("best", best)] + ([("default", defaults[0])] if defaults else [])
    lines = [
        f"# Sweep `{cfg.study}` ({cfg.mode}): the best setting against the defaults",
        "",
        "Chosen on the validation split (per-image F1 at 0.5); test scored once, after the choice.",
        "",
        "| | trial | " + " | ".join(keys) + " | val F1 | test F1 | test ODS | test AP |",
        "|---|---|" + "---|" * len(keys) + "---|---|---|---|",
    ]
    csv_rows = []
    for name, t in table:
        scores = _test_f1(study, t, data, trial_roots) if cfg.test else None
        settings = t.user_attrs.get("settings", {})
        test = scores or {}
        lines.append(
            f"| {name} | {t.number} | "
            + " | ".join(_settings_label(k, settings.get(k, "")) for k in keys)
            + f" | {t.value:.4f} | "
            + " | ".join(f"{test[m]:.4f}" if m in test else "-" for m in ("f1", "ods", "ap"))
            + " |"
        )
        csv_rows.append(
            {
                "row": name,
                "trial": t.number,
                **{k: settings.get(k, "") for k in keys},
                "val_f1": t.value,
                **{f"test_{m}": v for m, v in test.items()},
            }
        )
    (out / "best.md").write_text("\n".join(lines) + "\n")
    _write_csv(out / "best.csv", csv_rows)
    return csv_rows[0]


def _write_csv(path: Path, rows: list[dict]) -> None:
    from cirl.staging import staged_file

    if not rows:
        return
    with staged_file(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _plots(study, cfg: SweepConfig, out: Path, complete: list, default: dict) -> None:
    """sensitivity.png/.csv (sensitivity mode) and importance.png/.csv (both modes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    importances: dict[str, float] = {}
    if cfg.mode == "sensitivity":
        base = [t for t in complete if t.user_attrs["settings"]["varied"] == "default"]
        varied = sorted(
            {t.user_attrs["settings"]["varied"] for t in complete} - {"default"},
            key=(NUMERIC + OPTIONS).index,
        )
        rows = []
        for key in varied:
            points = [t for t in complete if t.user_attrs["settings"]["varied"] == key] + base
            for t in points:
                rows.append(
                    {"parameter": key, "value": t.user_attrs["settings"][key], "val_f1": t.value,
                     "default": t in base, "trial": t.number}
                )  # fmt: skip
            values = [t.value for t in points]
            importances[key] = max(values) - min(values)
        _write_csv(out / "sensitivity.csv", rows)
        if varied:
            cols = min(4, len(varied))
            nrows = math.ceil(len(varied) / cols)
            fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.8 * nrows), squeeze=False)
            for ax, key in zip(axes.flat, varied, strict=False):
                mine = [r for r in rows if r["parameter"] == key]
                pts = sorted(
                    ((r["value"], r["val_f1"], r["default"]) for r in mine),
                    key=lambda r: (isinstance(r[0], str), r[0]),
                )
                labels = [_settings_label(key, v) for v, _, _ in pts]
                ys = [y for _, y, _ in pts]
                if key in NUMERIC:
                    xs = [float(v) for v, _, _ in pts]
                    ax.plot(xs, ys, "o-", color="tab:blue")
                    dx = [float(v) for v, _, d in pts if d]
                    ax.plot(dx, [y for _, y, d in pts if d], "r*", ms=12, label="default")
                    if key in ("beta", "k"):
                        ax.set_xscale("log")
                else:
                    colours = ["tab:red" if d else "tab:blue" for _, _, d in pts]
                    ax.bar(labels, ys, color=colours)
                    lo = min(ys)
                    ax.set_ylim(max(0.0, lo - 0.05), max(ys) + 0.02)
                ax.set_title(key)
                ax.set_ylabel("val F1")
                ax.grid(alpha=0.3)
            for ax in list(axes.flat)[len(varied) :]:
                ax.axis("off")
            fig.suptitle(f"{cfg.study}: val F1 (per image, 0.5) per parameter; red = default")
            fig.tight_layout()
            fig.savefig(out / "sensitivity.png", dpi=110)
            plt.close(fig)
    else:
        import optuna

        varied_params = {k for t in complete for k in t.params}
        if len(complete) >= 2 and varied_params:
            try:
                importances = optuna.importance.get_param_importances(study)
            except (RuntimeError, ValueError) as exc:  # too few distinct trials
                log.warning("parameter importances not computed: %s", exc)
    if importances:
        ordered = sorted(importances.items(), key=lambda kv: -kv[1])
        _write_csv(out / "importance.csv", [{"parameter": k, "importance": v} for k, v in ordered])
        fig, ax = plt.subplots(figsize=(5, 0.4 * len(ordered) + 1.2))
        ax.barh([k for k, _ in ordered][::-1], [v for _, v in ordered][::-1], color="tab:blue")
        ax.set_xlabel(
            "F1 range over its values" if cfg.mode == "sensitivity" else "fANOVA importance"
        )
        ax.set_title(f"{cfg.study}: parameter importance")
        fig.tight_layout()
        fig.savefig(out / "importance.png", dpi=110)
        plt.close(fig)
