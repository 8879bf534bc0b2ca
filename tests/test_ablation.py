"""The ablation benchmark's mechanics on a tiny set: every arm runs under the product's recipe,
the mechanism numbers are written, and each arm is compared with the strongest BCE arm.

The measurement itself (2,000 steps, DeepCrack and CFD, seeds 0-2) is benchmarks/ablation.py's
job, not a test's: docs/benchmarks.md has its tables."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from cirl.data import synth

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ablation():
    spec = importlib.util.spec_from_file_location("ablation", REPO / "benchmarks" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_select_keys_reach_cirl_select_as_its_flags(ablation):
    from cirl.orchestration.cli import build_parser

    keys = {"rule": "error", "max_tiles": 3, "verify_data": False, "lam": 0.3}
    flags = [ablation._flag(k, v) for k, v in keys.items()]
    assert flags == ["--rule=error", "--max-tiles=3", "--no-verify-data", "--lam=0.3"]
    required = ["--data", "d", "--checkpoint", "c", "--out", "o"]
    args = build_parser().parse_args(["select", *required, *flags])
    assert (args.max_tiles, args.verify_data, args.rule) == (3, False, "error")


def test_recipe_is_the_products_train_group(ablation, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  pos_weight: 7.0\n  crack_crops: 0.25\n  model: unet\n")
    recipe = ablation.recipe("params", params)
    assert recipe == {"pos_weight": 7.0, "crack_crops": 0.25}  # the recipe keys only
    assert ablation.recipe("plain", params)["precision"] == "bf16"
    assert ablation.is_bce("bce_dice") and not ablation.is_bce("cirl_online")


def test_tiny_ablation_runs_every_arm_and_writes_the_mechanism(ablation, tmp_path):
    raw = tmp_path / "raw"
    synth.run(synth.SynthConfig(n=8, width=128, height=128, seed=3), raw)
    work = tmp_path / "work"
    argv = [
        "--source", str(raw), "--work", str(work), "--steps", "4", "--steps-per-epoch", "2",
        "--seeds", "0,1", "--crop", "64",
        "--prepare-json", '{"split": [0.5, 0.25, 0.25]}', "--timing-repeats", "1",
        "--train-json", '{"precision": "fp32", "channels_last": false}', "--arms", "bce,bce_dice,"
        "cirl,cirl_online,searched", "--arm", 'searched={"phase1": "paper", "select": {"rule": '
        '"error", "lam": 0.3}, "phase2": {"selection": "online", "k": 3, "beta": 2.5}}',
    ]  # fmt: skip
    assert ablation.main(argv) == 0
    result = json.loads((work / "ablation.json").read_text())
    assert set(result["table"]) == {"bce", "bce_dice", "cirl", "cirl_online", "searched"}
    assert result["seeds"] == [0, 1]
    # the product's recipe for every arm: params.yaml's class weight, crack crops and schedule
    config = json.loads((work / "seed0" / "bce_dice" / "config.json").read_text())["train"]
    assert config["pos_weight"] == 10.0 and config["dice"] == 1.0
    assert config["lr_schedule"] == "cosine" and config["crack_crops"] == 0.5
    seed0 = work / "seed0"
    online = json.loads((seed0 / "phase2_cirl_online_from_best" / "config.json").read_text())
    # the recipe's checkpoints: phase II from phase I's best epoch, selection on its last
    assert online["init"] == str(seed0 / "phase1_paper" / "best.pt")
    selection = json.loads((seed0 / "select_paper_ruleerror_lam0.3" / "summary.json").read_text())
    assert Path(selection["checkpoint"]).name == "last.pt"
    online = online["train"]
    assert online["selection"] == "online" and online["pos_weight"] == 10.0
    # an --arm (a sweep's best setting) trains with its own phase-II keys over the recipe
    searched = json.loads((seed0 / "phase2_searched_from_best" / "config.json").read_text())
    searched = searched["train"]
    assert (searched["k"], searched["beta"], searched["pos_weight"]) == (3, 2.5, 10.0)
    baseline = result["baseline"]
    assert baseline in ("bce", "bce_dice")
    assert result["table"][baseline]["f1"]["mean"] >= max(
        result["table"][a]["f1"]["mean"] for a in ("bce", "bce_dice")
    )
    for arm, verdict in result["minus_baseline_f1"].items():
        assert arm != baseline and len(verdict["per_seed"]) == 2
        assert isinstance(verdict["beats_baseline"], bool)
        assert verdict["verdict"] in ("above", "below", "within the spread")
    for arm in ("cirl", "cirl_online"):
        mechanism = result["table"][arm]["mechanism"]
        for key in ("selected_fraction_of_m", "ring_fp_rate_after_phase1",
                    "ring_fp_rate_after_phase2"):  # fmt: skip
            assert 0.0 <= mechanism[key] <= 1.0
    assert result["per_seed"]["0"]["cirl_online"]["mechanism"]["rule"] == "error"
    table = (work / "ablation.md").read_text()
    assert f"F1 - {baseline} per seed" in table and "| cirl_online |" in table


@pytest.mark.parametrize(
    ("arm", "says"),
    [
        ("searched", "NAME=JSON"),
        ("searched={bad json", "not JSON"),
        ('searched={"phase1": "nope", "select": {}, "phase2": {}}', "'nope' is not one of"),
        ('searched={"phase2": {}}', "expected NAME="),
        ('searched={"phase1": "paper", "select": "error", "phase2": {}}', "select: expected an"),
        ('searched={"phase1": "paper", "select": {}, "phase2": [1]}', "phase2: expected an"),
        ('searched={"bce": 3}', "bce: expected an object"),
        ('searched={"phase1": "paper", "select": {"rul": "error"}, "phase2": {}}', "'rul'"),
        ('searched={"phase1": "paper", "select": {}, "phase2": {"betaa": 1}}', "'betaa'"),
        ('searched={"phase1": "paper", "select": {}, "phase2": {"k": "five"}}', "k"),
        ('searched={"phase1": "paper", "select": {}, "phase2": {"lam": 0.2}}', "set by the"),
    ],
)  # fmt: skip
def test_a_malformed_arm_is_refused_before_anything_trains(ablation, arm, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        ablation.main(["--arm", arm, "--arms", "bce,searched", "--work", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--arm" in err and says in err, err
    assert not (tmp_path / "w").exists()  # refused before the work folder is made
