"""Subnormal floats in training: how many a trained model's training step makes, and what they cost.

Inference runs with the CPU's flush-to-zero / denormals-are-zero mode on (``docs/benchmarks.md``,
"Subnormal floats"); training never does, so that its weights stay bit for bit what they were.
Where ``precision: auto`` trains in fp32 (a CPU whose bf16 is slower, as the Xeon without AMX of
issue 19), every subnormal a step computes could go through the CPU's slow path. This measures
both halves on a checkpoint, by default ``make run``'s phase II:

* **count**: one training step of the checkpoint in its own recorded loss and config (fp32, the
  batch: the first crops of ``--data``'s training split), every leaf module's output and
  its gradient and every weight's gradient checked for values below 1.2e-38;
* **cost**: ``--steps`` such steps timed in fresh processes, the mode off (as training runs) and
  on (set before the first parallel operation, so PyTorch's worker threads inherit it),
  alternated over ``--rounds`` rounds; the median step of each, and their ratio.

A ratio near 1 says the subnormals are free on this CPU (as on AMD EPYCs); a ratio well above 1
says fp32 training here pays for them, and flushing them in training would be worth its cost to
reproducibility. The JSON records the CPU (``cirl.host.cpu``).

    python benchmarks/subnormal_train.py [--checkpoint runs/synth/phase2/best.pt]
        [--data runs/synth/prepared] [--steps 10] [--rounds 3] [--json runs/subnormal_train.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _setup(checkpoint: Path, data: Path, channels_last: bool):
    """The checkpoint's model in training mode, its config (fp32) and one batch of its data."""
    import dataclasses

    import torch

    from cirl.config import from_mapping
    from cirl.data.tiles import TileDataset
    from cirl.method.train_config import TrainConfig
    from cirl.models.checkpoint import build_from_checkpoint, load_checkpoint

    payload = load_checkpoint(checkpoint)
    cfg = from_mapping(TrainConfig, payload["config"], f"{checkpoint} config")
    cfg = dataclasses.replace(cfg, precision="fp32", channels_last=channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_from_checkpoint(payload).to(memory_format=fmt).train()
    dataset = TileDataset(
        data, "train", crop=cfg.crop, augment=True, seed=0, crack_crops=cfg.crack_crops
    )
    items = [dataset[i] for i in range(cfg.batch_size)]
    batch = {
        k: torch.stack([it[k] for it in items]) for k in ("image", "mask", "valid", "ambiguous")
    }
    batch["image"] = batch["image"].contiguous(memory_format=fmt)
    return cfg, model, batch


def _step(cfg, model, batch, optimizer) -> float:
    import torch

    from cirl.method.step import compute_loss

    t0 = time.perf_counter()
    output = model(batch["image"])
    loss, _ = compute_loss(cfg, output, batch, torch.Generator().manual_seed(0))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - t0


def count(checkpoint: Path, data: Path, channels_last: bool) -> dict:
    """Subnormal values in one training step: weights, activations and their gradients."""
    import torch

    from cirl.method.step import compute_loss

    tiny = torch.finfo(torch.float32).tiny
    totals = {k: [0, 0] for k in ("weights", "activations", "activation_grads", "weight_grads")}

    def add(key: str, t: torch.Tensor) -> None:
        t = t.detach().float()
        totals[key][0] += int(((t != 0) & (t.abs() < tiny)).sum())
        totals[key][1] += t.numel()

    def on_output(module, inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            add("activations", output)
            if output.requires_grad:
                output.register_hook(lambda g: add("activation_grads", g))

    cfg, model, batch = _setup(checkpoint, data, channels_last)
    for module in model.modules():
        if not list(module.children()):
            module.register_forward_hook(on_output)
    loss, _ = compute_loss(cfg, model(batch["image"]), batch, torch.Generator().manual_seed(0))
    loss.backward()
    for p in model.parameters():
        add("weights", p)
        if p.grad is not None:
            add("weight_grads", p.grad)
    return {
        k: {"subnormal": s, "of": n, "share": s / n if n else 0.0} for k, (s, n) in totals.items()
    }


def child(args: argparse.Namespace) -> None:
    """Time ``--steps`` steps with the mode as ``--flush`` says, set before any operation."""
    import torch

    torch.set_flush_denormal(args.flush == "on")
    cfg, model, batch = _setup(args.checkpoint, args.data, args.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)  # tiny: the weights barely move
    times = [_step(cfg, model, batch, optimizer) for _ in range(args.steps + 2)]
    print(json.dumps({"median_s": statistics.median(times[2:])}))  # 2 warm-up steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / "runs/synth/phase2/best.pt")
    parser.add_argument("--data", type=Path, default=REPO / "runs/synth/prepared")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--nchw", dest="channels_last", action="store_false", help="NCHW instead of NHWC"
    )
    parser.add_argument("--json", type=Path, default=REPO / "runs/subnormal_train.json")
    parser.add_argument("--flush", choices=("on", "off"), help=argparse.SUPPRESS)  # a child
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:
        parser.error(f"--steps and --rounds must be at least 1, got {args.steps}, {args.rounds}")
    for path, what in ((args.checkpoint, "--checkpoint"), (args.data / "manifest.csv", "--data")):
        if not path.is_file():
            parser.error(f"{what}: {path} not found (make run writes runs/synth/phase2/best.pt "
                         "and runs/synth/prepared)")  # fmt: skip
    if args.flush:
        child(args)
        return 0

    import torch

    from cirl.host import cpu

    counted = count(args.checkpoint, args.data, args.channels_last)
    for key, c in counted.items():
        print(
            f"{key:17} {c['subnormal']:>10,} subnormal of {c['of']:>12,} ({100 * c['share']:.3f}%)"
        )
    medians: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(args.rounds):
        for mode in ("off", "on"):
            done = subprocess.run(
                [sys.executable, __file__, "--flush", mode, "--checkpoint", str(args.checkpoint),
                 "--data", str(args.data), "--steps", str(args.steps)]
                + ([] if args.channels_last else ["--nchw"]),
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            medians[mode].append(json.loads(done.stdout.splitlines()[-1])["median_s"])
        print(f"round {r + 1}/{args.rounds}: off {1000 * medians['off'][-1]:.0f} ms, "
              f"on {1000 * medians['on'][-1]:.0f} ms per step")  # fmt: skip
    off, on = (min(medians[m]) for m in ("off", "on"))
    result = {
        "checkpoint": str(args.checkpoint),
        "precision": "fp32",
        "channels_last": args.channels_last,
        "subnormals_in_one_step": counted,
        "ms_per_step": {"mode off (as training runs)": 1000 * off, "mode on": 1000 * on},
        "per_round_ms": {m: [1000 * v for v in vals] for m, vals in medians.items()},
        "off_over_on": off / on,
        "machine": {**cpu(), "threads": torch.get_num_threads(), "torch": torch.__version__},
    }
    print(f"fp32 step, best round: off {1000 * off:.0f} ms, on {1000 * on:.0f} ms: "
          f"off / on = {off / on:.3f} on {result['machine']['cpu']} "
          f"({result['machine']['cpu_id']}, {result['machine']['kind']})")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
