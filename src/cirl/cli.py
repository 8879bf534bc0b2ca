"""The ``cirl`` command: one subcommand per stage, each a thin adapter over ``<stage>.run``.

Options given on the command line override the stage's group in ``--params`` (a
``params.yaml``), which overrides the stage config's defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from cirl import __version__
from cirl.errors import CirlError

Handler = Callable[[argparse.Namespace], int]


def _add_params(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params",
        metavar="FILE",
        help="params.yaml whose group for this stage sets defaults (flags override it)",
    )


def _print_json(payload: dict) -> None:
    print(json.dumps(payload, indent=2, default=str))


def _cmd_prepare(args: argparse.Namespace) -> int:
    from cirl import config, prepare

    cfg = config.resolve(
        prepare.PrepareConfig,
        "prepare",
        args.params,
        {
            "tile": args.tile,
            "edge": args.edge,
            "split": args.split,
            "split_by": args.split_by,
            "seed": args.seed,
            "workers": args.workers,
            "strict": True if args.strict else None,
            "png_level": args.png_level,
        },
    )
    result = prepare.run(cfg, args.source, args.format, args.out, progress=not args.quiet)
    _print_json(
        {
            "out": str(result.out),
            "photos": result.sources,
            "tiles": result.tiles,
            "skipped": len(result.skipped),
            "warnings": len(result.warnings),
        }
    )
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from cirl import config, synth

    cfg = config.resolve(
        synth.SynthConfig,
        "synth",
        args.params,
        {"n": args.n, "seed": args.seed, "width": args.width, "height": args.height},
    )
    result = synth.run(cfg, args.out)
    _print_json(
        {"out": str(result.out), "images": result.images, "crack_fraction": result.crack_fraction}
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from cirl import config, train

    cfg = config.resolve(
        train.TrainConfig,
        "train",
        args.params,
        {
            "model": args.model,
            "width": args.width,
            "phase": args.phase,
            "loss": args.loss,
            "epochs": args.epochs,
            "steps_per_epoch": args.steps_per_epoch,
            "batch_size": args.batch_size,
            "crop": args.crop,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "lam": args.lam,
            "aseg_weight": args.aseg_weight,
            "beta": args.beta,
            "k": args.k,
            "max_pixels": args.max_pixels,
            "seed": args.seed,
            "workers": args.workers,
            "device": args.device,
            "val_every": args.val_every,
        },
    )
    result = train.run(
        cfg,
        args.data,
        args.out,
        init=args.init,
        ambiguity=args.ambiguity,
        resume=args.resume,
        progress=not args.quiet,
    )
    last = result.history[-1] if result.history else {}
    _print_json(
        {
            "out": str(result.out),
            "best": str(result.best),
            "best_epoch": result.best_epoch,
            "best_val_f1": result.best_val_f1,
            "last_epoch": last.get("epoch"),
            "last_loss": last.get("loss"),
        }
    )
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    from cirl import config, selection

    cfg = config.resolve(
        selection.SelectConfig,
        "select",
        args.params,
        {
            "gamma": args.gamma,
            "fraction": args.fraction,
            "kernel": args.kernel,
            "split": args.split,
            "device": args.device,
        },
    )
    result = selection.run(cfg, args.data, args.checkpoint, args.out, progress=not args.quiet)
    _print_json(
        {
            "out": str(result.out),
            "tiles": result.tiles,
            "marginal_pixels": result.marginal_pixels,
            "selected_pixels": result.selected_pixels,
            "selected_fraction": result.selected_fraction,
            "gamma": result.gamma,
            "warnings": list(result.warnings),
        }
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from cirl import config, evaluate

    cfg = config.resolve(
        evaluate.EvaluateConfig,
        "evaluate",
        args.params,
        {
            "split": args.split,
            "threshold": args.threshold,
            "tolerance": args.tolerance,
            "empty_f1": args.empty_f1,
            "overlays": args.overlays,
            "device": args.device,
        },
    )
    summary = evaluate.run(cfg, args.data, args.checkpoint, args.out, progress=not args.quiet)
    _print_json(
        {
            k: summary[k]
            for k in ("f1", "precision", "recall", "ods", "ois", "ap", "protocol")
            if k in summary
        }
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from cirl import config, export

    cfg = config.resolve(
        export.ExportConfig,
        "export",
        args.params,
        {
            "opset": args.opset,
            "tolerance": args.tolerance,
            "quantize": args.quantize,
            "split": args.split,
        },
    )
    result = export.run(cfg, args.checkpoint, args.out, data=args.data)
    payload = {
        "out": str(result.out),
        "report": str(result.out) + ".json",
        "opset": cfg.opset,
        "parity_max_abs_diff": result.parity_max_abs_diff,
    }
    if "int8" in result.report:
        payload["int8"] = result.report["int8"]["model"]
        if "accuracy" in result.report["int8"]:
            payload["int8_f1_change"] = result.report["int8"]["accuracy"]["f1_change"]
    _print_json(payload)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from cirl import config, predict

    cfg = config.resolve(
        predict.PredictConfig,
        "predict",
        args.params,
        {
            "engine": args.engine,
            "tile": args.tile,
            "overlap": args.overlap,
            "batch": args.batch,
            "threshold": args.threshold,
            "threads": args.threads,
            "device": args.device,
            "mm_per_pixel": args.mm_per_pixel,
            "min_crack_pixels": args.min_crack_pixels,
            "max_crack_width": args.max_crack_width,
        },
    )
    result = predict.run(cfg, args.input, args.model, args.out, progress=not args.quiet)
    _print_json(
        {
            "out": str(result.out),
            "done": len(result.done),
            "failed": [f["image"] for f in result.failed],
        }
    )
    if result.failed:
        print(
            f"error: {len(result.failed)} of {len(result.failed) + len(result.done)} photo(s) "
            f"failed; reasons in {result.out / 'predictions.json'}",
            file=sys.stderr,
        )
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cirl`` command (all subcommands)."""
    parser = argparse.ArgumentParser(
        prog="cirl",
        description="Crack segmentation with CIRL (CVPR 2024): data, training, evaluation, export.",
    )
    parser.add_argument("--version", action="version", version=f"cirl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "prepare",
        help="slice a raw dataset into tiles, split it 90/5/5, write manifest and dataset card",
        description=(
            "Import a raw dataset, cut every photo into tiles without resizing, split by photo "
            "(an official split wins) and write OUT/images, OUT/masks, OUT/valid (only tiles "
            "with padding or outside a field of view), OUT/manifest.csv and "
            "OUT/dataset_card.json. OUT is replaced only when the run completes."
        ),
    )
    p.add_argument("--source", required=True, metavar="DIR", help="raw dataset folder")
    p.add_argument(
        "--format",
        required=True,
        choices=("folder", "cfd", "drive"),
        help="raw layout: folder (images/, masks/, splits/), cfd (CrackForest), drive (DRIVE)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="prepared dataset folder")
    p.add_argument("--tile", type=int, help="tile side in pixels, 0 = whole photos (default 512)")
    p.add_argument(
        "--edge",
        choices=("shift", "pad"),
        help="last tile at a ragged edge: shift it inward (default) or zero-pad it",
    )
    p.add_argument("--split", metavar="TR,VA,TE", help="split ratios (default 0.9,0.05,0.05)")
    p.add_argument(
        "--split-by",
        choices=("image", "tile"),
        help="keep each photo's tiles in one split (default) or split tiles",
    )
    p.add_argument("--seed", type=int, help="split seed (default 0)")
    p.add_argument("--workers", type=int, help="parallel slicing processes (default 1)")
    p.add_argument("--png-level", type=int, help="PNG compression 0-9 of tiles (default 1)")
    p.add_argument("--strict", action="store_true", help="fail on any file that would be skipped")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_params(p)
    p.set_defaults(handler=_cmd_prepare)

    p = sub.add_parser(
        "synth",
        help="generate a synthetic concrete-crack dataset in the folder layout",
        description=(
            "Write OUT/images/*.jpg and OUT/masks/*.png: concrete-like textures with branching "
            "cracks 1-15 px wide, stains, joints and shadows as distractors, and label noise "
            "confined to the 2-pixel ring around each crack. Deterministic for a seed."
        ),
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--n", type=int, help="number of images (default 20)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--width", type=int, help="image width (default 2048)")
    p.add_argument("--height", type=int, help="image height (default 1536)")
    _add_params(p)
    p.set_defaults(handler=_cmd_synth)

    p = sub.add_parser(
        "train",
        help="train the BCE baseline, CIRL phase I or CIRL phase II",
        description=(
            "Train on the train split of a prepared folder; the best checkpoint is chosen on the "
            "val split. Writes OUT/last.pt (every epoch), OUT/best.pt, OUT/history.json, "
            "OUT/config.json. Phase 1: BCE + ambiguity-aware loss with the std head. Phase 2: "
            "from --init, BCE outside the ambiguous pixels + beta * clustering-inspired loss "
            "inside them (--ambiguity from `cirl select`). --loss bce: the baseline."
        ),
    )
    p.add_argument("--data", required=True, metavar="DIR", help="prepared folder")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder")
    p.add_argument("--phase", type=int, choices=(1, 2), help="CIRL phase (default 1)")
    p.add_argument("--loss", choices=("cirl", "bce"), help="cirl (default) or the bce baseline")
    p.add_argument("--init", metavar="PT", help="phase 2: the phase-I checkpoint (best.pt)")
    p.add_argument("--ambiguity", metavar="DIR", help="phase 2: the `cirl select` output folder")
    p.add_argument("--model", help="unet, unet-small (default), jtfn, jtfn-small")
    p.add_argument("--width", type=int, help="base width of the model (default: preset)")
    p.add_argument("--epochs", type=int, help="epochs (default 10)")
    p.add_argument("--steps-per-epoch", type=int, help="steps per epoch (default: one pass)")
    p.add_argument("--batch-size", type=int, help="batch size (default 2)")
    p.add_argument("--crop", type=int, help="random crop side (default 256)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=float, help="Adam weight decay (default 5e-4)")
    p.add_argument("--lam", type=float, help="lambda of the ambiguity-aware loss (default 0.3)")
    p.add_argument("--aseg-weight", type=float, help="weight of the Aseg loss in phase 1 (1)")
    p.add_argument("--beta", type=float, help="weight of the CI loss (default 0.2)")
    p.add_argument("--k", type=int, help="neighbours K of the CI loss (default 20)")
    p.add_argument("--max-pixels", type=int, help="cap on ambiguous pixels per image (4096)")
    p.add_argument("--seed", type=int, help="seed (default 0)")
    p.add_argument("--workers", type=int, help="data-loader processes (default 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto")
    p.add_argument("--val-every", type=int, help="validate every N epochs (default 1)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/last.pt (same parameters; --epochs may grow to train longer)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_params(p)
    p.set_defaults(handler=_cmd_train)

    p = sub.add_parser(
        "select",
        help="select the ambiguous pixels with a phase-I model",
        description=(
            "Run the phase-I model over every training tile and write OUT/ambiguous/*.png "
            "(A = sigma^2 > gamma inside the marginal ring), OUT/log_variance/*.png, "
            "OUT/selection.csv, OUT/summary.json and OUT/overview.png."
        ),
    )
    p.add_argument("--data", required=True, metavar="DIR", help="prepared folder")
    p.add_argument("--checkpoint", required=True, metavar="PT", help="phase-I checkpoint")
    p.add_argument("--out", required=True, metavar="DIR", help="selection folder")
    p.add_argument("--gamma", type=float, help="variance threshold (default 0.4)")
    p.add_argument(
        "--fraction",
        type=float,
        help="instead of --gamma: select this share of the ring, highest variance first",
    )
    p.add_argument("--kernel", type=int, help="marginal ring dilation size (default 5)")
    p.add_argument("--split", choices=("train", "val", "test"), help="default train")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_params(p)
    p.set_defaults(handler=_cmd_select)

    p = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint on a split (paper protocol, ODS, OIS, AP, IoU)",
        description=(
            "Writes OUT/metrics.json (top-level f1/precision/recall: per-image means at 0.5, "
            "the paper's protocol), OUT/per_image.csv, OUT/pr_curve.png and overlays of the "
            "best and worst images."
        ),
    )
    p.add_argument("--data", required=True, metavar="DIR", help="prepared folder")
    p.add_argument("--checkpoint", required=True, metavar="PT", help="checkpoint to evaluate")
    p.add_argument("--out", required=True, metavar="DIR", help="evaluation folder")
    p.add_argument("--split", choices=("train", "val", "test"), help="default test")
    p.add_argument("--threshold", type=float, help="operating threshold (default 0.5)")
    p.add_argument(
        "--tolerance", type=int, help="also score with this pixel tolerance, e.g. 2 (default 0)"
    )
    p.add_argument(
        "--empty-f1",
        type=float,
        choices=(0.0, 1.0),
        help="F1 of an image with no crack and no prediction: 0 (JTFN, default) or 1",
    )
    p.add_argument("--overlays", type=int, help="best and worst images to draw (default 4)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_params(p)
    p.set_defaults(handler=_cmd_evaluate)

    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (backbone + seg head, sigmoid included)",
        description=(
            "Write OUT (.onnx) without the std head, with dynamic batch/height/width, checked by "
            "onnx.checker and against PyTorch (max abs difference within --tolerance), and "
            "OUT.json with the measurements. --quantize int8 adds OUT-stem.int8.onnx; with "
            "--data its accuracy change on --split is measured."
        ),
    )
    p.add_argument("--checkpoint", required=True, metavar="PT", help="checkpoint to export")
    p.add_argument("--out", required=True, metavar="ONNX", help="output .onnx file")
    p.add_argument("--opset", type=int, help="ONNX opset (default 18)")
    p.add_argument("--tolerance", type=float, help="parity bound (default 1e-4)")
    p.add_argument("--quantize", choices=("none", "int8"), help="also write an int8 model")
    p.add_argument("--data", metavar="DIR", help="prepared folder to score the int8 model on")
    p.add_argument("--split", choices=("train", "val", "test"), help="default test")
    _add_params(p)
    p.set_defaults(handler=_cmd_export)

    p = sub.add_parser(
        "predict",
        help="crack maps, overlays and crack measurements for photos of any size",
        description=(
            "Sliding-window prediction with blended overlaps. Writes per photo NAME_mask.png, "
            "NAME_prob.png, NAME_overlay.jpg, NAME.json and NAME_cracks.csv (length, width, "
            "orientation of each connected crack), and predictions.json. Photos that cannot "
            "be read are reported and skipped; the exit status is 1 if any failed."
        ),
    )
    p.add_argument("input", metavar="IMAGE_OR_DIR", help="a photo or a folder of photos")
    p.add_argument("--model", required=True, metavar="FILE", help=".onnx (or .pt with torch)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--engine", choices=("onnx", "torch"), help="default onnx")
    p.add_argument("--tile", type=int, help="tile side (default 512)")
    p.add_argument("--overlap", type=int, help="overlap between tiles (default 64)")
    p.add_argument("--batch", type=int, help="tiles per forward pass (default 4)")
    p.add_argument("--threshold", type=float, help="crack threshold (default 0.5)")
    p.add_argument("--threads", type=int, help="CPU threads (default: all)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto")
    p.add_argument("--mm-per-pixel", type=float, help="adds millimetre measurements")
    p.add_argument("--min-crack-pixels", type=int, help="smallest crack measured (default 20)")
    p.add_argument(
        "--max-crack-width",
        type=float,
        help="wider regions (px) are reported, not measured as cracks (default 200)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_params(p)
    p.set_defaults(handler=_cmd_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cirl`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.handler(args)
    except CirlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; outputs of this run were not moved into place", file=sys.stderr)
        return 130
