"""Data-parallel training on CPU: N gloo processes vs one process at the same global batch.

What is measured, in one run (printed as a table and stored in the JSON):

* the machine's fp32 matmul ceiling (a 2048^3 ``torch.mm``, best of 5, all threads);
* the main job's training (``params.yaml``'s train group: ``unet-small``, batch 2 of 256x256
  crops, half on cracks, pos_weight 10, cosine) on a synthetic prepared set, fp32 NCHW in both
  arms (the same arithmetic), ``--steps`` optimizer steps: one process with every core's
  threads, and ``cirl train --nproc N`` (torchrun, gloo, ``cores / N`` threads each);
* per arm: the loop's seconds per step (the history's training time, validation excluded), the
  wall time of the whole call (the data-parallel launch included), GFLOP/s of a step (forward +
  backward FLOPs counted once with ``FlopCounterMode``) and its share of the matmul ceiling;
* the weights' difference between the arms relative to the distance they travelled, and the
  largest per-epoch loss difference (float rounding only; tests/test_ddp.py states the bounds).

On 2 cores the processes split the cores a single process would use, so the ratio says what the
data-parallel machinery costs, not what N GPUs gain.

    python benchmarks/ddp_bench.py [--steps 30] [--nproc 2] [--out runs/ddp_bench]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import matmul_gflops  # noqa: E402  (the same ceiling, measured the same way)


def step_flops(cfg) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from cirl.method.step import _new_model, compute_loss

    model = _new_model(cfg)
    side = cfg.crop
    batch = {
        "image": torch.rand(cfg.batch_size, 3, side, side),
        "mask": (torch.rand(cfg.batch_size, 1, side, side) > 0.99).float(),
        "valid": torch.ones(cfg.batch_size, 1, side, side),
    }
    with FlopCounterMode(display=False) as counter:
        loss, _ = compute_loss(cfg, model(batch["image"]), batch, None)
        loss.backward()
    return float(counter.get_total_flops())


def prepared(root: Path) -> Path:
    data = root / "prepared"
    if (data / "manifest.csv").is_file():
        return data
    cirl = [sys.executable, "-m", "cirl"]
    subprocess.run([*cirl, "synth", "--out", str(root / "raw"), "--n", "8", "--width", "1024",
                    "--height", "768"], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    subprocess.run([*cirl, "prepare", "--source", str(root / "raw"), "--format", "folder",
                    "--out", str(data), "--tile", "512", "-q"], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return data


def main() -> int:
    import dataclasses

    import yaml

    from cirl import config
    from cirl.method import train
    from cirl.method.train_config import TrainConfig
    from cirl.models.checkpoint import load_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "ddp_bench")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = prepared(args.out)
    group = yaml.safe_load((REPO / "params.yaml").read_text())["train"]
    base = config.from_mapping(TrainConfig, group, "params.yaml train")
    base = dataclasses.replace(
        base, epochs=1, steps_per_epoch=args.steps, precision="fp32", channels_last=False,
        device="cpu", verify_data=False, val_every=1,
    )  # fmt: skip
    ceiling = matmul_gflops(torch.float32)
    flops = step_flops(base)
    arms = {"1 process": dataclasses.replace(base, nproc=1),
            f"{args.nproc} processes": dataclasses.replace(base, nproc=args.nproc)}  # fmt: skip
    rows = {}
    for name, cfg in arms.items():
        out = args.out / name.replace(" ", "_")
        t0 = time.perf_counter()
        result = train.run(cfg, data, out, progress=False)
        wall = time.perf_counter() - t0
        seconds = sum(h["seconds"] for h in result.history)
        per_step = seconds / args.steps
        rows[name] = {
            "threads": torch.get_num_threads() if cfg.nproc == 1 else
            max(1, (os.cpu_count() or 1) // cfg.nproc),
            "s_per_step": per_step,
            "wall_s": wall,
            "gflops": flops / per_step / 1e9,
            "share_of_ceiling": flops / per_step / 1e9 / ceiling,
            "losses": [h["loss"] for h in result.history],
            "checkpoint": str(result.last),
        }  # fmt: skip
    one, many = (load_checkpoint(rows[n]["checkpoint"])["model"] for n in arms)
    torch.manual_seed(base.seed)
    from cirl.method.step import _new_model

    start = _new_model(base).state_dict()

    def flat(state):
        return torch.cat([v.float().flatten() for v in state.values() if v.is_floating_point()])

    travelled = (flat(one) - flat(start)).norm().item()
    apart = (flat(one) - flat(many)).norm().item()
    names = list(arms)
    loss_gap = max(
        abs(a - b) / abs(a)
        for a, b in zip(rows[names[0]]["losses"], rows[names[1]]["losses"], strict=True)
    )
    from cirl.host import cpu

    result = {
        "cpu": cpu(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "steps": args.steps,
        "batch": base.batch_size,
        "crop": base.crop,
        "matmul_fp32_gflops": ceiling,
        "step_gflop": flops / 1e9,
        "arms": rows,
        "ratio_step_time": rows[names[1]]["s_per_step"] / rows[names[0]]["s_per_step"],
        "weights_apart_over_travelled": apart / travelled,
        "max_relative_loss_gap": loss_gap,
    }
    (args.out / "ddp_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"matmul fp32 ceiling {ceiling:.0f} GFLOP/s; a step is {flops / 1e9:.1f} GFLOP")
    print(
        f"{'arm':<14} {'threads':>7} {'s/step':>8} {'wall s':>8} {'GFLOP/s':>8} {'of ceiling':>10}"
    )
    for name, row in rows.items():
        print(f"{name:<14} {row['threads']:>7} {row['s_per_step']:>8.3f} {row['wall_s']:>8.1f} "
              f"{row['gflops']:>8.1f} {row['share_of_ceiling']:>10.1%}")  # fmt: skip
    print(f"step time ratio ({names[1]} / {names[0]}): {result['ratio_step_time']:.2f}")
    print(f"weights apart / travelled: {apart / travelled:.4f}; max loss gap {loss_gap:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
