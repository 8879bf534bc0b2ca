"""Files shipped with the package: the compiled training pipeline (``training.yaml``, a copy of
``pipelines/training.yaml`` written by ``python pipelines/training.py``), so that
``cirl pipeline run`` works from any folder, not only a checkout."""
