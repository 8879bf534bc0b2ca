"""The ``cirl`` command: one subcommand per stage, each a thin adapter over ``<stage>.run``.

A stage's parameters are declared once, as the fields of its frozen config dataclass (type,
default, and the help line in the class docstring's ``Attributes:``); the subcommand's options
are derived from those fields, so a new parameter is one line in one place. Options given on
the command line override the stage's group in ``--params`` (a ``params.yaml``), which
overrides the dataclass defaults. Only a command's inputs and outputs (folders, files) are
declared here.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from cirl import __version__
from cirl.errors import CirlError
from cirl.lineage import schema
from cirl.lineage.schema import Tag


@dataclass(frozen=True)
class Arg:
    """An input or output of a command (a path, a name): not a parameter of the stage."""

    flags: tuple[str, ...]
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


def arg(*flags: str, **options: Any) -> Arg:
    """Shorthand for :class:`Arg`."""
    return Arg(flags, options)


@dataclass(frozen=True)
class Command:
    """A subcommand: its stage config group (options derived from it), inputs, handler."""

    name: str
    help: str
    description: str
    handler: Callable[[argparse.Namespace, Any], int]
    group: str | None = None
    args: tuple[Arg, ...] = ()
    quiet: bool = True
    extra_groups: tuple[str, ...] = ()
    locks_out: bool = True
    """One writer per ``--out`` (off where writers share it by design: sweep workers)."""


def _print_json(payload: dict) -> None:
    print(json.dumps(payload, indent=2, default=str))


def _bool_or_word(words: list[str]) -> Callable[[str], Any]:
    """An argparse type: ``true``/``false`` as booleans, or one of ``words``."""

    def convert(text: str) -> Any:
        lowered = text.lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        if lowered in words:
            return lowered
        raise argparse.ArgumentTypeError(
            f"invalid choice {text!r} (choose from true, false, {', '.join(words)})"
        )

    return convert


def _option_type(tp: Any) -> tuple[Any, dict[str, Any]]:
    """argparse keyword arguments for a config field annotation (None = a plain string)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _option_type(inner[0])
        if bool in inner:  # true/false or a word (``channels_last: auto``)
            words = [
                str(v) for a in inner if typing.get_origin(a) is typing.Literal for v in a.__args__
            ]
            return _bool_or_word(words), {
                "nargs": "?",
                "const": True,
                "metavar": "{" + ",".join(["true", "false", *words]) + "}",
            }
        return str, {}
    if origin is typing.Literal:
        values = [str(a) for a in args]
        return str, {"choices": values, "metavar": "{" + ",".join(values) + "}"}
    if tp is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    if tp in (int, float):
        return tp, {}
    if origin is tuple:
        n = "..." if len(args) == 2 and args[1] is Ellipsis else len(args)
        return str, {"metavar": "A,B" if n == 2 else "A,B,C" if n == 3 else "LIST"}
    return str, {}


def config_options(parser: argparse.ArgumentParser, cls: type) -> list[str]:
    """Add one ``--option`` per field of the config dataclass ``cls``; returns the field names.

    The help line comes from the class docstring's ``Attributes:`` section and ends with the
    default. Options default to ``None`` (not given): only given options override ``--params``.
    """
    from cirl.config import field_help

    helps = field_help(cls)
    hints = typing.get_type_hints(cls)
    names = []
    group = parser.add_argument_group(
        "parameters", "(from the stage config; --params FILE sets defaults, flags override it)"
    )
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        kind, extra = _option_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, tuple):
            default = ",".join(str(v) for v in default)
        text = helps.get(f.name, "").replace("%", "%%")
        options: dict[str, Any] = {"default": None, "help": f"{text} (default {default})"}
        if kind is not None:
            options["type"] = kind
        options.update(extra)
        if extra.get("choices") and kind is str and hints[f.name] is not str:
            literal_args = typing.get_args(hints[f.name])
            if literal_args and not isinstance(literal_args[0], str):
                # Literal of numbers: parse as the literal's type
                options["type"] = type(literal_args[0])
                options["choices"] = list(literal_args)
                options.pop("metavar")
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **options)
        names.append(f.name)
    return names


def resolved_config(args: argparse.Namespace, group: str) -> Any:
    """The stage config: dataclass defaults < ``--params`` group < given options."""
    from cirl import config

    cls = config.stage_config(group)
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}
    return config.resolve(cls, group, args.params, overrides)


@contextlib.contextmanager
def _tracked(args: argparse.Namespace, stage: str, cfg: Any, **kwargs: Any) -> Iterator[Any]:
    """The stage's MLflow run when tracking is on (``--track`` or ``tracking.track`` in
    ``--params``); a run that does nothing otherwise. Yields the run."""
    from cirl.lineage import tracking

    tcfg = resolved_config(args, "tracking")
    parent = getattr(args, "parent_run_id", None)
    with tracking.stage_run(stage, cfg, tcfg, parent_run_id=parent, **kwargs) as run:
        yield run


def _with_run(payload: dict, run: Any) -> dict:
    if run.run_id:
        payload["mlflow_run_id"] = run.run_id
    return payload


def _cmd_synth(args: argparse.Namespace, cfg) -> int:
    from cirl.data import synth

    result = synth.run(cfg, args.out)
    _print_json(
        {"out": str(result.out), "images": result.images, "crack_fraction": result.crack_fraction}
    )
    return 0


def _cmd_prepare(args: argparse.Namespace, cfg) -> int:
    from cirl.data import prepare

    with _tracked(args, "prepare", cfg, out=args.out, tags={Tag.SOURCE: args.source}) as run:
        result = prepare.run(cfg, args.source, args.format, args.out, progress=not args.quiet)
    payload = {
        "out": str(result.out),
        "photos": result.sources,
        "tiles": result.tiles,
        "skipped": len(result.skipped),
        "warnings": len(result.warnings),
    }
    _print_json(_with_run(payload, run))
    return 0


def _cmd_train(args: argparse.Namespace, cfg) -> int:
    from cirl.method import train

    name = schema.training_stage(cfg.phase, cfg.loss)
    with _tracked(args, "train", cfg, data=args.data, out=args.out, run_name=name) as run:
        result = train.run(
            cfg,
            args.data,
            args.out,
            init=args.init,
            ambiguity=args.ambiguity,
            resume=args.resume,
            progress=not args.quiet,
            on_epoch=run.on_epoch,
        )
        run.set_tags(schema.arithmetic_tags(result.provenance))
    last = result.history[-1] if result.history else {}
    payload = {
        "out": str(result.out),
        "best": str(result.best),
        "best_epoch": result.best_epoch,
        "best_val_f1": result.best_val_f1,
        "last_epoch": last.get("epoch"),
        "last_loss": last.get("loss"),
    }
    _print_json(_with_run(payload, run))
    return 0


def _cmd_select(args: argparse.Namespace, cfg) -> int:
    from cirl.method import selection
    from cirl.models.inference import subnormals_as_zero

    with subnormals_as_zero(), _tracked(args, "select", cfg, data=args.data, out=args.out) as run:
        result = selection.run(cfg, args.data, args.checkpoint, args.out, progress=not args.quiet)
    _print_json(_with_run({"out": str(result.out), **result.summary()}, run))
    return 0


def _cmd_evaluate(args: argparse.Namespace, cfg) -> int:
    from cirl.method import evaluate
    from cirl.models.inference import subnormals_as_zero

    with subnormals_as_zero(), _tracked(args, "evaluate", cfg, data=args.data, out=args.out) as run:
        summary = evaluate.run(cfg, args.data, args.checkpoint, args.out, progress=not args.quiet)
    keys = ("f1", "precision", "recall", "ods", "ois", "ap")
    shown = {k: summary[k] for k in keys if k in summary}
    calibration = summary.get("threshold_calibration") or {}
    if calibration.get("threshold") is not None:
        shown["calibrated_threshold"] = calibration["threshold"]
        shown["f1_calibrated"] = calibration["scored"]["f1"]
    shown["protocol"] = summary["protocol"]
    _print_json(_with_run(shown, run))
    return 0


def _cmd_export(args: argparse.Namespace, cfg) -> int:
    from cirl.deploy import export
    from cirl.models.inference import subnormals_as_zero

    with subnormals_as_zero(), _tracked(args, "export", cfg, out=args.out) as run:
        result = export.run(cfg, args.checkpoint, args.out, data=args.data,
                            evaluation=args.evaluation)  # fmt: skip
    payload = {
        "out": str(result.out),
        "report": str(result.out) + ".json",
        "opset": cfg.opset,
        "parity_max_abs_diff": result.parity_max_abs_diff,
    }
    if "int8" in result.report:
        payload["int8"] = result.report["int8"]["model"]
    gate = result.report.get("accuracy_gate", {})
    if "skipped" in gate:
        payload["accuracy_gate"] = f"not run: {gate['skipped']}"
    elif gate:
        payload["accuracy_gate"] = {
            name: entry.get("skipped")
            or (
                f"{'passed' if entry['passed'] else 'FAILED'}: F1 {entry['delta']['f1']:+.4f}, "
                f"ODS {entry['delta']['ods']:+.4f}, AP {entry['delta']['ap']:+.4f} vs fp32 on "
                f"{gate['split']}, {entry['speed_vs_reference']:.2f}x its speed"
            )
            for name, entry in gate["engines"].items()
        }
    _print_json(_with_run(payload, run))
    return 0


def _cmd_register(args: argparse.Namespace, cfg) -> int:
    from cirl.lineage import registry

    tcfg = resolved_config(args, "tracking")
    result = registry.register(
        cfg, args.model, args.evaluation, args.checkpoint, tcfg, args.parent_run_id
    )
    payload = dataclasses.asdict(result)
    _print_json(payload)
    return 0


def _cmd_promote(args: argparse.Namespace, cfg) -> int:
    from cirl.lineage import registry

    result = registry.promote(cfg, args.version, resolved_config(args, "tracking"))
    _print_json(dataclasses.asdict(result))
    return 0


def _cmd_audit(args: argparse.Namespace, cfg) -> int:
    from cirl import audit
    from cirl.lineage import registry

    uri = args.uri
    if args.at:
        uri = registry.version_uri_at(args.uri, args.at, resolved_config(args, "tracking"))
        print(f"{args.uri} at {args.at}: {uri}", file=sys.stderr)
    result = audit.run(
        cfg,
        uri,
        args.out,
        verify=args.verify,
        retrain=args.retrain,
        data=args.data,
        tracking=resolved_config(args, "tracking"),
        progress=not args.quiet,
    )
    print(result.markdown, end="")
    for path in result.paths:
        print(f"wrote {path}", file=sys.stderr)
    for difference in result.differences:
        print(f"error: {difference.line()}", file=sys.stderr)
    return 0 if result.ok else 1


def _cmd_predict(args: argparse.Namespace, cfg) -> int:
    from cirl.deploy import predict
    from cirl.models.inference import subnormals_as_zero

    with subnormals_as_zero():
        result = predict.run(
            cfg,
            args.input,
            args.model,
            args.out,
            progress=not args.quiet,
            tracking_uri=args.tracking_uri,
        )
    _print_json(
        {
            "out": str(result.out),
            "engine": result.engine,
            "engine_choice": (result.engine_choice or {}).get("why"),
            "done": len(result.done),
            "skipped": len(result.skipped),
            "failed": [f["image"] for f in result.failed],
            "summary": str(result.out / "summary.csv"),
        }
    )
    if result.failed:
        print(
            f"error: {len(result.failed)} of "
            f"{len(result.failed) + len(result.done) + len(result.skipped)} photo(s) "
            f"failed; reasons in {result.out / 'predictions.json'}",
            file=sys.stderr,
        )
        return 1
    return 0


def _cmd_sweep(args: argparse.Namespace, cfg) -> int:
    from cirl import config
    from cirl.method.selection import SelectConfig
    from cirl.method.train import TrainConfig
    from cirl.tuning import sweep

    # the recipe and the defaults: the train and select groups of --params (the sweep's own
    # options share names with their keys, so they are not read from the command line here)
    train_cfg = config.resolve(TrainConfig, "train", args.params)
    select_cfg = config.resolve(SelectConfig, "select", args.params)
    tcfg = resolved_config(args, "tracking")
    result = sweep.run(cfg, train_cfg, select_cfg, args.data, args.out, tcfg)
    _print_json(
        {
            "out": str(result.out),
            "storage": result.storage,
            **result.counts(),
            "best": result.best,
        }
    )
    return 0


COMMANDS: tuple[Command, ...] = (
    Command(
        "synth",
        "generate a synthetic concrete-crack dataset in the folder layout",
        "Write OUT/images/*.jpg and OUT/masks/*.png: concrete-like textures with branching "
        "cracks 1-15 px wide, stains, joints and shadows as distractors, and label noise "
        "confined to the 2-pixel ring around each crack. Deterministic for a seed.",
        _cmd_synth,
        group="synth",
        args=(arg("--out", required=True, metavar="DIR", help="output folder"),),
        quiet=False,
    ),
    Command(
        "prepare",
        "slice a raw dataset into tiles, split it 90/5/5, write manifest and dataset card",
        "Import a raw dataset, cut every photo into tiles without resizing, split by photo "
        "(an official split wins) and write OUT/images, OUT/masks, OUT/valid (only tiles "
        "with padding or outside a field of view), OUT/manifest.csv and "
        "OUT/dataset_card.json. OUT is replaced only when the run completes.",
        _cmd_prepare,
        group="prepare",
        extra_groups=("tracking",),
        args=(
            arg("--source", required=True, metavar="DIR", help="raw dataset folder"),
            arg(
                "--format",
                required=True,
                choices=("folder", "cfd", "drive"),
                help="raw layout: folder (images/, masks/, splits/), cfd (CrackForest), "
                "drive (DRIVE)",
            ),
            arg("--out", required=True, metavar="DIR", help="prepared dataset folder"),
            arg("--parent-run-id", metavar="ID", help="MLflow parent run (a pipeline run)"),
        ),
    ),
    Command(
        "train",
        "train the BCE baseline, CIRL phase I or CIRL phase II",
        "Train on the train split of a prepared folder; the best checkpoint is chosen on the "
        "val split. Writes OUT/last.pt (every epoch), OUT/best.pt, OUT/history.json, "
        "OUT/config.json. Phase 1: BCE + ambiguity-aware loss with the std head. Phase 2: "
        "from --init, BCE outside the ambiguous pixels + beta * clustering-inspired loss "
        "inside them (--ambiguity from `cirl select`). --loss bce: the baseline.",
        _cmd_train,
        group="train",
        extra_groups=("tracking",),
        args=(
            arg("--data", required=True, metavar="DIR", help="prepared folder"),
            arg("--out", required=True, metavar="DIR", help="run folder"),
            arg("--init", metavar="PT", help="phase 2: the phase-I checkpoint"),
            arg("--ambiguity", metavar="DIR", help="phase 2: the `cirl select` output folder"),
            arg(
                "--resume",
                action="store_true",
                help="continue from OUT/last.pt (same parameters; --epochs may grow to train "
                "longer)",
            ),
            arg("--parent-run-id", metavar="ID", help="MLflow parent run (a pipeline run)"),
        ),
    ),
    Command(
        "select",
        "select the ambiguous pixels with a phase-I model",
        "Run the phase-I model over every training tile and write OUT/ambiguous/*.png "
        "(A = sigma^2 > gamma inside the marginal ring; --rule error: the model's squared "
        "error over 8 flips/rotations > lam), OUT/log_variance/*.png (or OUT/error/*.png), "
        "OUT/selection.csv, OUT/summary.json (with the crack share of A and the ring's "
        "false-positive rate) and OUT/overview.png.",
        _cmd_select,
        group="select",
        extra_groups=("tracking",),
        args=(
            arg("--data", required=True, metavar="DIR", help="prepared folder"),
            arg("--checkpoint", required=True, metavar="PT", help="phase-I checkpoint"),
            arg("--out", required=True, metavar="DIR", help="selection folder"),
            arg("--parent-run-id", metavar="ID", help="MLflow parent run (a pipeline run)"),
        ),
    ),
    Command(
        "sweep",
        "Optuna sweeps over lambda, gamma, K, beta and CIRL's method options",
        "Sensitivity (one parameter at a time around the train/select groups of --params) or "
        "TPE search (all jointly). Each trial trains phase I (shared between trials with the "
        "same phase-I keys), selects (shared likewise), trains phase II and returns its best "
        "val F1; poor trials are pruned, failed ones recorded, an interrupted sweep resumes "
        "and workers sharing --storage split the trials. Writes OUT/trials.csv, "
        "OUT/sensitivity.png/.csv, OUT/importance.png/.csv, OUT/best.md/.csv (test scored "
        "once, after the choice).",
        _cmd_sweep,
        group="sweep",
        locks_out=False,  # workers share one --out and lock its trials themselves
        extra_groups=("tracking",),
        args=(
            arg("--data", required=True, metavar="DIR", help="prepared folder (train/val/test)"),
            arg("--out", required=True, metavar="DIR", help="sweep folder"),
        ),
    ),
    Command(
        "evaluate",
        "evaluate a checkpoint on a split (paper protocol, ODS, OIS, AP, IoU)",
        "Writes OUT/metrics.json (top-level f1/precision/recall: per-image means at 0.5, "
        "the paper's protocol), OUT/per_image.csv, OUT/pr_curve.png and overlays of the "
        "best and worst images.",
        _cmd_evaluate,
        group="evaluate",
        extra_groups=("tracking",),
        args=(
            arg("--data", required=True, metavar="DIR", help="prepared folder"),
            arg("--checkpoint", required=True, metavar="PT", help="checkpoint to evaluate"),
            arg("--out", required=True, metavar="DIR", help="evaluation folder"),
            arg("--parent-run-id", metavar="ID", help="MLflow parent run (a pipeline run)"),
        ),
    ),
    Command(
        "export",
        "export a checkpoint to ONNX (backbone + seg head, sigmoid included)",
        "Write OUT (.onnx) without the std head, with dynamic batch/height/width, checked by "
        "onnx.checker and against PyTorch (max abs difference within --tolerance), and "
        "OUT.json with the measurements. With a prepared folder (--data, or the one recorded "
        "in the checkpoint) the accuracy gate scores the faster engines (OpenVINO fp32/bf16, "
        "the int8 copy) against onnxruntime fp32 on --split and writes the verdicts into the "
        "model's metadata; `cirl predict` uses only engines that passed. --quantize static "
        "adds OUT-stem.int8.onnx calibrated on --data's training tiles.",
        _cmd_export,
        group="export",
        extra_groups=("tracking",),
        args=(
            arg("--checkpoint", required=True, metavar="PT", help="checkpoint to export"),
            arg("--out", required=True, metavar="ONNX", help="output .onnx file"),
            arg(
                "--data",
                metavar="DIR",
                help="prepared folder: the accuracy gate's split and the int8 calibration "
                "(default: the folder recorded in the checkpoint, if still there)",
            ),
            arg(
                "--evaluation",
                metavar="DIR",
                help="`cirl evaluate`'s folder of this checkpoint: its calibrated decision "
                "threshold (the validation split's best) goes into the model, for `cirl "
                "predict --threshold auto`",
            ),
            arg("--parent-run-id", metavar="ID", help="MLflow parent run (a pipeline run)"),
        ),
        quiet=False,
    ),
    Command(
        "predict",
        "crack maps, overlays and crack measurements for photos of any size",
        "Sliding-window prediction with blended overlaps. Writes per photo NAME_mask.png, "
        "NAME_prob.png, NAME_overlay.jpg, NAME.json and NAME_cracks.csv (length, width, "
        "orientation of each connected crack), and over all photos summary.csv and "
        "predictions.json. The input is a photo, a folder or an s3://bucket/prefix. Photos "
        "already done by an earlier run (same photo, model and parameters) are skipped, so an "
        "interrupted batch resumes. --engine auto (default) uses the fastest engine on this "
        "machine that passed the model's accuracy gate. Photos that cannot be read are "
        "reported and skipped; the exit status is 1 if any failed.",
        _cmd_predict,
        group="predict",
        args=(
            arg(
                "input",
                metavar="IMAGE_OR_DIR",
                help="a photo, a folder of photos, or s3://bucket/prefix",
            ),
            arg(
                "--model",
                required=True,
                metavar="FILE_OR_URI",
                help=".onnx (or .pt with torch), or a registered model: models:/NAME@champion",
            ),
            arg("--out", required=True, metavar="DIR", help="output folder"),
            arg(
                "--tracking-uri",
                metavar="URI",
                help="MLflow server of a models:/ model (default $MLFLOW_TRACKING_URI, else "
                "sqlite:///mlflow.db)",
            ),
        ),
    ),
    Command(
        "register",
        "register an exported model as a new version in the MLflow model registry",
        "Log the ONNX model (signature, input example), its checkpoint and configs, and the "
        "test metrics of its evaluation as a new version of --name, with lineage tags. "
        "--promote also compares it with the champion (see `cirl promote`).",
        _cmd_register,
        group="register",
        extra_groups=("tracking",),
        args=(
            arg("--model", required=True, metavar="ONNX", help="the exported model.onnx"),
            arg(
                "--evaluation",
                required=True,
                metavar="DIR",
                help="its `cirl evaluate` folder (or metrics.json) on the test split",
            ),
            arg("--checkpoint", metavar="PT", help="the checkpoint it was exported from"),
            arg("--parent-run-id", metavar="ID", help="MLflow parent run (a pipeline run)"),
        ),
        quiet=False,
    ),
    Command(
        "promote",
        "move the champion alias to a registered version if it is at least as good",
        "Compare --version with the current champion on the same test data (same manifest "
        "hash): it becomes champion when its F1 >= the champion's - margin, else challenger "
        "with the reason as a tag. Every move is recorded (alias history).",
        _cmd_promote,
        group="promote",
        extra_groups=("tracking",),
        args=(arg("--version", required=True, help="the registered version to promote"),),
        quiet=False,
    ),
    Command(
        "audit",
        "lineage of a registered model; --verify checks it, --retrain reproduces it",
        "Print and write (OUT/audit.md, OUT/audit.json) the lineage of a registered model: "
        "data (DVC hash, manifest hash, dataset card), code (commit, dirty flag), every "
        "stage's parameters, environment, test scores, the chain of runs from preparation to "
        "registration and the alias history. --verify checks every tile's SHA-256 against "
        "the manifest and re-evaluates the registered weights (and ONNX model) on the "
        "recorded test split; --retrain trains again from the recorded parameters into "
        "OUT/retrain and compares weights and scores. Exit status 1 when a check finds a "
        "difference (each printed as an error: line).",
        _cmd_audit,
        group="audit",
        extra_groups=("tracking",),
        args=(
            arg("uri", metavar="MODEL_URI", help="models:/NAME@ALIAS or models:/NAME/VERSION"),
            arg("--out", default="runs/audit", metavar="DIR", help="report folder"),
            arg("--verify", action="store_true", help="check data, weights and scores"),
            arg("--retrain", action="store_true", help="train again and compare"),
            arg("--data", metavar="DIR", help="prepared folder instead of the recorded one"),
            arg(
                "--at",
                metavar="TIME",
                help="audit the version that held the alias at TIME (ISO 8601, UTC if no "
                "zone, e.g. 2026-11-01 or 2026-11-01T08:00): which model was champion then",
            ),
        ),
    ),
)


def _dispatch(command: Command) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        cfg = resolved_config(args, command.group) if command.group else None
        return command.handler(args, cfg)

    return handler


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cirl`` command (all subcommands)."""
    parser = argparse.ArgumentParser(
        prog="cirl",
        description="Crack segmentation with CIRL (CVPR 2024): data, training, evaluation, export.",
    )
    parser.add_argument("--version", action="version", version=f"cirl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.description)
        for a in command.args:
            p.add_argument(*a.flags, **a.options)
        if command.quiet:
            p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
        if command.group:
            p.add_argument(
                "--params",
                metavar="FILE",
                help="params.yaml whose group for this stage sets defaults (flags override it)",
            )
            config_options(p, _config_class(command.group))
            for extra in command.extra_groups:
                config_options(p, _config_class(extra))
        p.set_defaults(handler=_dispatch(command), reads_out=not command.locks_out)
    _add_extra_commands(sub)
    return parser


def _config_class(group: str) -> type:
    from cirl import config

    return config.stage_config(group)


def _pipeline_arguments(args: argparse.Namespace) -> dict:
    from cirl.orchestration import pipeline

    arguments: dict[str, Any] = {}
    if args.package is None:
        args.package = str(pipeline.default_package())
    if getattr(args, "source", None):
        source = args.source
        if "://" not in source:  # local tasks run in other folders: make it absolute
            from pathlib import Path

            source = str(Path(source).resolve())
        arguments["source"] = source
    if getattr(args, "source_format", None):
        arguments["source_format"] = args.source_format
    overrides = pipeline.parse_overrides(args.set)
    arguments.update(pipeline.stage_arguments(args.params, overrides, args.package))
    if args.baseline is not None:
        arguments["with_baseline"] = args.baseline
    image = getattr(args, "image", None) or ""
    # on a cluster the image is the code: its digest keys the cache and is what an audit needs
    digest = image.split("@", 1)[1] if "@sha256:" in image else None
    arguments["code_version"] = args.code_version or digest or pipeline.code_version()
    return arguments


def _package(args: argparse.Namespace, tmp_dir: str) -> str:
    """The package to use: ``--package``, with every task's image replaced by ``--image``."""
    from cirl.orchestration import pipeline

    if args.package is None:
        args.package = str(pipeline.default_package())
    if not args.image:
        return args.package
    warning = pipeline.check_image_reference(args.image)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    pipeline.load_package(args.package)
    from pathlib import Path

    return str(pipeline.with_image(args.package, args.image, Path(tmp_dir) / "pipeline.yaml"))


def _cmd_pipeline_run(args: argparse.Namespace) -> int:
    import tempfile

    from cirl.orchestration import pipeline

    if not args.source:
        raise CirlError("--source is required: a raw dataset folder or s3://bucket/prefix")
    with tempfile.TemporaryDirectory() as tmp:
        result = pipeline.run_local(
            _package(args, tmp),
            _pipeline_arguments(args),
            args.out,
            runner=args.runner,
            cache=args.cache,
        )
    _print_json(
        {
            "out": str(result.out),
            "run_dir": str(result.run_dir),
            "seconds": round(result.seconds, 1),
            "outputs": {k: str(result.out / k) for k in result.links},
            "reused": result.reused,
            "metrics": result.metrics,
            "mlflow_run_id": result.parent_run_id,
            "registration": result.registration,
        }
    )
    return 0


def _cmd_pipeline_show(args: argparse.Namespace) -> int:
    from cirl.orchestration import pipeline

    print(pipeline.summary_text(args.out))
    return 0


def _cmd_pipeline_submit(args: argparse.Namespace) -> int:
    import tempfile

    from cirl.orchestration import pipeline

    if not args.source:
        raise CirlError("--source is required: on a cluster, s3://bucket/prefix of the photos")
    with tempfile.TemporaryDirectory() as tmp:
        result = pipeline.submit(
            _package(args, tmp),
            _pipeline_arguments(args),
            host=args.host,
            experiment=args.experiment,
            run_name=args.run_name,
            namespace=args.namespace,
            token=args.token,
        )
    _print_json(result)
    return 0


def _cmd_pipeline_schedule(args: argparse.Namespace) -> int:
    import tempfile

    from cirl.orchestration import pipeline

    if not args.source:
        raise CirlError("--source is required: on a cluster, s3://bucket/prefix of the photos")
    with tempfile.TemporaryDirectory() as tmp:
        result = pipeline.schedule(
            _package(args, tmp),
            _pipeline_arguments(args),
            cron=args.cron,
            host=args.host,
            experiment=args.experiment,
            job_name=args.name,
            namespace=args.namespace,
            token=args.token,
        )
    _print_json(result)
    return 0


def _add_extra_commands(sub: argparse._SubParsersAction) -> None:
    """Commands that are not a single stage: the pipeline."""
    p = sub.add_parser(
        "pipeline",
        help="run the KFP pipeline here, or submit or schedule it on a Kubeflow cluster",
        description=(
            "The compiled KFP pipeline (pipelines/training.yaml): `run` on this machine with "
            "KFP's local runner, `submit` one run or `schedule` recurring runs on a KFP "
            "endpoint. Stage parameters come from --params (one group per stage) and --set "
            "GROUP.KEY=VALUE; the package's compiled defaults otherwise."
        ),
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    def common(q: argparse.ArgumentParser, source_help: str) -> None:
        q.add_argument("--source", metavar="DIR_OR_URI", help=source_help)
        q.add_argument(
            "--source-format",
            choices=("folder", "cfd", "drive"),
            help="raw layout of --source (default folder)",
        )
        q.add_argument(
            "--package",
            default=None,
            metavar="YAML",
            help="compiled pipeline (default: pipelines/training.yaml here, else the one "
            "shipped with cirl)",
        )
        q.add_argument("--params", metavar="FILE", help="params.yaml: one group per stage")
        q.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="GROUP.KEY=VALUE",
            help="override one stage parameter, e.g. train.epochs=5 (repeatable)",
        )
        q.add_argument(
            "--baseline",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="also train and evaluate the plain BCE baseline",
        )
        q.add_argument("--image", help="run every task on this image (a digest on a cluster)")
        q.add_argument(
            "--code-version",
            help="recorded code version (default: the --image digest, else a hash of the "
            "package source)",
        )

    q = verbs.add_parser(
        "run",
        help="run the pipeline on this machine (KFP local runner)",
        description=(
            "Run every task on this machine. KFP writes the outputs under OUT/kfp/<run>/; "
            "OUT/prepared, phase1, select, phase2, eval, report.html, export and model.onnx "
            "link to the latest run's, and OUT/pipeline_run.json records the run."
        ),
    )
    common(q, "raw dataset folder or s3://bucket/prefix")
    q.add_argument("--out", default="runs/pipeline", metavar="DIR", help="run folder")
    q.add_argument(
        "--runner",
        choices=("subprocess", "docker"),
        default="subprocess",
        help="subprocess: tasks as processes of this environment (default); docker: in the "
        "image, through podman's Docker-compatible socket (DOCKER_HOST)",
    )
    q.add_argument(
        "--cache",
        action="store_true",
        help="reuse finished tasks of earlier runs with the same inputs and code",
    )
    q.set_defaults(handler=_cmd_pipeline_run)

    q = verbs.add_parser(
        "show",
        help="summarise a local run: scores, where the outputs are, how to look at them",
        description="Print a short summary of OUT/pipeline_run.json and the outputs.",
    )
    q.add_argument("--out", default="runs/pipeline", metavar="DIR", help="run folder")
    q.set_defaults(handler=_cmd_pipeline_show, reads_out=True)

    for verb, text in (
        ("submit", "start one run on a Kubeflow Pipelines endpoint"),
        ("schedule", "create a recurring run on a Kubeflow Pipelines endpoint"),
    ):
        q = verbs.add_parser(verb, help=text, description=text + ".")
        common(q, "s3://bucket/prefix of the raw photos (readable from the cluster)")
        q.add_argument("--host", help="KFP endpoint URL (default $KFP_HOST)")
        q.add_argument("--token", help="bearer token (default $KFP_TOKEN)")
        q.add_argument("--namespace", help="Kubeflow namespace (multi-user deployments)")
        q.add_argument("--experiment", default="cirl", help="experiment name (created if absent)")
        if verb == "submit":
            q.add_argument("--run-name", help="run name (default: cirl-training and the time)")
            q.set_defaults(handler=_cmd_pipeline_submit)
        else:
            q.add_argument(
                "--cron",
                required=True,
                help="six fields, seconds first: '0 0 2 * * *' is every day at 02:00",
            )
            q.add_argument("--name", default="cirl-training-scheduled", help="recurring run name")
            q.set_defaults(handler=_cmd_pipeline_schedule)


def _output_lock(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """One writer per ``--out``: the command's output folder or file is locked while it runs
    (not for commands that only read it, such as ``pipeline show``, or share it, ``sweep``)."""
    out = getattr(args, "out", None)
    if not out or getattr(args, "reads_out", False) or str(out).startswith("s3://"):
        return contextlib.nullcontext()
    from cirl.staging import output_lock

    return output_lock(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cirl`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        with _output_lock(args):
            return args.handler(args)
    except CirlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the operating system's refusal on a path: no traceback either
        from cirl.errors import describe_os_error

        print(f"error: {describe_os_error(exc, getattr(args, 'out', None))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; outputs of this run were not moved into place", file=sys.stderr)
        return 130
