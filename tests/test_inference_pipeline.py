"""The inference pipeline (``pipelines/inference.py``): plan -> shards in a ParallelFor -> merge.

Real, not mocked: photos in a SeaweedFS S3 server on 127.0.0.1 (``services.seaweed_s3``), a tiny
model trained for two steps, evaluated, exported and registered as ``cirl-crack`` in a SQLite
MLflow store, and the compiled package run by ``cirl pipeline run`` through KFP's local runner
(each task a process). Checked: every photo's outputs land in the output prefix, byte-identical
to one plain ``cirl predict`` over the same prefix with the same model; the merged summary has
every photo with its status (an unreadable photo failed, the others done); the version used is
the champion's at the start, and stays so when the alias moves after the plan; a second run
skips every finished photo and leaves its outputs untouched; a model URI that does not resolve
stops the run in its first task with the registry's message.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from cirl import config
from cirl.errors import CirlError
from cirl.orchestration import task_inference
from cirl.orchestration.cli import main
from conftest import write_pair
from services import seaweed_s3

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pipelines" / "inference.yaml"
PHOTOS, RESULTS = "photos", "results"
SOURCE = f"s3://{PHOTOS}/week1"
NAME = "cirl-crack"
PREDICT = ["--set", "predict.tile=128", "--set", "predict.overlap=16"]
# what differs between two runs of the same photo: timings, and the URI the model was named by
VOLATILE = ("seconds", "megapixels_per_second")
WORLD = "0.5\n0\n0\n-0.5\n1000\n2000\n"  # a world file: 0.5 map units a pixel, north up


def _pipeline_module():
    spec = importlib.util.spec_from_file_location("inference", REPO / "pipelines" / "inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the package -------------------------------------------------------------------------------


def test_committed_inference_yaml_is_what_the_code_compiles(tmp_path):
    out = _pipeline_module().compile_pipeline(tmp_path / "inference.yaml")
    assert PACKAGE.is_file(), "run `python pipelines/inference.py`"
    assert out.read_text() == PACKAGE.read_text(), "stale: run `python pipelines/inference.py`"


def test_package_fans_out_over_the_plan_and_installs_nothing():
    spec = next(yaml.safe_load_all(PACKAGE.read_text()))
    assert spec["pipelineInfo"]["name"] == task_inference.PIPELINE_NAME
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["model"]["defaultValue"] == "models:/cirl-crack@champion"
    assert inputs["shards"]["parameterType"] == "NUMBER_INTEGER"
    assert set(inputs["predict_params"]["defaultValue"]) >= {"engine", "tile", "threshold"}
    loop = spec["root"]["dag"]["tasks"]["for-loop-1"]
    assert loop["iteratorPolicy"]["parallelismLimit"] == 4
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("plan-inference-Output")
    merge = spec["root"]["dag"]["tasks"]["merge-predictions"]
    assert "shards" in merge["inputs"]["artifacts"]  # dsl.Collected over the loop's shards
    for name, executor in spec["deploymentSpec"]["executors"].items():
        container = executor["container"]
        assert container["image"] == "localhost/cirl:latest", name
        assert "pip install" not in " ".join(container["command"]), name
    for name, task in spec["root"]["dag"]["tasks"].items():
        assert task.get("cachingOptions", {}).get("enableCache") is not True, name
    platform = list(yaml.safe_load_all(PACKAGE.read_text()))[1]
    secrets = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert all(e["secretAsEnv"][0]["secretName"] == "cirl-credentials" for e in secrets.values())


# --- listing, dealing, arguments (no pipeline) ---------------------------------------------------


def test_photos_are_listed_and_named_as_predict_does_and_dealt_round_robin(tmp_path):
    for stem in ("b", "a", "c", "d", "e"):
        (tmp_path / f"{stem}.jpg").write_bytes(b"x")
    (tmp_path / "a.png").write_bytes(b"x")  # a stem twice: a_jpg and a_png, as predict names
    (tmp_path / "notes.txt").write_text("not a photo")
    photos = task_inference.list_photos(str(tmp_path))
    assert [p["name"] for p in photos] == ["a_jpg", "a_png", "b", "c", "d", "e"]
    assert task_inference.deal(len(photos), 4) == [[0, 4], [1, 5], [2], [3]]
    assert task_inference.deal(2, 5) == [[0], [1]]  # never an empty shard
    with pytest.raises(CirlError, match="inside source"):
        task_inference._check_apart(str(tmp_path), str(tmp_path))
    task_inference._check_apart("s3://b/in", "s3://b/out")
    with pytest.raises(CirlError, match="inside source"):
        task_inference._check_apart("s3://b/in", "s3://b/in/out")


def test_set_gives_the_pipeline_parameters_and_groups(tmp_path):
    args = task_inference.pipeline_arguments(
        PACKAGE, "s3://p/w1", None,
        ["out=s3://r/w1", "shards=3", "model=models:/m/2", "predict.tile=256"], "v1",
    )  # fmt: skip
    assert args["out"] == "s3://r/w1" and args["shards"] == 3 and args["model"] == "models:/m/2"
    assert args["predict_params"]["tile"] == 256 and args["predict_params"]["overlap"] == 64
    assert args["source"] == "s3://p/w1" and args["code_version"] == "v1"
    params = REPO / "params.yaml"
    given = task_inference.pipeline_arguments(PACKAGE, "s3://p", params, ["out=s3://r"], "v")
    assert given["predict_params"] == config.to_dict(
        config.resolve(config.stage_config("predict"), "predict", params)
    )
    assert set(given["tracking_params"]) >= {"tracking_uri", "tracking_timeout"}
    local = task_inference.pipeline_arguments(PACKAGE, "photos", None, ["out=runs/o"], "v")
    assert Path(local["out"]).is_absolute() and Path(local["source"]).is_absolute()
    for sets, message in (
        ([], "needs --set out="),
        (["out=x", "epochs=3"], "unknown parameter 'epochs'"),
        (["out=x", "train.lr=0.1"], "groups are predict, tracking"),
        (["out=x", "shards=0"], "whole number >= 1"),
        (["out=x", "predict.tile=7"], "tile"),
    ):
        with pytest.raises(CirlError, match=message):
            task_inference.pipeline_arguments(PACKAGE, "s3://p/w1", None, sets, "v")
    with pytest.raises(CirlError, match="training pipeline"):
        task_inference.pipeline_arguments(PACKAGE, "s3://p", None, ["out=x"], "v", baseline=True)
    assert task_inference.is_inference_package(PACKAGE)
    assert not task_inference.is_inference_package(REPO / "pipelines" / "training.yaml")


def test_submit_and_schedule_take_the_inference_package_arguments():
    """``cirl pipeline submit|schedule --package pipelines/inference.yaml`` build the same
    arguments (what a cluster run gets); the training package's path is untouched."""
    from cirl.orchestration.cli import build_parser
    from cirl.orchestration.cli_pipeline import _pipeline_arguments

    argv = ["pipeline", "submit", "--package", str(PACKAGE), "--source", "s3://p/w1",
            "--set", "out=s3://r/w1", "--set", "predict.engine=onnx",
            "--image", "registry.example.com/cirl@sha256:abc"]  # fmt: skip
    arguments = _pipeline_arguments(build_parser().parse_args(argv))
    assert set(arguments) == {"source", "out", "predict_params", "code_version"}
    assert arguments["code_version"] == "sha256:abc"
    assert arguments["predict_params"]["engine"] == "onnx"
    training = ["pipeline", "submit", "--source", "s3://p/raw", "--set", "train.epochs=2"]
    arguments = _pipeline_arguments(build_parser().parse_args(training))
    assert arguments["train_params"]["epochs"] == 2 and "out" not in arguments


# --- the pipeline, end to end --------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The S3 server with 6 photos and an unreadable one, a registered champion, the env."""
    from cirl.data import prepare, synth
    from cirl.deploy import export
    from cirl.lineage import registry, tracking
    from cirl.method import evaluate, train

    root = tmp_path_factory.mktemp("inference")
    patch = pytest.MonkeyPatch()
    for key in ("MLFLOW_TRACKING_URI", tracking.PARENT_RUN_ENV, "AWS_ENDPOINT_URL_S3",
                "AWS_PROFILE"):  # fmt: skip
        patch.delenv(key, raising=False)
    patch.setenv(registry.CACHE_ENV, str(root / "model-cache"))
    patch.setenv("XDG_CACHE_HOME", str(root / "xdg"))  # the engine choice's cache
    patch.setenv("AWS_CONFIG_FILE", str(root / "no-aws-config"))
    patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(root / "no-aws-credentials"))
    patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = tracking.TrackingConfig(track=True, tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    patch.setenv("MLFLOW_TRACKING_URI", store.tracking_uri)  # the tasks' registry, as a pod's

    synth.run(synth.SynthConfig(n=4, width=256, height=192), root / "raw")
    cfg = prepare.PrepareConfig(tile=128, split=(0.5, 0.25, 0.25), workers=1)
    prepare.run(cfg, root / "raw", "folder", root / "prep", progress=False)
    # enough steps, and the product's class weight, that the model marks cracks at 0.5: the
    # val split (1 photo) cannot check a calibrated threshold, so predict decides at 0.5
    tcfg = train.TrainConfig(model="unet-small", width=8, epochs=1, steps_per_epoch=30, crop=64,
                             loss="bce", pos_weight=10.0, device="cpu")  # fmt: skip
    trained = train.run(tcfg, root / "prep", root / "run", progress=False)
    ev = evaluate.EvaluateConfig(device="cpu", overlays=0, thresholds=9)
    evaluate.run(ev, root / "prep", trained.best, root / "eval", progress=False)
    onnx = root / "model.onnx"
    export.run(export.ExportConfig(export_size=64, check_height=64, check_width=96, gate=False),
               trained.best, onnx, evaluation=root / "eval")  # fmt: skip
    version = registry.register(
        registry.RegisterConfig(name=NAME, promote=True), onnx, root / "eval", trained.best, store
    )
    with seaweed_s3(root / "seaweed") as server:
        for key, value in server.env.items():
            patch.setenv(key, value)
        server.make_bucket(PHOTOS)
        server.make_bucket(RESULTS)
        client = server.client()
        for i in range(6):
            write_pair(root / "photos", f"p{i}", 320 - 16 * i, 240, seed=10 + i)
            client.upload_file(str(root / "photos" / "images" / f"p{i}.jpg"), PHOTOS,
                               f"week1/p{i}.jpg")  # fmt: skip
        # a world file beside one photo: its GeoJSON in map coordinates, in both runs
        (root / "photos" / "images" / "p0.jgw").write_text(WORLD)
        client.put_object(Bucket=PHOTOS, Key="week1/p0.jgw", Body=WORLD.encode())
        client.put_object(Bucket=PHOTOS, Key="week1/broken.jpg", Body=b"this is no photo")
        client.put_object(Bucket=PHOTOS, Key="week1/notes.txt", Body=b"not a photo")
        yield SimpleNamespace(root=root, server=server, client=client, store=store,
                              onnx=onnx, eval=root / "eval", checkpoint=trained.best,
                              version=version.version)  # fmt: skip
    patch.undo()


def _objects(client, bucket: str, prefix: str) -> dict[str, dict]:
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"][len(prefix) :]] = item
    return found


def _read(client, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def _rows(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode())))


def _comparable(report: dict) -> dict:
    """A per-photo report without what must differ between two runs (timings, the URI the
    model was named by: the alias for plain predict, the version it resolved to here)."""
    report = {k: v for k, v in report.items() if k not in VOLATILE}
    report["tiles"] = {k: v for k, v in report["tiles"].items() if k != "infer_seconds"}
    model = dict(report["model"])
    model.pop("model_uri", None)
    model.get("choice", {}).pop("cached", None)
    report["model"] = model
    return report


def _pipeline(run_dir: Path, out: str, *extra: str) -> int:
    return main(["pipeline", "run", "--package", str(PACKAGE), "--source", SOURCE,
                 "--set", f"out={out}", "--set", "shards=3", *PREDICT, "--out", str(run_dir),
                 *extra])  # fmt: skip


@pytest.mark.smoke
def test_pipeline_over_s3_equals_plain_predict_records_the_version_and_resumes(
    world, tmp_path, capsys
):
    from cirl.deploy import predict

    client = world.client
    champion = _mlflow(world).get_model_version_by_alias(NAME, "champion")
    plain = tmp_path / "plain"
    cfg = predict.PredictConfig(tile=128, overlap=16)
    alone = predict.run(cfg, SOURCE, f"models:/{NAME}@champion", plain, progress=False)
    assert len(alone.done) == 6 and len(alone.failed) == 1

    import builtins
    import logging

    printer, handlers = builtins.print, logging.getLogger().handlers[:]
    assert _pipeline(tmp_path / "run", f"s3://{RESULTS}/week1") == 1  # one photo failed
    # the local runner's threaded ParallelFor leaves print and the root logger as they were
    assert builtins.print is printer and logging.getLogger().handlers == handlers
    printed = json.loads(capsys.readouterr().out)
    assert printed["counts"] == {"done": 6, "skipped": 0, "failed": 1}
    assert printed["shards"] == 3 and printed["failed"][0]["image"] == f"{SOURCE}/broken.jpg"
    written = _objects(client, RESULTS, "week1/")
    expected = {p.name for p in plain.iterdir()} - {"predictions.json"}
    assert expected | {"merge.json", "report.html"} == set(written)

    # every photo's files byte-identical to plain predict's; the reports but for timings
    for name in sorted(expected - {"summary.csv"}):
        data = _read(client, RESULTS, f"week1/{name}")
        if name.endswith(".json"):
            ours, theirs = json.loads(data), json.loads((plain / name).read_text())
            assert _comparable(ours) == _comparable(theirs), name
            assert ours["model"]["model_uri"] == f"models:/{NAME}/{champion.version}"
            assert theirs["model"]["model_uri"] == f"models:/{NAME}@champion"
        else:
            assert data == (plain / name).read_bytes(), name
    # the world file travelled with its photo: the report names it by its URI
    assert f"{SOURCE}/p0.jgw" in _read(client, RESULTS, "week1/p0.json").decode()
    merged = _rows(_read(client, RESULTS, "week1/summary.csv"))
    alone_rows = _rows((plain / "summary.csv").read_bytes())
    assert [{**r, "seconds": ""} for r in merged] == [{**r, "seconds": ""} for r in alone_rows]
    assert {r["name"]: r["status"] for r in merged} == {
        "broken": "failed",
        **{f"p{i}": "done" for i in range(6)},
    }
    assert (
        merged[0]["reason"].startswith(f"{SOURCE}/broken.jpg")
        and "cirl-" not in merged[0]["reason"]
    )

    # the version used: the champion's at the start, named by name, number, alias and run
    record = json.loads(_read(client, RESULTS, "week1/merge.json"))
    model = record["model"]
    assert (model["name"], model["version"], model["alias"]) == (NAME, str(champion.version),
                                                                 "champion")  # fmt: skip
    assert model["uri"] == f"models:/{NAME}/{champion.version}"
    assert model["run_id"] == champion.run_id and model["requested"] == f"models:/{NAME}@champion"
    assert record["counts"] == {"done": 6, "skipped": 0, "failed": 1}
    assert record["shards"]["count"] == 3 and len(record["shards"]["each"]) == 3
    assert record["threshold"]["value"] == model["decision_threshold"]  # calibrated at export
    page = _read(client, RESULTS, "week1/report.html").decode()
    assert "champion" in page and "p0_overlay.jpg" in page and "broken.jpg" in page
    embedded = (tmp_path / "run" / "report.html").read_text()
    assert "data:image/" in embedded and "1 photo(s) failed" in embedded
    assert (tmp_path / "run" / "merge" / "merge.json").is_file()

    # a second run skips every finished photo and leaves its outputs untouched
    before = {k: v["ETag"] for k, v in written.items() if not k.startswith(("summary", "merge",
                                                                           "report"))}  # fmt: skip
    stamps = {k: written[k]["LastModified"] for k in before}
    assert _pipeline(tmp_path / "run", f"s3://{RESULTS}/week1") == 1
    again = json.loads(capsys.readouterr().out)
    assert again["counts"] == {"done": 0, "skipped": 6, "failed": 1}
    after = _objects(client, RESULTS, "week1/")
    assert {k: after[k]["ETag"] for k in before} == before
    assert {k: after[k]["LastModified"] for k in before} == stamps
    rerun = _rows(_read(client, RESULTS, "week1/summary.csv"))
    assert [{**r, "status": ""} for r in rerun] == [{**r, "status": ""} for r in merged]
    assert [r["status"] for r in rerun] == ["failed"] + ["skipped"] * 6


def _mlflow(world):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=world.store.tracking_uri)


@pytest.mark.smoke
def test_a_model_that_does_not_resolve_stops_the_run_in_its_first_task(world, tmp_path, capfd):
    out = f"s3://{RESULTS}/nothing"
    code = _pipeline(tmp_path / "run", out, "--set", f"model=models:/{NAME}@nope")
    assert code == 2
    err = re.sub(r"\x1b\[[0-9;]*m", "", capfd.readouterr().err)  # KFP's colours
    assert f"error: plan: cannot resolve models:/{NAME}@nope" in err
    assert "has no alias 'nope' (aliases: champion)" in err
    assert "Executing task 'plan-inference'" in err
    assert "Executing task 'predict-shard'" not in err
    assert "the inference pipeline failed" in err and "plan-inference" in err
    assert _objects(world.client, RESULTS, "nothing/") == {}
    record = json.loads((tmp_path / "run" / "inference_run.json").read_text())
    assert record["status"] == "failed"


@pytest.mark.smoke
def test_the_version_is_fixed_at_the_plan_even_if_the_alias_moves(world, tmp_path):
    """The shards open the version the plan resolved: the alias moved in between (another
    model's promotion mid-run) changes nothing; the local folder path end to end."""
    from cirl.deploy import predict
    from cirl.lineage import registry

    name = "moving-crack"
    for _ in range(2):  # versions 1 and 2 of the same files; champion on 1
        registry.register(registry.RegisterConfig(name=name), world.onnx, world.eval,
                          world.checkpoint, world.store)  # fmt: skip
    client = _mlflow(world)
    client.set_registered_model_alias(name, "champion", "1")
    photos = world.root / "photos" / "images"
    art = {n: SimpleNamespace(path=str(tmp_path / n), metadata={}) for n in ("plan", "s0", "m")}
    out = tmp_path / "out"
    tracking = {"track": True, "tracking_uri": world.store.tracking_uri}
    params = {"tile": 128, "overlap": 16}
    indices = task_inference.plan(str(photos), str(out), f"models:/{name}@champion", 1, params,
                                  art["plan"], tracking)  # fmt: skip
    assert indices == [0]
    client.set_registered_model_alias(name, "champion", "2")  # moved mid-run
    shard = task_inference.predict_shard(art["plan"], 0, art["s0"])
    assert shard["done"] == 6
    versions = {json.loads((out / f"p{i}.json").read_text())["model"]["registered_version"]
                for i in range(6)}  # fmt: skip
    assert versions == {"1"}
    result = task_inference.merge(art["plan"], [art["s0"]], art["m"])
    assert result["model"]["version"] == "1" and result["model"]["alias"] == "champion"
    assert (out / "summary.csv").is_file() and (out / "report.html").is_file()
    assert str(photos / "p0.jgw") in (out / "p0.json").read_text()  # its world file's path
    plain = tmp_path / "plain"  # the same files as cirl predict over the folder
    predict.run(predict.PredictConfig(**params), photos, world.onnx, plain, progress=False)
    for path in sorted(plain.iterdir()):
        if path.suffix == ".json" and path.name != "predictions.json":
            ours = _comparable(json.loads((out / path.name).read_text()))
            theirs = _comparable(json.loads(path.read_text()))
            for report in (ours, theirs):  # a file, or the version it resolved to
                report["model"] = {
                    k: v for k, v in report["model"].items() if k == "checkpoint_sha256"
                }
            assert ours == theirs, path.name
        elif path.name not in ("predictions.json", "summary.csv"):
            assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    # the next run resolves the alias again: version 2, so every photo is redone
    task_inference.plan(str(photos), str(out), f"models:/{name}@champion", 1, params,
                        art["plan"], tracking)  # fmt: skip
    again = task_inference.predict_shard(art["plan"], 0, art["s0"])
    assert again["done"] == 6 and again["skipped"] == 0
    assert json.loads((out / "p0.json").read_text())["model"]["registered_version"] == "2"
