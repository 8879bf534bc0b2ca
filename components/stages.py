"""The pipeline's components: typed KFP interfaces over one ``cirl.tasks`` call each.

The functions are plain Python with KFP artifact annotations; :mod:`components` turns them into
components on the project's one image (``install_kfp_package=False``: the image already has kfp
and cirl, nothing is installed when a task runs). KFP ships each body's source to the task, so
a body imports what it uses and holds no logic: everything lives in ``cirl.tasks``.

Every component takes ``params``, the resolved group of its stage in ``params.yaml`` (checked by
the stage's config dataclass when the task runs), and ``code_version``, which records the code
that ran and keys KFP's cache to it.
"""

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output


def prepare(
    source: str,
    source_format: str,
    params: dict,
    code_version: str,
    dataset: Output[Dataset],
):
    """Slice the raw photos at ``source`` into tiles, split 90/5/5 by photo, hash everything."""
    from cirl import tasks

    with tasks.task_errors("prepare"):
        tasks.prepare(source, source_format, params, dataset)


def train_phase1(
    dataset: Input[Dataset],
    params: dict,
    code_version: str,
    checkpoint: Output[Model],
    metrics: Output[Metrics],
):
    """CIRL phase I: BCE + the ambiguity-aware loss, with the std head."""
    from cirl import tasks

    with tasks.task_errors("train phase 1"):
        tasks.train(dataset, params, checkpoint, metrics, phase=1, loss="cirl")


def select_regions(
    dataset: Input[Dataset],
    phase1: Input[Model],
    params: dict,
    code_version: str,
    ambiguity: Output[Artifact],
    report: Output[HTML],
):
    """Ambiguous pixels A: high phase-I variance inside the marginal ring."""
    from cirl import tasks

    with tasks.task_errors("select"):
        tasks.select(dataset, phase1, params, ambiguity, report)


def train_phase2(
    dataset: Input[Dataset],
    phase1: Input[Model],
    ambiguity: Input[Artifact],
    params: dict,
    code_version: str,
    checkpoint: Output[Model],
    metrics: Output[Metrics],
):
    """CIRL phase II: BCE outside A, the clustering-inspired loss inside it."""
    from cirl import tasks

    with tasks.task_errors("train phase 2"):
        tasks.train(
            dataset,
            params,
            checkpoint,
            metrics,
            phase=2,
            loss="cirl",
            init=phase1,
            ambiguity=ambiguity,
        )


def train_baseline(
    dataset: Input[Dataset],
    params: dict,
    code_version: str,
    checkpoint: Output[Model],
    metrics: Output[Metrics],
):
    """The plain BCE baseline: the same model and loop without CIRL."""
    from cirl import tasks

    with tasks.task_errors("train baseline"):
        tasks.train(dataset, params, checkpoint, metrics, phase=1, loss="bce")


def evaluate(
    dataset: Input[Dataset],
    model: Input[Model],
    params: dict,
    code_version: str,
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """Per-image F1 at 0.5 (the paper's protocol), ODS, OIS, AP, PR curve and overlays."""
    from cirl import tasks

    with tasks.task_errors("evaluate"):
        tasks.evaluate(dataset, model, params, evaluation, metrics, report)


def export_onnx(
    model: Input[Model],
    dataset: Input[Dataset],
    params: dict,
    code_version: str,
    onnx: Output[Model],
):
    """The deployable ONNX model without the std head, checked against PyTorch."""
    from cirl import tasks

    with tasks.task_errors("export"):
        tasks.export(model, params, onnx, dataset)
