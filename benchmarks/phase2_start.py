"""Which phase-I checkpoint phase II starts from: ``best.pt`` (best validation F1) or ``last.pt``.

The recipe (``cirl.method.recipe``) has to name one for the pipeline, the sweep and the audit
alike. This measures the choice on a finished ``benchmarks/ablation.py`` work folder: for each
seed and CIRL arm, phase II is trained again with the arm's own recorded config, from phase I's
``best.pt`` instead of the ``last.pt`` the ablation used, and scored on the test split with the
ablation's evaluation (per-image F1 at 0.5, ODS, AP). Where phase I's best epoch is its last,
the two checkpoints hold the same weights and nothing is trained.

Protocol: same data, seed, config, machine and arithmetic as the ablation's run; only ``init``
differs. Prints a table and writes ``WORK/phase2_start.json``.

    python benchmarks/phase2_start.py --work runs/ablation_product_cfd \\
        [--arms cirl_online,cirl_online_dice] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _evaluate(data: Path, checkpoint: Path, out: Path) -> dict:
    """The ablation's evaluation (``cirl evaluate --split test --overlays 0 --device cpu
    --no-verify-data``), in its own process as the evaluate stage runs."""
    from cirl.method import recipe
    from cirl.method.evaluate import EvaluateConfig

    if not (out / "metrics.json").is_file():
        cfg = EvaluateConfig(split="test", overlays=0, device="cpu", verify_data=False)
        recipe.evaluate(cfg, data, checkpoint.parent, out, checkpoint.name, fresh_process=True)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"f1": metrics["f1"], "ods": metrics["ods"]["f1"], "ap": metrics["ap"]}


def _val_curve(folder: Path) -> list[float]:
    history = json.loads((folder / "history.json").read_text())
    return [round(r["val"]["f1"], 4) for r in history if "val" in r]


def one(root: Path, data: Path, arm: str) -> dict | None:
    """The arm of one seed from both starts."""
    from cirl.config import from_mapping
    from cirl.method import recipe
    from cirl.method.train_config import TrainConfig

    phase2 = root / f"phase2_{arm}"
    if not (phase2 / "best.pt").is_file():
        return None
    recorded = json.loads((phase2 / "config.json").read_text())
    phase1 = Path(recorded["init"]).parent
    curve = _val_curve(phase1)
    best_epoch = curve.index(max(curve)) + 1
    row = {
        "phase1": phase1.name,
        "phase1_val_f1": curve,
        "phase1_best_epoch": best_epoch,
        "phase1_epochs": len(curve),
        "from_last": {
            **_evaluate(data, phase2 / "best.pt", root / f"eval_{arm}"),
            "val_f1": max(_val_curve(phase2)),
        },
    }
    if best_epoch == len(curve):
        row["from_best"] = dict(row["from_last"], same_weights=True)
        return row
    cfg = from_mapping(TrainConfig, recorded["train"], f"{phase2}/config.json")
    out = root / f"phase2_{arm}_from_best"
    _log(f"{root.name}: phase II {arm} from {phase1.name}/best.pt (epoch {best_epoch})")
    result = recipe.phase2(
        cfg,
        data,
        phase1,
        recorded.get("ambiguity"),
        out,
        init="best.pt",
        resume=(out / "last.pt").is_file(),
        progress=False,
    )
    row["from_best"] = {
        **_evaluate(data, out / "best.pt", root / f"eval_{arm}_from_best"),
        "val_f1": result.best_val_f1,
    }
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="an ablation work folder")
    parser.add_argument("--arms", default="cirl_online,cirl_online_dice")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args(argv)
    data = args.work / "prepared"
    rows = {}
    for seed in args.seeds.split(","):
        root = args.work / f"seed{seed}"
        for arm in args.arms.split(","):
            found = one(root, data, arm)
            if found is not None:
                rows[f"seed{seed}/{arm}"] = found
    (args.work / "phase2_start.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("| seed/arm | phase-I best epoch / epochs | test F1 from last.pt | from best.pt |")
    print("|---|---|---|---|")
    for key, row in rows.items():
        last, best = row["from_last"], row["from_best"]
        print(
            f"| {key} | {row['phase1_best_epoch']}/{row['phase1_epochs']} | "
            f"{last['f1']:.4f} (ODS {last['ods']:.4f}) | {best['f1']:.4f} (ODS {best['ods']:.4f}) |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
