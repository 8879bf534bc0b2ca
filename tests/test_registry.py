"""Model registry: register, promote, alias history, predict through ``models:/``.

Most tests use a SQLite store in tmp_path. The last group runs against a real ``mlflow server``
process (SQLite backend, artifacts proxied to a SeaweedFS S3 bucket), started on 127.0.0.1 on a
free port and stopped by the module, with the faults a deployment meets: a server that is
down, wrong S3 credentials, a bucket that does not exist.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from cirl.errors import CirlError
from cirl.lineage import registry, tracking

pytestmark = pytest.mark.smoke


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny trained, evaluated and exported model, and a second prepared folder."""
    from cirl.data import prepare, synth
    from cirl.deploy import export
    from cirl.method import evaluate, train

    root = tmp_path_factory.mktemp("registry")
    synth.run(synth.SynthConfig(n=6, width=256, height=192), root / "raw")
    prepared = {}
    for name, seed in (("prep", 0), ("other", 1)):
        cfg = prepare.PrepareConfig(tile=128, split=(0.6, 0.2, 0.2), seed=seed, workers=1)
        prepare.run(cfg, root / "raw", "folder", root / name, progress=False)
        prepared[name] = root / name
    cfg = train.TrainConfig(
        model="unet-small", width=8, epochs=1, steps_per_epoch=3, crop=64, loss="bce", device="cpu"
    )
    result = train.run(cfg, prepared["prep"], root / "run", progress=False)
    ev = evaluate.EvaluateConfig(device="cpu", overlays=0, thresholds=9)
    evaluate.run(ev, prepared["prep"], result.best, root / "eval", progress=False)
    evaluate.run(ev, prepared["other"], result.best, root / "eval_other", progress=False)
    onnx_path = root / "model.onnx"
    export.run(
        export.ExportConfig(export_size=64, check_height=64, check_width=96), result.best, onnx_path
    )
    photos = root / "photos"
    photos.mkdir()
    shutil.copy(sorted((root / "raw" / "images").iterdir())[0], photos)
    return {
        "root": root,
        "onnx": onnx_path,
        "checkpoint": result.best,
        "eval": root / "eval",
        "eval_other": root / "eval_other",
        "photos": photos,
    }


@pytest.fixture
def store(tmp_path, monkeypatch):
    for key in ("MLFLOW_TRACKING_URI", tracking.PARENT_RUN_ENV):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))
    return tracking.TrackingConfig(track=True, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def scored(evaluation: Path, f1: float, folder: Path) -> Path:
    """A copy of an evaluation whose F1 is ``f1`` (to drive promotion decisions)."""
    folder.mkdir(parents=True, exist_ok=True)
    metrics = json.loads((evaluation / "metrics.json").read_text())
    metrics["f1"] = f1
    path = folder / f"metrics_{f1}.json"
    path.write_text(json.dumps(metrics))
    return path


def _client(cfg):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=cfg.tracking_uri)


def test_register_promote_and_alias_history(model, store, tmp_path):
    name = "crack-test"
    times = [dt.datetime.now(dt.UTC)]
    first = registry.register(
        registry.RegisterConfig(name=name, promote=True),
        model["onnx"],
        scored(model["eval"], 0.50, tmp_path),
        model["checkpoint"],
        store,
    )
    times.append(dt.datetime.now(dt.UTC))
    assert first.version == "1" and first.promotion.alias == "champion"
    assert first.promotion.previous_champion is None
    client = _client(store)
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"

    version = client.get_model_version(name, "1")
    tags = version.tags
    manifest = tracking.manifest_sha256(model["root"] / "prep")
    assert tags["test.manifest_sha256"] == manifest == first.manifest_sha256
    assert tags["test.f1"] == "0.5" and tags["test.split"] == "test"
    assert "test.precision" in tags and "test.ods" in tags
    assert tags.get("cirl.git_commit") == tracking.git_state()[0] and tags["cirl.version"]
    assert tags["cirl.torch"] and tags["cirl.onnxruntime"] and tags["cirl.python"]
    run = client.get_run(version.run_id)
    assert run.data.tags["cirl.stage"] == "register" and run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(version.run_id, "configs")}
    assert "configs/metrics.json" in artifacts and "configs/export.json" in artifacts
    assert {a.path for a in client.list_artifacts(version.run_id, "checkpoint")} == {
        "checkpoint/model_state.pt"
    }
    import mlflow

    with tracking.mlflow_uri(store.tracking_uri):
        info = mlflow.models.get_model_info(f"models:/{name}/1")
    (spec,) = info.signature.inputs.inputs
    assert spec.shape == (-1, 3, -1, -1) and spec.type == np.dtype(np.float32)
    assert info.saved_input_example_info is not None

    # a better version takes the champion alias
    second = registry.register(
        registry.RegisterConfig(name=name, promote=True),
        model["onnx"],
        scored(model["eval"], 0.60, tmp_path),
        None,
        store,
    )
    times.append(dt.datetime.now(dt.UTC))
    assert second.promotion.alias == "champion" and second.promotion.previous_champion == "1"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"

    # a worse one becomes the challenger, with the reason and both scores recorded
    third = registry.register(
        registry.RegisterConfig(name=name, promote=True, margin=0.01),
        model["onnx"],
        scored(model["eval"], 0.55, tmp_path),
        None,
        store,
    )
    times.append(dt.datetime.now(dt.UTC))
    assert third.promotion.alias == "challenger"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "3"
    tags = client.get_model_version(name, "3").tags
    assert tags["cirl.promotion_decision"] == "challenger"
    assert "0.5500" in tags["cirl.promotion_reason"] and "0.6000" in tags["cirl.promotion_reason"]
    assert tags["cirl.promotion_champion_version"] == "2"
    assert float(tags["cirl.promotion_champion_f1"]) == 0.6

    # within the margin of the champion: promoted; the challenger alias leaves it
    promotion = registry.promote(registry.PromoteConfig(name=name, margin=0.06), "3", store)
    times.append(dt.datetime.now(dt.UTC))
    assert promotion.alias == "champion" and promotion.previous_champion == "2"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "3"
    assert "challenger" not in client.get_registered_model(name).aliases
    again = registry.promote(registry.PromoteConfig(name=name), "3", store)
    assert again.alias == "champion" and not again.moved

    history = registry.alias_history(name, store)
    moves = [(m.alias, m.version, m.previous) for m in history]
    assert moves == [
        ("champion", "1", None),
        ("champion", "2", "1"),
        ("challenger", "3", None),
        ("champion", "3", "2"),
        ("challenger", None, "3"),
    ]
    assert all(m.moved_at.tzinfo is not None for m in history)
    assert history[1].f1 == 0.6 and history[1].champion_f1 == 0.5
    assert registry.champion_at(name, times[0], store) is None
    assert registry.champion_at(name, times[1], store) == "1"
    assert registry.champion_at(name, times[2], store) == "2"
    assert registry.champion_at(name, times[3].isoformat(), store) == "2"
    assert registry.champion_at(name, times[4].strftime("%Y-%m-%dT%H:%M:%S.%fZ"), store) == "3"
    assert registry.alias_history("no-such-model", store) == []


def test_promotion_refuses_other_test_data(model, store):
    name = "crack-data"
    registry.register(
        registry.RegisterConfig(name=name, promote=True), model["onnx"], model["eval"], None, store
    )
    other = registry.register(
        registry.RegisterConfig(name=name), model["onnx"], model["eval_other"], None, store
    )
    assert other.promotion is None
    with pytest.raises(CirlError, match="different test data") as caught:
        registry.promote(registry.PromoteConfig(name=name), other.version, store)
    assert other.manifest_sha256[:12] in str(caught.value)
    assert str(_client(store).get_model_version_by_alias(name, "champion").version) == "1"
    with pytest.raises(CirlError, match="has no version 9"):
        registry.promote(registry.PromoteConfig(name=name), 9, store)


def test_register_refuses_an_evaluation_of_another_checkpoint(model, store, tmp_path):
    metrics = json.loads((model["eval"] / "metrics.json").read_text())
    metrics["provenance"]["checkpoint_sha256"] = "0" * 64
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    with pytest.raises(CirlError, match="scores checkpoint 000000000000"):
        registry.register(registry.RegisterConfig(), model["onnx"], path, None, store)
    with pytest.raises(CirlError, match="not the checkpoint"):
        registry.register(
            registry.RegisterConfig(), model["onnx"], model["eval"], model["onnx"], store
        )
    with pytest.raises(CirlError, match="written by `cirl evaluate`"):
        registry.register(registry.RegisterConfig(), model["onnx"], tmp_path / "none", None, store)


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in folder.glob("*_mask.png")}


def test_predict_through_the_registry_matches_the_file(model, store, tmp_path):
    from cirl.deploy import predict

    registry.register(
        registry.RegisterConfig(name="crack-serve", promote=True),
        model["onnx"],
        model["eval"],
        None,
        store,
    )
    cfg = predict.PredictConfig(tile=128, overlap=16, device="cpu")
    predict.run(cfg, model["photos"], model["onnx"], tmp_path / "file", progress=False)
    uri = "models:/crack-serve@champion"
    predict.run(
        cfg,
        model["photos"],
        uri,
        tmp_path / "alias",
        progress=False,
        tracking_uri=store.tracking_uri,
    )
    by_file, by_alias = _masks(tmp_path / "file"), _masks(tmp_path / "alias")
    assert by_file.keys() == by_alias.keys() and by_file
    assert all(np.array_equal(by_file[k], by_alias[k]) for k in by_file)
    report = json.loads((tmp_path / "alias" / "predictions.json").read_text())
    assert report["model"]["model_uri"] == uri and report["model"]["registered_version"] == "1"
    # the version's files are fetched once, then served from the cache
    first = registry.fetch_model(uri, store.tracking_uri)
    assert first.path.is_file() and first.path.is_relative_to(tmp_path / "cache")
    stamp = first.path.stat().st_mtime_ns
    again = registry.fetch_model("models:/crack-serve/1", store.tracking_uri)
    assert again.path == first.path and again.path.stat().st_mtime_ns == stamp


def test_the_gated_int8_copy_travels_with_the_registered_model(model, store, tmp_path):
    """A model exported with --quantize static is registered with its int8 copy, and fetched
    with it beside the model: the same engines pass the gate as for the local files."""
    from cirl.deploy import export
    from cirl.deploy.engine import int8_path, read_metadata
    from cirl.deploy.gate import passed_engines
    from cirl.deploy.opener import load_engine
    from cirl.hashing import file_sha256

    local = tmp_path / "quantized" / "model.onnx"
    cfg = export.ExportConfig(
        export_size=64, check_height=64, check_width=96, quantize="static", calibration_tiles=4
    )
    export.run(cfg, model["checkpoint"], local, data=model["root"] / "prep")
    assert int8_path(local).is_file()
    result = registry.register(
        registry.RegisterConfig(name="crack-int8"), local, model["eval"], None, store
    )
    tags = _client(store).get_model_version("crack-int8", result.version).tags
    assert tags["cirl.int8_sha256"] == file_sha256(int8_path(local))

    fetched = registry.fetch_model("models:/crack-int8/1", store.tracking_uri)
    assert not fetched.path.name.endswith(".int8.onnx")
    assert file_sha256(int8_path(fetched.path)) == file_sha256(int8_path(local))
    meta = read_metadata(fetched.path)
    assert passed_engines(fetched.path, meta) == passed_engines(local, read_metadata(local))
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    by_uri = load_engine(
        "models:/crack-int8/1", "onnx-int8", tracking_uri=store.tracking_uri, force=True
    )
    assert np.array_equal(by_uri(x), load_engine(local, "onnx-int8", force=True)(x))
    # a version registered without one has none beside it
    registry.register(
        registry.RegisterConfig(name="crack-fp32"), model["onnx"], model["eval"], None, store
    )
    plain = registry.fetch_model("models:/crack-fp32/1", store.tracking_uri)
    assert not int8_path(plain.path).exists()


def test_model_uri_errors_name_the_uri_and_the_fix(model, store, tmp_path):
    from cirl.deploy.opener import load_engine

    registry.register(
        registry.RegisterConfig(name="crack-err"), model["onnx"], model["eval"], None, store
    )
    uri = store.tracking_uri
    with pytest.raises(CirlError, match=r"no registered model 'nope'.*models there: crack-err"):
        registry.fetch_model("models:/nope@champion", uri)
    with pytest.raises(CirlError, match=r"models:/crack-err@champion.*no alias 'champion'"):
        registry.fetch_model("models:/crack-err@champion", uri)
    with pytest.raises(CirlError, match="no version 7"):
        registry.fetch_model("models:/crack-err/7", uri)
    with pytest.raises(CirlError, match="is not models:/NAME@ALIAS"):
        registry.fetch_model("models:/a/b/c", uri)
    with pytest.raises(CirlError, match="predict with --engine auto or onnx"):
        load_engine("models:/crack-err/1", "torch", tracking_uri=uri)
    missing = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    with pytest.raises(CirlError, match=r"cannot resolve models:/crack-err/1.*no database"):
        registry.fetch_model("models:/crack-err/1", missing)
    assert not (tmp_path / "elsewhere.db").exists()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    t0 = time.perf_counter()
    with pytest.raises(CirlError, match=r"cannot resolve models:/crack-err@champion.*not reach"):
        load_engine("models:/crack-err@champion", tracking_uri=down)
    assert time.perf_counter() - t0 < 3.0


# --- against a real MLflow server, artifacts in S3 ---------------------------------------------

BUCKET = "cirl-mlflow"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_health(url: str, proc: subprocess.Popen, log: Path, limit: float = 90.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(
        f"mlflow server did not answer /health in {limit:.0f} s:\n{log.read_text()[-3000:]}"
    )


@contextlib.contextmanager
def seaweed_s3_strict(services, patch: pytest.MonkeyPatch, workdir: Path, keys: dict):
    """``services.seaweed_s3`` started with the patched command line, the patch undone after."""
    try:
        with services.seaweed_s3(workdir, *keys.values()) as s3:
            patch.undo()
            yield s3
    finally:
        patch.undo()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``mlflow server`` (SQLite backend, proxied artifacts in S3) and the S3 server under it.

    Both start at once (the MLflow server only needs S3 at its first upload); both are stopped
    by the process ids started here. SeaweedFS creates a missing bucket on upload for admin
    keys; AWS, MinIO and Ceph answer NoSuchBucket, and so does this server with
    ``-s3.autoCreateBucket=false``.
    """
    import services

    strict = pytest.MonkeyPatch()
    command = services._command
    strict.setattr(services, "_command", lambda *a: [*command(*a), "-s3.autoCreateBucket=false"])

    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = root / "mlflow-server.log"
    keys = {"AWS_ACCESS_KEY_ID": "cirl", "AWS_SECRET_ACCESS_KEY": "cirl-secret-key"}
    with open(log, "wb") as out:
        env = {
            **os.environ,
            **keys,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        with seaweed_s3_strict(services, strict, root / "s3", keys) as s3:
            env.update({"MLFLOW_S3_ENDPOINT_URL": s3.url, "AWS_ENDPOINT_URL": s3.url})
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mlflow",
                    "server",
                    "--backend-store-uri",
                    f"sqlite:///{root / 'server.db'}",
                    "--artifacts-destination",
                    f"s3://{BUCKET}/artifacts",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                ],
                env=env,
                cwd=root,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                s3.make_bucket(BUCKET)
                url = f"http://127.0.0.1:{port}"
                _wait_health(url, proc, log)
                yield {"url": url, "s3": s3, "log": log}
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(15)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait(10)


@pytest.fixture
def client_env(server, monkeypatch, tmp_path):
    """This process as a client of the server: S3 endpoint and keys of the server's store."""
    for key, value in server["s3"].env.items():
        monkeypatch.setenv(key, value)
    for key in ("MLFLOW_TRACKING_URI", tracking.PARENT_RUN_ENV):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))
    # MLflow caches its boto3 clients, and boto3's default session the credentials it first
    # found in the environment: start and end each test without either
    import boto3
    from mlflow.store.artifact.s3_artifact_repo import _cached_get_s3_client

    def forget() -> None:
        _cached_get_s3_client.cache_clear()
        boto3.DEFAULT_SESSION = None

    forget()
    yield server
    forget()


def _objects(server, prefix: str) -> list[str]:
    listing = server["s3"].client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


def test_server_tracks_a_stage_and_registers_a_model(model, client_env, tmp_path, capsys):
    from cirl.deploy import predict

    url = client_env["url"]
    cfg = tracking.TrackingConfig(track=True, tracking_uri=url, experiment="server-test")
    with tracking.pipeline_run(cfg) as parent:
        with tracking.stage_run("evaluate", None, cfg, out=model["eval"]) as run:
            pass
        result = registry.register(
            registry.RegisterConfig(name="crack-server", promote=True),
            model["onnx"],
            model["eval"],
            model["checkpoint"],
            cfg,
        )
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=url)
    evaluated = client.get_run(run.run_id)
    assert evaluated.info.status == "FINISHED"
    assert evaluated.data.tags["mlflow.parentRunId"] == parent
    assert evaluated.data.metrics["test_f1"] == pytest.approx(
        json.loads((model["eval"] / "metrics.json").read_text())["f1"]
    )
    assert evaluated.info.artifact_uri.startswith("mlflow-artifacts:/")
    # the artifacts went through the server into the bucket
    stored = _objects(client_env, "artifacts/")
    assert any(k.endswith(f"{run.run_id}/artifacts/outputs/metrics.json") for k in stored)
    assert any(k.endswith("artifacts/model.onnx") for k in stored)
    assert result.promotion.alias == "champion"
    assert "View run" not in capsys.readouterr().out  # stdout stays the commands' JSON
    registered = client.get_run(result.run_id)
    assert registered.data.tags["mlflow.parentRunId"] == parent

    predict_cfg = predict.PredictConfig(tile=128, overlap=16, device="cpu")
    predict.run(predict_cfg, model["photos"], model["onnx"], tmp_path / "file", progress=False)
    predict.run(
        predict_cfg,
        model["photos"],
        "models:/crack-server@champion",
        tmp_path / "served",
        progress=False,
        tracking_uri=url,
    )
    by_file, served = _masks(tmp_path / "file"), _masks(tmp_path / "served")
    assert by_file and all(np.array_equal(by_file[k], served[k]) for k in by_file)


def _experiment_in(url: str, name: str, location: str) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=url)
    if client.get_experiment_by_name(name) is None:
        client.create_experiment(name, artifact_location=location)


def test_wrong_s3_credentials_fail_before_the_stage_with_a_clear_message(client_env, monkeypatch):
    url = client_env["url"]
    # an experiment whose artifacts the client writes to S3 itself, with its own keys
    _experiment_in(url, "direct-s3", f"s3://{BUCKET}/direct")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    cfg = tracking.TrackingConfig(track=True, tracking_uri=url, experiment="direct-s3")
    ran = False
    with (
        pytest.raises(CirlError, match="rejected the credentials") as caught,
        tracking.stage_run("train", None, cfg),
    ):
        ran = True
    assert not ran
    assert f"s3://{BUCKET}/direct" in str(caught.value)
    assert "AWS_SECRET_ACCESS_KEY" in str(caught.value)
    import mlflow

    failed = mlflow.MlflowClient(tracking_uri=url).search_runs(
        [mlflow.MlflowClient(tracking_uri=url).get_experiment_by_name("direct-s3").experiment_id]
    )
    assert failed and failed[0].info.status == "FAILED"
    assert "rejected the credentials" in failed[0].data.tags["cirl.error"]


def test_missing_bucket_fails_before_the_stage_with_a_clear_message(client_env):
    url = client_env["url"]
    _experiment_in(url, "no-bucket", "s3://no-such-bucket/mlflow")
    cfg = tracking.TrackingConfig(track=True, tracking_uri=url, experiment="no-bucket")
    ran = False
    with (
        pytest.raises(CirlError, match="bucket does not exist") as caught,
        tracking.stage_run("train", None, cfg),
    ):
        ran = True
    assert not ran and "s3://no-such-bucket/mlflow" in str(caught.value)


def test_a_store_failure_behind_the_server_points_at_its_log(client_env, monkeypatch):
    # the server proxies artifacts into a bucket that is gone: it answers only HTTP 500
    s3 = client_env["s3"].client()
    s3.delete_bucket(Bucket=BUCKET)  # SeaweedFS deletes a bucket with its objects
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # MLflow retries 500s
    cfg = tracking.TrackingConfig(track=True, tracking_uri=client_env["url"], experiment="proxy")
    try:
        with (
            pytest.raises(CirlError, match="read the server's log") as caught,
            tracking.stage_run("train", None, cfg),
        ):
            pytest.fail("the stage must not run")
    finally:
        client_env["s3"].make_bucket(BUCKET)
    assert "mlflow-artifacts:/" in str(caught.value)


def test_server_down_fails_fast_naming_the_uri(model, client_env):
    # the same client settings, but the server's port is closed
    down = f"http://127.0.0.1:{_free_port()}"
    cfg = tracking.TrackingConfig(track=True, tracking_uri=down)
    t0 = time.perf_counter()
    with pytest.raises(CirlError, match="not reachable") as caught:
        registry.register(registry.RegisterConfig(), model["onnx"], model["eval"], None, cfg)
    assert time.perf_counter() - t0 < 3.0
    assert down in str(caught.value) and "MLFLOW_TRACKING_URI" in str(caught.value)


def test_register_promote_and_predict_through_the_command_line(model, store, tmp_path, capsys):
    """The commands a user runs: register, promote, then predict by alias."""
    import json

    from cirl.orchestration.cli import main

    uri = ["--tracking-uri", store.tracking_uri]
    code = main(
        [
            "register",
            "--model",
            str(model["onnx"]),
            "--evaluation",
            str(model["eval"]),
            "--checkpoint",
            str(model["checkpoint"]),
            "--name",
            "cli-crack",
            *uri,
        ]
    )
    assert code == 0
    assert '"model_uri": "models:/cli-crack/1"' in capsys.readouterr().out
    assert main(["promote", "--version", "1", "--name", "cli-crack", *uri]) == 0
    promotion = json.loads(capsys.readouterr().out)
    assert promotion["alias"] == "champion" and promotion["moved"] is True
    code = main(
        [
            "predict",
            str(model["photos"]),
            "--model",
            "models:/cli-crack@champion",
            "--out",
            str(tmp_path / "pred"),
            "-q",
            *uri,
        ]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out)["done"] == 1
    assert main(["promote", "--version", "7", "--name", "cli-crack", *uri]) == 2
    assert "error:" in capsys.readouterr().err
