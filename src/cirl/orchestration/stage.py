"""One stage run, as both adapters (the ``cirl`` commands and the KFP tasks) run it.

:func:`stage_run` is the one place that decides how a stage runs outside its own module:

* inference stages (:data:`INFERENCE_STAGES`) compute with subnormal floats as zero
  (:func:`cirl.models.inference.subnormals_as_zero`; each command and task is a process of
  its own, so the mode reaches all of PyTorch's threads), training never does;
* the stage's MLflow run (:func:`cirl.lineage.tracking.stage_run`; a run that does nothing when
  tracking is off), nested under the pipeline run when one is named;
* for a KFP task, the run's id in the output artifact's metadata (the KFP UI links each
  artifact to its run), and the pipeline's parent run failed with the stage's error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from cirl.errors import CirlError

INFERENCE_STAGES = frozenset({"select", "evaluate", "export"})


@contextlib.contextmanager
def stage_run(
    stage: str,
    cfg: Any,
    tracking: Any,
    parent_run_id: str | None = None,
    artifact: Any = None,
    fail_parent: bool = False,
    **kwargs: Any,
) -> Iterator[Any]:
    """Run the block as stage ``stage`` with config ``cfg``; yields its tracking run.

    Args:
        stage: the stage group (``train``, ``select``, ...).
        cfg: the stage's config.
        tracking: a :class:`~cirl.lineage.tracking.TrackingConfig`, or None (off).
        parent_run_id: the pipeline run to nest under.
        artifact: a KFP output artifact to put the run id on.
        fail_parent: end the parent run as failed when the block raises (a pipeline task).
        kwargs: for :func:`cirl.lineage.tracking.stage_run` (``data``, ``out``, ``run_name``,
            ``tags``).
    """
    from cirl.lineage import tracking as layer

    with contextlib.ExitStack() as stack:
        if stage in INFERENCE_STAGES:
            from cirl.models.inference import subnormals_as_zero

            stack.enter_context(subnormals_as_zero())
        try:
            with layer.stage_run(
                stage, cfg, tracking, parent_run_id=parent_run_id or None, **kwargs
            ) as run:
                if artifact is not None and run.run_id:
                    artifact.metadata["mlflow_run_id"] = run.run_id
                yield run
        except BaseException as exc:
            if fail_parent and parent_run_id and tracking is not None and tracking.track:
                # the pipeline failed with this stage: its parent run too, with the error
                with contextlib.suppress(CirlError):
                    layer.end_pipeline_run(parent_run_id, tracking, CirlError(f"{stage}: {exc}"))
            raise
