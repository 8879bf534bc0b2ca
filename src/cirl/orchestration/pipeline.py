"""Running the compiled KFP pipeline: on this machine, or on a Kubeflow cluster.

The pipeline is defined in ``pipelines/training.py`` and compiled to a YAML package
(``pipelines/training.yaml``, committed). This module works on such a package:

* :func:`run_local` runs it on this machine with KFP's local runner (``SubprocessRunner``: the
  tasks run as processes of this Python environment, no cluster and no container engine; or
  ``DockerRunner`` through podman, see :mod:`cirl.orchestration.container_runner`), then links
  the outputs that matter to predictable places under ``out``.
* :func:`submit` and :func:`schedule` send it to a Kubeflow Pipelines endpoint through
  ``kfp.Client`` (a one-off run, or a recurring run on a cron schedule).

Run arguments: one mapping per stage group (``prepare_params``, ``train_params``, ...),
resolved from a ``params.yaml`` and ``group.key=value`` overrides through the stages' config
dataclasses, so a typo fails here, before anything runs. ``kfp`` is imported where used.

Modules: this one loads and parameterises the compiled package;
:mod:`~cirl.orchestration.local_run` runs it here, :mod:`~cirl.orchestration.summary` says
what a run did, :mod:`~cirl.orchestration.cluster` submits and schedules it on a KFP endpoint.
"""

from cirl.orchestration.cluster import client, schedule, submit
from cirl.orchestration.local_run import (
    BRANCH_LINKS,
    LINKS,
    LocalRun,
    config_dict,
    local_tracking,
    run_local,
)
from cirl.orchestration.package import (
    STAGE_GROUPS,
    check_image_reference,
    code_version,
    default_package,
    load_package,
    parse_overrides,
    stage_arguments,
    with_image,
)
from cirl.orchestration.summary import selection_lines, summary_text

__all__ = [
    "BRANCH_LINKS",
    "LINKS",
    "STAGE_GROUPS",
    "LocalRun",
    "check_image_reference",
    "client",
    "code_version",
    "config_dict",
    "default_package",
    "load_package",
    "local_tracking",
    "parse_overrides",
    "run_local",
    "schedule",
    "selection_lines",
    "stage_arguments",
    "submit",
    "summary_text",
    "with_image",
]
