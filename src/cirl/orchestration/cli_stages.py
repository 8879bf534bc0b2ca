"""The stage commands (``cirl synth`` ... ``cirl sweep``): each a thin adapter over its
stage's ``run``, tracked when asked, printing one JSON summary; :data:`COMMANDS` declares them,
:data:`SECTIONS` groups their parameters on the help pages.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Iterator
from typing import Any

from cirl.lineage import schema
from cirl.lineage.schema import Tag
from cirl.orchestration.cli_options import Command, Section, _print_json, arg, resolved_config


@contextlib.contextmanager
def _tracked(args: argparse.Namespace, stage: str, cfg: Any, **kwargs: Any) -> Iterator[Any]:
    """The stage's MLflow run when tracking is on (``--track`` or ``tracking.track`` in
    ``--params``); a run that does nothing otherwise. Yields the run."""
    from cirl.orchestration.stage import stage_run

    tcfg = resolved_config(args, "tracking")
    with stage_run(stage, cfg, tcfg, getattr(args, "parent_run_id", None), **kwargs) as run:
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

    with _tracked(args, "select", cfg, data=args.data, out=args.out) as run:
        result = selection.run(cfg, args.data, args.checkpoint, args.out, progress=not args.quiet)
    _print_json(_with_run({"out": str(result.out), **result.summary()}, run))
    return 0


def _cmd_evaluate(args: argparse.Namespace, cfg) -> int:
    from cirl.method import evaluate

    with _tracked(args, "evaluate", cfg, data=args.data, out=args.out) as run:
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

    with _tracked(args, "export", cfg, out=args.out) as run:
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


# The commands whose parameters `make run` takes from params.yaml: those it calls with --params
# and the stages of the pipeline it runs (tests/test_help.py reads them off the Makefile).
MAKE_RUN_COMMANDS = frozenset(
    {"synth", "prepare", "train", "select", "evaluate", "export", "register", "predict", "audit"}
)

# How each config group's options are grouped on the help pages, in this order (a field left out
# here is listed last, under "other GROUP parameters"; titles are distinct on every page). Expert
# sections show one line per option in --help and are described in full by --help-all.
SECTIONS: dict[str, tuple[Section, ...]] = {
    "synth": (
        Section("dataset", "n seed width height workers"),
        Section(
            "what is drawn",
            "min_crack_width max_crack_width cracks_min cracks_max label_noise jpeg_quality "
            "distractors",
        ),
    ),
    "prepare": (
        Section("tiles and split", "tile edge split split_by seed"),
        Section("files and processes", "png_level workers strict"),
    ),
    "train": (
        Section("model and phase", "model width phase loss"),
        Section(
            "training schedule",
            "epochs steps_per_epoch batch_size crop crack_crops lr lr_schedule weight_decay "
            "val_every seed",
        ),
        Section("loss (BCE and CIRL)", "pos_weight dice lam aseg_weight beta k"),
        Section("hardware and precision", "device nproc precision channels_last workers"),
        Section(
            "CIRL variants and checks",
            "phase1_loss aseg_form std_init std_clamp selection ci_reduction max_pixels "
            "deep_supervision verify_data amp",
            expert=True,
        ),
    ),
    "select": (
        Section("selection rule", "rule gamma lam views fraction kernel"),
        Section("data and report", "split overview verify_data"),
        Section("hardware and precision", "device precision"),
    ),
    "evaluate": (
        Section("scoring", "split threshold tolerance empty_f1 thresholds calibrate"),
        Section("report and checks", "overlays device verify_data"),
    ),
    "export": (
        Section(
            "ONNX export and parity check",
            "opset tolerance export_size check_height check_width check_batch",
        ),
        Section("accuracy gate and int8", "gate split gate_tolerance quantize calibration_tiles"),
    ),
    "predict": (
        Section("engine and windows", "engine tile overlap batch threads device force"),
        Section(
            "cracks and measurement", "threshold mm_per_pixel min_crack_pixels max_crack_width"
        ),
        Section("outputs", "overlay_alpha resume"),
    ),
    "tracking": (
        Section("tracking (MLflow)", "track"),
        Section(
            "tracking details",
            "tracking_uri experiment artifact_location tracking_timeout",
            expert=True,
        ),
    ),
    "register": (Section("registration", "name promote margin example_size"),),
    "promote": (Section("promotion", "name margin"),),
    "audit": (Section("audit checks", "tolerance onnx_tolerance onnx retrain_tolerance device"),),
    "sweep": (
        Section("study", "mode n_trials study storage seed pruner test"),
        Section("trials", "epochs steps_per_epoch"),
        Section("values to try", "lam gamma k beta rule"),
        Section(
            "method options to try",
            "aseg_form phase1_loss std_init std_clamp ci_reduction selection",
        ),
        Section("workers", "heartbeat grace max_retry", expert=True),
    ),
}


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
        "Train on the train split of a prepared folder, keeping the best checkpoint on the val "
        "split: OUT/last.pt (each epoch), best.pt, history.json, config.json. Phase 1: BCE + "
        "the ambiguity-aware loss (std head). Phase 2, from --init: BCE outside the ambiguous "
        "pixels of --ambiguity (`cirl select`) + beta * the clustering-inspired loss inside "
        "them. --loss bce: the baseline.",
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
        "NAME_prob.png, NAME_overlay.jpg (cracks numbered as the CSV's rows), NAME.json, "
        "NAME_cracks.csv (length, width, orientation of each connected crack) and "
        "NAME_cracks.geojson (their centrelines; map coordinates with a world file or GeoTIFF "
        "tags), and over all photos summary.csv and "
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
                help="MLflow server of a models:/ model (default: $MLFLOW_TRACKING_URI, else "
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
