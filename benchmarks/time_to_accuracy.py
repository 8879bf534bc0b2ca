"""Time to accuracy on DeepCrack: uniform crops vs crack-centred crops (``crack_crops``).

Protocol (printed with the table and stored in the JSON):

* data: ``../shared/datasets/deepcrack`` with its official split (300 train / 237 test; 16 of
  the training photos carved out as validation, seeded), prepared once with ``--tile 0`` so every
  photo (544x384) is one image of the evaluation protocol (as ``benchmarks/ablation.py``);
* model: ``unet-small`` (width 16), BCE, Adam 1e-3 / weight decay 5e-4, batch 2 of 256x256 crops
  with flips and rotations, CPU;
* arms: ``uniform`` (``crack_crops=0``, the sampling before the option existed) and
  ``crack`` (``crack_crops=--share``: that share of the crops centred on a random crack pixel);
  everything else identical, seeds ``--seeds``;
* a learning curve: every ``--every`` steps up to ``--steps`` the weights of that moment are
  scored on the test split (per-image mean F1 at 0.5, JTFN protocol, an image with empty truth
  and prediction scores 0; ODS, OIS, AP over 99 thresholds). The test split is only measured:
  nothing is chosen on it;
* minutes of training = the summed wall time of the optimizer steps up to a checkpoint (data
  loading included, validation and test scoring excluded); time to F1 t = the minutes at the
  first checkpoint whose test F1 reaches t (none when no checkpoint does);
* throughput: images/s of the training loop of each arm, and GFLOP/s of a training step
  (forward + backward FLOPs counted with ``torch.utils.flop_counter.FlopCounterMode``) against
  the 159 GFLOP/s fp32 matmul ceiling of the reference machine.

Runs resume per arm and seed (``--work`` keeps the checkpoints and scores of each point).
``--threads`` sets torch's intra-op threads of this process; run arms in parallel processes
with ``--arms`` to share the cores evenly (the ratio of the arms then comes from one run).

    python benchmarks/time_to_accuracy.py [--steps 2000] [--every 250] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CEILING_GFLOPS = 159.0
TARGETS = (0.65, 0.69)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _score(data: Path, checkpoint: Path, out: Path) -> dict:
    if not (out / "metrics.json").is_file():
        # in its own process, as `cirl evaluate` runs in the product: inference needs the CPU's
        # subnormals-as-zero mode set before the process's first parallel operation
        # (cirl.models.inference.subnormals_as_zero), which this training process is long past
        subprocess.run(
            [
                str(Path(sys.executable).with_name("cirl")),
                "evaluate",
                "--data",
                str(data),
                "--checkpoint",
                str(checkpoint),
                "--out",
                str(out),
                "--split",
                "test",
                "--overlays",
                "0",
                "--device",
                "cpu",
                "--no-verify-data",
                "--no-track",
                "-q",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "f1": metrics["f1"],
        "precision": metrics["precision"],
        "recall": metrics["recall"],
        "ods": metrics["ods"]["f1"],
        "ois": metrics["ois"],
        "ap": metrics["ap"],
    }


def history_of(root: Path) -> list[dict]:
    """The training history written so far (``train/history.json``)."""
    path = root / "train" / "history.json"
    return json.loads(path.read_text()) if path.is_file() else []


def run_arm(args: argparse.Namespace, data: Path, arm: str, seed: int) -> dict:
    """Train one arm for one seed, scoring the test split at every checkpoint."""
    from cirl.method import train

    share = 0.0 if arm == "uniform" else args.share
    root = Path(args.work) / f"{args.tag}{arm}_seed{seed}"
    cfg = train.TrainConfig(
        **{
            "model": "unet-small",
            "loss": "bce",
            "epochs": args.steps // args.every,
            "steps_per_epoch": args.every,
            "batch_size": 2,
            "crop": 256,
            "crack_crops": share,
            "seed": seed,
            "device": "cpu",
            **json.loads(args.train_json),
        }
    )

    curve_path = root / "curve.json"
    curve = json.loads(curve_path.read_text()) if curve_path.is_file() else []

    def on_epoch(record: dict) -> None:
        # last.pt holds the weights of this moment: score them now, so a cut run keeps its curve
        step = record["epoch"] * args.every
        if any(p["step"] == step for p in curve):
            return
        _log(f"{arm} seed {seed}: score step {step}")
        point = _score(data, root / "train" / "last.pt", root / f"eval_step{step}")
        minutes = sum(r["seconds"] for r in history_of(root)) / 60
        curve.append(
            {
                "step": step,
                "minutes": minutes,
                "images_per_s": record["images_per_s"],
                "val_f1": record["val"]["f1"],
                **point,
            }
        )
        _log(f"{arm} seed {seed}: step {step}, {minutes:.1f} min, test {point}")
        curve_path.write_text(json.dumps(curve, indent=2) + "\n")

    resume = (root / "train" / "last.pt").is_file()
    _log(f"{arm} seed {seed}: training {args.steps} steps (crack_crops {share})")
    result = train.run(cfg, data, root / "train", resume=resume, progress=False, on_epoch=on_epoch)
    reach = {str(t): next((p["minutes"] for p in curve if p["f1"] >= t), None) for t in TARGETS}
    steps_to = {str(t): next((p["step"] for p in curve if p["f1"] >= t), None) for t in TARGETS}
    images = sum(r["images_per_s"] * r["seconds"] for r in result.history)
    seconds = sum(r["seconds"] for r in result.history)
    return {
        "arm": arm,
        "seed": seed,
        "crack_crops": share,
        "curve": curve,
        "minutes_to_f1": reach,
        "steps_to_f1": steps_to,
        "images_per_s": images / seconds,
        "threads": torch.get_num_threads(),
    }


def step_gflop(batch: int = 2, crop: int = 256) -> float:
    """Forward + backward FLOPs of one BCE training step of ``unet-small``, in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    from cirl.method.losses import masked_bce
    from cirl.models import build_model

    model = build_model("unet-small", std_head=False).train()
    image = torch.rand(batch, 3, crop, crop)
    mask = (torch.rand(batch, 1, crop, crop) > 0.97).float()
    with FlopCounterMode(display=False) as counter:
        loss = masked_bce(model(image).logits, mask, torch.ones_like(mask))
        loss.backward()
    return counter.get_total_flops() / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=str(REPO.parent / "shared" / "datasets" / "deepcrack"))
    parser.add_argument("--work", default=str(REPO / "runs" / "time_to_accuracy"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--arms", default="uniform,crack")
    parser.add_argument("--share", type=float, default=0.5, help="crack_crops of the crack arm")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=250, help="steps between test scorings")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", default=None, help="result file (default WORK/RESULT.json)")
    parser.add_argument(
        "--train-json",
        default="{}",
        help='more TrainConfig keys for every arm, e.g. \'{"precision": "bf16"}\'',
    )
    parser.add_argument("--tag", default="", help="prefix of the arms' run folders under --work")
    args = parser.parse_args(argv)
    if args.steps % args.every:
        parser.error("--steps must be a multiple of --every")
    if args.threads:
        torch.set_num_threads(args.threads)

    from cirl.data import prepare

    work = Path(args.work)
    data = work / "prepared"
    if not (data / "manifest.csv").is_file():
        _log("prepare DeepCrack (official split, whole photos)")
        prepare.run(prepare.PrepareConfig(tile=0, workers=2), args.source, "folder", data)
    arms = args.arms.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = [run_arm(args, data, arm, seed) for seed in seeds for arm in arms]
    gflop = step_gflop()
    for r in runs:
        r["train_gflops"] = gflop * r["images_per_s"] / 2  # 2 images per step
        r["share_of_ceiling"] = r["train_gflops"] / CEILING_GFLOPS
    summary = {}
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        last = [r["curve"][-1]["f1"] for r in mine]
        summary[arm] = {
            "seeds": [r["seed"] for r in mine],
            f"f1_at_{args.steps}": {
                "mean": statistics.fmean(last),
                "std": statistics.stdev(last) if len(last) > 1 else 0.0,
                "per_seed": last,
            },
            "ods_at_end_per_seed": [r["curve"][-1]["ods"] for r in mine],
            "minutes_to_f1_per_seed": {
                str(t): [r["minutes_to_f1"][str(t)] for r in mine] for t in TARGETS
            },
            "images_per_s_mean": statistics.fmean(r["images_per_s"] for r in mine),
            "train_gflops_mean": statistics.fmean(r["train_gflops"] for r in mine),
        }
    result = {
        "protocol": (
            "DeepCrack official split (237 test photos, whole 544x384 images); unet-small, BCE, "
            f"batch 2 of 256^2 crops, Adam 1e-3 wd 5e-4, CPU, {args.steps} steps; test per-image "
            "F1 at 0.5 (JTFN, empty = 0), ODS/OIS/AP over 99 thresholds, scored every "
            f"{args.every} steps, never used to choose; crack arm crack_crops={args.share}; "
            f"other train keys: {args.train_json}"
        ),
        "step_gflop_forward_backward": gflop,
        "ceiling_gflops": CEILING_GFLOPS,
        "summary": summary,
        "runs": runs,
        "machine": {"threads": torch.get_num_threads(), "torch": torch.__version__},
    }
    name = f"tta_{args.tag}{'_'.join(arms)}_s{'_'.join(map(str, seeds))}_{args.steps}.json"
    path = Path(args.json) if args.json else work / name
    path.write_text(json.dumps(result, indent=2) + "\n")

    print(result["protocol"])
    print(
        f"{'arm':8} {'seed':>4} " + " ".join(f"{'@' + str(p['step']):>6}" for p in runs[0]["curve"])
    )
    for r in runs:
        print(f"{r['arm']:8} {r['seed']:>4} " + " ".join(f"{p['f1']:6.3f}" for p in r["curve"]))
    for r in runs:
        print(
            f"{r['arm']} seed {r['seed']}: minutes to F1 "
            + ", ".join(f"{t}: {r['minutes_to_f1'][str(t)]}" for t in TARGETS)
            + f"; {r['images_per_s']:.2f} img/s, {r['train_gflops']:.1f} GFLOP/s "
            f"({r['share_of_ceiling']:.0%} of {CEILING_GFLOPS:.0f})"
        )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
