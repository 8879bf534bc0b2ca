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
