"""``cirl pipeline run | show | submit | schedule``: the compiled pipeline here or on a KFP
endpoint.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cirl.errors import CirlError
from cirl.orchestration import task_inference
from cirl.orchestration.cli_options import HelpFormatter, _print_json, add_help, inputs_first


def _pipeline_arguments(args: argparse.Namespace) -> dict:
    from cirl.orchestration import pipeline

    arguments: dict[str, Any] = {}
    if args.package is None:
        args.package = str(pipeline.default_package())
    if task_inference.is_inference_package(args.package):  # --set out=..., predict.KEY=...
        return task_inference.pipeline_arguments(
            args.package, args.source, args.params, args.set, _code_version(args),
            args.baseline, args.source_format,
        )  # fmt: skip
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
    arguments["code_version"] = _code_version(args)
    return arguments


def _code_version(args: argparse.Namespace) -> str:
    from cirl.orchestration import pipeline

    image = getattr(args, "image", None) or ""
    # on a cluster the image is the code: its digest keys the cache and is what an audit needs
    digest = image.split("@", 1)[1] if "@sha256:" in image else None
    return args.code_version or digest or pipeline.code_version()


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
        package = _package(args, tmp)
        arguments = _pipeline_arguments(args)
        if task_inference.is_inference_package(package):
            return _inference_run(package, arguments, args)
        result = pipeline.run_local(package, arguments, args.out, runner=args.runner,
                                    cache=args.cache)  # fmt: skip
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
            "warnings": result.warnings,
        }
    )
    return 0


def _inference_run(package: str, arguments: dict, args: argparse.Namespace) -> int:
    """The inference package here: its summary on stdout; exit status 1 if a photo failed."""
    out = INFERENCE_RUN_DIR if args.out == DEFAULT_RUN_DIR else args.out
    result = task_inference.run_local(package, arguments, out, runner=args.runner)
    _print_json(result)
    failed = result["counts"]["failed"]
    if failed:
        print(
            f"error: {failed} of {result['photos']} photo(s) failed; reasons in "
            f"{result['outputs']['merge.json']}",
            file=sys.stderr,
        )
    return 1 if failed else 0


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


# Where `make run` writes (the Makefile's RUNS): `pipeline run` writes there and `pipeline show`
# reads there unless --out says otherwise, so that the two agree with each other and with make.
DEFAULT_RUN_DIR = "runs/synth"
INFERENCE_RUN_DIR = "runs/inference"  # the inference package's, when --out is not given


def _verb_parser(verbs: argparse._SubParsersAction, name: str, **kwargs: Any):
    q = verbs.add_parser(name, formatter_class=HelpFormatter, add_help=False, **kwargs)
    add_help(q)
    return q


def common(q: argparse.ArgumentParser, source_help: str) -> dict[str, Any]:
    """The options every verb that starts a run takes: source, package, parameters, image.
    Returns the argument groups by name (``inputs``, ``parameters``, ``code``), for the verb's
    own options."""
    inputs = q.add_argument_group("inputs and outputs")
    inputs.add_argument("--source", metavar="DIR_OR_URI", help=source_help)
    inputs.add_argument(
        "--source-format",
        choices=("folder", "cfd", "drive"),
        help="raw layout of --source (default: folder)",
    )
    inputs.add_argument(
        "--package",
        default=None,
        metavar="YAML",
        help="compiled pipeline (default: pipelines/training.yaml here, else the one "
        "shipped with cirl)",
    )
    parameters = q.add_argument_group(
        "stage parameters",
        "the package's compiled defaults (params.yaml when it was compiled), then --params, "
        "then --set",
    )
    parameters.add_argument("--params", metavar="FILE", help="params.yaml: one group per stage")
    parameters.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="GROUP.KEY=VALUE",
        help="override one stage parameter, e.g. train.epochs=5 (repeatable)",
    )
    parameters.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also train and evaluate the plain BCE baseline (default: off)",
    )
    code = q.add_argument_group("code and image")
    code.add_argument("--image", help="run every task on this image (a digest on a cluster)")
    code.add_argument(
        "--code-version",
        help="recorded code version (default: the --image digest, else a hash of the "
        "package source)",
    )
    return {"inputs": inputs, "parameters": parameters, "code": code}


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
        epilog="cirl pipeline VERB --help lists a verb's options.",
        formatter_class=HelpFormatter,
        add_help=False,
    )
    add_help(p)
    p._positionals.title = "verbs"
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    q = _verb_parser(
        verbs,
        "run",
        help="run the pipeline on this machine (KFP local runner)",
        description=(
            "Run every task on this machine. KFP writes the outputs under OUT/kfp/<run>/; "
            "OUT/prepared, phase1, select, phase2, eval, report.html, export and model.onnx "
            "link to the latest run's, and OUT/pipeline_run.json records the run. With "
            "--package pipelines/inference.yaml: the model over every photo of --source, "
            "each --set one of out=DIR_OR_URI (required), shards=N, model=URI, "
            f"predict.KEY=VALUE (OUT default {INFERENCE_RUN_DIR}; docs/inference.md)."
        ),
    )
    groups = common(q, "raw dataset folder or s3://bucket/prefix")
    groups["inputs"].add_argument(
        "--out",
        default=DEFAULT_RUN_DIR,
        metavar="DIR",
        help=f"run folder (default: {DEFAULT_RUN_DIR}, where make run writes)",
    )
    runner = q.add_argument_group("local runner")
    runner.add_argument(
        "--runner",
        choices=("subprocess", "docker"),
        default="subprocess",
        help="subprocess: tasks as processes of this environment (default); docker: in the "
        "image, through podman's Docker-compatible socket (DOCKER_HOST)",
    )
    runner.add_argument(
        "--cache",
        action="store_true",
        help="reuse finished tasks of earlier runs with the same inputs and code",
    )
    inputs_first(q)
    q.set_defaults(handler=_cmd_pipeline_run)

    q = _verb_parser(
        verbs,
        "show",
        help="summarise a local run: scores, where the outputs are, how to look at them",
        description="Print a short summary of OUT/pipeline_run.json and the outputs.",
    )
    q.add_argument_group("inputs and outputs").add_argument(
        "--out",
        default=DEFAULT_RUN_DIR,
        metavar="DIR",
        help=f"run folder (default: {DEFAULT_RUN_DIR}, where make run and pipeline run write)",
    )
    inputs_first(q)
    q.set_defaults(handler=_cmd_pipeline_show, reads_out=True)

    _add_cluster_verbs(verbs)


def _add_cluster_verbs(verbs: argparse._SubParsersAction) -> None:
    """``submit`` and ``schedule``: runs on a Kubeflow Pipelines endpoint."""
    for verb, text in (
        ("submit", "start one run on a Kubeflow Pipelines endpoint"),
        ("schedule", "create a recurring run on a Kubeflow Pipelines endpoint"),
    ):
        q = _verb_parser(verbs, verb, help=text, description=text + ".")
        common(q, "s3://bucket/prefix of the raw photos (readable from the cluster)")
        endpoint = q.add_argument_group("Kubeflow endpoint")
        endpoint.add_argument("--host", help="KFP endpoint URL (default: $KFP_HOST)")
        endpoint.add_argument("--token", help="bearer token (default: $KFP_TOKEN)")
        endpoint.add_argument("--namespace", help="Kubeflow namespace (multi-user deployments)")
        endpoint.add_argument(
            "--experiment",
            default="cirl",
            help="experiment name, created if absent (default: cirl)",
        )
        inputs_first(q)
        run = q.add_argument_group("the run" if verb == "submit" else "the schedule")
        if verb == "submit":
            run.add_argument("--run-name", help="run name (default: cirl-training and the time)")
            q.set_defaults(handler=_cmd_pipeline_submit)
        else:
            run.add_argument(
                "--cron",
                required=True,
                help="six fields, seconds first: '0 0 2 * * *' is every day at 02:00",
            )
            run.add_argument(
                "--name",
                default="cirl-training-scheduled",
                help="recurring run name (default: cirl-training-scheduled)",
            )
            q.set_defaults(handler=_cmd_pipeline_schedule)
