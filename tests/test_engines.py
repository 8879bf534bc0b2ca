"""Faster engines behind the accuracy gate: OpenVINO fp32/bf16, static int8, ``--engine auto``,
and the batch path of ``cirl predict`` (summary CSV, resume, failures, ``s3://`` prefixes)."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from cirl import fpenv
from cirl.deploy import export, predict
from cirl.deploy.engine import cpu_has_bf16, read_metadata
from cirl.deploy.gate import GATE_KEY, gate_status
from cirl.deploy.opener import load_engine
from cirl.errors import CirlError

TRAIN = {
    "model": "unet-small",
    "width": 8,
    "epochs": 4,
    "steps_per_epoch": 10,
    "lr": 3e-3,
    "batch_size": 2,
    "crop": 96,
    "device": "cpu",
    "seed": 0,
}

needs_bf16 = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 arithmetic")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A briefly trained unet-small on synthetic photos (F1 about 0.18: the engines' roundings
    move its scores), and the prepared folder."""
    from cirl.data.prepare import PrepareConfig
    from cirl.data.prepare import run as prepare
    from cirl.data.synth import SynthConfig
    from cirl.data.synth import run as synth
    from cirl.method import train

    root = tmp_path_factory.mktemp("engines")
    synth(SynthConfig(n=10, width=256, height=192), root / "raw")
    prepare(PrepareConfig(tile=0, split=(0.6, 0.2, 0.2)), root / "raw", "folder", root / "data")
    train.run(train.TrainConfig(**TRAIN, phase=1), root / "data", root / "p1", progress=False)
    return root


@pytest.fixture(scope="module")
def gated(trained):
    """The model exported with the gate and a static int8 copy (the checkpoint's own data)."""
    cfg = export.ExportConfig(quantize="static", calibration_tiles=4)
    result = export.run(cfg, trained / "p1" / "best.pt", trained / "gated" / "model.onnx")
    return trained / "gated" / "model.onnx", result


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private engine-choice cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "cirl" / "engine-choice.json"


def test_gate_scores_every_engine_and_writes_metadata(gated, trained):
    model, result = gated
    gate = json.loads(read_metadata(model)[GATE_KEY])
    # run on the recorded training data's validation split, never on test
    assert gate["split"] == "val" and gate["data"] == str(trained / "data")
    assert gate["reference"] == "onnx" and gate["tolerance"] == 0.005
    assert gate["reference_scores"]["images"] == 2
    engines = gate["engines"]
    assert set(engines) == {"onnx-int8", "openvino", "openvino-bf16"}
    for name, entry in engines.items():
        if entry.get("skipped"):
            assert name == "openvino-bf16" and not cpu_has_bf16()
            continue
        for key in ("f1", "ods", "ap"):
            assert entry["delta"][key] == pytest.approx(entry[key] - gate["reference_scores"][key])
        assert entry["passed"] == all(abs(d) <= 0.005 for d in entry["delta"].values())
    # OpenVINO fp32 computes the same function: probabilities agree closely
    assert engines["openvino"]["max_abs_prob_diff"] < 1e-4
    assert engines["openvino"]["passed"]
    assert result.report["accuracy_gate"]["engines"] == engines
    # the int8 copy carries its own verdict and the fp32 file pins the int8 file's hash
    own = json.loads(read_metadata(model.with_name("model.int8.onnx"))[GATE_KEY])
    assert set(own["engines"]) == {"onnx-int8"}
    from cirl.models.checkpoint import file_sha256

    assert engines["onnx-int8"]["file_sha256"] == file_sha256(model.with_name("model.int8.onnx"))


def test_static_int8_is_calibrated_on_training_tiles(gated, trained):
    model, _ = gated
    int8 = model.with_name("model.int8.onnx")
    quantization = json.loads(read_metadata(int8)["quantization"])
    assert quantization["method"] == "static"
    assert quantization["calibration"] == {
        "data": str(trained / "data"),
        "split": "train",
        "tiles": 4,
    }
    assert int8.stat().st_size < 0.4 * model.stat().st_size  # int8 weights
    import onnx

    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    # the stride and contract metadata travel with the copy
    assert read_metadata(int8)["stride"] == read_metadata(model)["stride"]
    engine = load_engine(model, "onnx-int8", force=True)
    assert engine.name == "onnx-int8" and engine.description["file"] == str(int8)


def test_openvino_matches_onnxruntime(gated):
    model, _ = gated
    x = np.random.default_rng(0).random((3, 3, 96, 160), dtype=np.float32)
    reference = load_engine(model, "onnx")(x)
    got = load_engine(model, "openvino")(x)
    assert got.shape == (3, 1, 96, 160) and got.dtype == np.float32
    assert np.abs(got - reference).max() < 1e-4
    if cpu_has_bf16():
        bf16 = load_engine(model, "openvino-bf16")
        assert bf16.precision == "bf16"
        assert np.abs(bf16(x) - reference).max() < 0.05


@pytest.mark.skipif(not fpenv.available(), reason="no fegetenv in this C library")
@pytest.mark.parametrize("engine", ["onnx", "onnx-int8", "openvino"])
def test_engines_leave_the_callers_subnormal_mode_as_they_found_it(gated, engine):
    """onnxruntime and OpenVINO switch flush-to-zero on in the thread that loads a model and
    never off; training later in that thread would compute other weights (cirl.fpenv)."""
    model, _ = gated
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    assert not fpenv.flushes_subnormals()
    loaded = load_engine(model, engine, force=True)
    loaded(x)
    assert not fpenv.flushes_subnormals()
    if fpenv.with_flush(fpenv.get()) is not None:
        with fpenv.flushing():  # what each run does in the calling thread
            assert fpenv.flushes_subnormals()
        assert not fpenv.flushes_subnormals()


def test_a_failed_gate_refuses_the_engine_unless_forced(trained, tmp_path):
    # a tolerance no rounding engine can meet: the int8 copy fails honestly
    cfg = export.ExportConfig(quantize="static", calibration_tiles=2, gate_tolerance=1e-12)
    model = tmp_path / "strict.onnx"
    export.run(cfg, trained / "p1" / "best.pt", model, data=trained / "data")
    gate = json.loads(read_metadata(model)[GATE_KEY])
    assert gate["engines"]["onnx-int8"]["passed"] is False
    status = gate_status(read_metadata(model), "onnx-int8")
    assert status["passed"] is False and "tolerance 1e-12" in status["reason"]
    with pytest.raises(CirlError, match=r"onnx-int8 failed the accuracy gate.*--force"):
        load_engine(model, "onnx-int8")
    # the int8 file named directly is refused by its own metadata
    with pytest.raises(CirlError, match="failed the accuracy gate"):
        load_engine(tmp_path / "strict.int8.onnx", "onnx")
    forced = load_engine(model, "onnx-int8", force=True)
    assert forced.description["gate"]["forced"] is True


def test_ungated_low_precision_is_refused_and_auto_stays_on_the_reference(trained, tmp_path, cache):
    model = tmp_path / "plain.onnx"
    result = export.run(export.ExportConfig(gate=False), trained / "p1" / "best.pt", model)
    assert result.report["accuracy_gate"] == {"skipped": "gate: false"}
    assert GATE_KEY not in read_metadata(model)
    # fp32 OpenVINO computes in the same precision: allowed, with the gate's absence noted
    assert load_engine(model, "openvino").description["gate"]["passed"] is None
    if cpu_has_bf16():
        with pytest.raises(CirlError, match="has not passed the accuracy gate"):
            load_engine(model, "openvino-bf16")
    engine = load_engine(model, "auto")
    assert engine.name == "onnx"
    assert "no faster engine has passed" in engine.description["choice"]["why"]
    assert not cache.exists()  # nothing was timed


def test_auto_takes_the_fastest_passed_engine_and_caches_it(gated, cache):
    model, _ = gated
    first = load_engine(model, "auto", tile=128, batch=2)
    choice = first.description["choice"]
    assert not choice["cached"]
    passed = [
        n
        for n, e in json.loads(read_metadata(model)[GATE_KEY])["engines"].items()
        if e.get("passed")
    ]
    assert set(choice["ms_per_tile"]) == {"onnx", *passed}
    assert choice["engine"] == min(choice["ms_per_tile"], key=choice["ms_per_tile"].get)
    assert first.name == choice["engine"]
    second = load_engine(model, "auto", tile=128, batch=2)
    assert second.description["choice"]["cached"] is True
    assert second.name == first.name
    # another tile size is another setting: timed again
    third = load_engine(model, "auto", tile=256, batch=2)
    assert third.description["choice"]["cached"] is False
    assert len(json.loads(cache.read_text())) == 2


def _photos(folder, n, seed=0):
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        image = rng.integers(80, 180, (200, 260, 3), dtype=np.uint8)
        cv2.line(image, (10, 20 + 15 * i), (250, 120), (30, 30, 30), 3)
        cv2.imwrite(str(folder / f"p{i}.jpg"), image)


def _summary(out):
    with open(out / "summary.csv", newline="") as f:
        return {row["name"]: row for row in csv.DictReader(f)}


def test_batch_predict_writes_a_summary_and_resumes(gated, tmp_path, cache):
    model, _ = gated
    _photos(tmp_path / "in", 3)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    cfg = predict.PredictConfig(engine="onnx", tile=128, overlap=16, batch=2)
    out = tmp_path / "out"
    first = predict.run(cfg, tmp_path / "in", model, out, progress=False)
    assert len(first.done) == 3 and len(first.failed) == 1 and not first.skipped
    rows = _summary(out)
    assert set(rows) == {"p0", "p1", "p2", "broken"}
    assert rows["broken"]["status"] == "failed" and "broken.png" in rows["broken"]["reason"]
    for name in ("p0", "p1", "p2"):
        report = json.loads((out / f"{name}.json").read_text())
        assert rows[name]["status"] == "done"
        assert int(rows[name]["cracks"]) == report["cracks"]["count"]
        assert float(rows[name]["total_length_px"]) == report["cracks"]["total_length_px"]
        assert rows[name]["engine"] == "onnx"
    mask_mtime = (out / "p1_mask.png").stat().st_mtime_ns

    # run again after one photo changed: only it is redone, the failed one is retried
    _photos(tmp_path / "changed", 3, seed=7)
    os.replace(tmp_path / "changed" / "p2.jpg", tmp_path / "in" / "p2.jpg")
    second = predict.run(cfg, tmp_path / "in", model, out, progress=False)
    assert sorted(second.skipped) == [str(tmp_path / "in" / f"p{i}.jpg") for i in (0, 1)]
    assert second.done == [str(tmp_path / "in" / "p2.jpg")]
    assert len(second.failed) == 1
    assert (out / "p1_mask.png").stat().st_mtime_ns == mask_mtime
    rows = _summary(out)
    assert rows["p0"]["status"] == "skipped" and rows["p0"]["cracks"] != ""
    listing = json.loads((out / "predictions.json").read_text())
    assert len(listing["skipped"]) == 2

    # other output parameters make other outputs: nothing is skipped
    third = predict.run(
        predict.PredictConfig(engine="onnx", tile=128, overlap=16, batch=2, threshold=0.6),
        tmp_path / "in",
        model,
        out,
        progress=False,
    )
    assert not third.skipped and len(third.done) == 3
    # and --no-resume redoes everything
    fourth = predict.run(
        predict.PredictConfig(engine="onnx", tile=128, overlap=16, batch=2, resume=False),
        tmp_path / "in",
        model,
        out,
        progress=False,
    )
    assert not fourth.skipped and len(fourth.done) == 3


def test_predict_is_repeatable_with_each_engine(gated, tmp_path):
    model, _ = gated
    _photos(tmp_path / "in", 1)
    engines = ["onnx", "openvino"] + (["openvino-bf16"] if cpu_has_bf16() else [])
    for name in engines:
        cfg = predict.PredictConfig(engine=name, tile=128, overlap=16, batch=2, resume=False)
        masks = []
        for run in range(2):
            predict.run(cfg, tmp_path / "in", model, tmp_path / f"{name}{run}", progress=False)
            masks.append((tmp_path / f"{name}{run}" / "p0_prob.png").read_bytes())
        assert masks[0] == masks[1], name


@pytest.fixture(scope="module")
def photo_bucket(tmp_path_factory):
    from services import seaweed_s3

    photos = tmp_path_factory.mktemp("photos")
    _photos(photos, 3)
    with seaweed_s3(tmp_path_factory.mktemp("seaweed")) as server:
        server.make_bucket("inspections")
        client = server.client()
        for path in sorted(photos.iterdir()):
            client.upload_file(str(path), "inspections", f"bridge-7/2026-11/{path.name}")
        client.put_object(Bucket="inspections", Key="bridge-7/2026-11/notes.txt", Body=b"x")
        yield server, photos


def test_predict_from_an_s3_prefix_equals_the_local_folder(
    photo_bucket, gated, tmp_path, monkeypatch
):
    server, photos = photo_bucket
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    model, _ = gated
    cfg = predict.PredictConfig(engine="onnx", tile=128, overlap=16, batch=2)
    uri = "s3://inspections/bridge-7/2026-11"
    remote = predict.run(cfg, uri, model, tmp_path / "s3", progress=False)
    predict.run(cfg, photos, model, tmp_path / "local", progress=False)
    assert len(remote.done) == 3 and not remote.failed  # notes.txt is not a photo
    for i in range(3):
        assert (tmp_path / "s3" / f"p{i}_mask.png").read_bytes() == (
            tmp_path / "local" / f"p{i}_mask.png"
        ).read_bytes()
    report = json.loads((tmp_path / "s3" / "p0.json").read_text())
    assert report["image"] == f"{uri}/p0.jpg" and report["input_fingerprint"].startswith("etag=")
    again = predict.run(cfg, uri, model, tmp_path / "s3", progress=False)
    assert len(again.skipped) == 3 and not again.done
    with pytest.raises(CirlError, match="no objects ending in"):
        predict.run(cfg, "s3://inspections/elsewhere", model, tmp_path / "x", progress=False)


def test_cli_predict_says_which_engine_and_why(gated, tmp_path, cache, capsys):
    from cirl.orchestration.cli import main

    model, _ = gated
    _photos(tmp_path / "in", 1)
    code = main(
        [
            "predict",
            str(tmp_path / "in"),
            "--model",
            str(model),
            "--out",
            str(tmp_path / "o"),
            "--tile",
            "128",
            "--overlap",
            "16",
            "-q",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["engine"] in ("onnx", "onnx-int8", "openvino", "openvino-bf16")
    assert "fastest on this machine" in printed["engine_choice"]
    listing = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert listing["engine_choice"]["engine"] == printed["engine"]
