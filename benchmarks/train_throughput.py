"""Training throughput on CPU: fp32 vs bfloat16 autocast, NCHW vs channels_last, in one run.

What is measured (printed as a table and stored in the JSON):

* the machine's matmul ceilings, measured in this run: a 2048^3 fp32 ``torch.mm`` and the same
  in bfloat16 (GFLOP/s, best of several);
* for each arm (``fp32``, ``fp32+cl``, ``bf16``, ``bf16+cl``) the time of one real training step
  of ``cirl.method.train`` (``compute_loss`` on the model's output, backward, Adam), ``unet-small``,
  batch 2 of 3x256x256 (the main job's setting), BCE; and the whole training loop on a
  prepared dataset (data loading, augmentation and the loss included) through ``train.run``;
* GFLOP/s of a step: forward + backward FLOPs counted once with
  ``torch.utils.flop_counter.FlopCounterMode`` (the same count for every arm), divided by the
  step time; the share of the fp32 ceiling (the reference the project reports against) and of
  the bf16 ceiling.

Arms alternate (round-robin over ``--repeats`` rounds; the best round of each arm is reported),
so a change in the machine's load hits every arm alike. The ratios are the result; absolute
times depend on the load of the machine.

Then ``auto``: what ``precision: auto`` + ``channels_last: auto`` choose here
(:func:`cirl.method.arithmetic.choose` with an empty cache, as on a new machine), how long its probe
took, and the chosen arm's step and loop time as a ratio to the best arm's (goal <= 1.05).

    python benchmarks/train_throughput.py [--steps 20] [--repeats 3] [--data PREPARED]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
ARMS = {
    "fp32": {"precision": "fp32", "channels_last": False},
    "fp32+cl": {"precision": "fp32", "channels_last": True},
    "bf16": {"precision": "bf16", "channels_last": False},
    "bf16+cl": {"precision": "bf16", "channels_last": True},
}


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _setup(arm: dict, batch: int, crop: int):
    from cirl.method import train

    cfg = train.TrainConfig(model="unet-small", loss="bce", device="cpu", **arm)
    torch.manual_seed(0)
    model = train._new_model(cfg)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=fmt).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 3, crop, crop, generator=g).contiguous(memory_format=fmt)
    mask = (torch.rand(batch, 1, crop, crop, generator=g) > 0.98).float()
    return cfg, model, optimizer, {"image": image, "mask": mask, "valid": torch.ones_like(mask)}


def step_flops(batch: int, crop: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from cirl.method import train

    cfg, model, _, data = _setup(ARMS["fp32"], batch, crop)
    with FlopCounterMode(display=False) as counter:
        loss, _ = train.compute_loss(cfg, model(data["image"]), data, None)
        loss.backward()
    return counter.get_total_flops()


def time_steps(arm: dict, steps: int, batch: int, crop: int) -> float:
    """Seconds per optimizer step of ``arm`` (after 3 warm-up steps)."""
    from cirl.method import train

    cfg, model, optimizer, data = _setup(arm, batch, crop)
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            output = model(data["image"])
        loss, _ = train.compute_loss(cfg, output, data, None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def time_loop(arm: dict, data: Path, steps: int, work: Path) -> float:
    """Seconds per step of the real loop (``train.run``: loading and augmentation included)."""
    from cirl.method import train

    cfg = train.TrainConfig(
        model="unet-small",
        loss="bce",
        epochs=1,
        steps_per_epoch=steps,
        crack_crops=0.5,
        device="cpu",
        verify_data=False,
        val_every=10,
        **arm,
    )
    # validation runs once at the last epoch; it is excluded: only the loop's seconds count
    result = train.run(cfg, data, work, progress=False)
    return result.history[-1]["seconds"] / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per arm and round")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument(
        "--data",
        default=str(REPO / "runs" / "synth" / "prepared"),
        help="prepared folder for the whole-loop timing ('' to skip it)",
    )
    parser.add_argument("--json", default=str(REPO / "runs" / "train_throughput.json"))
    args = parser.parse_args(argv)

    from cirl.method.train import cpu_has_native_bf16

    torch.manual_seed(0)
    ceiling = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    flops = step_flops(args.batch, args.crop)
    step_s = {name: float("inf") for name in ARMS}
    loop_s = {name: float("inf") for name in ARMS}
    data = Path(args.data) if args.data else None
    if data is not None and not (data / "manifest.csv").is_file():
        print(
            f"--data {data}: not a prepared folder; skipping the whole-loop timing "
            "(make run prepares one at runs/synth/prepared)",
            file=sys.stderr,
        )
        data = None
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeats):
            for name, arm in ARMS.items():
                step_s[name] = min(step_s[name], time_steps(arm, args.steps, args.batch, args.crop))
                if data is not None:
                    work = Path(tmp) / f"{name}_{round_}"
                    loop_s[name] = min(loop_s[name], time_loop(arm, data, args.steps * 2, work))
            print(f"round {round_ + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    auto = choose_auto(args.batch, args.crop)
    best_step = min(step_s.values())
    auto["step_ratio_to_best"] = step_s[auto["arm"]] / best_step
    auto["best_step_arm"] = min(step_s, key=step_s.get)
    if data is not None:
        auto["loop_ratio_to_best"] = loop_s[auto["arm"]] / min(loop_s.values())
        auto["best_loop_arm"] = min(loop_s, key=loop_s.get)
    rows = []
    for name in ARMS:
        row = {
            "arm": name,
            "step_ms": step_s[name] * 1e3,
            "speedup": step_s["fp32"] / step_s[name],
            "gflops": flops / step_s[name] / 1e9,
        }
        row["share_fp32_ceiling"] = row["gflops"] / ceiling["fp32"]
        row["share_bf16_ceiling"] = row["gflops"] / ceiling["bf16"]
        if data is not None:
            row["loop_ms"] = loop_s[name] * 1e3
            row["loop_speedup"] = loop_s["fp32"] / loop_s[name]
            row["loop_gflops"] = flops / loop_s[name] / 1e9
        rows.append(row)
    result = {
        "protocol": __doc__.split("\n\n")[1].strip(),
        "threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "ceiling_gflops": ceiling,
        "step_gflop": flops / 1e9,
        "batch": args.batch,
        "crop": args.crop,
        "steps": args.steps,
        "repeats": args.repeats,
        "arms": rows,
        "auto": auto,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"matmul ceiling: fp32 {ceiling['fp32']:.0f} GFLOP/s, bf16 {ceiling['bf16']:.0f} GFLOP/s; "
        f"step {flops / 1e9:.1f} GFLOP; {torch.get_num_threads()} threads"
    )
    head = "| arm | step ms | x fp32 | GFLOP/s | of fp32 ceiling | of bf16 ceiling |"
    if data is not None:
        head += " loop ms | loop x fp32 | loop GFLOP/s |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        line = (
            f"| {r['arm']} | {r['step_ms']:.0f} | {r['speedup']:.2f} | {r['gflops']:.0f} | "
            f"{r['share_fp32_ceiling']:.0%} | {r['share_bf16_ceiling']:.0%} |"
        )
        if data is not None:
            line += f" {r['loop_ms']:.0f} | {r['loop_speedup']:.2f} | {r['loop_gflops']:.0f} |"
        print(line)
    line = (
        f"auto chose {auto['arm']} (probe {auto['probe_seconds']:.1f} s: {auto['why']}); its "
        f"step is {auto['step_ratio_to_best']:.3f}x the best arm's ({auto['best_step_arm']})"
    )
    if "loop_ratio_to_best" in auto:
        line += (
            f", its loop {auto['loop_ratio_to_best']:.3f}x the best loop's "
            f"({auto['best_loop_arm']})"
        )
    print(line + "; goal <= 1.05")
    print(f"wrote {out}")
    return 0


def choose_auto(batch: int, crop: int) -> dict:
    """``precision: auto`` + ``channels_last: auto`` as ``cirl train`` resolves them, measured
    afresh (an empty cache)."""
    import os
    from unittest import mock

    from cirl.method import arithmetic, train

    cfg = train.TrainConfig(
        model="unet-small",
        loss="bce",
        device="cpu",
        batch_size=batch,
        crop=crop,
        precision="auto",
        channels_last="auto",
    )
    with (
        tempfile.TemporaryDirectory() as cache,
        mock.patch.dict(os.environ, {"XDG_CACHE_HOME": cache}),
    ):
        chosen = arithmetic.choose(cfg, crop)
    return {
        "arm": arithmetic.arm_name(chosen["precision"], chosen["channels_last"]),
        "why": chosen["why"],
        "probe_ms_per_step": chosen["ms_per_step"],
        "probe_seconds": chosen["probe_seconds"],
        "machine": chosen["machine"],
    }


if __name__ == "__main__":
    raise SystemExit(main())
