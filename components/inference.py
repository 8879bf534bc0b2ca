"""The inference pipeline's components: typed KFP interfaces over one
``cirl.orchestration.task_inference`` call each (as :mod:`components.stages` is for training).

``build(image)`` makes them on the project's one image (``install_kfp_package=False``: the image
has kfp and cirl, nothing is installed when a task starts). KFP ships each body's source to the
task, so a body imports what it uses and holds no logic.
"""

from types import SimpleNamespace

from kfp.dsl import HTML, Artifact, Input, Metrics, Output

COMPONENTS = ("plan_inference", "predict_shard", "merge_predictions")


def plan_inference(
    source: str,
    out: str,
    model: str,
    shards: int,
    predict_params: dict,
    tracking: dict,
    code_version: str,
    plan: Output[Artifact],
) -> list[int]:
    """Resolve the model once (an alias to its version now), list the photos, deal them into
    shards; returns the shard indices the ParallelFor iterates over."""
    from cirl.orchestration import task_inference
    from cirl.orchestration.task_base import task_errors

    with task_errors("plan"):
        return task_inference.plan(
            source, out, model, shards, predict_params, plan, tracking, code_version
        )


def predict_shard(
    plan: Input[Artifact],
    index: int,
    code_version: str,
    shard: Output[Artifact],
):
    """``cirl predict`` on one shard's photos, each photo's outputs published to the output
    prefix (its JSON last); photos finished before are skipped."""
    from cirl.orchestration import task_inference
    from cirl.orchestration.task_base import task_errors

    with task_errors(f"predict shard {index}"):
        task_inference.predict_shard(plan, index, shard)


def merge_predictions(
    plan: Input[Artifact],
    shards: Input[list[Artifact]],
    code_version: str,
    merged: Output[Artifact],
    report: Output[HTML],
    metrics: Output[Metrics],
):
    """summary.csv over every photo, the report page and merge.json (the model version used,
    counts done/skipped/failed), in the output prefix."""
    from cirl.orchestration import task_inference
    from cirl.orchestration.task_base import task_errors

    with task_errors("merge"):
        task_inference.merge(plan, shards, merged, report, metrics)


def build(image: str | None = None) -> SimpleNamespace:
    """The components as KFP ``PythonComponent``s on ``image`` (default: the local image)."""
    from kfp import dsl

    from components import DEFAULT_IMAGE

    made = {
        name: dsl.component(base_image=image or DEFAULT_IMAGE, install_kfp_package=False)(
            globals()[name]
        )
        for name in COMPONENTS
    }
    return SimpleNamespace(**made)
