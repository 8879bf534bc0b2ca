"""The main job's training recipe: which options make a model that finds cracks in minutes.

Protocol (printed with the table and stored in the JSON):

* training data: the main job's prepared synthetic default (``make run`` writes it to
  ``data/prepared/synth``; ``--data``), its train split only;
* scoring data: a separate synthetic set the main job never uses (``cirl synth --seed 2000``,
  6 photos scored, 72 tiles of 512x512; made and prepared here under ``--work``). It plays the
  part of a validation set: the recipe is chosen on it, and the main job's own test split is
  scored only once, by the pipeline, with the chosen recipe;
* ``unet-small``, BCE (the loss of the baseline and of phase I without its std head), batch 2
  of 256x256 crops with flips and rotations, Adam 1e-3 / 5e-4, seed 0, the CPU fast path
  (``precision=bf16``, ``channels_last``) in every arm;
* every ``--every`` steps the weights of that moment are scored: per-image F1 at 0.5 (JTFN
  protocol, an image with empty truth and prediction scores 0), ODS and AP over 99 thresholds.

Arms (``--arms``, a comma list of the names below) change one thing at a time from the
recipe ``pw10``: crack-centred crops 0.5, ``pos_weight`` 10, cosine learning rate.

    python benchmarks/recipe_study.py [--arms pw10,plain,...] [--steps 1500] [--every 500]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = {"crack_crops": 0.5, "pos_weight": 10.0, "lr_schedule": "cosine"}
ARMS = {
    "plain": {"crack_crops": 0.5},  # BCE, constant lr: before this study
    "pw10": RECIPE,
    "pw10-uniform": {**RECIPE, "crack_crops": 0.0},
    "pw5": {**RECIPE, "pos_weight": 5.0},
    "pw10-constant": {**RECIPE, "lr_schedule": "constant"},
    "pw10-lr3e-3": {**RECIPE, "lr": 3e-3},
    "dice": {"crack_crops": 0.5, "dice": 1.0, "lr_schedule": "cosine"},
}


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def scoring_set(work: Path) -> Path:
    """Seven synthetic photos of seed 2000, prepared; 6 of them land in the test split."""
    from cirl.data import prepare, synth

    prepared = work / "scoring"
    if not (prepared / "manifest.csv").is_file():
        synth.run(synth.SynthConfig(n=7, seed=2000, workers=2), work / "scoring_raw")
        cfg = prepare.PrepareConfig(tile=512, split=(0.14, 0.0, 0.86), workers=2)
        prepare.run(cfg, work / "scoring_raw", "folder", prepared)
    return prepared


def run_arm(name: str, data: Path, scoring: Path, args: argparse.Namespace) -> dict:
    from cirl.method import evaluate, train

    out = Path(args.work) / name
    cfg = train.TrainConfig(
        **{
            "model": "unet-small",
            "loss": "bce",
            "epochs": args.steps // args.every,
            "steps_per_epoch": args.every,
            "seed": args.seed,
            "device": "cpu",
            "precision": "bf16",
            "channels_last": True,
            "verify_data": False,
            **ARMS[name],
        }
    )
    curve_path = out / "curve.json"
    curve = json.loads(curve_path.read_text()) if curve_path.is_file() else []
    seconds = [r["seconds"] for r in curve]

    def on_epoch(record: dict) -> None:
        step = record["epoch"] * args.every
        seconds.append(record["seconds"])
        if any(p["step"] == step for p in curve):
            return
        ev = out / f"scored_step{step}"
        ecfg = evaluate.EvaluateConfig(split="test", overlays=0, device="cpu", verify_data=False)
        evaluate.run(ecfg, scoring, out / "last.pt", ev, progress=False)
        m = json.loads((ev / "metrics.json").read_text())
        point = {
            "step": step,
            "seconds": record["seconds"],
            "train_minutes": sum(seconds) / 60,
            "f1": m["f1"],
            "ods": m["ods"]["f1"],
            "ods_threshold": m["ods"]["threshold"],
            "ap": m["ap"],
        }
        curve.append(point)
        _log(f"{name}: {point}")
        curve_path.write_text(json.dumps(curve, indent=2) + "\n")

    resume = (out / "last.pt").is_file()
    train.run(cfg, data, out, resume=resume, progress=False, on_epoch=on_epoch)
    return {"arm": name, "options": ARMS[name], "curve": curve}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(REPO / "data" / "prepared" / "synth"))
    parser.add_argument("--work", default=str(REPO / "runs" / "recipe_study"))
    parser.add_argument("--arms", default="plain,pw10,pw10-uniform,pw5,pw10-constant,dice")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps % args.every:
        parser.error("--steps must be a multiple of --every")
    unknown = [a for a in args.arms.split(",") if a not in ARMS]
    if unknown:
        parser.error(f"unknown arms {unknown}; known: {', '.join(ARMS)}")
    data = Path(args.data)
    if not (data / "manifest.csv").is_file():
        parser.error(f"--data {data}: not a prepared folder (run `make run` first)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    scoring = scoring_set(work)
    runs = [run_arm(name, data, scoring, args) for name in args.arms.split(",")]
    result = {"protocol": __doc__.split("\n\n")[1].strip(), "runs": runs}
    path = work / "recipe_study.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    steps = [p["step"] for p in runs[0]["curve"]]
    print("| arm | options | " + " | ".join(f"ODS @{s}" for s in steps) + " | F1 | AP |")
    print("|---|---|" + "---|" * (len(steps) + 2))
    for r in runs:
        last = r["curve"][-1]
        print(
            f"| {r['arm']} | {json.dumps(r['options'])} | "
            + " | ".join(f"{p['ods']:.3f}" for p in r["curve"])
            + f" | {last['f1']:.3f} | {last['ap']:.3f} |"
        )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
