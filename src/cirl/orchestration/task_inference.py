"""The inference pipeline's tasks (``pipelines/inference.py``): one model over a prefix of
photos, fanned out over shards, merged into one summary; and its local run.

* :func:`plan` (the first task) resolves the model **once**: ``models:/NAME@ALIAS`` becomes the
  version the alias names now, ``models:/NAME/N``, which every shard then opens, so a run uses
  one version even if the alias moves while it runs. It lists the photos of ``source`` (a
  folder, or an ``s3://bucket/prefix``, recursively, as ``cirl predict`` does: the suffixes it
  takes, sorted by path or key, named as it names them), deals them **round-robin** into
  ``shards`` (photo ``i`` of the sorted list into shard ``i mod shards``; fewer shards when
  there are fewer photos) and writes ``plan.json``. It returns the shard indices the pipeline's
  ``ParallelFor`` iterates over.
* :func:`predict_shard` (one per shard) runs ``cirl predict``'s own code,
  :func:`cirl.deploy.predict.run` (engine choice, calibrated threshold, crack measurement), on
  the shard's photos: they are staged in a local folder (downloaded, ETag-pinned, from S3; linked
  from a local source) in chunks of :data:`CHUNK`, predict writes into a local staging folder,
  and each photo's files are published to ``out`` as soon as predict has written them, under
  the names ``cirl predict`` gives them, the per-photo ``NAME.json`` last (with ``image`` and
  ``input_fingerprint`` naming the source photo, as ``cirl predict`` writes them). A photo whose
  ``NAME.json`` in ``out`` was made from the same photo (S3 ETag, or size and mtime) by the same
  model version with the same output parameters, all its files present, is skipped: a rerun, or
  a retried shard, resumes per photo.
* :func:`merge` (the last task) writes ``summary.csv`` (``cirl predict``'s columns, one row per
  photo in listing order), ``report.html`` (linked; the ``Output[HTML]`` is the embedded
  rendering) and ``merge.json`` (the model version used, counts done/skipped/failed, every
  failure's reason, per-shard engines and times) into ``out``.
* :func:`run_local` is ``cirl pipeline run --package pipelines/inference.yaml``: the compiled
  package through KFP's local runner; :func:`pipeline_arguments` turns ``--params`` and
  ``--set`` into its arguments (``out``, ``model``, ``shards``; the ``predict`` and
  ``tracking`` groups).

Artifacts are duck-typed as in :mod:`cirl.orchestration.tasks` (``path``, ``metadata``).
"""

from cirl.orchestration.inference_io import (  # noqa: F401
    CHUNK,
    DEFAULT_MODEL,
    GROUPS,
    MERGE_FILE,
    PARTITION,
    PIPELINE_NAME,
    PLAN_FILE,
    RUNTIME_PARAMS,
    SHARD_FILE,
    STATUSES,
    TOP_LEVEL,
    TOP_PHOTOS,
    Location,
    _check_apart,
    _now,
    _output_names,
    _s3_reason,
    _world_suffixes,
    deal,
    list_photos,
    local_fingerprint,
    resolve_model,
    world_file_names,
)
from cirl.orchestration.inference_merge import (  # noqa: F401
    _number,
    _page,
    _summary_csv,
    _top_overlays,
    merge,
)
from cirl.orchestration.inference_run import (  # noqa: F401
    _absolute_registry,
    _link_outputs,
    _write_run,
    is_inference_package,
    pipeline_arguments,
    run_local,
)
from cirl.orchestration.inference_shard import (  # noqa: F401
    _cell,
    _fingerprint_now,
    _model_threshold,
    _predict_chunk,
    _Publisher,
    _read_csv,
    _renamed,
    _reports,
    _stage_inputs,
    _world_fingerprint,
    is_finished,
    plan,
    predict_shard,
    read_plan,
    summary_row,
)
