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

Modules: :mod:`~cirl.tuning.space` (what is varied), :mod:`~cirl.tuning.study` (the shared
study), :mod:`~cirl.tuning.trials` (one trial), :mod:`~cirl.tuning.report` (the report);
this one runs a worker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path

from cirl.errors import CirlError
from cirl.tuning.report import report
from cirl.tuning.space import SweepConfig, SweepResult, _result
from cirl.tuning.study import _points_left, _same_point_done, open_study
from cirl.tuning.trials import _point_of, _reuse, _Runner

log = logging.getLogger(__name__)


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


# what this module held before it was split, for callers that import it from here
from cirl.tuning.report import report_study  # noqa: E402, F401
from cirl.tuning.space import (  # noqa: E402, F401
    NUMERIC,
    OPTIONS,
    PHASE1_KEYS,
    PHASE2_KEYS,
    SELECT_KEYS,
    defaults_point,
    sensitivity_points,
)
