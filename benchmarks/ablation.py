"""CIRL ablation on DeepCrack: BCE baseline vs phase I only vs CIRL (phase I + II).

Protocol (printed with the table and stored in the JSON):

* data: ``../shared/datasets/deepcrack`` with its official split (300 train / 237 test; 16 of
  the training photos carved out as validation, seeded), prepared with ``--tile 0`` so every
  photo (544x384) is one image of the evaluation protocol;
* model: the registry's ``unet-small`` (base width 16) unless ``--model``/``--width`` say
  otherwise; Adam 1e-3, weight decay 5e-4, batch 2 of random 256x256 crops with flips and
  rotations, CPU;
* one fixed budget of ``--steps`` optimizer steps per arm:

  - ``bce``: BCE for all steps;
  - ``phase1``: BCE + L_Aseg with the std head for all steps;
  - ``cirl``: phase I for the first half, ``cirl select`` with the paper's gamma (0.4) on
    the model at the end of that half (as the paper selects at the end of phase I), then
    phase II (BCE outside A + beta * L_CI) from the same weights for the second half;
  - ``cirl_frac``: the same, but A is the share ``--fraction`` (0.1) of the marginal ring with
    the highest variance (``cirl select --fraction``), for std heads whose variances stay below
    the paper's gamma within a short budget;

  The phase-I arm is the same phase-I run extended to the full budget (``--resume`` with more
  epochs), so the three CIRL arms share their first half exactly;

* each arm's best checkpoint is chosen on the validation split and scored once on the test
  split: per-image mean F1 at 0.5 (the paper's protocol), plus ODS, OIS and AP;
* seeds 0-2 by default; the table gives mean and sample standard deviation over seeds;
* the training step time of each arm relative to BCE, measured in one process, arms
  interleaved round-robin on the same batches, after the runs, with achieved GFLOP/s (a
  training step counted as 3x the forward FLOPs) against the machine's matmul ceiling.

Runs resume: re-running with the same ``--work`` folder skips finished stages and continues
interrupted training. ``--steps`` small values give a quick check of the mechanics.

    python benchmarks/ablation.py [--steps 2000] [--seeds 0,1,2] [--work runs/ablation]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ARMS = ("bce", "phase1", "cirl", "cirl_frac")
REPO = Path(__file__).resolve().parents[1]


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _train(cfg, data: Path, out: Path, **kw):
    from cirl import train

    resume = (out / "last.pt").is_file()
    return train.run(cfg, data, out, resume=resume, progress=False, **kw)


def _evaluate(data: Path, checkpoint: Path, out: Path) -> dict:
    from cirl import evaluate

    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    return evaluate.run(
        evaluate.EvaluateConfig(split="test", tolerance=2, overlays=3, device="cpu"),
        data,
        checkpoint,
        out,
        progress=False,
    )


def run_seed(args: argparse.Namespace, data: Path, seed: int) -> dict:
    """Train and evaluate the three arms for one seed; returns their metrics and diagnostics."""
    from cirl import selection
    from cirl.train import TrainConfig

    root = Path(args.work) / f"seed{seed}"
    epochs = args.steps // args.steps_per_epoch
    base = TrainConfig(
        model=args.model,
        width=args.width,
        epochs=epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        crop=args.crop,
        seed=seed,
        device="cpu",
        val_every=1,
    )
    half = replace(base, epochs=epochs // 2)
    out: dict = {}

    init = root / "phase1_half_last.pt"
    if not init.is_file():
        _log(f"seed {seed}: phase I, first half ({half.epochs} epochs)")
        _train(replace(half, loss="cirl", phase=1), data, root / "phase1")
        shutil.copy2(root / "phase1" / "last.pt", init)
    selections = {}
    for name, select_cfg in (
        ("cirl", selection.SelectConfig(gamma=args.gamma, device="cpu")),
        ("cirl_frac", selection.SelectConfig(fraction=args.fraction, device="cpu")),
    ):
        sel = root / f"select_{name}"
        if not (sel / "summary.json").is_file():
            _log(f"seed {seed}: select for {name}")
            selection.run(select_cfg, data, init, sel, progress=False)
        selections[name] = json.loads((sel / "summary.json").read_text())
    results = {}
    for name in selections:
        _log(f"seed {seed}: phase II for {name} ({half.epochs} epochs)")
        results[name] = _train(
            replace(half, loss="cirl", phase=2),
            data,
            root / f"phase2_{name}",
            init=init,
            ambiguity=root / f"select_{name}",
        )
    _log(f"seed {seed}: phase I extended to the full budget ({epochs} epochs)")
    results["phase1"] = _train(replace(base, loss="cirl", phase=1), data, root / "phase1")
    _log(f"seed {seed}: BCE baseline ({epochs} epochs)")
    results["bce"] = _train(replace(base, loss="bce"), data, root / "bce")

    folders = {
        "bce": "bce",
        "phase1": "phase1",
        "cirl": "phase2_cirl",
        "cirl_frac": "phase2_cirl_frac",
    }
    for arm in ARMS:
        _log(f"seed {seed}: evaluate {arm}")
        metrics = _evaluate(data, root / folders[arm] / "best.pt", root / f"eval_{arm}")
        result = results[arm]
        out[arm] = {
            "f1": metrics["f1"],
            "precision": metrics["precision"],
            "recall": metrics["recall"],
            "ods": metrics["ods"]["f1"],
            "ois": metrics["ois"],
            "ap": metrics["ap"],
            "iou": metrics["iou"],
            "f1_tol2": metrics["tolerant"]["f1"],
            "best_epoch": result.best_epoch,
            "best_val_f1": result.best_val_f1,
            "history": result.history,
        }
    out["diagnostics"] = {
        name: {
            "gamma": summary["gamma"],
            "selected_fraction_of_M": summary["selected_fraction"],
            "marginal_pixels": summary["marginal_pixels"],
            "selected_pixels": summary["selected_pixels"],
            "variance_on_marginal_ring": summary["variance_on_marginal_ring"],
            "warnings": summary["warnings"],
            "phase2_ci_loss_per_epoch": [h.get("ci") for h in results[name].history],
            "phase2_bce_per_epoch": [h["bce"] for h in results[name].history],
            "phase2_ambiguous_fraction": [
                h.get("ambiguous_fraction") for h in results[name].history
            ],
        }
        for name, summary in selections.items()
    }
    return out


def step_times(args: argparse.Namespace, data: Path, sel: Path, repeats: int) -> dict:
    """Milliseconds per training step of each arm, interleaved, on identical batches."""
    from torch.utils.flop_counter import FlopCounterMode

    from cirl.data.tiles import TileDataset
    from cirl.models import build_model
    from cirl.train import TrainConfig, compute_loss

    dataset = TileDataset(data, "train", crop=args.crop, augment=True, ambiguity=sel, seed=0)
    batches = []
    for i in range(4):
        items = [dataset[(2 * i + j) % len(dataset)] for j in range(args.batch_size)]
        batches.append(
            {
                k: torch.stack([it[k] for it in items])
                for k in ("image", "mask", "valid", "ambiguous")
            }
        )
    kw = {"base_width": args.width} if args.width else {}
    arms = {
        "bce": TrainConfig(model=args.model, loss="bce"),
        "phase1": TrainConfig(model=args.model, loss="cirl", phase=1),
        "cirl_phase2": TrainConfig(model=args.model, loss="cirl", phase=2),
    }
    state = {}
    for name, cfg in arms.items():
        torch.manual_seed(0)
        model = build_model(args.model, std_head=cfg.uses_std_head, **kw).train()
        state[name] = (cfg, model, torch.optim.Adam(model.parameters(), lr=1e-3))
    with FlopCounterMode(display=False) as counter:
        state["bce"][1](batches[0]["image"])
    forward_flops = counter.get_total_flops()

    def one_step(name: str, batch: dict) -> None:
        cfg, model, optimizer = state[name]
        loss, _ = compute_loss(cfg, model(batch["image"]), batch, torch.Generator().manual_seed(0))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for name in state:  # warm-up
        one_step(name, batches[0])
    seconds = {name: 0.0 for name in state}
    for r in range(repeats):
        for name in state:
            batch = batches[r % len(batches)]
            t0 = time.perf_counter()
            one_step(name, batch)
            seconds[name] += time.perf_counter() - t0
    ms = {name: 1000 * s / repeats for name, s in seconds.items()}
    return {
        "ms_per_step": ms,
        "relative_to_bce": {name: ms[name] / ms["bce"] for name in ms},
        "forward_gflop_per_batch": forward_flops / 1e9,
        "train_gflops_achieved": {name: 3 * forward_flops / (ms[name] / 1000) / 1e9 for name in ms},
        "repeats": repeats,
        "batch": f"{args.batch_size} x 3 x {args.crop} x {args.crop}",
        "threads": torch.get_num_threads(),
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=str(REPO.parent / "shared" / "datasets" / "deepcrack"))
    parser.add_argument("--work", default=str(REPO / "runs" / "ablation"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps per arm")
    parser.add_argument("--steps-per-epoch", type=int, default=200)
    parser.add_argument("--model", default="unet-small")
    parser.add_argument("--width", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--gamma", type=float, default=0.4)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--timing-repeats", type=int, default=20)
    parser.add_argument("--json", default=None, help="result file (default WORK/ablation.json)")
    args = parser.parse_args(argv)
    if args.steps % (2 * args.steps_per_epoch):
        parser.error("--steps must be a multiple of 2 x --steps-per-epoch (two equal phases)")

    from cirl import prepare

    work = Path(args.work)
    data = work / "prepared"
    if not (data / "manifest.csv").is_file():
        _log("prepare DeepCrack (official split, whole photos)")
        prepare.run(prepare.PrepareConfig(tile=0, workers=2), args.source, "folder", data)
    seeds = [int(s) for s in args.seeds.split(",")]
    per_seed = {}
    t0 = time.perf_counter()
    for seed in seeds:
        per_seed[seed] = run_seed(args, data, seed)
        (work / "ablation_partial.json").write_text(json.dumps(per_seed, indent=2) + "\n")
    wall = time.perf_counter() - t0
    _log("step timing")
    timing = step_times(
        args, data, work / f"seed{seeds[0]}" / "select_cirl_frac", args.timing_repeats
    )

    table = {}
    for arm in ARMS:
        row = {}
        for key in ("f1", "precision", "recall", "ods", "ois", "ap", "iou", "f1_tol2"):
            mean, std = _mean_std([per_seed[s][arm][key] for s in seeds])
            row[key] = {
                "mean": mean,
                "std": std,
                "per_seed": [per_seed[s][arm][key] for s in seeds],
            }
        table[arm] = row
    gains = {
        arm: [per_seed[s][arm]["f1"] - per_seed[s]["bce"]["f1"] for s in seeds]
        for arm in ("phase1", "cirl", "cirl_frac")
    }
    result = {
        "protocol": (
            f"DeepCrack official split (test 237 photos, whole 544x384 images); model "
            f"{args.model} width {args.width or 'preset'}; {args.steps} steps per arm, batch "
            f"{args.batch_size} of {args.crop}^2 crops, Adam 1e-3 wd 5e-4; CIRL = phase I "
            f"{args.steps // 2} steps + phase II {args.steps // 2} steps (lambda 0.3, gamma "
            f"{args.gamma}, K 20, beta 0.2; cirl_frac: A = top {args.fraction:.0%} of the ring "
            "by variance); best checkpoint on val; test scores: per-image mean "
            "F1 at 0.5 (JTFN protocol, empty image F1 = 0), ODS/OIS/AP over 99 thresholds, "
            "f1_tol2 with a 2 px tolerance; mean and sample std over seeds"
        ),
        "seeds": seeds,
        "table": table,
        "minus_bce_f1": {
            arm: {"per_seed": g, "mean": statistics.fmean(g)} for arm, g in gains.items()
        },
        "timing": timing,
        "per_seed": per_seed,
        "wall_seconds": wall,
        "machine": {"threads": torch.get_num_threads(), "torch": torch.__version__},
    }
    path = Path(args.json) if args.json else work / "ablation.json"
    path.write_text(json.dumps(result, indent=2) + "\n")

    print(result["protocol"])
    print(
        f"{'arm':10} {'F1 (paper)':>16} {'ODS':>8} {'OIS':>8} {'AP':>8} {'F1 2px':>8} {'step':>7}"
    )
    rel = timing["relative_to_bce"]
    for arm in ARMS:
        row = table[arm]
        step = rel["cirl_phase2"] if arm.startswith("cirl") else rel[arm]
        print(
            f"{arm:10} {row['f1']['mean']:8.4f} ± {row['f1']['std']:.4f} {row['ods']['mean']:8.4f} "
            f"{row['ois']['mean']:8.4f} {row['ap']['mean']:8.4f} {row['f1_tol2']['mean']:8.4f} "
            f"{step:6.2f}x"
        )
    print(
        "step time relative to BCE (phase I / phase II): "
        f"{rel['phase1']:.2f}x / {rel['cirl_phase2']:.2f}x; achieved training GFLOP/s "
        + ", ".join(f"{k} {v:.1f}" for k, v in timing["train_gflops_achieved"].items())
        + " (fp32 matmul ceiling about 159 on this machine)"
    )
    for arm, g in gains.items():
        print(f"{arm} - bce, per-image F1 per seed: {[round(v, 4) for v in g]}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
