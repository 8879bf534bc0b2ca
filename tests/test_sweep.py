"""Sweep tier: ``cirl sweep`` with a tiny budget on synthetic data (issue 10's checks).

A 4-point sensitivity sweep completes, shares phase I and selections between trials, writes its
plots and tables and scores the chosen setting on test once; a killed sweep resumes (the dead
worker's trial is re-run after its heartbeat goes stale); a trial that raises is recorded and
the study goes on; two worker processes share one study on a real PostgreSQL server.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services import ServiceError, postgres, postgres_bin

PARAMS = """\
train:
  epochs: 1
  steps_per_epoch: 2
  crop: 64
  batch_size: 2
  k: 5
  max_pixels: 512
  device: cpu
  crack_crops: 1.0
  seed: 0
select:
  gamma: 0.4
  device: cpu
tracking:
  track: false
"""
# 4 points: the default, gamma 0.1, beta 0.05, rule error (lambda, K and the options fixed)
POINTS = ["--lam", "0.3", "--gamma", "0.4,0.1", "--k", "5", "--beta", "0.2,0.05",
          "--rule", "variance,error", "--aseg-form", "eq7", "--ci-reduction", "image"]  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    from cirl.data.prepare import PrepareConfig
    from cirl.data.prepare import run as prepare
    from cirl.data.synth import SynthConfig
    from cirl.data.synth import run as synth

    root = tmp_path_factory.mktemp("sweep")
    synth(SynthConfig(n=6, width=256, height=192), root / "raw")
    prepare(PrepareConfig(tile=128, split=(0.5, 0.25, 0.25)), root / "raw", "folder", root / "prep")
    (root / "params.yaml").write_text(PARAMS)
    return root


def _sweep(root: Path, out: Path, *extra: str, wait: bool = True, params: str = "params.yaml"):
    command = [
        sys.executable, "-m", "cirl", "sweep", "--params", str(root / params),
        "--data", str(root / "prep"), "--out", str(out), "--epochs", "2", *POINTS, *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _trials(out: Path) -> list[dict]:
    with open(out / "trials.csv") as handle:
        return list(csv.DictReader(handle))


def test_sensitivity_sweep_completes_shares_phase1_and_writes_reports(workdir):
    out = workdir / "one"
    result = _sweep(workdir, out)
    assert result["trials"] == result["complete"] == 4
    rows = _trials(out)
    assert sorted(r["varied"] for r in rows) == ["beta", "default", "gamma", "rule"]
    assert all(r["state"] == "COMPLETE" and 0 <= float(r["val_f1"]) <= 1 for r in rows)
    # one phase I for all four (same lambda and std-head options), one selection per
    # (rule, gamma): variance 0.4, variance 0.1, error
    cache = out / "cache"
    assert len([p for p in cache.glob("phase1-*") if p.is_dir()]) == 1
    assert len([p for p in cache.glob("select-*") if p.is_dir()]) == 3
    # every phase II started where the pipeline's does (cirl.method.recipe): phase I's best.pt
    (phase1,) = [p for p in cache.glob("phase1-*") if p.is_dir()]
    from cirl.method import recipe

    for folder in (out / "trials").iterdir():
        record = json.loads((folder / "config.json").read_text())
        assert Path(record["init"]) == recipe.phase2_init(phase1), folder
    for name in ("sensitivity.png", "importance.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sensitivity = list(csv.DictReader((out / "sensitivity.csv").read_text().splitlines()))
    assert {r["parameter"] for r in sensitivity} == {"gamma", "beta", "rule"}
    best = (out / "best.md").read_text()
    assert "| best |" in best and "| default |" in best
    test_f1 = float(result["best"]["test_f1"])
    assert 0 <= test_f1 <= 1
    # every trial reported its val F1 per phase-II epoch (what the median pruner compares)
    import optuna

    study = optuna.load_study(study_name="cirl-sweep", storage=f"sqlite:///{out / 'study.db'}")
    for trial in study.trials:
        assert sorted(trial.intermediate_values) == [1, 2]
        assert trial.value == max(trial.intermediate_values.values())
    # scored once: a second report reuses the stored test scores and runs nothing new
    again = _sweep(workdir, out)
    assert again["trials"] == 4 and again["best"]["test_f1"] == result["best"]["test_f1"]


def test_points_with_an_empty_ambiguous_set_share_one_phase_ii(workdir):
    """gamma far above any variance selects no pixel: phase II is then BCE whatever beta and K
    are, so those points reuse the first one's run instead of training it again."""
    out = workdir / "empty"
    (workdir / "empty.yaml").write_text(PARAMS.replace("gamma: 0.4", "gamma: 1000.0"))
    extra = ["--gamma", "1000", "--beta", "0.2,0.05", "--k", "5,3", "--rule", "variance"]
    result = _sweep(workdir, out, *extra, "--no-test", params="empty.yaml")
    assert result["complete"] == 3
    import optuna

    study = optuna.load_study(study_name="cirl-sweep", storage=f"sqlite:///{out / 'study.db'}")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert all(t.user_attrs["selected_fraction"] == 0 for t in trials)
    first, *reused = trials
    assert "duplicate_of" not in first.user_attrs
    for t in reused:
        assert t.user_attrs["duplicate_of"] == first.number
        assert t.user_attrs["duplicate_because"] == "empty_a"
        assert t.value == first.value and t.intermediate_values == first.intermediate_values
    assert [p.name for p in (out / "trials").iterdir()] == [str(first.number)]


def test_a_failing_trial_is_recorded_and_the_study_goes_on(workdir):
    out = workdir / "fail"
    # K = 600 passes the sweep's checks but not the train group's max_pixels (512): that
    # trial's phase II config raises
    extra = ["--k", "5,600", "--beta", "0.2", "--gamma", "0.4", "--rule", "variance"]
    result = _sweep(workdir, out, *extra)
    rows = _trials(out)
    failed = [r for r in rows if r["state"] == "FAIL"]
    assert result["failed"] == 1 and len(failed) == 1
    assert failed[0]["k"] == "600" and "max_pixels" in failed[0]["error"]
    assert result["complete"] == 1 and result["best"]["k"] == 5


def test_killed_sweep_resumes_and_reruns_the_dead_trial(workdir):
    out = workdir / "resume"
    # no pruner: which trials finish first depends on the kill, and so would the pruning
    heartbeat = ["--heartbeat", "1", "--grace", "3", "--no-test", "--pruner", "none"]
    proc = _sweep(workdir, out, *heartbeat, wait=False)
    # kill the worker (no clean-up: SIGKILL) once the second trial has started its phase II
    deadline = time.monotonic() + 300
    while not (out / "trials" / "1").is_dir():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(4)  # past the grace period: the running trial is now stale
    result = _sweep(workdir, out, *heartbeat)
    rows = _trials(out)
    states = [r["state"] for r in rows]
    assert "RUNNING" not in states
    assert states.count("FAIL") == 1  # the killed trial, failed by its stale heartbeat...
    dead = next(r for r in rows if r["state"] == "FAIL")
    retried = [r for r in rows if r["state"] == "COMPLETE" and r["varied"] == dead["varied"]]
    assert retried, "...and run again"
    complete = {r["varied"] for r in rows if r["state"] == "COMPLETE"}
    assert complete == {"default", "gamma", "beta", "rule"}
    assert result["complete"] == 4


@pytest.fixture(scope="module")
def pg():
    if postgres_bin() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is missing; .ci/run installs Debian's postgresql")
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    try:
        with postgres() as server:
            yield server
    except ServiceError as exc:
        pytest.fail(str(exc))


def test_two_workers_share_one_postgresql_study(workdir, pg):
    out = workdir / "parallel"
    # no pruner: the workers' order of finishing (and so the median) varies from run to run
    storage = ["--storage", pg.url, "--study", "parallel", "--no-test", "--pruner", "none"]
    workers = [_sweep(workdir, out, *storage, wait=False) for _ in range(2)]
    for proc in workers:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr.decode()[-3000:]
    import optuna

    study = optuna.load_study(study_name="parallel", storage=pg.url)
    trials = study.get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    ran = [t for t in complete if "duplicate_of" not in t.user_attrs]
    # every point done, none trained twice (a point both workers drew is reused, not re-run),
    # and both workers trained some
    assert sorted(t.params["point"] for t in ran) == [0, 1, 2, 3]
    assert len(list((out / "trials").iterdir())) == 4
    for t in complete:
        if "duplicate_of" in t.user_attrs:
            assert t.value == study.trials[t.user_attrs["duplicate_of"]].value
    assert len({t.user_attrs["worker"] for t in ran}) == 2
    assert "postgresql" not in (out / "trials.csv").read_text()  # no credentials in reports


def test_search_mode_draws_jointly_and_ranks_importances(workdir):
    out = workdir / "search"
    result = _sweep(workdir, out, "--mode", "search", "--n-trials", "3", "--no-test")
    assert result["trials"] == 3
    rows = _trials(out)
    # the first trial is the default (it lies in the space), the others TPE's draws
    assert [r["varied"] for r in rows] == ["default", "search", "search"]
    assert (rows[0]["gamma"], rows[0]["beta"], rows[0]["rule"]) == ("0.4", "0.2", "variance")
    assert "| default | 0 |" in (out / "best.md").read_text()
    # beta drawn in [0.05, 0.2] on a log scale, gamma in [0.1, 0.4], the rule among both
    for r in rows:
        assert 0.05 <= float(r["beta"]) <= 0.2 and 0.1 <= float(r["gamma"]) <= 0.4
    importance = (out / "importance.csv").read_text().splitlines()
    assert importance[0] == "parameter,importance" and len(importance) > 1
    # a search study cannot be resumed as a sensitivity one
    command = [sys.executable, "-m", "cirl", "sweep", "--params", str(workdir / "params.yaml"),
               "--data", str(workdir / "prep"), "--out", str(out), *POINTS]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode != 0 and "search sweep" in done.stderr


def _sweep_pipeline():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "pipelines" / "sweep.py"
    spec = importlib.util.spec_from_file_location("sweep_pipeline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_sweep_pipeline_yaml_is_what_the_code_compiles(tmp_path):
    committed = Path(__file__).resolve().parents[1] / "pipelines" / "sweep.yaml"
    out = _sweep_pipeline().compile_pipeline(tmp_path / "sweep.yaml")
    assert out.read_text() == committed.read_text(), "stale: run `python pipelines/sweep.py`"
    text = committed.read_text()
    # the workers fan out in parallel, and no task installs packages at run time
    assert "parallelismLimit: 4" in text and "pip install" not in text


def test_sweep_pipeline_runs_here_workers_then_one_report(workdir, tmp_path):
    params = workdir / "pipeline-params.yaml"
    params.write_text(
        PARAMS
        + "sweep:\n  lam: [0.3]\n  gamma: [0.4, 0.1]\n  k: [5]\n  beta: [0.2]\n"
        + "  rule: [variance]\n  aseg_form: [eq7]\n  ci_reduction: [image]\n"
        + "prepare:\n  tile: 128\n  split: [0.5, 0.25, 0.25]\n"
    )
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    command = [sys.executable, str(Path(__file__).resolve().parents[1] / "pipelines" / "sweep.py"),
               "--params", str(params), "--run-local", "--source", str(workdir / "raw"),
               "--storage", storage, "--out", str(tmp_path / "root"), "--workers", "2"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    # the runner's own log lines share stdout: find ours
    lines = [line.strip() for line in done.stdout.splitlines()]
    marker = "sweep report folder: "
    report = Path(next(line for line in lines if line.startswith(marker))[len(marker) :])
    rows = _trials(report)
    # the local runner starts both workers at once: each point trained once; a point both drew
    # at the end of the grid is reused, not trained again
    ran = [r for r in rows if r["state"] == "COMPLETE" and not r["duplicate_of"]]
    assert sorted(r["varied"] for r in ran) == ["default", "gamma"]
    assert all(r["state"] == "COMPLETE" for r in rows)
    # the best setting was scored on test by the report task, from a worker's checkpoint
    best = list(csv.DictReader((report / "best.csv").read_text().splitlines()))
    assert 0 <= float(best[0]["test_f1"]) <= 1


def test_tracked_sweep_is_a_run_with_one_nested_run_per_trial(workdir, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = workdir / "tracked"
    extra = ["--gamma", "0.4", "--rule", "variance", "--no-test", "--track",
             "--tracking-uri", uri, "--experiment", "sweeps"]  # fmt: skip
    result = _sweep(workdir, out, *extra)
    assert result["complete"] == 2  # the default and beta 0.05
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("sweeps")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("cirl.stage") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("cirl.stage") == "sweep-trial"]
    assert len(children) == 2
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert "val_f1" in run.data.metrics and run.data.params["beta"] in ("0.2", "0.05")
