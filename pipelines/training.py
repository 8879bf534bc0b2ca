"""The cirl training pipeline (KFP v2): prepare -> phase I -> select -> phase II -> evaluate ->
export -> register, with the plain BCE baseline as an optional branch.

Tracking: an ``open tracking run`` task opens the MLflow parent run of the execution (tagged
with the KFP run id), every stage records one nested run under it, and ``close tracking run``
ends it FINISHED after registration; a stage that fails ends its own run and the parent run
FAILED with its error. (KFP's exit handler would also catch a task killed from outside, but
a pipeline with one cannot return outputs.) Registration logs the ONNX model as a new version
of the registered model and promotes it by test F1 (caching off: it has side effects).

Compile it (the compiled YAML is committed; a test recompiles and compares)::

    python pipelines/training.py                       # pipelines/training.yaml, default profile
    python pipelines/training.py --profile paper       # pipelines/training-paper.yaml
    python pipelines/training.py --image registry.example.com/cirl@sha256:... --out my.yaml

Run it with ``cirl pipeline run`` (this machine, KFP's local runner), ``cirl pipeline submit``
or ``cirl pipeline schedule`` (a Kubeflow cluster). The stage parameters are pipeline
parameters, one mapping per ``params.yaml`` group, defaulting to the resolved group at compile
time; each task checks its mapping through the stage's config dataclass.

On a cluster: training, selection and evaluation request ``--gpus`` NVIDIA GPUs (1; 0 compiles
a CPU-only pipeline) with ``--cpu`` and ``--memory``, and tolerate the GPU taint; a training
with ``train.nproc`` N > 1 (data-parallel, torchrun inside the task) requests N times as many;
every task
reads S3 and MLflow credentials and endpoints from the Kubernetes secret ``cirl-credentials``
(keys optional, see docs/cluster.md).
Caching: KFP caches every task by default, keyed by the image reference as written and the
inputs. Tasks here take ``code_version`` (the image digest on a cluster, a hash of the package
source locally) so a changed image never reuses stale outputs even behind a re-pushed tag.
"""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from kfp import compiler, dsl, kubernetes
from kfp.dsl import HTML, Artifact, Dataset, Model

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `components` is a top-level folder of the repository
    sys.path.insert(0, str(REPO))

import components  # noqa: E402

PIPELINE_NAME = "cirl-training"
SECRET = "cirl-credentials"
# Keys of the secret, each optional: a cluster that needs no key simply leaves it out.
SECRET_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_S3_ENDPOINT_URL",
)


class Outputs(NamedTuple):
    """What a run returns: the artifacts a user looks at, linked by ``cirl pipeline run``."""

    dataset: Dataset
    phase1: Model
    ambiguity: Artifact
    selection_report: HTML
    phase2: Model
    evaluation: Artifact
    report: HTML
    onnx: Model
    registration: Artifact


GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def stage_params(
    params_file: Path, profile: "Path | None" = None, groups: "tuple[str, ...] | None" = None
) -> dict[str, dict[str, Any]]:
    """Each stage group (``groups``, default the training pipeline's) resolved from
    ``params_file`` (then ``profile``) as plain values, checked by its dataclass."""
    from cirl import config

    resolved = {}
    for group in groups or config.PIPELINE_GROUPS:
        values = config.load_group(params_file, group)
        if profile is not None:
            values.update(config.load_group(profile, group))
        cfg = config.from_mapping(config.stage_config(group), values, f"{params_file}:{group}")
        resolved[group] = config.to_dict(cfg)
    from cirl.orchestration.package import check_groups

    check_groups({f"{group}_params": values for group, values in resolved.items()})
    return resolved


@dataclass(frozen=True)
class Placement:
    """Where the heavy tasks (training, selection, evaluation) run: their CPU and memory
    requests and NVIDIA GPUs (0: a CPU-only pipeline, no GPU toleration)."""

    cpu: str = "4"
    memory: str = "16G"
    gpus: int = 1
    nproc: int = 1  # the training's data-parallel processes (train.nproc): one GPU each

    def heavy(self, task, training: bool = False):
        task.set_cpu_request(self.cpu).set_memory_request(self.memory)
        task.set_memory_limit(self.memory)
        gpus = self.gpus * (self.nproc if training else 1)
        if gpus:
            task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)
            kubernetes.add_toleration_json(task, GPU_TOLERATION)
        return task


def common(task, name: str, retries: int = 2, cache: bool = True):
    """Every task: credentials from the secret, retries with backoff, a readable name."""
    task.set_display_name(name)
    kubernetes.use_secret_as_env(task, SECRET, {key: key for key in SECRET_ENV}, optional=True)
    if retries:
        task.set_retry(retries, backoff_duration="30s", backoff_factor=2.0)
    if not cache:
        task.set_caching_options(False)
    return task


def build_pipeline(
    params: dict[str, dict[str, Any]],
    image: str = components.DEFAULT_IMAGE,
    cpu: str = "4",
    memory: str = "16G",
    gpus: int = 1,
):
    """The pipeline function with ``params`` as its parameters' defaults.

    The image and the resources are fixed when compiling (KFP's local runner cannot resolve
    resource requests given as run-time parameters inside a condition branch).

    Args:
        params: one mapping per stage group (:func:`stage_params`).
        image: the image every task runs on (a digest reference on a cluster).
        cpu: CPU request of the heavy tasks (training, selection, evaluation).
        memory: memory request and limit of the heavy tasks.
        gpus: NVIDIA GPUs per heavy task; 0 compiles a CPU-only pipeline (no GPU toleration).
    """
    c = components.build(image)
    place = Placement(cpu, memory, gpus, int(params.get("train", {}).get("nproc", 1)))

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="CIRL crack segmentation: data -> phase I -> selection -> phase II -> "
        "evaluation -> ONNX -> registry, with an optional BCE baseline.",
    )
    def training(
        source: str,
        source_format: str = "folder",
        prepare_params: dict = params["prepare"],
        train_params: dict = params["train"],
        select_params: dict = params["select"],
        evaluate_params: dict = params["evaluate"],
        export_params: dict = params["export"],
        tracking_params: dict = params["tracking"],
        register_params: dict = params["register"],
        with_baseline: bool = False,
        parent_run_id: str = "",
        code_version: str = "unset",
    ) -> Outputs:
        opened = common(
            c.open_run(
                tracking=tracking_params,
                parent_run_id=parent_run_id,
                code_version=code_version,
                kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                source=source,
            ),
            "open tracking run",
            cache=False,
        )
        run = {
            "code_version": code_version,
            "tracking": tracking_params,
            "parent_run_id": opened.output,
        }
        prep = common(
            c.prepare(source=source, source_format=source_format, params=prepare_params, **run),
            "prepare tiles",
        )
        data = prep.outputs["dataset"]
        chain = cirl_chain(c, place, data, run, train_params, select_params, evaluate_params)
        export, register = deploy(c, data, run, chain, export_params, register_params)
        common(
            c.close_run(
                tracking=tracking_params,
                parent_run_id=opened.output,
                registration=register.outputs["registration"],
            ),
            "close tracking run",
            cache=False,
        )
        with dsl.If(with_baseline == True, "baseline"):  # noqa: E712 - a KFP condition
            baseline(c, place, data, run, train_params, evaluate_params)
        return Outputs(
            dataset=data,
            phase1=chain["phase1"].outputs["checkpoint"],
            ambiguity=chain["select"].outputs["ambiguity"],
            selection_report=chain["select"].outputs["report"],
            phase2=chain["phase2"].outputs["checkpoint"],
            evaluation=chain["evaluate"].outputs["evaluation"],
            report=chain["evaluate"].outputs["report"],
            onnx=export.outputs["onnx"],
            registration=register.outputs["registration"],
        )

    return training


def cirl_chain(c, place: Placement, data, run: dict, train_params, select_params, evaluate_params):
    """The recipe's tasks (cirl.method.recipe): phase I, select, phase II, evaluate."""
    phase1 = common(
        place.heavy(c.train_phase1(dataset=data, params=train_params, **run), training=True),
        "train phase I",
    )
    select = common(
        place.heavy(
            c.select_regions(
                dataset=data,
                phase1=phase1.outputs["checkpoint"],
                params=select_params,
                **run,
            )
        ),
        "select ambiguous regions",
    )
    phase2 = common(
        place.heavy(
            c.train_phase2(
                dataset=data,
                phase1=phase1.outputs["checkpoint"],
                ambiguity=select.outputs["ambiguity"],
                params=train_params,
                **run,
            ),
            training=True,
        ),
        "train phase II",
    )
    evaluate = common(
        place.heavy(
            c.evaluate(
                dataset=data,
                model=phase2.outputs["checkpoint"],
                params=evaluate_params,
                run_name="evaluate CIRL",
                **run,
            )
        ),
        "evaluate CIRL",
    )
    return {"phase1": phase1, "select": select, "phase2": phase2, "evaluate": evaluate}


def deploy(c, data, run: dict, chain: dict, export_params, register_params):
    """ONNX export of phase II's model and its registration (and promotion)."""
    phase2, evaluate = chain["phase2"], chain["evaluate"]
    export = common(
        c.export_onnx(
            model=phase2.outputs["checkpoint"],
            dataset=data,
            evaluation=evaluate.outputs["evaluation"],
            params=export_params,
            **run,
        ),
        "export ONNX",
    )
    # caching off and no retries: a registration has side effects, a retried one could
    # register the model twice
    register = common(
        c.register_model(
            onnx=export.outputs["onnx"],
            evaluation=evaluate.outputs["evaluation"],
            checkpoint=phase2.outputs["checkpoint"],
            params=register_params,
            **run,
        ),
        "register and promote",
        retries=0,
        cache=False,
    )
    return export, register


def baseline(c, place: Placement, data, run: dict, train_params, evaluate_params) -> None:
    """The plain BCE baseline, trained and evaluated beside CIRL."""
    trained = common(
        place.heavy(c.train_baseline(dataset=data, params=train_params, **run), training=True),
        "train BCE baseline",
    )
    common(
        place.heavy(
            c.evaluate(
                dataset=data,
                model=trained.outputs["checkpoint"],
                params=evaluate_params,
                run_name="evaluate baseline",
                **run,
            ),
        ),
        "evaluate baseline",
    )


def compile_pipeline(
    out: Path,
    params_file: Path = REPO / "params.yaml",
    profile: str | None = None,
    image: str = components.DEFAULT_IMAGE,
    cpu: str = "4",
    memory: str = "16G",
    gpus: int = 1,
) -> Path:
    """Compile the pipeline to ``out`` (YAML) with the given params, profile, image, resources."""
    overlay = REPO / "pipelines" / "profiles" / f"{profile}.yaml" if profile else None
    if overlay is not None and not overlay.is_file():
        known = sorted(p.stem for p in (REPO / "pipelines" / "profiles").glob("*.yaml"))
        raise SystemExit(f"error: unknown profile {profile!r}; known profiles: {known}")
    pipeline = build_pipeline(
        stage_params(params_file, overlay), image=image, cpu=cpu, memory=memory, gpus=gpus
    )
    compiler.Compiler().compile(pipeline, str(out))
    # KFP's header comment lists dict defaults in protobuf map order, which changes from one
    # process to the next; the committed file must be byte-stable, so write it sorted.
    docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
    header = f"# {PIPELINE_NAME}: compiled by pipelines/training.py; do not edit by hand.\n"
    out.write_text(header + yaml.safe_dump_all(docs, sort_keys=True))
    return out


def main(argv: list[str] | None = None) -> int:
    """Compile from the command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Compile the cirl training pipeline to YAML.")
    parser.add_argument("--profile", help="a pipelines/profiles/NAME.yaml overlay, e.g. paper")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--image", default=components.DEFAULT_IMAGE, help="image of every task")
    parser.add_argument("--cpu", default="4", help="CPU request of the heavy tasks (default 4)")
    parser.add_argument("--memory", default="16G", help="their memory request and limit (16G)")
    parser.add_argument("--gpus", type=int, default=1, help="their NVIDIA GPUs; 0 = CPU only")
    parser.add_argument(
        "--out",
        type=Path,
        help="output YAML (default: the committed pipelines/training*.yaml; pass --out for a "
        "build with another image or resources)",
    )
    args = parser.parse_args(argv)
    name = "training.yaml" if not args.profile else f"training-{args.profile}.yaml"
    out = args.out or REPO / "pipelines" / name
    compile_pipeline(
        out, args.params, args.profile, args.image, cpu=args.cpu, memory=args.memory, gpus=args.gpus
    )
    print(out)
    if args.out is None and not args.profile:  # the copy cirl ships, for runs outside a checkout
        shipped = REPO / "src" / "cirl" / "packaged" / "training.yaml"
        shipped.write_text(out.read_text())
        print(shipped)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
