"""Contract and smoke tiers of the KFP pipeline: the committed YAML, the three adapters, and
local runs through KFP's SubprocessRunner (success, a failing task, a rerun from the cache)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from cirl import config
from cirl.errors import CirlError
from cirl.orchestration.cli import COMMANDS, build_parser, main

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pipelines" / "training.yaml"


def _training_module():
    spec = importlib.util.spec_from_file_location("training", REPO / "pipelines" / "training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("profile", "name"), [(None, "training.yaml"), ("paper", "training-paper.yaml")]
)
def test_committed_pipeline_yaml_is_what_the_code_compiles(tmp_path, profile, name):
    """The YAML operators submit is the one the DSL produces: recompile and compare."""
    out = _training_module().compile_pipeline(tmp_path / name, profile=profile)
    committed = REPO / "pipelines" / name
    assert committed.is_file(), f"run `python pipelines/training.py --profile {profile}`"
    assert out.read_text() == committed.read_text(), (
        f"{committed} is stale: run `python pipelines/training.py"
        + (f" --profile {profile}`" if profile else "`")
    )


def test_the_shipped_pipeline_is_the_committed_one_and_found_outside_a_checkout(
    tmp_path, monkeypatch
):
    from cirl.orchestration import pipeline

    shipped = REPO / "src" / "cirl" / "packaged" / "training.yaml"
    assert shipped.read_text() == PACKAGE.read_text(), "run `python pipelines/training.py`"
    monkeypatch.chdir(tmp_path)  # no pipelines/ here
    found = pipeline.default_package()
    assert found.is_file() and found.read_text() == PACKAGE.read_text()
    monkeypatch.chdir(REPO)
    assert pipeline.default_package() == Path("pipelines") / "training.yaml"


def test_show_says_loudly_when_phase_two_had_no_ambiguous_pixel(tmp_path):
    from cirl.orchestration import pipeline

    out = tmp_path / "run"
    (out / "select").mkdir(parents=True)
    (out / "phase2").mkdir()
    record = {"status": "succeeded", "seconds": 1, "runner": "subprocess", "metrics": {},
              "run_dir": str(tmp_path)}  # fmt: skip
    (out / "pipeline_run.json").write_text(json.dumps(record))
    empty = {"rule": "variance", "threshold": 0.4, "selected_fraction": 0.0,
             "warnings": ["no pixel of the marginal ring has sigma^2 > gamma = 0.4"]}  # fmt: skip
    (out / "select" / "summary.json").write_text(json.dumps(empty))
    (out / "phase2" / "config.json").write_text(json.dumps({"train": {"selection": "offline"}}))
    text = pipeline.summary_text(out)
    assert "WARNING: the selection picked no pixel" in text and "not CIRL's" in text
    assert "sigma^2 > gamma = 0.4" in text
    online = {"train": {"selection": "online", "lam": 0.3}}
    (out / "phase2" / "config.json").write_text(json.dumps(online))
    text = pipeline.summary_text(out)
    assert "WARNING" not in text and "selected per batch in phase II" in text


def _subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices[name]


def test_cli_options_params_groups_and_components_agree():
    """One declaration: each stage's dataclass fields are its CLI options, its params.yaml
    group's keys are fields, and the pipeline's {group}_params defaults are the resolved group."""
    groups = yaml.safe_load((REPO / "params.yaml").read_text())
    spec = next(yaml.safe_load_all(PACKAGE.read_text()))
    pipeline_inputs = spec["root"]["inputDefinitions"]["parameters"]
    for command in COMMANDS:
        if command.group is None:
            continue
        cls = config.stage_config(command.group)
        fields = [f.name for f in dataclasses.fields(cls)]
        options = {
            a.dest for a in _subparser(command.name)._actions if a.dest in set(fields) | {"x"}
        }
        assert options == set(fields), command.name
        helps = config.field_help(cls)
        assert all(helps.get(f) for f in fields), (command.name, set(fields) - set(helps))
        assert set(groups.get(command.group, {})) <= set(fields), command.group
        key = f"{command.group}_params"
        if key in pipeline_inputs:
            default = pipeline_inputs[key]["defaultValue"]
            resolved = config.to_dict(config.resolve(cls, command.group, REPO / "params.yaml"))
            assert default == resolved, command.group
            assert set(default) == set(fields)


def test_paper_profile_has_the_paper_schedule():
    spec = next(yaml.safe_load_all((REPO / "pipelines" / "training-paper.yaml").read_text()))
    train = spec["root"]["inputDefinitions"]["parameters"]["train_params"]["defaultValue"]
    assert (train["model"], train["epochs"], train["lr"], train["weight_decay"]) == (
        "unet",
        1000,
        0.001,
        0.0005,
    )
    assert (train["lam"], train["beta"], train["k"], train["batch_size"]) == (0.3, 0.2, 20, 2)


def test_heavy_tasks_request_a_gpu_and_no_task_installs_packages():
    spec = next(yaml.safe_load_all(PACKAGE.read_text()))
    executors = spec["deploymentSpec"]["executors"]
    for name in ("exec-train-phase1", "exec-train-phase2", "exec-select-regions", "exec-evaluate"):
        resources = executors[name]["container"]["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert resources["accelerator"]["resourceCount"] == "1"
    assert "accelerator" not in executors["exec-prepare"]["container"].get("resources", {})
    for name, container in ((n, e["container"]) for n, e in executors.items()):
        assert "pip install" not in " ".join(container["command"]), name
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["train-phase1"]["retryPolicy"]["maxRetryCount"] == 2


def test_overrides_are_checked_before_anything_runs():
    from cirl.orchestration.pipeline import parse_overrides, stage_arguments

    assert parse_overrides(["train.lr=0.01", "select.gamma=0.3"]) == {
        "train": {"lr": 0.01},
        "select": {"gamma": 0.3},
    }
    with pytest.raises(CirlError, match=r"GROUP\.KEY=VALUE"):
        parse_overrides(["lr=0.01"])
    with pytest.raises(CirlError, match="unknown group 'trian'"):
        parse_overrides(["trian.lr=0.01"])
    with pytest.raises(CirlError, match="'lrate'"):
        stage_arguments(None, {"train": {"lrate": 1}})
    args = stage_arguments(REPO / "params.yaml", {"train": {"epochs": 3}})
    assert args["train_params"]["epochs"] == 3 and set(args) == {
        f"{g}_params"
        for g in ("prepare", "train", "select", "evaluate", "export", "tracking", "register")
    }


def test_missing_package_and_foreign_yaml_are_clear(tmp_path, capsys):
    code = main(
        ["pipeline", "run", "--source", str(tmp_path), "--package", str(tmp_path / "none.yaml")]
    )
    assert code == 2 and "pipeline package" in capsys.readouterr().err
    foreign = tmp_path / "foreign.yaml"
    foreign.write_text("a: 1\n")
    code = main(["pipeline", "run", "--source", str(tmp_path), "--package", str(foreign)])
    assert code == 2 and "not a compiled KFP pipeline" in capsys.readouterr().err


TINY = [
    "--set",
    "prepare.tile=128",
    "--set",
    "prepare.split=0.6,0.2,0.2",
    "--set",
    "train.width=8",
    "--set",
    "train.epochs=1",
    "--set",
    "train.steps_per_epoch=2",
    "--set",
    "train.crop=64",
    "--set",
    "train.k=4",
    "--set",
    "train.device=cpu",
    "--set",
    "select.device=cpu",
    "--set",
    "evaluate.device=cpu",
    "--set",
    "evaluate.overlays=1",
]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline") / "raw"
    assert main(["synth", "--out", str(root), "--n", "5", "--width", "256", "--height", "192"]) == 0
    return root


def _run(raw: Path, out: Path, *extra: str) -> int:
    """A tiny run; tracked into OUT's parent folder (pass ``--set tracking.track=false``)."""
    argv = ["pipeline", "run", "--package", str(PACKAGE), "--source", str(raw)]
    store = f"tracking.tracking_uri=sqlite:///{out.parent / 'mlflow.db'}"
    return main([*argv, "--out", str(out), *TINY, "--set", store, *extra])


@pytest.mark.smoke
def test_local_run_goes_through_the_dag_and_links_outputs(raw, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(raw, out, "--baseline") == 0
    summary = json.loads(capsys.readouterr().out)
    for name in ("prepared", "phase1", "select", "phase2", "eval", "export", "baseline-eval"):
        assert (out / name).is_symlink() and (out / name).exists(), name
    assert (out / "phase2" / "best.pt").is_file()
    assert (out / "model.onnx").is_file()
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert summary["metrics"]["eval"]["f1"] == metrics["f1"]
    assert "baseline-eval" in summary["metrics"]
    # the reports: real .html files under OUT whose links reach the stage folder's images,
    # and KFP's HTML artifacts self-contained (thumbnails)
    for page, folder in (("report.html", "eval"), ("select.html", "select")):
        assert (out / page).is_file() and not (out / page).is_symlink()
        text = (out / page).read_text()
        assert "<base href=" in text and "data:image" not in text
        base = text.split('<base href="', 1)[1].split('"', 1)[0]
        assert (out / base).resolve() == (out / folder).resolve()
    assert "Precision and recall" in (out / "report.html").read_text()
    kfp_page = Path(summary["run_dir"]) / "evaluate" / "report"
    assert "data:image/" in kfp_page.read_text() and kfp_page.stat().st_size < 1_000_000
    record = json.loads((out / "pipeline_run.json").read_text())
    assert record["arguments"]["train_params"]["width"] == 8
    assert record["arguments"]["code_version"].startswith("0.")
    # tracking: one parent run, one nested run per task, each tagged with the KFP run
    runs = _runs(tmp_path / "mlflow.db")
    parent = runs[summary["mlflow_run_id"]]
    assert parent.info.status == "FINISHED" and parent.data.tags["cirl.stage"] == "pipeline"
    children = [
        r for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    ]
    names = sorted(r.info.run_name for r in children)
    assert names == sorted(
        [
            "prepare",
            "train phase 1",
            "select",
            "train phase 2",
            "evaluate CIRL",
            "export",
            "register cirl-crack",
            "train baseline",
            "evaluate baseline",
        ]
    )
    kfp_run = parent.data.tags["cirl.kfp_run_id"]
    assert all(r.info.status == "FINISHED" for r in children)
    assert all(r.data.tags["cirl.kfp_run_id"] == kfp_run for r in children)
    phase2 = next(r for r in children if r.info.run_name == "train phase 2")
    assert phase2.data.params["phase"] == "2" and "ci" in phase2.data.metrics
    # registration: the first version becomes champion
    registration = json.loads((out / "registration" / "registration.json").read_text())
    assert registration["registered"] and registration["promotion"]["alias"] == "champion"
    import mlflow

    version = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_model_version(
        "cirl-crack", registration["version"]
    )
    assert version.tags["cirl.kfp_run_id"] == kfp_run  # the version names its KFP run
    assert summary["registration"]["model_uri"] == registration["model_uri"]
    _check_mlflow_columns(tmp_path / "mlflow.db", parent.info.run_id, children, version, out)


def _check_mlflow_columns(database, parent_id, children, version, out):
    """What the MLflow UI shows: the parent run's own columns (scores, key params, method,
    description, reports), the experiment's kind, the version linked to its training run,
    no experiment besides the default and cirl's."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{database}")
    parent = client.get_run(parent_id)
    by_name = {r.info.run_name: r for r in children}
    evaluation = json.loads((out / "eval" / "metrics.json").read_text())
    metrics = parent.data.metrics
    assert metrics["test_f1"] == pytest.approx(evaluation["f1"])
    assert metrics["test_ods"] == pytest.approx(evaluation["ods"]["f1"])
    for key in ("test_ap", "test_ois", "baseline_test_f1", "phase1_best_val_f1",
                "phase2_best_val_f1", "selected_fraction"):  # fmt: skip
        assert key in metrics, key
    params = parent.data.params
    # the default method (params.yaml): online selection, the CI term per supervised pixel
    assert params["train.loss"] == "cirl" and params["train.selection"] == "online"
    assert params["train.ci_reduction"] == "batch" and params["select.rule"] == "error"
    assert params["train.crop"] == "64" and params["select.lam"] == "0.3"
    tags = parent.data.tags
    assert tags["cirl.method"] == by_name["train phase 2"].data.tags["cirl.method"]
    assert "test: per-image F1" in tags["mlflow.note.content"]
    artifacts = {a.path for a in client.list_artifacts(parent_id, "reports")}
    assert artifacts == {"reports/report.html", "reports/select.html"}
    select = by_name["select"]
    assert "gamma" not in select.data.metrics and select.data.tags["cirl.selection_threshold"]
    assert "outputs/report.html" in {
        a.path for a in client.list_artifacts(select.info.run_id, "outputs")
    }
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.tags["mlflow.note.content"]
    assert sorted(e.name for e in client.search_experiments()) == ["Default", "cirl"]
    # the version's run is the training that made it; its files are the register run's
    assert version.run_id == by_name["train phase 2"].info.run_id
    assert version.tags["cirl.register_run_id"] == by_name["register cirl-crack"].info.run_id
    assert version.tags["cirl.method"] == tags["cirl.method"] and version.description


def _runs(database: Path) -> dict:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{database}")
    experiment = client.get_experiment_by_name("cirl")
    return {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}


@pytest.mark.smoke
def test_failing_task_stops_the_dag_and_a_fixed_rerun_reuses_the_cache(raw, tmp_path, capfd):
    out = tmp_path / "run"
    # lr 1e30 makes the loss non-finite in phase I: the stage's own error, mid-way
    code = _run(raw, out, "--cache", "--set", "train.lr=1e30")
    captured = capfd.readouterr()
    assert code == 2
    log = captured.out + captured.err
    assert "error: train phase 1: loss became" in log
    assert "pipeline failed" in captured.err
    assert (out / "prepared").exists() is False  # no links to a failed run
    run_dir = next((out / "kfp").glob("cirl-training-*"))
    assert (run_dir / "prepare" / "dataset" / "manifest.csv").is_file()
    assert not (run_dir / "select-regions").exists()  # nothing downstream ran
    assert not (run_dir / "export-onnx").exists()

    failed = json.loads((out / "pipeline_run.json").read_text())
    assert failed["status"] == "failed" and failed["parent_run_id"]
    runs = _runs(tmp_path / "mlflow.db")
    parent = runs[failed["parent_run_id"]]
    assert parent.info.status == "FAILED" and "loss became" in parent.data.tags["cirl.error"]
    stage = next(r for r in runs.values() if r.info.run_name == "train phase 1")
    assert stage.info.status == "FAILED" and "loss became" in stage.data.tags["cirl.error"]
    import mlflow

    registry = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert registry.search_registered_models() == []  # nothing registered

    assert _run(raw, out, "--cache") == 0
    summary = json.loads(capfd.readouterr().out)
    assert (out / "model.onnx").is_file()
    # the rerun continued the failed run's MLflow run, which now ends FINISHED
    assert summary["mlflow_run_id"] == failed["parent_run_id"]
    parent = _runs(tmp_path / "mlflow.db")[failed["parent_run_id"]]
    assert parent.info.status == "FINISHED" and "cirl.error" not in parent.data.tags
    assert parent.data.tags["cirl.reruns"] == "1"
    # prepare was not run again: its output is the failed run's, reused from the cache
    assert not (Path(summary["run_dir"]) / "prepare").exists()
    assert summary["reused"] == ["prepared"]
    # the reused dataset is the failed run's, linked where the user looks for it
    assert (out / "prepared").resolve() == (run_dir / "prepare" / "dataset").resolve()


def test_stale_temporaries_of_killed_runs_are_removed_live_ones_kept(tmp_path):
    import os

    from cirl.staging import clean_stale, staged_dir

    (tmp_path / ".dataset.partial-999999999-abc").mkdir()  # no such process: killed
    (tmp_path / ".model.onnx.partial-x").write_text("x")  # an old-style name, no pid
    live = tmp_path / f".dataset.partial-{os.getpid()}-def"  # a run writing right now
    live.mkdir()
    (tmp_path / "dataset").mkdir()
    removed = clean_stale(tmp_path)
    assert sorted(p.name for p in removed) == [
        ".dataset.partial-999999999-abc",
        ".model.onnx.partial-x",
    ]
    assert live.exists() and (tmp_path / "dataset").exists()
    (tmp_path / ".out.partial-999999999-zz").mkdir()
    with staged_dir(tmp_path / "out") as tmp:  # the next run of the stage cleans up
        (tmp / "f").write_text("1")
    assert not (tmp_path / ".out.partial-999999999-zz").exists()
    assert (tmp_path / "out" / "f").read_text() == "1"


def test_task_errors_become_the_stage_error_line(capsys):
    from cirl.orchestration.tasks import task_errors

    with pytest.raises(SystemExit) as exc, task_errors("evaluate"):
        raise CirlError("checkpoint x.pt not found; pass a .pt file")
    assert exc.value.code == 2
    assert (
        capsys.readouterr().err == "error: evaluate: checkpoint x.pt not found; pass a .pt file\n"
    )


def test_task_params_from_kfp_structs_accept_integral_doubles():
    from cirl.orchestration.tasks import stage_config

    cfg = stage_config("train", {"epochs": 3.0, "lr": 0.5}, phase=2)
    assert (cfg.epochs, cfg.phase, cfg.lr) == (3, 2, 0.5)
    with pytest.raises(CirlError, match=r"pipeline parameter train_params.*'epochs'"):
        stage_config("train", {"epochs": 2.5})


def test_open_run_in_a_cluster_pod_refuses_a_store_inside_the_pod(monkeypatch, tmp_path):
    """In a KFP pod (KFP_POD_NAME set by the backend) a SQLite store would die with the pod:
    the first task fails with the fix before any stage runs; tracking off opens nothing."""
    from cirl.orchestration import tasks

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("KFP_POD_NAME", "cirl-training-abc-open-run")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CirlError, match="MLFLOW_TRACKING_URI in the secret cirl-credentials"):
        tasks.open_run({"track": True}, kfp_run_id="abc")
    assert not (tmp_path / "mlflow.db").exists()
    assert tasks.open_run({"track": False}, kfp_run_id="abc") == ""


def test_registration_with_tracking_off_registers_nothing_and_says_so(tmp_path, capsys):
    from types import SimpleNamespace

    from cirl.orchestration import tasks

    def artifact(name):
        return SimpleNamespace(path=str(tmp_path / name), metadata={})

    registration = artifact("registration")
    summary = tasks.register(
        artifact("onnx"),
        artifact("evaluation"),
        artifact("checkpoint"),
        {"name": "cirl-crack", "promote": True},
        registration,
        tracking={"track": False},
    )
    written = json.loads((tmp_path / "registration" / "registration.json").read_text())
    assert summary == written and written["registered"] is False
    assert "tracking is off" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()
