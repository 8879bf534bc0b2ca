"""The cirl inference pipeline (KFP v2): plan -> N parallel prediction shards -> merge.

``plan`` resolves the model once (``models:/cirl-crack@champion`` -> ``models:/cirl-crack/N``,
so every shard uses the same version even if the alias moves during the run), lists the photos
under ``source`` (a folder, or ``s3://bucket/prefix``) and deals them round-robin into
``shards``; a ``ParallelFor`` runs one ``predict shard`` task per shard (``cirl predict``'s own
code on its photos, each photo's outputs written to ``out`` as soon as they are made, photos
finished by an earlier run skipped); ``merge`` writes ``summary.csv``, ``report.html`` and
``merge.json`` into ``out``. Every task takes the ``cirl-credentials`` secret (S3 and MLflow
endpoints and keys, as the training pipeline) and none is cached (they read a changing bucket
and write outside KFP's artifact store; a rerun resumes per photo instead).

Compile it (the compiled YAML is committed; a test recompiles and compares)::

    python pipelines/inference.py                       # pipelines/inference.yaml
    python pipelines/inference.py --parallelism 8 --image registry.example.com/cirl@sha256:... \\
        --out build/inference.yaml

``--parallelism`` (how many shards run at once) is fixed when compiling: KFP stores it as a
number in the spec (``iteratorPolicy.parallelismLimit``), not as a run-time parameter. The
number of shards, ``shards``, is a run-time parameter. Run it here with::

    cirl pipeline run --package pipelines/inference.yaml --source s3://photos/2025-w01 \\
        --set out=s3://results/2025-w01 --set shards=4 --out runs/inference

or on a cluster with ``cirl pipeline submit --package pipelines/inference.yaml`` and the same
``--source`` and ``--set`` options (docs/inference.md).
"""

import argparse
import sys
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from kfp import compiler, dsl
from kfp.dsl import HTML, Artifact

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO, REPO / "pipelines"):  # `components`, and `training` beside this file
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import components  # noqa: E402
import training  # noqa: E402  (the secret, retries and GPU placement: declared there once)
from components import inference as inference_components  # noqa: E402

PIPELINE_NAME = "cirl-inference"
DEFAULT_MODEL = "models:/cirl-crack@champion"
GROUPS = ("predict", "tracking")


class Outputs(NamedTuple):
    """What a run returns: the plan, the merged records and the report page."""

    plan: Artifact
    merged: Artifact
    report: HTML


def group_params(params_file: Path) -> dict[str, dict[str, Any]]:
    """The ``predict`` and ``tracking`` groups resolved from ``params_file``, as plain values."""
    return training.stage_params(params_file, groups=GROUPS)


def build_pipeline(
    params: dict[str, dict[str, Any]],
    parallelism: int = 4,
    image: str = components.DEFAULT_IMAGE,
    cpu: str = "4",
    memory: str = "8G",
    gpus: int = 0,
):
    """The pipeline function with ``params`` as the groups' defaults.

    Args:
        params: the ``predict`` and ``tracking`` groups (:func:`group_params`).
        parallelism: shards running at once (fixed in the spec; KFP's local runner caps it at 2).
        image: the image every task runs on (a digest reference on a cluster).
        cpu: CPU request of a shard task.
        memory: its memory request and limit.
        gpus: its NVIDIA GPUs (0, the default: CPU nodes; with a GPU, ``predict.device: auto``
            uses onnxruntime's CUDA provider when the image has it).
    """
    if parallelism < 1:
        raise SystemExit(f"error: --parallelism must be >= 1, got {parallelism}")
    c = inference_components.build(image)
    place = training.Placement(cpu, memory, gpus)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="CIRL crack inference: one registered model version over every photo under "
        "a prefix, in parallel shards that resume per photo, merged into one summary.",
    )
    def inference(
        source: str,
        out: str,
        model: str = DEFAULT_MODEL,
        shards: int = 4,
        predict_params: dict = params["predict"],
        tracking_params: dict = params["tracking"],
        code_version: str = "unset",
    ) -> Outputs:
        planned = training.common(
            c.plan_inference(
                source=source,
                out=out,
                model=model,
                shards=shards,
                predict_params=predict_params,
                tracking=tracking_params,
                code_version=code_version,
            ),
            "plan: resolve the model, list and shard the photos",
            cache=False,
        )
        with dsl.ParallelFor(planned.outputs["Output"], parallelism=parallelism) as index:
            shard = training.common(
                place.heavy(
                    c.predict_shard(
                        plan=planned.outputs["plan"], index=index, code_version=code_version
                    )
                ),
                "predict shard",
                cache=False,
            )
        merged = training.common(
            c.merge_predictions(
                plan=planned.outputs["plan"],
                shards=dsl.Collected(shard.outputs["shard"]),
                code_version=code_version,
            ),
            "merge: summary, report, merge.json",
            cache=False,
        )
        return Outputs(
            plan=planned.outputs["plan"],
            merged=merged.outputs["merged"],
            report=merged.outputs["report"],
        )

    return inference


def compile_pipeline(out: Path, params_file: Path = REPO / "params.yaml", **kwargs: Any) -> Path:
    """Compile to ``out`` (YAML, byte-stable: sorted keys)."""
    pipeline = build_pipeline(group_params(params_file), **kwargs)
    compiler.Compiler().compile(pipeline, str(out))
    docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
    header = f"# {PIPELINE_NAME}: compiled by pipelines/inference.py; do not edit by hand.\n"
    out.write_text(header + yaml.safe_dump_all(docs, sort_keys=True))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compile the cirl inference pipeline to YAML.")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--parallelism", type=int, default=4, help="shards at once (4)")
    parser.add_argument("--image", default=components.DEFAULT_IMAGE, help="image of every task")
    parser.add_argument("--cpu", default="4", help="CPU request of a shard task (default 4)")
    parser.add_argument("--memory", default="8G", help="its memory request and limit (8G)")
    parser.add_argument("--gpus", type=int, default=0, help="its NVIDIA GPUs (default 0)")
    parser.add_argument(
        "--out",
        type=Path,
        help="output YAML (default: the committed pipelines/inference.yaml; pass --out for a "
        "build with another image, parallelism or resources)",
    )
    args = parser.parse_args(argv)
    out = args.out or REPO / "pipelines" / "inference.yaml"
    compile_pipeline(
        out, args.params, parallelism=args.parallelism, image=args.image, cpu=args.cpu,
        memory=args.memory, gpus=args.gpus,
    )  # fmt: skip
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
