"""Export and prediction: ONNX contract and parity, seamless sliding window, bad input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import onnx
import pytest
import torch

from cirl.deploy import export, predict
from cirl.deploy.opener import load_engine
from cirl.errors import CirlError
from cirl.models import build_model
from cirl.models.checkpoint import save_checkpoint
from cirl.orchestration.cli import main


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small phase-I-like checkpoint (with std head) and its ONNX export."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = build_model("unet-small", base_width=4, std_head=True)
    # Non-trivial BN statistics so eval mode differs from the initial identity.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(2, 3, 64, 64))
    payload = {
        "model": model.state_dict(),
        "model_config": dict(model.config),
        "config": {"loss": "cirl", "phase": 1, "lr": 0.001},
        "provenance": {"data": "prepared", "manifest_sha256": "ab" * 32},
        "epoch": 4,
    }
    save_checkpoint(root / "model.pt", payload)
    result = export.run(export.ExportConfig(), root / "model.pt", root / "model.onnx")
    return root, result


def test_export_contract_and_parity(exported):
    root, result = exported
    proto = onnx.load(str(root / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    (image,) = proto.graph.input
    (prob,) = proto.graph.output
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert [d.dim_param or d.dim_value for d in prob.type.tensor_type.shape.dim][1] == 1
    meta = {e.key: e.value for e in proto.metadata_props}
    assert meta["opset"] == "18" and meta["stride"] == "16" and meta["std_head"] == "removed"
    assert json.loads(meta["model_config"])["std_head"] is False
    assert json.loads(meta["train_config"])["lr"] == 0.001
    assert json.loads(meta["provenance"])["manifest_sha256"] == "ab" * 32
    assert not any("std_head" in init.name for init in proto.graph.initializer)
    assert result.parity_max_abs_diff <= 1e-4
    report = json.loads((root / "model.onnx.json").read_text())
    assert report["parity"]["input"][2:] != [256, 256]  # checked at a size other than export


def test_onnx_matches_torch_on_other_sizes_and_batches(exported):
    root, _ = exported
    onnx_engine = load_engine(root / "model.onnx", "onnx")
    torch_engine = load_engine(root / "model.pt", "torch")
    x = np.random.default_rng(0).random((3, 3, 96, 160), dtype=np.float32)
    a, b = onnx_engine(x), torch_engine(x)
    assert a.shape == (3, 1, 96, 160)
    assert np.abs(a - b).max() < 1e-4


def test_export_refuses_a_bad_target(exported, tmp_path):
    root, _ = exported
    with pytest.raises(CirlError, match=r"must end in \.onnx"):
        export.run(export.ExportConfig(), root / "model.pt", tmp_path / "model.bin")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(CirlError, match="not a readable cirl checkpoint"):
        export.run(export.ExportConfig(), tmp_path / "junk.pt", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


class ChannelEngine:
    """A fake engine whose 'probability' is the image's red channel: blending must return it."""

    name = "fake"
    stride = 16
    description: ClassVar[dict] = {}

    def __call__(self, batch):
        return batch[:, :1].copy()


@pytest.mark.parametrize(
    ("h", "w", "tile", "overlap", "batch"),
    [(700, 530, 256, 64, 3), (256, 256, 256, 0, 1), (40, 30, 64, 16, 2), (300, 1000, 128, 32, 5)],
)
def test_sliding_window_is_seamless_and_in_place(h, w, tile, overlap, batch):
    rng = np.random.default_rng(h)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    cfg = predict.PredictConfig(tile=tile, overlap=overlap, batch=batch)
    prob8, mask, stats = predict.sliding_window(image, ChannelEngine(), cfg)
    assert prob8.shape == mask.shape == (h, w)
    # weighted blending of identical values gives the value back: no seams, no shifts
    assert np.abs(prob8.astype(int) - image[:, :, 0].astype(int)).max() <= 1
    assert np.array_equal(mask, image[:, :, 0] / 255.0 >= 0.5)
    rows, cols = stats["grid"]
    assert rows * cols == stats["tiles"]


def test_window_geometry():
    assert predict.window_starts(1000, 512, 64) == [0, 448, 488]
    assert predict.window_starts(512, 512, 64) == [0]
    ramp = predict.blend_window(512, 64)
    assert ramp[0] > 0 and ramp[256] == 1.0 and ramp[0] == ramp[-1]
    with pytest.raises(ValueError, match="overlap"):
        predict.PredictConfig(tile=128, overlap=64)


def _write_inputs(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    photo = rng.integers(90, 160, (300, 420, 3), dtype=np.uint8)
    cv2.line(photo, (10, 150), (410, 160), (30, 30, 30), 5)
    cv2.imwrite(str(folder / "colour.jpg"), photo)
    cv2.imwrite(str(folder / "gray.png"), cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(folder / "deep.png"), photo.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "alpha.png"), cv2.cvtColor(photo, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(folder / "small.png"), photo[:50, :70])
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")


def test_predict_folder_with_bad_and_odd_images(exported, tmp_path, capsys):
    root, _ = exported
    _write_inputs(tmp_path / "in")
    code = main(
        [
            "predict",
            str(tmp_path / "in"),
            "--model",
            str(root / "model.onnx"),
            "--out",
            str(tmp_path / "out"),
            "--tile",
            "128",
            "--overlap",
            "32",
            "--mm-per-pixel",
            "0.5",
            "-q",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1 and "1 of 6 photo(s) failed" in captured.err
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert len(summary["done"]) == 5
    assert summary["failed"][0]["image"].endswith("broken.jpg")
    assert "broken.jpg" in summary["failed"][0]["reason"]
    for name, size in [("colour", (300, 420)), ("gray", (300, 420)), ("small", (50, 70))]:
        mask = cv2.imread(str(tmp_path / "out" / f"{name}_mask.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == size and set(np.unique(mask)) <= {0, 255}
        prob = cv2.imread(str(tmp_path / "out" / f"{name}_prob.png"), cv2.IMREAD_UNCHANGED)
        assert prob.shape == size and prob.dtype == np.uint8
        overlay = cv2.imread(str(tmp_path / "out" / f"{name}_overlay.jpg"))
        assert overlay.shape == (*size, 3)
        report = json.loads((tmp_path / "out" / f"{name}.json").read_text())
        assert (report["height"], report["width"]) == size
        assert report["mm_per_pixel"] == 0.5 and report["engine"] == "onnx"
        header = (tmp_path / "out" / f"{name}_cracks.csv").read_text().splitlines()[0]
        assert "length_mm" in header
    notes = {
        n: json.loads((tmp_path / "out" / f"{n}.json").read_text())["conversions"]
        for n in ("gray", "deep", "alpha")
    }
    assert notes["gray"] == ["grayscale expanded to 3 channels"]
    assert notes["deep"] == ["uint16 scaled to 8-bit"]
    assert notes["alpha"] == ["alpha channel dropped"]
    # the same photo in 8 and 16 bit gives the same crack map
    a = cv2.imread(str(tmp_path / "out" / "colour_mask.png"), 0)
    b = cv2.imread(str(tmp_path / "out" / "deep_mask.png"), 0)
    c = cv2.imread(str(tmp_path / "out" / "alpha_mask.png"), 0)
    assert np.array_equal(b, c)
    assert np.mean(a != b) < 0.05  # JPEG vs lossless input differ slightly
    # the overlay is render_overlay's picture of the written mask and of the crack table
    from cirl.deploy.measure import measure_cracks
    from cirl.deploy.photo_outputs import render_overlay

    params = json.loads((tmp_path / "out" / "colour.json").read_text())["params"]
    cracks = measure_cracks(
        a > 0, min_pixels=params["min_crack_pixels"], max_width_px=params["max_crack_width"]
    )
    rows = (tmp_path / "out" / "colour_cracks.csv").read_text().splitlines()
    assert len(rows) == 1 + len(cracks)
    layout: list = []
    expected = render_overlay(
        cv2.imread(str(tmp_path / "in" / "colour.jpg")),
        a > 0,
        cracks,
        alpha=params["overlay_alpha"],
        threshold=params["threshold"],
        mm_per_pixel=0.5,
        layout=layout,
    )
    assert len(layout[0].labels) == len(cracks) and layout[0].scale_bar is not None
    jpeg = cv2.imencode(".jpg", expected, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    assert (tmp_path / "out" / "colour_overlay.jpg").read_bytes() == jpeg


def test_predict_reports_regions_too_wide_to_be_cracks(exported, tmp_path, caplog):
    """A model that marks the whole photo gets a report and a warning, not hours of thinning."""
    root, _ = exported
    _write_inputs(tmp_path / "in")
    # A threshold just above 0 marks every pixel: one photo-sized region.
    cfg = predict.PredictConfig(tile=128, overlap=32, threshold=1e-9, max_crack_width=50)
    result = predict.run(cfg, tmp_path / "in" / "colour.jpg", root / "model.onnx", tmp_path / "o")
    assert result.done and not result.failed
    report = json.loads((tmp_path / "o" / "colour.json").read_text())
    assert report["crack_fraction"] == 1.0 and report["cracks"]["count"] == 0
    regions = report["regions_not_measured"]
    assert regions["count"] == 1 and regions["pixels"] == 300 * 420
    assert regions["largest"][0]["bbox"] == [0, 0, 420, 300]
    assert "not cracks" in caplog.text and "colour.jpg" in caplog.text
    assert (tmp_path / "o" / "colour_cracks.csv").read_text().count("\n") == 1  # header only


def _geo_inputs(folder):
    """Four photos: plain, with a world file, a GeoTIFF, and one with a broken world file."""
    from test_geojson import geotiff_bytes, utm_tags

    folder.mkdir()
    rng = np.random.default_rng(0)
    photo = rng.integers(90, 160, (300, 420, 3), dtype=np.uint8)
    cv2.line(photo, (10, 150), (410, 160), (30, 30, 30), 5)
    cv2.imwrite(str(folder / "plain.jpg"), photo)
    cv2.imwrite(str(folder / "mapped.png"), photo)
    # A, D, B, E, C, F: 1 cm pixels, a small rotation, north up
    (folder / "mapped.pgw").write_text("0.01\n0.001\n0.002\n-0.01\n500000.005\n4000000.005\n")
    grey = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    (folder / "geotiff.tif").write_bytes(geotiff_bytes(grey, utm_tags(1)))
    cv2.imwrite(str(folder / "bad.jpg"), photo)
    (folder / "bad.jgw").write_text("0.01\n0\n0\n-0.01\n")


def _csv_rows(path):
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_writes_the_cracks_as_geojson_in_pixel_and_map_coordinates(exported, tmp_path):
    root, _ = exported
    _geo_inputs(tmp_path / "in")
    out = tmp_path / "out"
    argv = ["predict", str(tmp_path / "in"), "--model", str(root / "model.onnx"), "--out",
            str(out), "--tile", "128", "--overlap", "32", "--mm-per-pixel", "0.5",
            # the untrained model's probabilities are 0.50-0.51: this keeps a few dozen specks
            "--threshold", "0.505", "--min-crack-pixels", "5", "-q"]  # fmt: skip
    assert main(argv) == 0
    collections = {}
    for name in ("plain", "mapped", "geotiff"):
        report = json.loads((out / f"{name}.json").read_text())
        assert report["geojson"]["file"] == f"{name}_cracks.geojson"
        assert f"{name}_cracks.geojson" in report["outputs"]
        collection = json.loads((out / f"{name}_cracks.geojson").read_text())
        collections[name] = collection
        assert collection["type"] == "FeatureCollection" and collection["name"] == f"{name}_cracks"
        assert collection["cirl:image_size"] == [420, 300]
        rows = _csv_rows(out / f"{name}_cracks.csv")
        assert rows and [f["id"] for f in collection["features"]] == [int(r["id"]) for r in rows]
        for feature, row in zip(collection["features"], rows, strict=True):
            assert feature["type"] == "Feature"
            assert feature["geometry"]["type"] in ("Point", "LineString", "MultiLineString")
            for key, value in row.items():
                assert float(feature["properties"][key]) == float(value), key
            assert "widths_mm" in feature["properties"]
    plain, mapped, geotiff = collections["plain"], collections["mapped"], collections["geotiff"]
    assert plain["cirl:crs"] == "pixel" and plain["crs"] is None
    assert "length_map" not in plain["features"][0]["properties"]
    # map coordinates go back, through the world file's inverse, to crack pixels of the mask
    assert mapped["cirl:crs"] == "map" and mapped["crs"] is None  # a world file names no CRS
    assert mapped["cirl:georeference"]["source"] == "mapped.pgw"
    a, b, c, d, e, f = 0.01, 0.002, 500000.005, 0.001, -0.01, 4000000.005
    inverse = np.linalg.inv(np.array([[a, b], [d, e]]))
    # on the crack or a pinhole in it, which the skeleton runs through (filled for it)
    mask = cv2.dilate(cv2.imread(str(out / "mapped_mask.png"), 0), np.ones((3, 3), np.uint8))
    for feature in mapped["features"]:
        geometry = feature["geometry"]
        points = {
            "Point": [geometry["coordinates"]],
            "LineString": geometry["coordinates"],
            "MultiLineString": [p for line in geometry["coordinates"] for p in line],
        }[geometry["type"]]
        for x, y in points:
            col, row = inverse @ np.array([x - c, y - f])
            assert abs(col - round(col)) < 1e-3 and abs(row - round(row)) < 1e-3
            assert mask[round(row), round(col)] == 255
        # between the transform's least and greatest stretch (its singular values)
        least, greatest = np.linalg.svd(np.array([[a, b], [d, e]]), compute_uv=False)[::-1]
        length_px = feature["properties"]["length_px"]
        length = feature["properties"]["length_map"]
        assert 0.99 * least * length_px <= length <= 1.01 * greatest * length_px
    assert geotiff["cirl:crs"] == "map"
    assert geotiff["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    report = json.loads((out / "geotiff.json").read_text())
    assert report["geojson"]["georeference"]["kind"] == "GeoTIFF"
    # the broken world file costs that photo its GeoJSON only, and says why and how to fix it
    assert not (out / "bad_cracks.geojson").exists()
    assert (out / "bad_cracks.csv").is_file() and (out / "bad_overlay.jpg").is_file()
    bad = json.loads((out / "bad.json").read_text())["geojson"]
    assert (
        bad["file"] is None and "bad.jgw" in bad["warning"] and "holds 4 values" in bad["warning"]
    )
    assert "predict.geo: pixel" in bad["warning"]
    summary = {row["name"]: row for row in _csv_rows(out / "summary.csv")}
    assert summary["bad"]["status"] == "done" and "bad.jgw" in summary["bad"]["reason"]
    first = (out / "mapped_cracks.geojson").read_bytes()

    # resume: nothing to redo; a fixed world file redoes that photo, which gets its GeoJSON
    cfg = predict.PredictConfig(
        tile=128, overlap=32, mm_per_pixel=0.5, threshold=0.505, min_crack_pixels=5
    )
    again = predict.run(cfg, tmp_path / "in", root / "model.onnx", out, progress=False)
    assert len(again.skipped) == 4 and not again.done
    (tmp_path / "in" / "bad.jgw").write_text("0.01\n0\n0\n-0.01\n10\n20\n")
    # and a photo done before the GeoJSON existed (its report has no geojson record) is redone
    old = json.loads((out / "plain.json").read_text())
    del old["geojson"], old["params"]["geojson"], old["params"]["geo"]
    old["outputs"].remove("plain_cracks.geojson")
    (out / "plain.json").write_text(json.dumps(old))
    (out / "plain_cracks.geojson").unlink()
    third = predict.run(cfg, tmp_path / "in", root / "model.onnx", out, progress=False)
    assert sorted(Path(p).name for p in third.done) == ["bad.jpg", "plain.jpg"]
    assert json.loads((out / "bad_cracks.geojson").read_text())["cirl:crs"] == "map"
    assert (out / "plain_cracks.geojson").is_file()
    assert (out / "mapped_cracks.geojson").read_bytes() == first  # untouched

    # same inputs, same bytes; geo: pixel ignores the world file; geojson: false writes none
    redo = predict.run(replace(cfg, resume=False), tmp_path / "in", root / "model.onnx",
                       tmp_path / "redo", progress=False)  # fmt: skip
    assert len(redo.done) == 4
    assert (tmp_path / "redo" / "mapped_cracks.geojson").read_bytes() == first
    predict.run(replace(cfg, geo="pixel"), tmp_path / "in", root / "model.onnx",
                tmp_path / "pixel", progress=False)  # fmt: skip
    pixel = json.loads((tmp_path / "pixel" / "mapped_cracks.geojson").read_text())
    assert pixel["cirl:crs"] == "pixel"
    assert pixel["features"][0]["properties"] == {
        k: v for k, v in mapped["features"][0]["properties"].items() if k != "length_map"
    }
    predict.run(replace(cfg, geojson=False), tmp_path / "in", root / "model.onnx", out,
                progress=False)  # fmt: skip
    assert not list(out.glob("*.geojson"))
    assert json.loads((out / "plain.json").read_text())["geojson"]["file"] is None


def test_predict_from_s3_reads_the_world_file_beside_the_object(exported, tmp_path, monkeypatch):
    from services import seaweed_s3

    root, _ = exported
    _geo_inputs(tmp_path / "in")
    cfg = predict.PredictConfig(
        tile=128, overlap=32, mm_per_pixel=0.5, threshold=0.505, min_crack_pixels=5
    )
    with seaweed_s3(tmp_path / "weed") as server:
        for key, value in server.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        server.make_bucket("inspections")
        client = server.client()
        for path in sorted((tmp_path / "in").iterdir()):
            client.upload_file(str(path), "inspections", f"bridge/{path.name}")
        client.put_object(Bucket="inspections", Key="maps/only.jgw", Body=b"1\n0\n0\n-1\n0\n0\n")
        uri = "s3://inspections/bridge"
        remote = predict.run(cfg, uri, root / "model.onnx", tmp_path / "s3", progress=False)
        assert len(remote.done) == 4 and not remote.failed
        report = json.loads((tmp_path / "s3" / "mapped.json").read_text())
        assert report["geojson"]["georeference"]["source"] == f"{uri}/mapped.pgw"
        bad = json.loads((tmp_path / "s3" / "bad.json").read_text())["geojson"]["warning"]
        assert f"{uri}/bad.jgw" in bad and "holds 4 values" in bad
        again = predict.run(cfg, uri, root / "model.onnx", tmp_path / "s3", progress=False)
        assert len(again.skipped) == 4
        with pytest.raises(CirlError, match=r"no objects ending in \.jpg") as caught:
            predict.run(cfg, "s3://inspections/maps", root / "model.onnx", tmp_path / "x", False)
        assert ".jgw" not in str(caught.value)
        with pytest.raises(CirlError, match=r"no objects ending in \.jpg") as caught:
            predict.run(cfg, "s3://inspections/none", root / "model.onnx", tmp_path / "x", False)
        assert ".jgw" not in str(caught.value)
    predict.run(cfg, tmp_path / "in", root / "model.onnx", tmp_path / "local", progress=False)
    for name in ("plain", "mapped", "geotiff"):  # the GeoJSON names the world file, not where
        s3 = (tmp_path / "s3" / f"{name}_cracks.geojson").read_bytes()
        assert s3 == (tmp_path / "local" / f"{name}_cracks.geojson").read_bytes(), name
    assert json.loads(s3)["cirl:crs"] == "map"


def test_predict_engines_agree(exported, tmp_path):
    root, _ = exported
    _write_inputs(tmp_path / "in")
    (tmp_path / "in" / "broken.jpg").unlink()
    cfg = predict.PredictConfig(tile=128, overlap=32)
    predict.run(cfg, tmp_path / "in" / "colour.jpg", root / "model.onnx", tmp_path / "o", False)
    torch_cfg = predict.PredictConfig(tile=128, overlap=32, engine="torch")
    predict.run(torch_cfg, tmp_path / "in" / "colour.jpg", root / "model.pt", tmp_path / "t", False)
    a = cv2.imread(str(tmp_path / "o" / "colour_prob.png"), 0).astype(int)
    b = cv2.imread(str(tmp_path / "t" / "colour_prob.png"), 0).astype(int)
    assert np.abs(a - b).max() <= 1


def test_predict_rejects_models_that_do_not_fit(exported, tmp_path):
    root, _ = exported
    _write_inputs(tmp_path / "in")
    cfg = predict.PredictConfig(engine="onnx")
    with pytest.raises(CirlError, match="PyTorch checkpoint; export it"):
        predict.run(cfg, tmp_path / "in", root / "model.pt", tmp_path / "o", False)
    (tmp_path / "text.onnx").write_text("hello")
    with pytest.raises(CirlError, match="not a loadable ONNX model"):
        predict.run(cfg, tmp_path / "in", tmp_path / "text.onnx", tmp_path / "o", False)
    with pytest.raises(CirlError, match=r"text\.onnx: not a readable ONNX file"):
        predict.run(
            predict.PredictConfig(), tmp_path / "in", tmp_path / "text.onnx", tmp_path / "o", False
        )
    # a valid ONNX graph that is not a crack model: (N, 3, H, W) -> (N, 3, H, W)
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, "h", "w"])
    output = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 3, "h", "w"])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["out"])], "g", [value], [output]
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]),
        str(tmp_path / "id.onnx"),
    )
    with pytest.raises(CirlError, match=r"does not match|not probabilities"):
        predict.run(cfg, tmp_path / "in", tmp_path / "id.onnx", tmp_path / "o", False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CirlError, match="no image files"):
        predict.run(cfg, tmp_path / "empty", root / "model.onnx", tmp_path / "o", False)
    with pytest.raises(CirlError, match="not a multiple of the model's stride"):
        predict.run(
            predict.PredictConfig(tile=100, overlap=10),
            tmp_path / "in" / "colour.jpg",
            root / "model.onnx",
            tmp_path / "o",
            False,
        )


def _evaluation(folder, checkpoint, threshold):
    """An evaluation folder of ``checkpoint`` whose validation split calibrated ``threshold``."""
    from cirl.models.checkpoint import file_sha256

    folder.mkdir()
    metrics = {
        "f1": 0.40,
        "provenance": {"checkpoint_sha256": file_sha256(checkpoint)},
        "threshold_calibration": {
            "split": "val",
            "images": 3,
            "threshold": threshold,
            "f1": 0.55,
            "rule": "the val split's ODS threshold",
            "scored": {"split": "test", "f1": 0.45, "pooled": {"f1": 0.5}},
        },
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_calibrated_threshold_travels_from_evaluation_to_predict(exported, tmp_path):
    """export --evaluation writes the threshold into the model; predict decides at it (auto),
    as at the same number given, and says where it came from; a model without one uses 0.5."""
    root, _ = exported
    evaluation = _evaluation(tmp_path / "eval", root / "model.pt", 0.62)
    calibrated = tmp_path / "calibrated.onnx"
    export.run(export.ExportConfig(), root / "model.pt", calibrated, evaluation=evaluation)
    meta = {e.key: e.value for e in onnx.load(str(calibrated)).metadata_props}
    assert meta["decision_threshold"] == "0.62"
    assert json.loads(meta["threshold_calibration"])["split"] == "val"
    photos = tmp_path / "in"
    photos.mkdir()
    photo = np.random.default_rng(1).integers(60, 200, (160, 200, 3), dtype=np.uint8)
    cv2.imwrite(str(photos / "p.png"), photo)

    def masks(model, out, threshold):
        cfg = predict.PredictConfig(engine="onnx", tile=64, overlap=16, threshold=threshold)
        predict.run(cfg, photos, model, out, progress=False)
        used = json.loads((out / "predictions.json").read_text())["threshold"]
        prob = cv2.imread(str(out / "p_prob.png"), cv2.IMREAD_UNCHANGED)
        return cv2.imread(str(out / "p_mask.png"), 0), prob, used

    auto, prob, used = masks(calibrated, tmp_path / "auto", "auto")
    assert used["value"] == pytest.approx(0.62) and "calibrated on the val split" in used["source"]
    given, _, used_given = masks(calibrated, tmp_path / "given", 0.62)
    assert np.array_equal(auto, given) and used_given["source"] == "given (--threshold)"
    plain, _, used_plain = masks(root / "model.onnx", tmp_path / "plain", "auto")
    assert used_plain["value"] == 0.5 and "no calibrated threshold" in used_plain["source"]
    # the two thresholds split this model's probabilities differently
    assert (prob >= 0.5 * 255).any() and not np.array_equal(auto, plain)


def test_export_refuses_the_evaluation_of_another_checkpoint(exported, tmp_path):
    root, _ = exported
    other = tmp_path / "other.pt"
    other.write_bytes((root / "model.pt").read_bytes() + b"\0")
    evaluation = _evaluation(tmp_path / "eval", other, 0.62)
    with pytest.raises(CirlError, match="scored another checkpoint"):
        export.run(export.ExportConfig(), root / "model.pt", tmp_path / "m.onnx",
                   evaluation=evaluation)  # fmt: skip
    with pytest.raises(CirlError, match="not found"):
        export.run(export.ExportConfig(), root / "model.pt", tmp_path / "m.onnx",
                   evaluation=tmp_path / "missing")  # fmt: skip
    assert not (tmp_path / "m.onnx").exists()
