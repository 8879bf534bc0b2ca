"""Inference engines: one interface over an exported ONNX model and a PyTorch checkpoint.

An engine maps a batch of RGB images ``(N, 3, H, W)`` float32 in [0, 1], H and W multiples of
``engine.stride``, to crack probabilities ``(N, 1, H, W)`` float32. Prediction and the export's
accuracy check use it, so both engines are exercised by the same code path.

* :class:`OnnxEngine`: onnxruntime, CUDA provider when present and asked for, CPU otherwise;
  reads the stride and the model description from the file's metadata (written by
  ``cirl export``) and checks the graph's input and output against the contract.
* :class:`TorchEngine`: a checkpoint rebuilt through the registry, std head dropped.

A model may also be named by an MLflow registry URI, ``models:/NAME@ALIAS`` or
``models:/NAME/VERSION`` (ONNX engine): the version's ONNX file is fetched once into a cache
folder (:func:`cirl.registry.fetch_model`), so deployments refer to an alias, not a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from cirl.errors import CirlError

EngineName = Literal["onnx", "torch"]


class Engine(Protocol):
    """What prediction needs from a model."""

    name: str
    stride: int
    description: dict

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """``(N, 3, H, W)`` float32 RGB in [0, 1] -> ``(N, 1, H, W)`` float32 probabilities."""
        ...


class OnnxEngine:
    """An ONNX model written by ``cirl export``, run with onnxruntime.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op CPU threads (0 = onnxruntime's default: all cores).
        device: ``auto`` (CUDA provider when available), ``cpu`` or ``cuda``.

    Raises:
        CirlError: when the file is missing, not ONNX, or not a crack model of this contract.
    """

    name = "onnx"

    def __init__(self, path: str | os.PathLike, threads: int = 0, device: str = "auto") -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise CirlError(f"model {path} not found; pass a .onnx file written by `cirl export`")
        options = ort.SessionOptions()
        # onnxruntime's memory pattern pre-plans one buffer per activation for the shapes it
        # has seen: on CPU it bought no speed here (unet-small, batch 4: 0.132 vs 0.135 s per
        # tile) but cost 37-45% more peak memory (jtfn, batch 4: 14.9 vs 8.2 GB).
        options.enable_mem_pattern = False
        # subnormal floats as zero in every thread of the session (cirl.inference's
        # subnormals_as_zero says why: a trained model ran up to 14x slower without it)
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        if threads:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise CirlError(
                "device 'cuda' requested but onnxruntime has no CUDA provider here; "
                "install onnxruntime-gpu or use --device cpu"
            )
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise CirlError(
                f"{path}: not a loadable ONNX model ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]}); pass a file written by `cirl export`"
            ) from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = inputs[0].shape if len(inputs) == 1 else None
        if shape is None or len(shape) != 4 or shape[1] != 3 or len(outputs) != 1:
            raise CirlError(
                f"{path}: this ONNX model does not match the crack-model contract (one input "
                f"(N, 3, H, W) and one output (N, 1, H, W)); got inputs "
                f"{[(i.name, i.shape) for i in inputs]}, outputs {[o.name for o in outputs]}"
            )
        meta = self.session.get_modelmeta().custom_metadata_map
        self.input_name = inputs[0].name
        self.stride = int(meta.get("stride", 16))
        self.description = {
            "file": str(path),
            "providers": self.session.get_providers(),
            "model_config": json.loads(meta.get("model_config", "null")),
            "cirl_version": meta.get("cirl_version"),
            "checkpoint_sha256": meta.get("checkpoint_sha256"),
        }

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, np.float32)})
        return out[0]


class TorchEngine:
    """A ``cirl train`` checkpoint run in PyTorch (eval mode, std head dropped).

    Args:
        path: the ``.pt`` checkpoint.
        threads: CPU threads for PyTorch (0 = its default).
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    name = "torch"

    def __init__(self, path: str | os.PathLike, threads: int = 0, device: str = "auto") -> None:
        import torch

        from cirl.checkpoint import build_from_checkpoint, file_sha256, load_checkpoint
        from cirl.train import resolve_device

        if threads:
            torch.set_num_threads(threads)
        payload = load_checkpoint(path)
        self.device = resolve_device(device)
        self.model = build_from_checkpoint(payload, std_head=False).to(self.device).eval()
        self.stride = int(self.model.stride)
        self.description = {
            "file": str(path),
            "device": str(self.device),
            "model_config": payload["model_config"],
            "checkpoint_sha256": file_sha256(path),
        }

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self.device)
            return torch.sigmoid(self.model(x).logits.float()).cpu().numpy()


def is_registry_uri(model: str | os.PathLike) -> bool:
    """Whether ``model`` names a registered model (``models:/...``) rather than a file."""
    return isinstance(model, str) and model.startswith("models:/")


def load_engine(
    model: str | os.PathLike,
    engine: EngineName = "onnx",
    threads: int = 0,
    device: str = "auto",
    tracking_uri: str | None = None,
) -> Engine:
    """Open ``model`` (a file, or a ``models:/`` URI) with the named engine.

    Args:
        model: an ``.onnx`` file, a ``.pt`` checkpoint, or ``models:/NAME@ALIAS`` /
            ``models:/NAME/VERSION`` (ONNX).
        engine: ``onnx`` or ``torch``.
        threads: CPU threads of the engine (0 = its default).
        device: ``auto``, ``cpu`` or ``cuda``.
        tracking_uri: the registry of a ``models:/`` URI (default ``$MLFLOW_TRACKING_URI``,
            else ``sqlite:///mlflow.db``).

    Raises:
        CirlError: when the file does not suit the engine (an ``.onnx`` file for ``torch`` or a
            checkpoint for ``onnx``), or a ``models:/`` URI cannot be resolved, with the fix.
    """
    if is_registry_uri(model):
        return _load_registered(str(model), engine, threads, device, tracking_uri)
    path = Path(model)
    opened: Engine
    if engine == "onnx":
        if path.suffix == ".pt":
            raise CirlError(
                f"{path} is a PyTorch checkpoint; export it with `cirl export --checkpoint {path} "
                "--out model.onnx`, or predict with --engine torch"
            )
        opened = OnnxEngine(path, threads, device)
    elif engine == "torch":
        if path.suffix == ".onnx":
            raise CirlError(
                f"{path} is an ONNX model; --engine torch needs the .pt checkpoint it came from"
            )
        opened = TorchEngine(path, threads, device)
    else:
        raise CirlError(f"unknown engine {engine!r}; valid engines are: onnx, torch")
    _check_contract(opened, path)
    return opened


def _check_contract(engine: Engine, path: Path) -> None:
    """Run a tiny input through the model and check the output is (N, 1, H, W) probabilities."""
    side = 2 * engine.stride
    probe = np.full((2, 3, side, side), 0.5, np.float32)
    try:
        out = engine(probe)
    except Exception as exc:  # the runtime's own error types
        raise CirlError(
            f"{path}: the model fails on a (2, 3, {side}, {side}) image batch "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "it does not match the crack-model contract"
        ) from None
    if out.shape != (2, 1, side, side) or not np.all((out >= 0) & (out <= 1)):
        raise CirlError(
            f"{path}: the model returns shape {tuple(out.shape)} for a (2, 3, {side}, {side}) "
            "batch, not probabilities of shape (2, 1, H, W); export it with `cirl export`"
        )


def _load_registered(
    uri: str, engine: str, threads: int, device: str, tracking_uri: str | None
) -> Engine:
    """A ``models:/`` URI: fetch the version's ONNX file (cached) and open it."""
    from cirl.registry import fetch_model

    if engine != "onnx":
        raise CirlError(
            f"{uri}: registered models are ONNX models; predict with --engine onnx (the "
            "checkpoint is an artifact of the version's run, for --engine torch download it)"
        )
    fetched = fetch_model(uri, tracking_uri=tracking_uri)
    opened = OnnxEngine(fetched.path, threads, device)
    opened.description.update(
        {
            "model_uri": uri,
            "registered_model": fetched.name,
            "registered_version": fetched.version,
            "run_id": fetched.run_id,
        }
    )
    _check_contract(opened, fetched.path)
    return opened
