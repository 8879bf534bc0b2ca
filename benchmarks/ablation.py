"""CIRL ablation on DeepCrack (or CFD): BCE arms against CIRL's arms, one recipe for all.

Protocol (printed with the table and stored in the JSON):

* data: a prepared folder (``--data``), or ``--source`` prepared here with ``--tile 0`` so every
  photo is one image of the evaluation protocol (DeepCrack's official split: 300 train with 16
  carved out as validation, 237 test, 544x384 photos);
* model: ``unet-small`` unless ``--model``/``--width`` say otherwise; batch 2 of 256x256 crops
  with flips and rotations, CPU; one training recipe for every arm alike: ``--recipe params``
  (default) is the product's, ``params.yaml``'s train group (pos_weight 10, half the crops
  centred on a crack, cosine lr per phase, Adam 1e-3 / 5e-4, precision and layout ``auto``);
  ``--recipe plain`` is issue 10's (plain BCE weights, bf16 + NHWC);
* one fixed budget of ``--steps`` optimizer steps per arm:

  - BCE arms (one phase for all steps): ``bce``; ``bce_dice``, BCE + soft Dice (weight 1),
    what users try for thin cracks;
  - every CIRL arm: a phase I for the first half, a selection on its last epoch, a phase II
    from its best validation epoch for the second half, as the product's recipe
    (``cirl.method.recipe``; ``--phase2-from last.pt``: from the last epoch, as the tables
    before 2026-12-04 were made). The arms (``ARMS``) differ in the phase-I form (``paper``:
    BCE + Eq. 7, default std-head init, hard clamp; ``logistic``: the non-saturating surrogate,
    std head initialised at lambda, soft clamp; ``aseg``: Eq. 7 alone), the selection rule
    (``variance``: Eq. 8 with the paper's gamma; ``error``: A = M and the phase-I model's
    squared error over 8 flips/rotations above lambda; ``online``: per batch under the
    current model) and the CI scale (``image``: Eq. 15; ``batch``: per supervised pixel).
    Arms with the same phase I share it, arms with the same selection share it;

* each arm's best checkpoint is chosen on the validation split and scored once on the test
  split (``cirl evaluate`` in its own process): per-image mean F1 at 0.5 (the paper's protocol),
  plus ODS, OIS and AP;
* the mechanism numbers of every CIRL arm on the training split: |A|/|M|, the share of A the
  model predicts as crack (p > 0.5) after phase I and after phase II, and the ring's
  false-positive rate before and after;
* seeds 0-2 by default; the table gives mean and sample standard deviation over seeds, and each
  arm's per-seed difference to the strongest BCE arm (highest mean F1); an arm beats it when
  its mean gain is larger than either arm's seed standard deviation;
* the training step time of each arm relative to BCE, measured in one process, arms
  interleaved round-robin on the same batches, after the runs.

Runs resume: re-running with the same ``--work`` folder skips finished stages and continues
interrupted training. Small ``--steps`` give a quick check of the mechanics.

    python benchmarks/ablation.py [--steps 2000] [--seeds 0,1,2] [--work runs/ablation]
        [--data PREPARED | --source RAW] [--arms bce,bce_dice,cirl,cirl_online,...]
        [--recipe params|plain] [--train-json '{"pos_weight": 5}']
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

# phase-I forms: TrainConfig keys on top of the base recipe
PHASE1 = {
    "paper": {},
    "logistic": {"aseg_form": "logistic", "std_init": "lambda", "std_clamp": "soft"},
    "aseg": {"phase1_loss": "aseg"},
    "paper_dice": {"dice": 1.0},  # the paper's phase I with the Dice term of bce_dice
}
# arm -> (phase-I form, selection (cirl select flags), phase-II TrainConfig keys)
# a BCE arm is a dict of TrainConfig keys (one phase, all steps); a CIRL arm a triple
ARMS: dict[str, tuple[str, dict, dict] | dict] = {
    "bce": {},
    "bce_dice": {"dice": 1.0},
    "cirl": ("paper", {"rule": "variance", "gamma": 0.4}, {}),
    "cirl_frac": ("paper", {"rule": "variance", "fraction": 0.1}, {}),
    "cirl_logistic": ("logistic", {"rule": "variance", "gamma": 0.4}, {}),
    "cirl_error": ("paper", {"rule": "error", "lam": 0.3}, {}),
    "cirl_error_batch": ("paper", {"rule": "error", "lam": 0.3}, {"ci_reduction": "batch"}),
    "cirl_online": (
        "paper",
        {"rule": "error", "lam": 0.3},
        {"selection": "online", "ci_reduction": "batch"},
    ),
    "cirl_aseg_error": ("aseg", {"rule": "error", "lam": 0.3}, {}),
    # online selection with bce_dice's Dice term in both phases: CIRL against BCE + Dice
    "cirl_online_dice": (
        "paper_dice",
        {"rule": "error", "lam": 0.3},
        {"selection": "online", "ci_reduction": "batch", "dice": 1.0},
    ),
}
DEFAULT_ARMS = "bce,bce_dice,cirl,cirl_online"
# the training recipe every arm shares. ``params``: the product's own (params.yaml's train
# group: these keys as the main job trains); ``plain``: issue 10's (plain BCE weights, bf16+NHWC)
RECIPE_KEYS = (
    "pos_weight", "dice", "crack_crops", "lr_schedule", "lr", "weight_decay", "precision",
    "channels_last",
)  # fmt: skip
PLAIN = {"precision": "bf16", "channels_last": True, "crack_crops": 0.5, "lr_schedule": "cosine"}


def recipe(name: str, params: Path) -> dict:
    """The TrainConfig keys every arm shares: ``params`` (from ``params``' train group) or
    ``plain``."""
    if name == "plain":
        return dict(PLAIN)
    from cirl.config import load_group

    group = load_group(params, "train")
    return {k: group[k] for k in RECIPE_KEYS if k in group}


def parse_arm(text: str, base: dict) -> tuple[str, tuple[str, dict, dict] | dict]:
    """``NAME=JSON`` of ``--arm`` as an ``ARMS`` entry, its keys checked against TrainConfig and
    SelectConfig over the ``base`` recipe now, not when its training starts.

    Raises:
        ValueError: saying what is wrong.
    """
    from cirl.config import from_mapping
    from cirl.errors import CirlError
    from cirl.method.selection import SelectConfig
    from cirl.method.train_config import TrainConfig

    name, sep, body = text.partition("=")
    name = name.strip()
    if not (sep and name):
        raise ValueError("expected NAME=JSON")
    try:
        arm = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(arm, dict) or set(arm) not in ({"bce"}, {"phase1", "select", "phase2"}):
        raise ValueError('expected NAME={"phase1", "select", "phase2"} or NAME={"bce"}')
    for key, value in arm.items():
        if key != "phase1" and not isinstance(value, dict):
            raise ValueError(f"{key}: expected an object of keys, got {json.dumps(value)}")
    # the keys the ablation sets itself: the arm's loss and phase, phase II's lambda (the
    # selection's)
    for key, fixed in (("bce", {"loss", "phase"}), ("phase2", {"loss", "phase", "lam"})):
        if set(arm.get(key, {})) & fixed:
            raise ValueError(f"{key}: {sorted(set(arm[key]) & fixed)} are set by the ablation")
    try:
        if "bce" in arm:
            from_mapping(TrainConfig, {**base, **arm["bce"], "loss": "bce"}, f"{name} bce")
            return name, dict(arm["bce"])
        if arm["phase1"] not in PHASE1:
            raise ValueError(f"phase1 {arm['phase1']!r} is not one of {list(PHASE1)}")
        from_mapping(SelectConfig, arm["select"], f"{name} select")
        keys = {**base, **arm["phase2"], "loss": "cirl", "phase": 2}
        from_mapping(TrainConfig, keys, f"{name} phase2")
    except CirlError as exc:
        raise ValueError(str(exc)) from None
    return name, (arm["phase1"], dict(arm["select"]), dict(arm["phase2"]))


def is_bce(arm: str) -> bool:
    return isinstance(ARMS[arm], dict)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _cirl(*args: str) -> None:
    """A cirl command in its own process: inference there runs with subnormals as zero
    (``cirl.models.inference.subnormals_as_zero``), which this training process cannot switch on."""
    subprocess.run(
        [str(Path(sys.executable).with_name("cirl")), *args, "--no-track", "-q"],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _train(cfg, data: Path, out: Path, **kw):
    from cirl.method import train

    resume = (out / "last.pt").is_file()
    return train.run(cfg, data, out, resume=resume, progress=False, **kw)


def _evaluate(data: Path, checkpoint: Path, out: Path) -> dict:
    if not (out / "metrics.json").is_file():
        _cirl(
            "evaluate", "--data", str(data), "--checkpoint", str(checkpoint), "--out", str(out),
            "--split", "test", "--overlays", "0", "--device", "cpu", "--no-verify-data",
        )  # fmt: skip
    return json.loads((out / "metrics.json").read_text())


def _flag(key: str, value) -> str:
    """A SelectConfig key and value as ``cirl select``'s flag (``max_tiles`` -> ``--max-tiles``,
    a bool as ``--KEY`` / ``--no-KEY``), so every key ``parse_arm`` accepts reaches the CLI."""
    name = key.replace("_", "-")
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no-{name}"
    return f"--{name}={value}"


def _select(data: Path, checkpoint: Path, out: Path, flags: dict) -> dict:
    if not (out / "summary.json").is_file():
        args = [_flag(k, v) for k, v in flags.items()]
        _cirl(
            "select", "--data", str(data), "--checkpoint", str(checkpoint), "--out", str(out),
            "--device", "cpu", "--no-verify-data", *args,
        )  # fmt: skip
    return json.loads((out / "summary.json").read_text())


_DIAGNOSE = """
import json, sys
from cirl.models.inference import subnormals_as_zero
with subnormals_as_zero():
    from cirl.method.selection import diagnose
    print(json.dumps(diagnose(sys.argv[1], sys.argv[2], sys.argv[3], device="cpu")))
"""


def _diagnose(data: Path, checkpoint: Path, ambiguity: Path, out: Path) -> dict:
    if not out.is_file():
        done = subprocess.run(
            [sys.executable, "-c", _DIAGNOSE, str(checkpoint), str(data), str(ambiguity)],
            check=True,
            capture_output=True,
            text=True,
        )
        out.write_text(done.stdout)
    return json.loads(out.read_text())


def run_seed(args: argparse.Namespace, data: Path, seed: int, arms: list[str]) -> dict:
    """Train, select, diagnose and evaluate the arms for one seed, each CIRL arm by the
    product's recipe (:mod:`cirl.method.recipe`): selection on phase I's last epoch, phase II
    from its best (``--phase2-from``), the final training's best epoch scored."""
    from cirl.method import recipe as recipe_
    from cirl.method.train import TrainConfig

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
        verify_data=False,  # prepared here, checked once by prepare's own manifest
        **args.recipe,
    )
    half = replace(base, epochs=epochs // 2)
    out: dict = {}
    for arm in arms:
        spec = ARMS[arm]
        if isinstance(spec, dict):
            _log(f"seed {seed}: {arm} ({epochs} epochs)")
            result = _train(replace(base, loss="bce", **spec), data, root / arm)
            folder, run, mechanism = root / arm, arm, {}
        else:
            form, select_flags, phase2_keys = spec
            phase1 = root / f"phase1_{form}"
            _log(f"seed {seed}: phase I {form} ({half.epochs} epochs)")
            _train(replace(half, loss="cirl", phase=1, **PHASE1[form]), data, phase1)
            tag = "_".join(f"{k}{v}" for k, v in select_flags.items())
            sel = root / f"select_{form}_{tag}"
            _log(f"seed {seed}: select {form} {select_flags}")
            t0 = time.perf_counter()
            summary = _select(data, recipe_.selection_checkpoint(phase1), sel, select_flags)
            select_seconds = time.perf_counter() - t0
            _log(f"seed {seed}: phase II {arm} ({half.epochs} epochs)")
            # the phase-II start is in the names, so runs from either checkpoint never mix
            run = f"{arm}_from_{Path(args.phase2_from).stem}"
            folder = root / f"phase2_{run}"
            result = _train(
                replace(half, loss="cirl", phase=2, lam=select_flags.get("lam", 0.3),
                        **phase2_keys),
                data,
                folder,
                init=recipe_.phase2_init(phase1, args.phase2_from),
                ambiguity=sel,
            )  # fmt: skip
            after = _diagnose(
                data, recipe_.scored_checkpoint(folder), sel, root / f"diagnose_{run}.json"
            )
            mechanism = {
                "rule": summary["rule"],
                "threshold": summary["threshold"],
                "selected_fraction_of_m": summary["selected_fraction"],
                "crack_share_of_a_after_phase1": summary["crack_share_of_a"],
                "crack_share_of_a_after_phase2": after["crack_share_of_a"],
                "ring_fp_rate_after_phase1": summary["ring_false_positive_rate"],
                "ring_fp_rate_after_phase2": after["ring_false_positive_rate"],
                "score_on_ring": summary.get("variance_on_marginal_ring")
                or summary.get("error_on_marginal_ring"),
                "warnings": summary["warnings"],
                "select_seconds_first_run": select_seconds,
                "phase2_ci_per_epoch": [h.get("ci") for h in result.history],
                "phase2_ambiguous_fraction": [h.get("ambiguous_fraction") for h in result.history],
            }
        _log(f"seed {seed}: evaluate {arm}")
        metrics = _evaluate(data, recipe_.scored_checkpoint(folder), root / f"eval_{run}")
        out[arm] = {
            "f1": metrics["f1"],
            "precision": metrics["precision"],
            "recall": metrics["recall"],
            "ods": metrics["ods"]["f1"],
            "ois": metrics["ois"],
            "ap": metrics["ap"],
            "iou": metrics["iou"],
            "best_epoch": result.best_epoch,
            "best_val_f1": result.best_val_f1,
            "mechanism": mechanism,
            "train_seconds": sum(h["seconds"] for h in result.history),
        }
    return out


def step_times(args: argparse.Namespace, data: Path, sel: Path, repeats: int) -> dict:
    """Milliseconds per training step of each arm, interleaved, on identical batches."""
    from torch.utils.flop_counter import FlopCounterMode

    from cirl.data.tiles import TileDataset
    from cirl.method.arithmetic import choose
    from cirl.method.train import TrainConfig, _autocast, _new_model, compute_loss

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
    common = {"model": args.model, "width": args.width, **args.recipe}
    arms = {
        "bce": TrainConfig(loss="bce", **common),
        "phase1_paper": TrainConfig(phase=1, **common),
        "phase1_logistic": TrainConfig(phase=1, **PHASE1["logistic"], **common),
        "phase2_image": TrainConfig(phase=2, **common),
        "phase2_batch": TrainConfig(phase=2, ci_reduction="batch", **common),
        "phase2_online": TrainConfig(phase=2, selection="online", ci_reduction="batch", **common),
    }
    device = torch.device("cpu")
    chosen = choose(arms["bce"], args.crop)  # the recipe's arithmetic, resolved as train does
    precision = chosen["precision"]
    dtype = {"bf16": torch.bfloat16}.get(precision)
    fmt = torch.channels_last if chosen["channels_last"] else torch.contiguous_format
    state = {}
    for name, cfg in arms.items():
        torch.manual_seed(0)
        model = _new_model(cfg).train().to(memory_format=fmt)
        state[name] = (cfg, model, torch.optim.Adam(model.parameters(), lr=1e-3))
    with FlopCounterMode(display=False) as counter:
        state["bce"][1](batches[0]["image"])
    forward_flops = counter.get_total_flops()

    def one_step(name: str, batch: dict) -> None:
        cfg, model, optimizer = state[name]
        with _autocast(device, dtype):
            output = model(batch["image"].contiguous(memory_format=fmt))
        loss, _ = compute_loss(cfg, output, batch, torch.Generator().manual_seed(0))
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
        "precision": precision,
        "repeats": repeats,
        "batch": f"{args.batch_size} x 3 x {args.crop} x {args.crop}",
        "threads": torch.get_num_threads(),
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def markdown_table(result: dict, arms: list[str]) -> str:
    """The results as a Markdown table (what docs/ quotes): scores, gain, mechanism numbers."""
    lines = [
        "| arm | F1 (per image, 0.5) | P | R | ODS | OIS | AP | "
        f"F1 - {result['baseline']} per seed | |A|/|M| | crack share of A, I -> II | "
        "ring FP rate, I -> II |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        row = result["table"][arm]
        mech = row.get("mechanism") or {}

        def pair(a: str, b: str, mech=mech) -> str:
            if mech.get(a) is None:
                return "-"
            after = f" -> {mech[b]:.3f}" if mech.get(b) is not None else ""
            return f"{mech[a]:.3f}{after}"

        gain = result["minus_baseline_f1"].get(arm)
        gains = ", ".join(f"{g:+.4f}" for g in gain["per_seed"]) if gain else "-"
        frac = mech.get("selected_fraction_of_m")
        lines.append(
            f"| {arm} | {row['f1']['mean']:.4f} ± {row['f1']['std']:.4f} "
            f"| {row['precision']['mean']:.3f} | {row['recall']['mean']:.3f} "
            f"| {row['ods']['mean']:.4f} | {row['ois']['mean']:.4f} | {row['ap']['mean']:.4f} "
            f"| {gains} | {'-' if frac is None else f'{frac:.3f}'} "
            f"| {pair('crack_share_of_a_after_phase1', 'crack_share_of_a_after_phase2')} "
            f"| {pair('ring_fp_rate_after_phase1', 'ring_fp_rate_after_phase2')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from cirl.method.recipe import PHASE2_FROM, SELECT_FROM

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=str(REPO.parent / "shared" / "datasets" / "deepcrack"))
    parser.add_argument("--format", default="folder", help="cirl prepare --format of --source")
    parser.add_argument("--data", default=None, help="an already prepared folder (tile 0)")
    parser.add_argument(
        "--prepare-json",
        default="{}",
        help="PrepareConfig keys for --source, e.g. '{\"split\": [0.6, 0.1, 0.3]}' (a set "
        "without an official split: a test split large enough to score)",
    )
    parser.add_argument("--work", default=str(REPO / "runs" / "ablation"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--arms", default=DEFAULT_ARMS, help=f"of {', '.join(ARMS)}")
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps per arm")
    parser.add_argument("--steps-per-epoch", type=int, default=200)
    parser.add_argument("--model", default="unet-small")
    parser.add_argument("--width", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument(
        "--recipe",
        choices=("params", "plain"),
        default="params",
        help="the training recipe of every arm: params = --params' train group "
        f"({', '.join(RECIPE_KEYS)}), the product's; plain = issue 10's {PLAIN}",
    )
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument(
        "--phase2-from",
        choices=("best.pt", "last.pt"),
        default=PHASE2_FROM,
        help="the phase-I checkpoint every phase II starts from (default: the recipe's, "
        f"{PHASE2_FROM}; the tables of docs/benchmarks.md before 2026-12-04 used last.pt)",
    )
    parser.add_argument(
        "--train-json", default="{}", help="TrainConfig keys of every arm, over --recipe"
    )
    parser.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help='an extra arm, e.g. a sweep\'s best setting: NAME={"phase1": FORM, "select": '
        '{cirl select keys}, "phase2": {TrainConfig keys}} (a CIRL arm, FORM of '
        f'{", ".join(PHASE1)}) or NAME={{"bce": {{TrainConfig keys}}}}; list it in --arms',
    )
    parser.add_argument("--timing-repeats", type=int, default=20)
    parser.add_argument("--json", default=None, help="result file (default WORK/ablation.json)")
    args = parser.parse_args(argv)
    if args.steps % (2 * args.steps_per_epoch):
        parser.error("--steps must be a multiple of 2 x --steps-per-epoch (two equal phases)")
    try:
        extra = json.loads(args.train_json)
    except json.JSONDecodeError as exc:
        parser.error(f"--train-json {args.train_json!r}: not JSON: {exc}")
    if not isinstance(extra, dict):
        parser.error(f"--train-json {args.train_json!r}: expected an object of TrainConfig keys")
    args.recipe = {**recipe(args.recipe, Path(args.params)), **extra}
    for text in args.arm:
        try:
            name, spec = parse_arm(text, args.recipe)
        except ValueError as exc:
            parser.error(f"--arm {text!r}: {exc}")
        ARMS[name] = spec
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not any(is_bce(a) for a in arms):
        parser.error(f"--arms: unknown {unknown} or no BCE arm; valid: {', '.join(ARMS)}")

    from cirl.data import prepare

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else work / "prepared"
    if not (data / "manifest.csv").is_file():
        keys = {"tile": 0, "workers": 2, **json.loads(args.prepare_json)}
        split = f"split {keys['split']}" if "split" in keys else "official split"
        _log(f"prepare {args.source} ({split}, whole photos)")
        from cirl.config import from_mapping

        cfg = from_mapping(prepare.PrepareConfig, keys, "--prepare-json")
        prepare.run(cfg, args.source, args.format, data)
    seeds = [int(s) for s in args.seeds.split(",")]
    per_seed = {}
    t0 = time.perf_counter()
    for seed in seeds:
        per_seed[seed] = run_seed(args, data, seed, arms)
        (work / "ablation_partial.json").write_text(json.dumps(per_seed, indent=2) + "\n")
    wall = time.perf_counter() - t0
    sel = next((work / f"seed{seeds[0]}").glob("select_paper_rule*"), None)
    timing = {}
    if sel and args.timing_repeats > 0:  # --timing-repeats 0: accuracy only
        _log("step timing")
        timing = step_times(args, data, sel, args.timing_repeats)

    keys = ("f1", "precision", "recall", "ods", "ois", "ap", "iou")
    table = {}
    for arm in arms:
        row = {}
        for key in keys:
            values = [per_seed[s][arm][key] for s in seeds]
            mean, std = _mean_std(values)
            row[key] = {"mean": mean, "std": std, "per_seed": values}
        mech = [per_seed[s][arm]["mechanism"] for s in seeds]
        if mech[0]:
            row["mechanism"] = {
                k: _mean_std([m[k] for m in mech if m[k] is not None])[0]
                if any(m[k] is not None for m in mech)
                else None
                for k in mech[0]
                if isinstance(mech[0][k], int | float) or mech[0][k] is None
            }
        table[arm] = row
    # every arm against the strongest BCE arm (highest mean test F1), seed by seed
    baseline = max((a for a in arms if is_bce(a)), key=lambda a: table[a]["f1"]["mean"])
    gains = {
        arm: [per_seed[s][arm]["f1"] - per_seed[s][baseline]["f1"] for s in seeds]
        for arm in arms
        if arm != baseline
    }
    spread = {arm: table[arm]["f1"]["std"] for arm in arms}

    def verdict_of(arm: str, g: list[float]) -> str:
        # the bar: a mean difference larger than either arm's seed spread
        bar = max(spread[arm], spread[baseline])
        mean = statistics.fmean(g)
        return "above" if mean > bar else "below" if mean < -bar else "within the spread"

    verdict = {
        arm: {
            "per_seed": g,
            "mean": statistics.fmean(g),
            "beats_baseline": verdict_of(arm, g) == "above",
            "verdict": verdict_of(arm, g),
        }
        for arm, g in gains.items()
    }
    result = {
        "protocol": (
            f"{data} (test split scored once per arm, whole images); model {args.model} width "
            f"{args.width or 'preset'}; {args.steps} steps per arm, batch {args.batch_size} of "
            f"{args.crop}^2 crops, Adam, recipe {args.recipe}; CIRL = phase I "
            f"{args.steps // 2} steps, selection on its {SELECT_FROM}, phase II "
            f"{args.steps // 2} steps from its {args.phase2_from} (each arm's selection and "
            "phase-II keys under arms; unset ones: TrainConfig's, K 20, beta 0.2); best "
            "checkpoint on val; test scores: per-image mean F1 at 0.5 (JTFN "
            "protocol, empty image F1 = 0), ODS/OIS/AP over 99 thresholds; mean and sample "
            "std over seeds"
        ),
        "arms": {arm: ARMS[arm] for arm in arms},
        "seeds": seeds,
        "table": table,
        "baseline": baseline,
        "minus_baseline_f1": verdict,
        "timing": timing,
        "per_seed": per_seed,
        "wall_seconds": wall,
        "machine": {"threads": torch.get_num_threads(), "torch": torch.__version__},
    }
    path = Path(args.json) if args.json else work / "ablation.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown_table(result, arms))

    print(result["protocol"])
    print(f"{'arm':18} {'F1 (paper)':>16} {'ODS':>7} {'OIS':>7} {'AP':>7} {'-best':>7} "
          f"{'|A|/|M|':>8} {'crack A I->II':>14} {'ring FP I->II':>14}")  # fmt: skip
    for arm in arms:
        row = table[arm]
        mech = row.get("mechanism") or {}

        def pair(a: str, b: str, mech=mech) -> str:
            if mech.get(a) is None:
                return "-"
            return f"{mech[a]:.2f}->{mech[b]:.2f}" if mech.get(b) is not None else f"{mech[a]:.2f}"

        gain = statistics.fmean(gains[arm]) if arm in gains else 0.0
        print(
            f"{arm:18} {row['f1']['mean']:8.4f} ± {row['f1']['std']:.4f} {row['ods']['mean']:7.4f} "
            f"{row['ois']['mean']:7.4f} {row['ap']['mean']:7.4f} {gain:+7.4f} "
            f"{mech.get('selected_fraction_of_m', 0):8.4f} "
            f"{pair('crack_share_of_a_after_phase1', 'crack_share_of_a_after_phase2'):>14} "
            f"{pair('ring_fp_rate_after_phase1', 'ring_fp_rate_after_phase2'):>14}"
        )
    if timing:
        print(
            "step ms: "
            + ", ".join(
                f"{k} {v:.0f} ({timing['relative_to_bce'][k]:.2f}x)"
                for k, v in timing["ms_per_step"].items()
            )
        )
    for arm, v in verdict.items():
        words = {"above": f"above {baseline} beyond the seed spread",
                 "below": f"below {baseline} beyond the seed spread"}  # fmt: skip
        print(f"{arm} - {baseline}, per-image F1 per seed: "
              f"{[round(x, 4) for x in v['per_seed']]}: "
              f"{words.get(v['verdict'], v['verdict'])}")  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
