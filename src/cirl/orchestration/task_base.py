"""What every pipeline task shares: KFP-style artifacts, a stage's config from the task's
parameters (KFP's doubles turned back into integers), the task's errors as one line, and
its stage run (:mod:`cirl.orchestration.stage`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from cirl.errors import CirlError
from cirl.staging import clean_stale

TrackingParams = Mapping[str, Any] | None


class ArtifactLike(Protocol):
    """What a task needs of a KFP artifact: a local ``path`` and a ``metadata`` dict."""

    path: str
    metadata: dict


def stage_config(group: str, params: Mapping[str, Any], **overrides: Any) -> Any:
    """The frozen config of ``group`` from a component's ``params`` mapping and fixed overrides.

    Raises:
        CirlError: naming the pipeline parameter and the key on an unknown key or wrong type.
    """
    import typing

    from cirl import config

    cls = config.stage_config(group)
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in dict(params or {}).items():
        # KFP passes mappings as protobuf Structs, whose numbers are all doubles: 512 -> 512.0
        if isinstance(value, float) and value.is_integer() and _wants_int(hints.get(key)):
            value = int(value)
        elif isinstance(value, list | tuple) and _wants_int_items(hints.get(key)):
            value = [int(v) if isinstance(v, float) and v.is_integer() else v for v in value]
        values[key] = value
    values.update(overrides)
    return config.from_mapping(cls, values, f"pipeline parameter {group}_params")


def _wants_int(hint: Any) -> bool:
    """Whether a field annotation takes integers: ``int``, ``Literal[1, 2]``, ``int | None``."""
    import typing

    if hint is int:
        return True
    return any(a is int or (type(a) is int) for a in typing.get_args(hint))


def _wants_int_items(hint: Any) -> bool:
    """Whether a field annotation is a tuple of integers (``tuple[int, ...]``)."""
    import typing

    return typing.get_origin(hint) is tuple and int in typing.get_args(hint)


@contextmanager
def task_errors(stage: str) -> Iterator[None]:
    """Turn a stage's :class:`CirlError` into its ``error:`` line and a failed task.

    KFP shows the task's stdout and stderr as its log: the user reads the same one-line
    message as on the command line, not a stack trace, and the task exits with status 2.
    """
    try:
        yield
    except CirlError as exc:
        print(f"error: {stage}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def tracking_config(tracking: TrackingParams) -> Any:
    """The :class:`~cirl.lineage.tracking.TrackingConfig` of a task's ``tracking`` mapping
    (None: off)."""
    if not tracking:
        return None
    return stage_config("tracking", tracking)


@contextmanager
def _tracked(
    stage: str,
    cfg: Any,
    tracking: TrackingParams,
    parent_run_id: str,
    artifact: ArtifactLike,
    **kwargs: Any,
) -> Iterator[Any]:
    """The stage run (:func:`cirl.orchestration.stage.stage_run`) of a task: its MLflow run id
    on the output artifact, the parent run failed with the task."""
    from cirl.orchestration.stage import stage_run

    with stage_run(
        stage,
        cfg,
        tracking_config(tracking),
        parent_run_id,
        artifact=artifact,
        fail_parent=True,
        **kwargs,
    ) as run:
        yield run


def _prepare_output(artifact: ArtifactLike) -> Path:
    path = Path(artifact.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path.parent)  # temporaries of this task's killed attempt, if any
    return path
