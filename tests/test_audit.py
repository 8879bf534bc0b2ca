"""``cirl audit``: lineage of a registered model, --verify and --retrain, on a tiny real chain.

The module's fixture runs the stages the pipeline runs (prepare, phase I, select, phase II,
evaluate, export, register) on four small synthetic photos, each inside a
:func:`cirl.lineage.tracking.stage_run` nested under one
:func:`cirl.lineage.tracking.start_pipeline_run`, with a SQLite store in a temporary folder: the
records a tracked pipeline run leaves. A second version of the same files is registered outside
any pipeline run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import pytest

from cirl import audit
from cirl.errors import CirlError
from cirl.lineage import registry, tracking

pytestmark = pytest.mark.smoke

NAME = "audit-crack"
TRAIN = {
    "model": "unet-small",
    "width": 8,
    "epochs": 1,
    "steps_per_epoch": 2,
    "batch_size": 2,
    "crop": 64,
    "max_pixels": 2048,
    "device": "cpu",
    "seed": 3,
    # measured on this machine (cirl.method.arithmetic); the retrain must reuse what was recorded
    "precision": "auto",
    "channels_last": "auto",
}
CHAIN = ["prepare", "train phase 1", "select", "train phase 2", "evaluate", "export", "register"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A tracked pipeline run of the whole chain, its registered model (v1, champion), and
    v2: the same files registered outside a pipeline run."""
    from cirl.data import prepare, synth
    from cirl.deploy import export
    from cirl.method import evaluate, selection, train

    root = tmp_path_factory.mktemp("audit")
    patch = pytest.MonkeyPatch()
    for key in ("MLFLOW_TRACKING_URI", tracking.PARENT_RUN_ENV):
        patch.delenv(key, raising=False)
    patch.setenv(registry.CACHE_ENV, str(root / "cache"))
    patch.setenv("XDG_CACHE_HOME", str(root / "xdg"))  # the arithmetic's cache, spawn sees it
    store = tracking.TrackingConfig(track=True, tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    raw, prep = root / "raw", root / "prep"
    synth.run(synth.SynthConfig(n=4, width=256, height=192), raw)
    parent = tracking.start_pipeline_run(store, run_name="audit test")
    try:

        def stage(name, cfg, out, data=prep, **kwargs):
            return tracking.stage_run(
                name, cfg, store, data=data, out=out, parent_run_id=parent, **kwargs
            )

        cfg = prepare.PrepareConfig(tile=128, split=(0.5, 0.25, 0.25), workers=1)
        with stage("prepare", cfg, prep, data=None, tags={"cirl.source": str(raw)}):
            prepare.run(cfg, raw, "folder", prep, progress=False)
        cfg = train.TrainConfig(**TRAIN, phase=1)
        with stage("train", cfg, root / "p1", run_name="train phase 1") as run:
            train.run(cfg, prep, root / "p1", progress=False, on_epoch=run.on_epoch)
        cfg = selection.SelectConfig(fraction=0.5, device="cpu")
        with stage("select", cfg, root / "sel"):
            selection.run(cfg, prep, root / "p1" / "last.pt", root / "sel", progress=False)
        cfg = train.TrainConfig(**TRAIN, phase=2)
        with stage("train", cfg, root / "p2", run_name="train phase 2") as run:
            train.run(
                cfg,
                prep,
                root / "p2",
                init=root / "p1" / "best.pt",
                ambiguity=root / "sel",
                progress=False,
                on_epoch=run.on_epoch,
            )
        # 0.4, not 0.5: this barely trained model finds cracks there (non-zero F1), and the
        # audit must re-evaluate with the recorded parameters, not the defaults
        cfg = evaluate.EvaluateConfig(device="cpu", overlays=0, thresholds=9, threshold=0.4)
        with stage("evaluate", cfg, root / "eval"):
            evaluate.run(cfg, prep, root / "p2" / "best.pt", root / "eval", progress=False)
        cfg = export.ExportConfig(export_size=64, check_height=64, check_width=96)
        with stage("export", cfg, root / "model.onnx", data=None):
            export.run(cfg, root / "p2" / "best.pt", root / "model.onnx")
        first = registry.register(
            registry.RegisterConfig(name=NAME, promote=True),
            root / "model.onnx",
            root / "eval",
            root / "p2" / "best.pt",
            store,
            parent,
        )
    finally:
        tracking.end_pipeline_run(parent, store)
    second = registry.register(
        registry.RegisterConfig(name=NAME),
        root / "model.onnx",
        root / "eval",
        root / "p2" / "best.pt",
        store,
    )
    assert (first.version, second.version) == ("1", "2")
    yield {"root": root, "store": store, "prep": prep, "parent": parent, "raw": raw}
    patch.undo()


@pytest.fixture(scope="module")
def record(chain):
    return audit.lineage(f"models:/{NAME}@champion", chain["store"])


def test_lineage_holds_the_chain_in_order_with_params_and_hashes(chain, record):
    manifest = tracking.manifest_sha256(chain["prep"])
    runs = record["chain"]["runs"]
    assert [r["role"] for r in runs] == CHAIN
    assert record["chain"]["complete"] and not record["chain"]["missing"]
    assert record["chain"]["parent"]["run_id"] == chain["parent"]
    assert record["version"] == "1" and record["model"]["aliases"] == ["champion"]
    phase1, phase2 = runs[1]["params"], runs[3]["params"]
    assert (phase1["phase"], phase2["phase"], phase1["width"], phase1["seed"]) == (1, 2, 8, 3)
    assert runs[2]["params"]["fraction"] == 0.5 and runs[0]["params"]["tile"] == 128
    # every stage that read the prepared folder names its manifest (export reads a checkpoint)
    unnamed = [r["role"] for r in runs if r["tags"].get("cirl.manifest_sha256") != manifest]
    assert unnamed == ["export"]
    assert "val_f1" in runs[1]["metrics"] and "test_f1" in runs[4]["metrics"]
    data = record["data"]
    assert data["manifest_sha256"] == manifest and data["path"] == str(chain["prep"])
    assert data["dataset_card"]["manifest_sha256"] == manifest
    assert data["dataset_card"]["tiles"]["test"] >= 1
    assert record["code"]["git_commit"] == tracking.git_state()[0]
    assert record["environment"]["torch"] and record["metrics"]["f1"] is not None
    assert record["model"]["train_config"]["phase"] == 2
    assert [(m["alias"], m["version"]) for m in record["alias_history"]] == [("champion", "1")]
    assert json.loads(json.dumps(record)) == record  # plain JSON values only

    text = audit.markdown(record)
    for needle in (
        manifest,
        record["model"]["checkpoint_sha256"],
        repr(record["metrics"]["f1"])[:6],
        "## Chain of runs",
        "train phase 2",
        "## Alias history",
    ):
        assert needle in text, needle
    if record["code"]["git_commit"]:
        assert record["code"]["git_commit"] in text


def test_a_version_registered_outside_a_pipeline_has_an_incomplete_chain(chain):
    record = audit.lineage(f"models:/{NAME}/2", chain["store"])
    assert not record["chain"]["complete"] and record["chain"]["parent"] is None
    assert [r["role"] for r in record["chain"]["runs"]] == ["register"]
    assert "outside a pipeline" in record["chain"]["note"]
    assert "Complete: no" in audit.markdown(record)
    with pytest.raises(CirlError, match=r"no finished train phase 1 run.*--track"):
        audit.retrain(record, audit.AuditConfig(), chain["root"] / "unused")


def test_unknown_models_aliases_and_stores_are_named(chain, tmp_path):
    store = chain["store"]
    with pytest.raises(CirlError, match=r"no registered model 'nope'.*models there: audit-crack"):
        audit.lineage("models:/nope@champion", store)
    with pytest.raises(CirlError, match=r"no alias 'gold' \(aliases: champion\)"):
        audit.lineage(f"models:/{NAME}@gold", store)
    with pytest.raises(CirlError, match="has no version 9"):
        audit.lineage(f"models:/{NAME}/9", store)
    with pytest.raises(CirlError, match="is not models:/NAME@ALIAS"):
        audit.lineage("runs:/abc/model", store)
    missing = tracking.TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'none.db'}")
    with pytest.raises(CirlError, match=r"cannot audit .*no database"):
        audit.lineage(f"models:/{NAME}@champion", missing)
    assert not (tmp_path / "none.db").exists()


def test_verify_passes_on_the_untouched_chain(chain, record):
    result = audit.verify(record, audit.AuditConfig(device="cpu"), tracking=chain["store"])
    assert result.ok, [d.line() for d in result.differences]
    tiles = sum(record["data"]["dataset_card"]["tiles"].values())
    assert result.files_checked >= 2 * tiles
    assert record["metrics"]["f1"] > 0 and result.metrics["f1"]["difference"] == 0.0
    assert result.onnx["max_abs_prob_diff"] <= 1e-4
    text = audit.markdown(record, result)
    assert "PASSED" in text and "re-evaluated" in text


def _corrupt_copy(prep: Path, folder: Path, split: str) -> Path:
    """A copy of the prepared folder with one pixel of one ``split`` image changed."""
    from cirl.data.manifest import read_manifest

    shutil.copytree(prep, folder)
    row = next(r for r in read_manifest(folder) if r.split == split)
    image = cv2.imread(str(folder / row.image))
    image[0, 0] = 255 - image[0, 0]
    assert cv2.imwrite(str(folder / row.image), image)
    return folder / row.image


def test_verify_names_a_changed_tile_and_a_changed_metric(chain, record, tmp_path):
    cfg = audit.AuditConfig(device="cpu", onnx=False)
    changed = _corrupt_copy(chain["prep"], tmp_path / "copy", "train")
    result = audit.verify(record, cfg, data=tmp_path / "copy", tracking=chain["store"])
    assert [(d.kind, d.what) for d in result.differences] == [("data", str(changed))]
    assert result.differences[0].found != result.differences[0].expected

    # a recorded score edited after registration no longer matches the weights
    client = registry._client(chain["store"])[0]
    f1 = record["metrics"]["f1"]
    client.set_model_version_tag(NAME, "2", "test.f1", repr(f1 + 0.01))
    try:
        edited = audit.lineage(f"models:/{NAME}/2", chain["store"])
    finally:
        client.set_model_version_tag(NAME, "2", "test.f1", repr(f1))
    result = audit.verify(edited, cfg, tracking=chain["store"])
    assert [(d.kind, d.what) for d in result.differences] == [("metric", "test.f1")]
    assert repr(f1 + 0.01) in result.differences[0].expected
    assert result.differences[0].found.startswith(repr(f1))


def test_missing_data_names_the_recorded_path_or_is_prepared_again(chain, record, tmp_path):
    gone = json.loads(json.dumps(record))
    gone["data"]["path"] = str(tmp_path / "gone")
    with pytest.raises(CirlError, match=r"gone is not on this machine.*dvc pull.*--data"):
        audit.locate_data(gone, None, None, chain["store"])
    # the chain's prepare run names its raw folder and parameters: prepared again, identical
    again = audit.locate_data(gone, None, tmp_path, chain["store"])
    assert again == tmp_path / "prepared"
    assert tracking.manifest_sha256(again) == record["data"]["manifest_sha256"]
    with pytest.raises(CirlError, match=r"no manifest\.csv"):
        audit.locate_data(record, tmp_path / "empty", None, chain["store"])


def test_command_line_verify_and_retrain(chain, tmp_path, capsys):
    """--retrain on this machine reproduces the registered weights bit for bit (CPU training
    is deterministic, tests/test_determinism.py) and so every score."""
    from cirl.orchestration.cli import main

    uri = ["--tracking-uri", chain["store"].tracking_uri, "--device", "cpu", "-q"]
    out = tmp_path / "audit"
    # The cache now says the opposite of what the training measured: a retrain that measured
    # (or read the cache) instead of reusing the recorded arithmetic would compute other weights.
    cache = chain["root"] / "xdg" / "cirl" / "train-arithmetic.json"
    entries = json.loads(cache.read_text())
    assert entries
    recorded = {(e["precision"], e["channels_last"]) for e in entries.values()}
    flipped = {
        key: {
            **e,
            "precision": "fp32" if e["precision"] == "bf16" else "bf16",
            "channels_last": not e["channels_last"],
        }
        for key, e in entries.items()
    }
    cache.write_text(json.dumps(flipped))
    code = main(
        ["audit", f"models:/{NAME}@champion", "--out", str(out), "--verify", "--retrain", *uri]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.startswith(f"# Audit of models:/{NAME}@champion")
    assert str(out / "audit.md") in captured.err and "error:" not in captured.err
    assert (out / "audit.md").read_text() == captured.out
    report = json.loads((out / "audit.json").read_text())
    assert report["ok"] and report["verify"]["ok"] and report["retrain"]["ok"]
    retrained = report["retrain"]
    assert retrained["weights"]["identical"], retrained["weights"]["differ"]
    assert all(m["difference"] == 0.0 for m in retrained["metrics"].values())
    assert [s["stage"] for s in retrained["stages"]] == [
        "train phase 1",
        "select",
        "train phase 2",
        "evaluate",
    ]
    assert "bit-identical" in captured.out
    ((precision, channels_last),) = recorded
    arithmetic = precision + (" + channels_last" if channels_last else "")
    assert f"trained in the recorded arithmetic: {arithmetic}" in retrained["notes"]
    assert not any("retrained on" in w for w in retrained["warnings"])  # the same CPU

    changed = _corrupt_copy(chain["prep"], tmp_path / "copy", "test")
    code = main(
        ["audit", f"models:/{NAME}/1", "--out", str(out), "--verify", "--no-onnx",
         "--data", str(tmp_path / "copy"), *uri]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert f"error: data {changed}: expected " in err
    assert not json.loads((out / "audit.json").read_text())["ok"]

    assert main(["audit", f"models:/{NAME}@gold", "--out", str(out), *uri]) == 2
    assert "error: cannot audit" in capsys.readouterr().err
    nowhere = tmp_path / "never-made"
    assert main(["audit", f"models:/{NAME}@gold", "--out", str(nowhere), *uri]) == 2
    assert not nowhere.exists()  # an unknown model leaves no empty report folder


def test_at_a_time_audits_the_version_that_held_the_alias_then(chain, tmp_path, capsys):
    """ "Which model was champion on date X": from the recorded alias moves."""
    import datetime as dt

    from cirl.orchestration.cli import main

    uri = ["--tracking-uri", chain["store"].tracking_uri, "--out", str(tmp_path), "-q"]
    now = dt.datetime.now(dt.UTC).isoformat()
    assert main(["audit", f"models:/{NAME}@champion", "--at", now, *uri]) == 0
    captured = capsys.readouterr()
    assert f"models:/{NAME}@champion at {now}: models:/{NAME}/1" in captured.err
    assert json.loads((tmp_path / "audit.json").read_text())["lineage"]["version"] == "1"
    assert main(["audit", f"models:/{NAME}@champion", "--at", "2000-01-01", *uri]) == 2
    assert f"no version of '{NAME}' held 'champion' at 2000-01-01" in capsys.readouterr().err
    assert main(["audit", f"models:/{NAME}/1", "--at", "2000-01-01", *uri]) == 2
    assert "--at needs a models:/NAME@ALIAS URI" in capsys.readouterr().err
