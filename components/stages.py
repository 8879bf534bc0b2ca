"""The pipeline's components: typed KFP interfaces over one ``cirl.orchestration.tasks`` call each.

The functions are plain Python with KFP artifact annotations; :mod:`components` turns them into
components on the project's one image (``install_kfp_package=False``: the image already has kfp
and cirl, nothing is installed when a task runs). KFP ships each body's source to the task, so
a body imports what it uses and holds no logic: everything lives in ``cirl.orchestration.tasks``.

Every component takes ``params``, the resolved group of its stage in ``params.yaml`` (checked by
the stage's config dataclass when the task runs), and ``code_version``, which records the code
that ran and keys KFP's cache to it. Stage components also take ``tracking`` (the ``tracking``
group) and ``parent_run_id`` (the MLflow run :func:`open_run` opened; "" when tracking is off).
"""

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output


def open_run(
    tracking: dict,
    parent_run_id: str,
    code_version: str,
    kfp_run_id: str,
    kfp_run_name: str,
    source: str,
) -> str:
    """Open the pipeline's parent MLflow run (or reopen ``parent_run_id``); returns its id."""
    from cirl.orchestration import tasks

    with tasks.task_errors("open tracking run"):
        return tasks.open_run(
            tracking, parent_run_id, code_version, kfp_run_id, kfp_run_name, source
        )


def close_run(tracking: dict, parent_run_id: str, registration: Input[Artifact]):
    """End the pipeline's parent MLflow run FINISHED (after registration)."""
    from cirl.orchestration import tasks

    with tasks.task_errors("close tracking run"):
        tasks.close_run(tracking, parent_run_id)


def prepare(
    source: str,
    source_format: str,
    params: dict,
    code_version: str,
    tracking: dict,
    parent_run_id: str,
    dataset: Output[Dataset],
):
    """Slice the raw photos at ``source`` into tiles, split 90/5/5 by photo, hash everything."""
    from cirl.orchestration import tasks

    with tasks.task_errors("prepare"):
        tasks.prepare(source, source_format, params, dataset, tracking, parent_run_id)


def train_phase1(
    dataset: Input[Dataset],
    params: dict,
    code_version: str,
    tracking: dict,
    parent_run_id: str,
    checkpoint: Output[Model],
    metrics: Output[Metrics],
):
    """CIRL phase I: BCE + the ambiguity-aware loss, with the std head."""
    from cirl.orchestration import tasks

    with tasks.task_errors("train phase 1"):
        tasks.train(
            dataset,
            params,
            checkpoint,
            metrics,
            phase=1,
            loss="cirl",
            tracking=tracking,
            parent_run_id=parent_run_id,
        )


def select_regions(
    dataset: Input[Dataset],
    phase1: Input[Model],
    params: dict,
    code_version: str,
    tracking: dict,
    parent_run_id: str,
    ambiguity: Output[Artifact],
    report: Output[HTML],
):
    """Ambiguous pixels A: high phase-I variance inside the marginal ring."""
    from cirl.orchestration import tasks

    with tasks.task_errors("select"):
        tasks.select(dataset, phase1, params, ambiguity, report, tracking, parent_run_id)


def train_phase2(
    dataset: Input[Dataset],
    phase1: Input[Model],
    ambiguity: Input[Artifact],
    params: dict,
    code_version: str,
    tracking: dict,
    parent_run_id: str,
    checkpoint: Output[Model],
    metrics: Output[Metrics],
):
    """CIRL phase II: BCE outside A, the clustering-inspired loss inside it."""
    from cirl.orchestration import tasks

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
            tracking=tracking,
            parent_run_id=parent_run_id,
        )


def train_baseline(
    dataset: Input[Dataset],
    params: dict,
    code_version: str,
    tracking: dict,
    parent_run_id: str,
    checkpoint: Output[Model],
    metrics: Output[Metrics],
):
    """The plain BCE baseline: the same model and loop without CIRL."""
    from cirl.orchestration import tasks

    with tasks.task_errors("train baseline"):
        tasks.train(
            dataset,
            params,
            checkpoint,
            metrics,
            phase=1,
            loss="bce",
            tracking=tracking,
            parent_run_id=parent_run_id,
        )


def evaluate(
    dataset: Input[Dataset],
    model: Input[Model],
    params: dict,
    code_version: str,
    tracking: dict,
    parent_run_id: str,
    run_name: str,
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """Per-image F1 at 0.5 (the paper's protocol), ODS, OIS, AP, PR curve and overlays."""
    from cirl.orchestration import tasks

    with tasks.task_errors("evaluate"):
        tasks.evaluate(
            dataset,
            model,
            params,
            evaluation,
            metrics,
            report,
            tracking,
            parent_run_id,
            run_name,
        )


def export_onnx(
    model: Input[Model],
    dataset: Input[Dataset],
    evaluation: Input[Artifact],
    params: dict,
    code_version: str,
    tracking: dict,
    parent_run_id: str,
    onnx: Output[Model],
):
    """The deployable ONNX model without the std head, checked against PyTorch, carrying the
    decision threshold the evaluation calibrated on the validation split."""
    from cirl.orchestration import tasks

    with tasks.task_errors("export"):
        tasks.export(model, params, onnx, dataset, tracking, parent_run_id, evaluation)


def register_model(
    onnx: Input[Model],
    evaluation: Input[Artifact],
    checkpoint: Input[Model],
    params: dict,
    code_version: str,
    tracking: dict,
    parent_run_id: str,
    registration: Output[Artifact],
):
    """Register the ONNX model as a new version in the MLflow registry; promote it by F1."""
    from cirl.orchestration import tasks

    with tasks.task_errors("register"):
        tasks.register(onnx, evaluation, checkpoint, params, registration, tracking, parent_run_id)


def sweep_worker(
    dataset: Input[Dataset],
    params: dict,
    train_params: dict,
    select_params: dict,
    worker: int,
    code_version: str,
    tracking: dict,
    parent_run_id: str,
    out: Output[Artifact],
):
    """One sweep worker: trials of the shared Optuna study until it is done."""
    from cirl.orchestration import tasks

    with tasks.task_errors(f"sweep worker {worker}"):
        tasks.sweep_worker(
            dataset, params, train_params, select_params, out, tracking, parent_run_id
        )


def sweep_report(
    dataset: Input[Dataset],
    workers: Input[list[Artifact]],
    params: dict,
    train_params: dict,
    select_params: dict,
    code_version: str,
    report: Output[Artifact],
    page: Output[HTML],
):
    """The sweep's plots and tables, and the best setting's test scores (once)."""
    from cirl.orchestration import tasks

    with tasks.task_errors("sweep report"):
        tasks.sweep_report(dataset, workers, params, train_params, select_params, report, page)
