"""Reproducibility: the same inputs and seed give bit-identical outputs, in one process and
across processes (another ``PYTHONHASHSEED``), for phase I, select, phase II and evaluate.

Phase II runs on ambiguity maps that mark every valid pixel, so its CI loss sees 2048 pixels
per image with K = 20 neighbours: enough (S * K * 2 >= 32768) for PyTorch's multi-threaded CPU
accumulate path, whose float atomics once made phase II differ from run to run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cirl.data.manifest import read_manifest
from cirl.models.checkpoint import load_checkpoint

pytestmark = pytest.mark.smoke

TRAIN = {
    "model": "unet-small",
    "width": 8,
    "epochs": 1,
    "steps_per_epoch": 2,
    "batch_size": 2,
    "crop": 64,
    "k": 20,
    "max_pixels": 2048,
    "device": "cpu",
    "seed": 3,
}
# Numbers of a history record that are timings, not results.
TIMINGS = {"seconds", "images_per_s", "val_seconds"}


# The CPU fast path (bfloat16 autocast where the CPU has it, NHWC): just as repeatable.
FAST = {"precision": "bf16", "channels_last": True}


def run_chain(data: Path, ambiguity: Path, out: Path, fast: bool = False) -> None:
    """Phase I -> select -> phase II (on ``ambiguity``) -> evaluate, all into ``out``."""
    from cirl.method import evaluate, selection, train

    params = {**TRAIN, **(FAST if fast else {})}
    train.run(train.TrainConfig(**params, phase=1), data, out / "p1", progress=False)
    selection.run(
        selection.SelectConfig(fraction=0.5, device="cpu"),
        data,
        out / "p1" / "best.pt",
        out / "sel",
        progress=False,
    )
    train.run(
        train.TrainConfig(**params, phase=2),
        data,
        out / "p2",
        init=out / "p1" / "best.pt",
        ambiguity=ambiguity,
        progress=False,
    )
    evaluate.run(
        evaluate.EvaluateConfig(device="cpu", overlays=1),
        data,
        out / "p2" / "last.pt",
        out / "eval",
        progress=False,
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny prepared folder and an ambiguity folder marking every pixel of its train tiles."""
    from cirl.data.prepare import PrepareConfig
    from cirl.data.prepare import run as prepare
    from cirl.data.synth import SynthConfig
    from cirl.data.synth import run as synth

    root = tmp_path_factory.mktemp("determinism")
    synth(SynthConfig(n=4, width=256, height=192), root / "raw")
    prepare(PrepareConfig(tile=128, split=(0.5, 0.25, 0.25)), root / "raw", "folder", root / "prep")
    ambiguity = root / "all_ambiguous"
    (ambiguity / "ambiguous").mkdir(parents=True)
    for record in read_manifest(root / "prep"):
        full = np.full((record.tile_height, record.tile_width), 255, np.uint8)
        assert cv2.imwrite(str(ambiguity / "ambiguous" / f"{record.tile_id}.png"), full)
    return root / "prep", ambiguity


def _same_weights(a: Path, b: Path) -> None:
    one, two = load_checkpoint(a), load_checkpoint(b)
    assert one["model"].keys() == two["model"].keys()
    differ = [k for k in one["model"] if not torch.equal(one["model"][k], two["model"][k])]
    assert not differ, f"{a} and {b} differ in {differ[:5]}"
    strip = [{k: v for k, v in h.items() if k not in TIMINGS} for h in one["history"]]
    assert strip == [{k: v for k, v in h.items() if k not in TIMINGS} for h in two["history"]]


def _same_files(a: Path, b: Path, names: list[str]) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def assert_same_outputs(a: Path, b: Path) -> None:
    """Every result of two :func:`run_chain` folders is identical (paths and timings aside)."""
    for phase in ("p1", "p2"):
        _same_weights(a / phase / "best.pt", b / phase / "best.pt")
        _same_weights(a / phase / "last.pt", b / phase / "last.pt")
    maps = [n for n in _tree(a / "sel") if n.startswith(("ambiguous", "log_variance"))]
    assert maps and _tree(a / "sel") == _tree(b / "sel")
    _same_files(a / "sel", b / "sel", [*maps, "selection.csv", "overview.png"])
    # the checkpoint's path and hash differ (its history holds timings); the rest may not
    path_free = {"checkpoint", "checkpoint_sha256"}
    summaries = [json.loads((x / "sel" / "summary.json").read_text()) for x in (a, b)]
    assert [{k: v for k, v in s.items() if k not in path_free} for s in summaries] == [
        {k: v for k, v in summaries[1].items() if k not in path_free}
    ] * 2
    _same_files(a / "eval", b / "eval", ["per_image.csv", "pr_curve.csv"])
    metrics = [json.loads((x / "eval" / "metrics.json").read_text()) for x in (a, b)]
    for m in metrics:
        m.pop("provenance")
    assert metrics[0] == metrics[1]


def test_ci_loss_gradient_is_bitwise_repeatable():
    """2304 pixels x K = 20: large enough for the multi-threaded accumulate of indexing."""
    from cirl.method.losses import ci_loss

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 48, 48, generator=generator)
    features = torch.randn(2, 8, 48, 48, generator=generator)
    ambiguous = torch.ones(2, 1, 48, 48, dtype=torch.bool)
    grads = []
    for _ in range(4):
        x = logits.clone().requires_grad_()
        ci_loss(torch.sigmoid(x), features, ambiguous, k=20, max_pixels=4096).backward()
        grads.append(x.grad)
    assert all(torch.equal(grads[0], g) for g in grads[1:])


@pytest.mark.parametrize("fast", [False, True], ids=["fp32", "bf16-channels-last"])
def test_chain_is_identical_twice_in_one_process(inputs, tmp_path, fast):
    data, ambiguity = inputs
    run_chain(data, ambiguity, tmp_path / "a", fast)
    run_chain(data, ambiguity, tmp_path / "b", fast)
    assert_same_outputs(tmp_path / "a", tmp_path / "b")
    if fast:  # and the fast path really ran, recorded with the run
        for phase in ("p1", "p2"):
            provenance = load_checkpoint(tmp_path / "a" / phase / "last.pt")["provenance"]
            assert provenance["precision"] == "bf16" and provenance["channels_last"] is True


def test_fast_path_is_a_different_computation_from_fp32(inputs, tmp_path):
    """bf16 autocast changes the weights (it is not silently ignored), but not by much."""
    from cirl.method import train

    weights = {}
    for name, extra in (("fp32", {}), ("bf16", FAST)):
        params = {**TRAIN, "loss": "bce", **extra}
        train.run(train.TrainConfig(**params), inputs[0], tmp_path / name, progress=False)
        weights[name] = load_checkpoint(tmp_path / name / "last.pt")["model"]
    deltas = [(weights["fp32"][k] - weights["bf16"][k]).abs().max() for k in weights["fp32"]]
    assert max(deltas) > 0
    assert max(deltas) < 0.05


def test_auto_arithmetic_is_measured_and_recorded_and_repeatable(inputs, tmp_path, monkeypatch):
    """``auto`` is timed (not read off the CPU flags), recorded with the run, and two runs on
    this machine (the second from the cache) give the same weights."""
    from cirl.method import train

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    params = {**TRAIN, "loss": "bce", "precision": "auto", "channels_last": "auto"}
    for name in ("a", "b"):
        train.run(train.TrainConfig(**params), inputs[0], tmp_path / name, progress=False)
    _same_weights(tmp_path / "a" / "last.pt", tmp_path / "b" / "last.pt")
    first, second = (
        load_checkpoint(tmp_path / name / "last.pt")["provenance"] for name in ("a", "b")
    )
    assert first["arithmetic"]["cached"] is False and second["arithmetic"]["cached"] is True
    assert set(first["arithmetic"]["ms_per_step"]) == {"fp32", "fp32+cl", "bf16", "bf16+cl"}
    for provenance in (first, second):
        assert provenance["precision"] in ("fp32", "bf16")
        assert isinstance(provenance["channels_last"], bool)
        assert provenance["machine"]["cpu"] and "features" in provenance["machine"]
    with pytest.raises(ValueError, match="precision"):
        train.TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="channels_last"):
        train.TrainConfig(channels_last="sometimes")


def test_chain_is_identical_in_two_processes(inputs, tmp_path):
    data, ambiguity = inputs
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
        "from test_determinism import run_chain; "
        "run_chain(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))"
    )
    here = str(Path(__file__).parent)
    for name, hash_seed in (("a", "1"), ("b", "2")):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", code, here, str(data), str(ambiguity), str(tmp_path / name)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    assert_same_outputs(tmp_path / "a", tmp_path / "b")


def _one_step_seeing(probe, data: Path, out: Path) -> list:
    """One BCE training step; what ``probe()`` returned inside the training, per epoch."""
    from cirl.method import train

    seen = []
    train.run(
        train.TrainConfig(**{**TRAIN, "loss": "bce", "steps_per_epoch": 1}),
        data,
        out,
        progress=False,
        on_epoch=lambda record: seen.append(probe()),
    )
    return seen


def test_training_runs_in_deterministic_mode_and_restores_the_setting(inputs, tmp_path):
    assert not torch.are_deterministic_algorithms_enabled()
    seen = _one_step_seeing(torch.are_deterministic_algorithms_enabled, inputs[0], tmp_path)
    assert seen == [True]
    assert not torch.are_deterministic_algorithms_enabled()


def test_training_computes_subnormals_even_when_the_caller_flushes(inputs, tmp_path):
    """A thread left flushing by inference (onnxruntime never clears the mode it sets) would
    train other weights than a fresh process: training switches the mode off, then back."""
    from cirl import fpenv
    from cirl.method import train

    if not fpenv.available():
        pytest.skip("no fegetenv in this C library")
    torch.set_flush_denormal(True)
    try:
        seen = _one_step_seeing(fpenv.flushes_subnormals, inputs[0], tmp_path)
        assert seen == [False]
        assert fpenv.flushes_subnormals()
    finally:
        torch.set_flush_denormal(False)
    assert train.flushing_threads() == 0


def test_worker_threads_created_while_flushing_are_detected():
    """PyTorch's worker threads keep the mode of the moment they were made: training in such a
    process warns (it cannot switch their mode), which :func:`cirl.method.train.flushing_threads`
    detects in a new process whose first parallel op runs while flushing."""
    if torch.get_num_threads() < 2:
        pytest.skip("one thread: no worker threads")
    code = (
        "import torch; from cirl.method.train import flushing_threads; "
        "torch.set_flush_denormal(True); before = flushing_threads(); "
        "torch.set_flush_denormal(False); print(before, flushing_threads())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    threads = torch.get_num_threads()
    assert done.stdout.split() == [str(threads), str(threads - 1)]
