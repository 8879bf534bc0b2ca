"""The cirl sweep pipeline (KFP v2): prepare -> N parallel sweep workers -> report.

Every worker runs ``cirl sweep``'s trials against one shared Optuna study (the ``sweep``
group's ``storage``, or ``CIRL_SWEEP_STORAGE`` from the ``cirl-credentials`` secret: a
PostgreSQL URL on a cluster), so the trials fan out over the workers' pods; heartbeats re-run the
trial of a pod that died. Phase-I runs and selections are shared between a worker's own trials
(each pod has its own cache). When every worker is done, the report task writes the plots and
tables and scores the chosen setting on the test split once.

Compile it (the compiled YAML is committed; a test recompiles and compares)::

    python pipelines/sweep.py                      # pipelines/sweep.yaml, 4 workers
    python pipelines/sweep.py --workers 8 --image registry.example.com/cirl@sha256:... --out my.yaml

Run it on a cluster with ``cirl pipeline submit --package pipelines/sweep.yaml`` (with
``source``, the raw data's URI, as argument), or here with KFP's local runner::

    python pipelines/sweep.py --run-local --source data/raw/synth \\
        --storage sqlite:////abs/path/study.db --out runs/sweep-pipeline

(the local runner starts the workers together; SQLite, which waits for a busy database, copes
with a few workers of one machine, but Optuna's FAQ advises PostgreSQL for parallel workers).
"""

import argparse
import sys
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from kfp import compiler, dsl, kubernetes
from kfp.dsl import HTML, Artifact

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO, REPO / "pipelines"):  # `components`, and `training` beside this file
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import components  # noqa: E402

PIPELINE_NAME = "cirl-sweep"
GROUPS = ("prepare", "train", "select", "sweep")
# The training pipeline's secret, its keys (plus the sweep's storage URL) and GPU toleration:
# one declaration, in pipelines/training.py.
import training  # noqa: E402

SECRET = training.SECRET
SECRET_ENV = (*training.SECRET_ENV, "CIRL_SWEEP_STORAGE")
GPU_TOLERATION = training.GPU_TOLERATION


class Outputs(NamedTuple):
    """What a run returns."""

    report: Artifact
    page: HTML


def group_params(params_file: Path) -> dict[str, dict[str, Any]]:
    """The sweep's groups and ``tracking`` resolved from ``params_file``, as plain values."""
    return training.stage_params(params_file, groups=(*GROUPS, "tracking"))


def build_pipeline(
    params: dict[str, dict[str, Any]],
    workers: int = 4,
    image: str = components.DEFAULT_IMAGE,
    cpu: str = "4",
    memory: str = "16G",
    gpus: int = 1,
):
    """The pipeline function: ``workers`` parallel sweep workers (fixed when compiling)."""
    if workers < 1:
        raise SystemExit(f"error: --workers must be >= 1, got {workers}")
    c = components.build(image)

    def common(task, name: str, heavy: bool = False, retries: int = 2):
        task.set_display_name(name)
        kubernetes.use_secret_as_env(task, SECRET, {key: key for key in SECRET_ENV}, optional=True)
        if retries:
            task.set_retry(retries, backoff_duration="30s", backoff_factor=2.0)
        if heavy:
            task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
            if gpus:
                task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)
                kubernetes.add_toleration_json(task, GPU_TOLERATION)
        return task

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="CIRL sensitivity/search sweeps: trials of one Optuna study fanned out "
        "over parallel workers, then plots, tables and the best setting's test scores.",
    )
    def sweep(
        source: str,
        source_format: str = "folder",
        prepare_params: dict = params["prepare"],
        train_params: dict = params["train"],
        select_params: dict = params["select"],
        sweep_params: dict = params["sweep"],
        tracking_params: dict = params["tracking"],
        parent_run_id: str = "",
        code_version: str = "unset",
    ) -> Outputs:
        prep = common(
            c.prepare(
                source=source,
                source_format=source_format,
                params=prepare_params,
                code_version=code_version,
                tracking=tracking_params,
                parent_run_id=parent_run_id,
            ),
            "prepare tiles",
        )
        data = prep.outputs["dataset"]
        with dsl.ParallelFor(list(range(workers)), parallelism=workers) as worker:
            # no cache: a worker's work depends on the study's state, not only on its inputs
            work = common(
                c.sweep_worker(
                    dataset=data,
                    params=sweep_params,
                    train_params=train_params,
                    select_params=select_params,
                    worker=worker,
                    code_version=code_version,
                    tracking=tracking_params,
                    parent_run_id=parent_run_id,
                ),
                "sweep worker",
                heavy=True,
            ).set_caching_options(False)
        report = common(
            c.sweep_report(
                dataset=data,
                workers=dsl.Collected(work.outputs["out"]),
                params=sweep_params,
                train_params=train_params,
                select_params=select_params,
                code_version=code_version,
            ),
            "sweep report",
            heavy=True,
        ).set_caching_options(False)
        return Outputs(report=report.outputs["report"], page=report.outputs["page"])

    return sweep


def compile_pipeline(out: Path, params_file: Path = REPO / "params.yaml", **kwargs: Any) -> Path:
    """Compile to ``out`` (YAML, byte-stable: sorted keys)."""
    pipeline = build_pipeline(group_params(params_file), **kwargs)
    compiler.Compiler().compile(pipeline, str(out))
    docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
    header = f"# {PIPELINE_NAME}: compiled by pipelines/sweep.py; do not edit by hand.\n"
    out.write_text(header + yaml.safe_dump_all(docs, sort_keys=True))
    return out


def run_local(args: argparse.Namespace) -> int:
    """Run the pipeline here with KFP's SubprocessRunner (no containers)."""
    from kfp import local

    params = group_params(args.params)
    params["sweep"]["storage"] = args.storage
    params["tracking"]["track"] = False
    pipeline = build_pipeline(params, workers=args.workers, gpus=0)
    root = Path(args.out).resolve()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    outputs = pipeline(source=str(Path(args.source).resolve()), source_format=args.format)
    print(f"sweep report folder: {outputs.outputs['report'].path}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compile (or run here) the cirl sweep pipeline.")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--workers", type=int, default=4, help="parallel sweep workers (4)")
    parser.add_argument("--image", default=components.DEFAULT_IMAGE, help="image of every task")
    parser.add_argument("--cpu", default="4", help="CPU request of a worker (default 4)")
    parser.add_argument("--memory", default="16G", help="its memory request and limit (16G)")
    parser.add_argument("--gpus", type=int, default=1, help="its NVIDIA GPUs; 0 = CPU only")
    parser.add_argument("--out", type=Path, help="output YAML (default pipelines/sweep.yaml)")
    parser.add_argument("--run-local", action="store_true", help="run here (KFP local runner)")
    parser.add_argument("--source", help="--run-local: raw dataset folder")
    parser.add_argument("--format", default="folder", help="--run-local: its layout")
    parser.add_argument("--storage", help="--run-local: the study's storage URL")
    args = parser.parse_args(argv)
    if args.run_local:
        if not (args.source and args.storage and args.out):
            parser.error("--run-local needs --source, --storage and --out (a pipeline root)")
        return run_local(args)
    out = args.out or REPO / "pipelines" / "sweep.yaml"
    compile_pipeline(
        out, args.params, workers=args.workers, image=args.image, cpu=args.cpu,
        memory=args.memory, gpus=args.gpus,
    )  # fmt: skip
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
