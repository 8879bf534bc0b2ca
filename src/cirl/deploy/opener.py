"""Opening a model for inference: a file or a registered model's name, with a named engine or
``auto``, the accuracy gate checked (``cirl predict``, ``cirl serve``-style callers).

The engines themselves are :mod:`cirl.deploy.engine`; the gate and the timed choice of
``auto`` are :mod:`cirl.deploy.gate`; a ``models:/`` URI is fetched by
:func:`cirl.lineage.registry.fetch_model`. Keeping this apart from the engines is what lets the
gate use the engines without an import cycle.
"""

from __future__ import annotations

import os
from pathlib import Path

from cirl.deploy.engine import (
    ENGINES,
    Engine,
    EngineName,
    _cuda_provider,
    check_contract,
    is_registry_uri,
    model_file,
    open_file,
)
from cirl.deploy.gate import check_gate, choose_engine
from cirl.errors import CirlError


def load_engine(
    model: str | os.PathLike,
    engine: EngineName = "onnx",
    threads: int = 0,
    device: str = "auto",
    tracking_uri: str | None = None,
    force: bool = False,
    tile: int = 512,
    batch: int = 4,
) -> Engine:
    """Open ``model`` (a file, or a ``models:/`` URI) with the named engine.

    Args:
        model: an ``.onnx`` file, a ``.pt`` checkpoint, or ``models:/NAME@ALIAS`` /
            ``models:/NAME/VERSION`` (ONNX).
        engine: one of :data:`ENGINES`; ``auto`` picks the fastest engine on this machine that
            passed the model's accuracy gate (:func:`cirl.deploy.gate.choose_engine`),
            ``torch`` for a checkpoint, ``onnx`` on CUDA.
        threads: CPU threads of the engine (0 = its default).
        device: ``auto``, ``cpu`` or ``cuda``.
        tracking_uri: the registry of a ``models:/`` URI (default ``$MLFLOW_TRACKING_URI``,
            else ``sqlite:///mlflow.db``).
        force: use a low-precision engine whose accuracy gate failed or never ran.
        tile: tile side ``auto`` times the engines at.
        batch: batch ``auto`` times the engines at.

    Returns:
        The engine; ``engine.description["choice"]`` says why ``auto`` chose it and
        ``engine.description["gate"]`` the gate's verdict on a gated engine.

    Raises:
        CirlError: when the file does not suit the engine (an ``.onnx`` file for ``torch`` or a
            checkpoint for ``onnx``), a low-precision engine has not passed the gate (unless
            forced), or a ``models:/`` URI cannot be resolved, with the fix.
    """
    if engine not in ENGINES:
        raise CirlError(f"unknown engine {engine!r}; valid engines are: {', '.join(ENGINES)}")
    if is_registry_uri(model):
        from cirl.lineage.fetch import fetch_model

        if engine == "torch":
            raise CirlError(
                f"{model}: registered models are ONNX models; predict with --engine auto or "
                "onnx (the checkpoint is an artifact of the version's run, for --engine torch "
                "download it)"
            )
        fetched = fetch_model(str(model), tracking_uri=tracking_uri)
        opened = load_engine(fetched.path, engine, threads, device, None, force, tile, batch)
        opened.description.update(
            {
                "model_uri": str(model),
                "registered_model": fetched.name,
                "registered_version": fetched.version,
                "run_id": fetched.run_id,
            }
        )
        return opened
    path = Path(model)
    choice = None
    if engine == "auto":
        choice = _auto(path, threads, device, tile, batch)
        engine = choice["engine"]
    opened = open_file(path, engine, threads, device)
    if engine != "torch":
        path = model_file(path, engine)
        check_gate(opened, path, force)
    check_contract(opened, path)
    if choice is not None:
        opened.description["choice"] = choice
    return opened


def _auto(path: Path, threads: int, device: str, tile: int, batch: int) -> dict:
    """``--engine auto``: which engine, and why."""
    if path.suffix == ".pt":
        return {"engine": "torch", "why": "the model is a PyTorch checkpoint"}
    if device == "cuda" or (device == "auto" and _cuda_provider()):
        return {"engine": "onnx", "why": "onnxruntime's CUDA provider on the GPU"}
    if not path.is_file():
        raise CirlError(f"model {path} not found; pass a .onnx file written by `cirl export`")
    return choose_engine(path, tile, batch, threads)
