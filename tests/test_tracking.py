"""MLflow tracking beside the stages, on a SQLite store in tmp_path (no server needed)."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from cirl.config import to_dict
from cirl.errors import CirlError
from cirl.lineage import tracking

pytestmark = pytest.mark.smoke


def _tiny_train(**changes):
    from cirl.method.train import TrainConfig

    base = dict(
        model="unet-small", width=8, epochs=2, steps_per_epoch=2, crop=64, k=4, device="cpu"
    )
    return TrainConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    from cirl.data import synth

    root = tmp_path_factory.mktemp("tracking")
    synth.run(synth.SynthConfig(n=6, width=256, height=192), root / "raw")
    return root / "raw"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A SQLite store in tmp_path; no tracking settings leak in from the environment."""
    for key in ("MLFLOW_TRACKING_URI", tracking.PARENT_RUN_ENV, "KFP_RUN_ID", "CIRL_IMAGE_DIGEST"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    return tracking.TrackingConfig(track=True, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def _client(cfg: tracking.TrackingConfig):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=cfg.tracking_uri)


def test_pipeline_run_nests_stage_runs_with_params_metrics_tags_dataset(
    raw, store, tmp_path, monkeypatch
):
    from cirl.data import prepare
    from cirl.method import train

    monkeypatch.setenv("CIRL_IMAGE_DIGEST", "sha256:" + "ab" * 32)
    monkeypatch.setenv("KFP_RUN_ID", "kfp-run-7")
    (tmp_path / "data.dvc").write_text(
        "outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n  size: 10\n  path: data\n"
    )
    prep_cfg = prepare.PrepareConfig(tile=128, split=(0.6, 0.2, 0.2), workers=1)
    train_cfg = _tiny_train()
    data = tmp_path / "prep"
    with tracking.pipeline_run(store, params={"epochs": 2}) as parent:
        assert os.environ[tracking.PARENT_RUN_ENV] == parent
        with tracking.stage_run("prepare", prep_cfg, store, out=data) as run:
            prepare.run(prep_cfg, raw, "folder", data, progress=False)
        prepare_id = run.run_id
        with tracking.stage_run("train", train_cfg, store, data=data, out=tmp_path / "p1") as run:
            train.run(train_cfg, data, tmp_path / "p1", progress=False, on_epoch=run.on_epoch)
        train_id = run.run_id
    assert tracking.PARENT_RUN_ENV not in os.environ

    client = _client(store)
    sha = tracking.manifest_sha256(data)
    parent_run = client.get_run(parent)
    assert parent_run.info.status == "FINISHED"
    assert parent_run.data.tags["cirl.stage"] == "pipeline"
    assert parent_run.data.params == {"epochs": "2"}
    for run_id, stage in ((prepare_id, "prepare"), (train_id, "train")):
        child = client.get_run(run_id)
        assert child.info.status == "FINISHED"
        tags = child.data.tags
        assert tags["mlflow.parentRunId"] == parent
        assert tags["cirl.stage"] == stage
        assert tags["cirl.manifest_sha256"] == sha
        assert tags["cirl.version"] and tags["cirl.python"] and tags["cirl.torch"]
        assert tags["cirl.onnxruntime"]
        assert tags["cirl.image_digest"] == "sha256:" + "ab" * 32
        assert tags["cirl.kfp_run_id"] == "kfp-run-7"
        assert tags["cirl.dvc_data_md5"] == "0123456789abcdef0123456789abcdef.dir"
        commit, dirty = tracking.git_state()  # None where the tests run without .git
        assert tags.get("cirl.git_commit") == commit and tags.get("cirl.git_dirty") == dirty
        assert tags.get("mlflow.source.git.commit") == commit
        artifacts = {a.path for a in client.list_artifacts(run_id)}
        assert "config.json" in artifacts and "outputs" in artifacts

    train_run = client.get_run(train_id)
    expected = {k: str(v) for k, v in to_dict(train_cfg).items()}
    assert train_run.data.params == expected
    for key in ("loss", "bce", "aseg", "seconds", "images_per_s", "val_f1", "val_precision"):
        history = client.get_metric_history(train_id, key)
        assert sorted(m.step for m in history) == [1, 2], key
    assert "val_recall" in train_run.data.metrics and "best_val_f1" in train_run.data.metrics
    stored = json.loads((tmp_path / "p1" / "history.json").read_text())
    loss = {m.step: m.value for m in client.get_metric_history(train_id, "loss")}
    assert loss == pytest.approx({h["epoch"]: h["loss"] for h in stored})
    outputs = {a.path for a in client.list_artifacts(train_id, "outputs")}
    assert outputs == {"outputs/history.json", "outputs/config.json"}

    (dataset_input,) = train_run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == sha[:36]  # MLflow caps digests at 36 characters
    assert json.loads(dataset_input.dataset.profile)["manifest_sha256"] == sha
    input_tags = {t.key: t.value for t in dataset_input.tags}
    assert input_tags == {"mlflow.data.context": "training", "cirl.manifest_sha256": sha}
    (prepared,) = client.get_run(prepare_id).inputs.dataset_inputs
    assert prepared.dataset.digest == sha[:36]
    outputs = {a.path for a in client.list_artifacts(prepare_id, "outputs")}
    assert outputs == {"outputs/dataset_card.json", "outputs/manifest.csv"}
    # artifacts of the local store live beside the database, per experiment
    assert (tmp_path / "mlartifacts" / "cirl" / train_id / "artifacts" / "config.json").is_file()


def test_failing_stage_marks_its_run_failed_with_the_error(store):
    with (
        pytest.raises(CirlError, match="loss became nan"),
        tracking.stage_run("train", _tiny_train(), store) as run,
    ):
        raise CirlError("loss became nan at epoch 1 step 1")
    failed = _client(store).get_run(run.run_id)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["cirl.error"] == "loss became nan at epoch 1 step 1"
    with (
        pytest.raises(KeyboardInterrupt),
        tracking.stage_run("evaluate", None, store) as run,
    ):
        raise KeyboardInterrupt
    assert _client(store).get_run(run.run_id).info.status == "KILLED"


def test_separate_process_nests_under_parent_from_environment(store, tmp_path):
    parent = tracking.start_pipeline_run(store, run_name="kfp")
    try:
        code = textwrap.dedent(
            f"""
            from cirl.lineage import tracking
            cfg = tracking.TrackingConfig(track=True, tracking_uri={store.tracking_uri!r})
            with tracking.stage_run("select", None, cfg) as run:
                run.log_metrics({{"selected_fraction": 0.25}})
            print(run.run_id)
            """
        )
        env = {**os.environ, tracking.PARENT_RUN_ENV: parent}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        child = done.stdout.strip().splitlines()[-1]
    finally:
        tracking.end_pipeline_run(parent, store)
    client = _client(store)
    run = client.get_run(child)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.metrics == {"selected_fraction": 0.25}
    assert client.get_run(parent).info.status == "FINISHED"


def test_unknown_parent_run_is_refused_before_the_stage(store):
    ran = False
    with (
        pytest.raises(CirlError, match=r"parent run 0123abc .*not found"),
        tracking.stage_run("train", None, store, parent_run_id="0123abc"),
    ):
        ran = True
    assert not ran


def test_tracking_off_records_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with tracking.stage_run("train", _tiny_train(), None) as run:
        run.on_epoch({"epoch": 1, "loss": 1.0})
        run.log_outputs("train", tmp_path)
    with tracking.stage_run("train", _tiny_train(), tracking.TrackingConfig()) as run:
        assert run.run_id is None
    with tracking.pipeline_run(tracking.TrackingConfig()) as parent:
        assert parent is None
    assert not (tmp_path / "mlflow.db").exists()


def test_evaluate_and_select_results_become_metrics(store, tmp_path):
    evaluation = tmp_path / "eval"
    (evaluation / "overlays").mkdir(parents=True)
    (evaluation / "overlays" / "best_0.png").write_bytes(b"png")
    metrics = {
        "f1": 0.5,
        "precision": 0.6,
        "recall": 0.4,
        "iou": 0.3,
        "ods": {"f1": 0.55, "threshold": 0.4, "precision": 0.5, "recall": 0.6},
        "ois": 0.57,
        "ap": 0.52,
        "split": "test",
        "protocol": "text",
    }
    (evaluation / "metrics.json").write_text(json.dumps(metrics))
    (evaluation / "per_image.csv").write_text("name,f1\n")
    selection = tmp_path / "sel"
    selection.mkdir()
    (selection / "summary.json").write_text(json.dumps({"gamma": 0.4, "selected_fraction": 0.1}))
    with tracking.stage_run("evaluate", None, store, out=evaluation) as run:
        pass
    with tracking.stage_run("select", None, store, out=selection) as run2:
        pass
    client = _client(store)
    assert client.get_run(run.run_id).data.metrics == {
        "test_f1": 0.5,
        "test_precision": 0.6,
        "test_recall": 0.4,
        "test_iou": 0.3,
        "test_ois": 0.57,
        "test_ap": 0.52,
        "test_ods": 0.55,
        "test_ods_threshold": 0.4,
    }
    paths = {a.path for a in client.list_artifacts(run.run_id, "outputs")}
    assert paths == {"outputs/metrics.json", "outputs/per_image.csv", "outputs/overlays",
                     "outputs/report.html"}  # fmt: skip
    # the threshold a selection used is a setting: a tag, not a metric to chart
    selected = client.get_run(run2.run_id).data
    assert selected.metrics == {"selected_fraction": 0.1}
    assert selected.tags["cirl.selection_threshold"] == "0.4"
    assert selected.tags["cirl.selected_fraction"] == "0.1"


def test_metrics_that_fail_to_send_are_sent_with_the_next_epoch(store, monkeypatch):
    with tracking.stage_run("train", None, store) as run:
        real = run.client.log_batch
        calls = {"n": 0}

        def flaky(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 1:
                raise ConnectionError("server blinked")
            return real(*args, **kwargs)

        monkeypatch.setattr(run.client, "log_batch", flaky)
        run.on_epoch({"epoch": 1, "loss": 2.0})
        run.on_epoch({"epoch": 2, "loss": 1.0})
    history = _client(store).get_metric_history(run.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 2.0), (2, 1.0)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_fast_before_the_stage(monkeypatch):
    monkeypatch.delenv(tracking.PARENT_RUN_ENV, raising=False)
    uri = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # through the environment, as in a pod
    ran = False
    t0 = time.perf_counter()
    with (
        pytest.raises(CirlError) as caught,
        tracking.stage_run("train", _tiny_train(), tracking.TrackingConfig(track=True)),
    ):
        ran = True
    assert time.perf_counter() - t0 < 3.0
    assert not ran
    message = str(caught.value)
    assert uri in message and "not reachable" in message and "--tracking-uri" in message


def test_blackholed_server_fails_within_the_timeout():
    # a listening socket that never answers: the probe's own timeout ends the wait
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        cfg = tracking.TrackingConfig(track=True, tracking_uri=uri, tracking_timeout=1.0)
        t0 = time.perf_counter()
        with pytest.raises(CirlError, match="not reachable"):
            tracking.connect(cfg)
        assert time.perf_counter() - t0 < 3.0


class _Answer(http.server.BaseHTTPRequestHandler):
    status = 404

    def do_GET(self):
        self.send_response(self.status)
        self.end_headers()
        self.wfile.write(b"nope")

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(
    ("status", "expected"),
    [(404, "is it an MLflow tracking server"), (401, "MLFLOW_TRACKING_TOKEN")],
)
def test_a_server_that_is_not_mlflow_or_refuses_is_named(status, expected):
    handler = type("Handler", (_Answer,), {"status": status})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(CirlError, match=expected) as caught:
            tracking.connect(tracking.TrackingConfig(track=True, tracking_uri=uri))
        assert uri in str(caught.value)
    finally:
        server.shutdown()
        server.server_close()


def test_missing_sqlite_folder_is_named(tmp_path):
    uri = f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}"
    with pytest.raises(CirlError, match="does not exist"):
        tracking.connect(tracking.TrackingConfig(track=True, tracking_uri=uri))


def test_lineage_tags_fall_back_to_the_image_environment(tmp_path, monkeypatch):
    from cirl.lineage import records

    monkeypatch.setattr(records, "REPO_ROOT", tmp_path)  # no .git: as in a container
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIRL_GIT_COMMIT", "f" * 40)
    monkeypatch.setenv("CIRL_GIT_DIRTY", "false")
    monkeypatch.delenv("KFP_RUN_ID", raising=False)
    tags = tracking.lineage_tags({"cirl.stage": "train"})
    assert tags["cirl.git_commit"] == "f" * 40 and tags["cirl.git_dirty"] == "false"
    assert "cirl.kfp_run_id" not in tags and "cirl.dvc_data_md5" not in tags
    assert tags["cirl.stage"] == "train"
    assert tracking.epoch_metrics({"epoch": 3, "loss": 1.0, "val": {"f1": 0.5}, "flag": True}) == {
        "loss": 1.0,
        "val_f1": 0.5,
    }


def test_default_store_is_sqlite_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(tracking.PARENT_RUN_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_tracking_uri() == "sqlite:///mlflow.db"
    connection = tracking.connect(tracking.TrackingConfig(track=True))
    assert connection.uri == "sqlite:///mlflow.db"
    assert Path("mlflow.db").is_file()
    experiment = connection.client.get_experiment(connection.experiment_id)
    assert experiment.artifact_location == (tmp_path / "mlartifacts" / "cirl").as_uri()


def test_stage_commands_record_runs_with_track_and_refuse_a_dead_server_first(
    raw, store, tmp_path, capsys
):
    """The CLI stages: `--track` records one run per command, nested under
    `--parent-run-id`, with the epoch metrics; an unreachable server stops the command before
    it writes anything."""
    from cirl.orchestration.cli import main

    parent = tracking.start_pipeline_run(store, run_name="by hand")
    uri = ["--track", "--tracking-uri", store.tracking_uri, "--parent-run-id", parent]
    prepared = tmp_path / "prepared"
    argv = ["prepare", "--source", str(raw), "--format", "folder", "--out", str(prepared)]
    assert main([*argv, "--tile", "128", "--split", "0.6,0.2,0.2", "-q", *uri]) == 0
    prepare_run = json.loads(capsys.readouterr().out)["mlflow_run_id"]
    train = ["train", "--data", str(prepared), "--model", "unet-small", "--width", "8"]
    train += ["--epochs", "2", "--steps-per-epoch", "2", "--crop", "64", "--k", "4"]
    assert main([*train, "--device", "cpu", "--out", str(tmp_path / "p1"), "-q", *uri]) == 0
    train_run = json.loads(capsys.readouterr().out)["mlflow_run_id"]

    client = _client(store)
    for run_id, stage in ((prepare_run, "prepare"), (train_run, "train")):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["cirl.stage"] == stage
        assert run.data.tags["mlflow.parentRunId"] == parent
    losses = client.get_metric_history(train_run, "loss")
    assert [m.step for m in losses] == [1, 2]
    assert client.get_run(train_run).info.run_name == "train phase 1"

    dead = f"http://127.0.0.1:{_free_port()}"
    out = tmp_path / "never"
    dead_store = ["--track", "--tracking-uri", dead]
    code = main([*train, "--device", "cpu", "--out", str(out), "-q", *dead_store])
    assert code == 2 and not out.exists()
    assert dead in capsys.readouterr().err
