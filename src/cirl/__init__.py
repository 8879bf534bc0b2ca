"""cirl: crack segmentation with clustering-inspired representation learning (CVPR 2024).

The package is layered; a module imports only from its own layer or the ones before it
(``tests/test_layers.py`` checks this, ``docs/architecture.md`` draws it):

1. base: ``errors``, ``hashing``, ``fpenv``, ``host``, ``config``, ``staging``
2. ``data``: importers, decoding, tiling, splitting, the manifest, ``prepare``, ``synth``
3. ``models``: the networks, checkpoints, tiled inference
4. ``method``: CIRL itself: losses, training, selection, evaluation, metrics, the recipe
5. ``lineage``: the tag schema, MLflow tracking, the model registry
6. ``deploy``: ONNX export, inference engines and their gate, opening a model by name,
   ``predict``, ``measure``
7. ``audit``: a registered model's lineage read back, verified and retrained
8. ``tuning``: the Optuna sweeps
9. ``orchestration``: the CLI, the KFP tasks and the local runners
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

# The flat layout's module paths (``cirl.train``, ...), kept for one release as aliases of
# the modules' new homes: ``import cirl.train`` gives the very module ``cirl.method.train``.
MOVED = {
    "prepare": "data", "synth": "data",
    "checkpoint": "models", "inference": "models",
    "losses": "method", "train": "method", "selection": "method", "evaluate": "method",
    "metrics": "method", "arithmetic": "method", "report": "method",
    "export": "deploy", "engine": "deploy", "gate": "deploy", "predict": "deploy",
    "measure": "deploy",
    "tracking": "lineage", "registry": "lineage",
    "sweep": "tuning",
    "cli": "orchestration", "tasks": "orchestration", "pipeline": "orchestration",
    "container_runner": "orchestration",
}  # fmt: skip


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``cirl.<old>`` to ``cirl.<layer>.<old>`` with a DeprecationWarning."""

    def find_spec(self, fullname, path=None, target=None):
        head, _, name = fullname.rpartition(".")
        if head != __name__ or name not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        name = spec.name.rpartition(".")[2]
        new = f"{__name__}.{MOVED[name]}.{name}"
        warnings.warn(
            f"{spec.name} moved to {new}; the old path goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(new)

    def exec_module(self, module):
        pass  # the module is the new one, already executed


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())
