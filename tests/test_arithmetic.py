"""The training arithmetic chosen by measurement (``precision: auto``, ``channels_last: auto``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cirl.method import arithmetic
from cirl.method.train import TrainConfig

SMALL = {"model": "unet-small", "width": 4, "batch_size": 1, "crop": 32, "device": "cpu"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "cirl" / "train-arithmetic.json"


def test_candidates_follow_the_request():
    assert arithmetic.candidates("auto", "auto") == [
        ("fp32", False),
        ("fp32", True),
        ("bf16", False),
        ("bf16", True),
    ]
    assert arithmetic.candidates("fp32", "auto") == [("fp32", False), ("fp32", True)]
    assert arithmetic.candidates("auto", True) == [("fp32", True), ("bf16", True)]
    assert arithmetic.candidates("bf16", False) == [("bf16", False)]


def test_bf16_must_beat_fp32_by_more_than_the_margin():
    # a Xeon without AMX (the figures): fp32 + NHWC is the fastest
    xeon = {
        ("fp32", False): 0.353,
        ("fp32", True): 0.305,
        ("bf16", False): 0.40,
        ("bf16", True): 0.363,
    }
    assert arithmetic.decide(xeon) == ("fp32", True)
    # bf16 ahead, but within the margin: the reference arithmetic keeps it
    close = {("fp32", True): 0.200, ("bf16", True): 0.195}
    assert arithmetic.decide(close) == ("fp32", True)
    # clearly ahead (this AMD EPYC: 1.8x)
    epyc = {
        ("fp32", False): 0.56,
        ("fp32", True): 0.36,
        ("bf16", False): 0.26,
        ("bf16", True): 0.19,
    }
    assert arithmetic.decide(epyc) == ("bf16", True)
    # whatever the timings, the choice is never slower than the best fp32 arm beyond the margin
    for seconds in (xeon, close, epyc):
        chosen = seconds[arithmetic.decide(seconds)]
        best_fp32 = min(v for (p, _), v in seconds.items() if p == "fp32")
        assert chosen <= best_fp32 * (1 + arithmetic.MARGIN)
    # only bf16 asked for: nothing to compare it with
    assert arithmetic.decide({("bf16", False): 0.3, ("bf16", True): 0.2}) == ("bf16", True)


def test_a_configured_arithmetic_is_not_measured(cache, monkeypatch):
    monkeypatch.setattr(arithmetic, "time_steps", lambda *a, **k: pytest.fail("measured"))
    chosen = arithmetic.choose(TrainConfig(**SMALL, precision="fp32", channels_last=True), 32)
    assert (chosen["precision"], chosen["channels_last"]) == ("fp32", True)
    assert not cache.exists()


def test_auto_times_the_real_step_caches_it_and_leaves_the_random_state(cache):
    cfg = TrainConfig(**SMALL, precision="auto", channels_last="auto", phase=1)
    rng = torch.get_rng_state()
    first = arithmetic.choose(cfg, 32)
    assert torch.equal(rng, torch.get_rng_state())  # the probe's model has its own seed
    assert first["cached"] is False
    assert set(first["ms_per_step"]) == {"fp32", "fp32+cl", "bf16", "bf16+cl"}
    assert all(v > 0 for v in first["ms_per_step"].values())
    assert (first["precision"], first["channels_last"]) == arithmetic.decide(
        {
            (p, c): first["ms_per_step"][arithmetic.arm_name(p, c)]
            for p, c in arithmetic.candidates("auto", "auto")
        }
    )
    assert first["machine"]["cpu"] and "kind" in first["machine"]
    stored = json.loads(cache.read_text())
    assert len(stored) == 1
    second = arithmetic.choose(cfg, 32)
    assert second["cached"] is True
    assert (second["precision"], second["channels_last"]) == (
        first["precision"],
        first["channels_last"],
    )
    # another crop is another setting: measured again
    arithmetic.choose(cfg, 48)
    assert len(json.loads(cache.read_text())) == 2


def test_phase_two_probe_runs_its_own_loss(cache):
    """Phase II (the CI term on an ambiguous ring, no std head) is timed as it trains."""
    cfg = TrainConfig(**SMALL, precision="auto", channels_last=False, phase=2, k=4, max_pixels=64)
    seconds = arithmetic.time_steps(cfg, 32, [("fp32", False)], rounds=1)
    assert seconds[("fp32", False)] > 0


def test_an_unwritable_cache_still_chooses(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # a file where the folder should be
    monkeypatch.setattr(
        arithmetic, "time_steps", lambda cfg, side, arms, **k: {arm: 1.0 for arm in arms}
    )
    chosen = arithmetic.choose(TrainConfig(**SMALL, precision="auto"), 32)
    assert chosen["precision"] == "fp32" and chosen["cached"] is False


def test_resume_reuses_the_recorded_arithmetic(tmp_path, monkeypatch):
    from cirl.method.train import resolve_arithmetic

    monkeypatch.setattr(arithmetic, "choose", lambda *a: pytest.fail("measured again"))
    cfg = TrainConfig(**SMALL, precision="auto", channels_last="auto")
    recorded = {"precision": "bf16", "channels_last": True, "arithmetic": {"ms_per_step": {}}}
    chosen = resolve_arithmetic(cfg, torch.device("cpu"), 32, recorded)
    assert (chosen["precision"], chosen["channels_last"]) == ("bf16", True)
    # CUDA: amp decides, auto is NCHW, nothing is timed
    cuda = resolve_arithmetic(cfg, torch.device("cuda"), 32)
    assert (cuda["precision"], cuda["channels_last"]) == ("fp16", False)


def test_machine_names_the_cpu_kind():
    from cirl import host

    here = host.cpu()
    assert here["logical_cores"] >= 1 and here["cpu"]
    assert set(here["features"]) <= set(host.FEATURES)
    if "amx_bf16" in here["features"]:
        assert here["kind"] == "AMX"
    # the identity that tells apart CPUs a virtual machine names alike ("AMD EPYC")
    info = Path("/proc/cpuinfo")
    if info.is_file() and "cpu family" in info.read_text():
        assert " family " in f" {here['cpu_id']}" and " model " in here["cpu_id"]
    assert host._identity({"vendor_id": "GenuineIntel", "cpu family": "6", "model": "143"}) == (
        "GenuineIntel family 6 model 143"
    )
    assert host._identity({"vendor_id": "ARM"}) is None


def test_audit_retrains_in_the_recorded_arithmetic_and_says_when_the_cpu_differs():
    from cirl import audit

    cfg = TrainConfig(**SMALL, precision="auto", channels_last="auto")
    same = audit.as_trained(cfg, {"precision": "bf16", "channels_last": True})
    assert (same.precision, same.channels_last) == ("bf16", True)
    assert audit.as_trained(cfg, {"precision": "fp16"}) == cfg  # CUDA amp: as configured
    assert audit.as_trained(cfg, {}) == cfg
    from cirl import host

    here = {**host.cpu(), "threads": torch.get_num_threads()}
    assert audit.cpu_kind_warning({"machine": here}, 0.01) is None
    other = {**here, "cpu": "Intel(R) Xeon(R) Platinum 8481C", "kind": "AMX",
             "cpu_id": "GenuineIntel family 6 model 143 stepping 8"}  # fmt: skip
    warning = audit.cpu_kind_warning({"machine": other}, 0.01)
    assert "Xeon" in warning and "retrain tolerance 0.01" in warning
    assert "family 6 model 143" in warning  # the recorded CPU's identity, to look it up
    assert "recorded no CPU" in audit.cpu_kind_warning({}, 0.01)


def test_select_runs_in_the_precision_phase_one_trained_in():
    from cirl.method.selection import SelectConfig, forward_precision

    cpu = torch.device("cpu")
    assert forward_precision("auto", {"provenance": {"precision": "bf16"}}, cpu) == "bf16"
    assert forward_precision("auto", {"provenance": {"precision": "fp32"}}, cpu) == "fp32"
    assert forward_precision("auto", {}, cpu) == "fp32"  # recorded before the option
    assert forward_precision("bf16", {}, cpu) == "bf16"
    assert (
        forward_precision("auto", {"provenance": {"precision": "bf16"}}, torch.device("cuda"))
        == "fp32"
    )
    with pytest.raises(ValueError, match="precision"):
        SelectConfig(precision="fp16")


def test_cli_takes_true_false_and_auto_for_channels_last():
    from cirl.orchestration.cli import build_parser

    parser = build_parser()
    base = ["train", "--data", "d", "--out", "o"]
    assert parser.parse_args([*base, "--channels-last", "auto"]).channels_last == "auto"
    assert parser.parse_args([*base, "--channels-last", "false"]).channels_last is False
    assert parser.parse_args([*base, "--channels-last"]).channels_last is True
    assert parser.parse_args(base).channels_last is None  # not given: --params decides
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--channels-last", "sometimes"])


def test_subnormal_benchmark_counts_and_times_a_trained_step(tmp_path):
    """benchmarks/subnormal_train.py on a tiny trained checkpoint: the counts cover every weight,
    both modes are timed in their own processes, and the CPU is recorded."""
    import importlib.util

    from cirl.data.prepare import PrepareConfig
    from cirl.data.prepare import run as prepare
    from cirl.data.synth import SynthConfig
    from cirl.data.synth import run as synth
    from cirl.method import train

    synth(SynthConfig(n=4, width=128, height=128, seed=5), tmp_path / "raw")
    prepare(PrepareConfig(tile=64, split=(0.5, 0.25, 0.25)), tmp_path / "raw", "folder",
            tmp_path / "prep")  # fmt: skip
    cfg = TrainConfig(**SMALL, epochs=1, steps_per_epoch=2, precision="fp32", verify_data=False)
    train.run(cfg, tmp_path / "prep", tmp_path / "run", progress=False)
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "subnormal_train.py"
    spec = importlib.util.spec_from_file_location("subnormal_train", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "subnormal.json"
    argv = ["--checkpoint", str(tmp_path / "run" / "best.pt"), "--data", str(tmp_path / "prep"),
            "--steps", "1", "--rounds", "1", "--json", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    counted = result["subnormals_in_one_step"]
    from cirl.models.checkpoint import build_from_checkpoint, load_checkpoint

    model = build_from_checkpoint(load_checkpoint(tmp_path / "run" / "best.pt"))
    assert counted["weights"]["of"] == sum(p.numel() for p in model.parameters())
    assert 0 <= counted["activation_grads"]["subnormal"] <= counted["activation_grads"]["of"]
    assert all(v > 0 for v in result["ms_per_step"].values())
    assert result["off_over_on"] > 0 and result["machine"]["cpu"]
    with pytest.raises(SystemExit):  # a missing checkpoint: the parser says which and where
        bench.main(["--checkpoint", str(tmp_path / "nope.pt"), "--data", str(tmp_path / "prep")])
