"""KFP components of the cirl pipeline, all on one image.

``build(image)`` returns the components made from :mod:`components.stages` on ``image`` (the
image built from the top-level ``Dockerfile``; on a cluster reference it by digest, since KFP's
cache key holds the image reference as written).
"""

from __future__ import annotations

from types import SimpleNamespace

DEFAULT_IMAGE = "localhost/cirl:latest"

STAGE_COMPONENTS = (
    "open_run",
    "close_run",
    "prepare",
    "train_phase1",
    "select_regions",
    "train_phase2",
    "train_baseline",
    "evaluate",
    "export_onnx",
    "register_model",
    "sweep_worker",
    "sweep_report",
)


def build(image: str = DEFAULT_IMAGE) -> SimpleNamespace:
    """The components as KFP ``PythonComponent``s on ``image``, by name."""
    from kfp import dsl

    from components import stages

    made = {
        name: dsl.component(base_image=image, install_kfp_package=False)(getattr(stages, name))
        for name in STAGE_COMPONENTS
    }
    return SimpleNamespace(**made)
