"""The shared Optuna study: its storage (SQLite beside the sweep, or a PostgreSQL URL for workers
on several machines), the file locks that share phase I and selections between workers, and
the bookkeeping that reruns a dead worker's trial and reuses a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cirl.errors import CirlError
from cirl.tuning.space import NUMERIC, OPTIONS, SweepConfig, defaults_point, sensitivity_points


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


def default_params(cfg: SweepConfig, default: dict) -> dict | None:
    """The search space's parameters of the default point; None if it lies outside the space
    (a fixed value other than the default's, a value outside a range or not in a list)."""
    params: dict = {}
    for key in NUMERIC:
        values = getattr(cfg, key)
        low, high = min(values), max(values)
        if not low <= default[key] <= high:
            return None
        if low != high:
            params[key] = int(default[key]) if key == "k" else float(default[key])
    for key in OPTIONS:
        values = getattr(cfg, key)
        if default[key] not in values:
            return None
        if len(values) > 1:
            params[key] = default[key]
    return params


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
        start = default_params(cfg, default) if points is None else None
        if start is not None:
            # a search starts at the default (when it lies in the space), so that the best
            # setting is reported against the default measured under the same budget
            study.enqueue_trial(start, user_attrs={"varied": "default"})
    elif plain is not None and study.user_attrs.get("points") != plain:
        raise CirlError(
            f"study {cfg.study!r} was started with other sensitivity points (another params "
            "file?); use another --study name or the same parameters"
        )
    return url, study, points, default
