"""Inference engines: one interface over an exported ONNX model and a PyTorch checkpoint.

An engine maps a batch of RGB images ``(N, 3, H, W)`` float32 in [0, 1], H and W multiples of
``engine.stride``, to crack probabilities ``(N, 1, H, W)`` float32. Prediction and the export's
accuracy check use it, so both engines are exercised by the same code path.

* :class:`OnnxEngine`: onnxruntime, CUDA provider when present and asked for, CPU otherwise;
  reads the stride and the model description from the file's metadata (written by
  ``cirl export``) and checks the graph's input and output against the contract.
* :class:`OpenVinoEngine`: the same ONNX file compiled by OpenVINO for the CPU, in fp32 or, where
  the CPU has bf16 arithmetic (AVX512-BF16, AMX), in bf16 (``openvino-bf16``).
* :class:`TorchEngine`: a checkpoint rebuilt through the registry, std head dropped.

Engine names (``cirl predict --engine``): ``onnx`` (onnxruntime fp32, the reference),
``onnx-int8`` (the statically quantized ``NAME.int8.onnx`` that ``cirl export --quantize static``
writes beside ``NAME.onnx``), ``openvino``, ``openvino-bf16``, ``torch``, and ``auto``
(:mod:`cirl.deploy.gate`: the fastest engine on this machine among those that passed the accuracy
gate recorded in the model's metadata).

A model may also be named by an MLflow registry URI, ``models:/NAME@ALIAS`` or
``models:/NAME/VERSION`` (ONNX engine): the version's ONNX file is fetched once into a cache
folder (:func:`cirl.lineage.fetch.fetch_model`), so deployments refer to an alias, not a file.

This module holds the engines; :func:`cirl.deploy.opener.load_engine` opens a model by file or
name with a chosen engine (``auto`` included), the accuracy gate checked.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from cirl import fpenv
from cirl.errors import CirlError
from cirl.models.files import int8_path

log = logging.getLogger(__name__)

EngineName = Literal["auto", "onnx", "onnx-int8", "openvino", "openvino-bf16", "torch"]
ENGINES: tuple[str, ...] = ("auto", "onnx", "onnx-int8", "openvino", "openvino-bf16", "torch")
GATED: tuple[str, ...] = ("onnx-int8", "openvino", "openvino-bf16")
"""Engines that differ from the fp32 reference and are used only after the accuracy gate."""
LOW_PRECISION: tuple[str, ...] = ("onnx-int8", "openvino-bf16")
"""Engines refused without a passed gate unless forced (fp32 OpenVINO is allowed ungated)."""


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (the weights are not loaded)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others
        raise CirlError(
            f"{path}: not a readable ONNX file ({type(exc).__name__}); pass a file written by "
            "`cirl export`"
        ) from None
    return {p.key: p.value for p in proto.metadata_props}


def _describe(path: Path, meta: dict[str, str]) -> dict:
    description = {
        "file": str(path),
        "model_config": json.loads(meta.get("model_config", "null")),
        "cirl_version": meta.get("cirl_version"),
        "checkpoint_sha256": meta.get("checkpoint_sha256"),
    }
    if "quantization" in meta:
        description["quantization"] = json.loads(meta["quantization"])
    if "decision_threshold" in meta:  # calibrated on the validation split (cirl export)
        description["decision_threshold"] = float(meta["decision_threshold"])
        description["threshold_calibration"] = json.loads(meta.get("threshold_calibration", "{}"))
    return description


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
        # subnormal floats as zero in every thread of the session (cirl.models.inference's
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
            # onnxruntime may switch the mode on for the creating thread too, and never off:
            # the runs below switch it on for their own duration (cirl.fpenv)
            with fpenv.preserved():
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
        self.metadata = dict(meta)
        self.input_name = inputs[0].name
        self.stride = int(meta.get("stride", 16))
        self.description = _describe(path, meta)
        self.description["providers"] = self.session.get_providers()
        if "quantization" in meta:
            self.name = "onnx-int8"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        # the calling thread computes a share of the run: subnormals as zero, then back
        with fpenv.flushing():
            out = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, np.float32)})
        return out[0]


def cpu_has_bf16(core=None) -> bool:
    """Whether OpenVINO can run bf16 arithmetic on this CPU (AVX512-BF16 or AMX).

    Args:
        core: an ``openvino.Core`` to ask (a new one when None).
    """
    if core is None:
        import openvino as ov

        core = ov.Core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoEngine:
    """An ONNX model written by ``cirl export``, compiled by OpenVINO for the CPU.

    Args:
        path: the ``.onnx`` file (fp32; OpenVINO reads ONNX directly).
        threads: inference threads (0 = OpenVINO's default: the physical cores).
        precision: ``fp32``, or ``bf16`` (OpenVINO's ``INFERENCE_PRECISION_HINT``: weights and
            activations in bfloat16 inside the graph, inputs and outputs stay float32). A CPU
            without bf16 arithmetic would silently run fp32: that is refused instead.

    Raises:
        CirlError: missing or unreadable file, a model off the contract, or bf16 asked for on a
            CPU without it.
    """

    def __init__(self, path: str | os.PathLike, threads: int = 0, precision: str = "fp32") -> None:
        import openvino as ov

        path = Path(path)
        if not path.is_file():
            raise CirlError(f"model {path} not found; pass a .onnx file written by `cirl export`")
        if precision not in ("fp32", "bf16"):
            raise CirlError(f"OpenVINO precision must be fp32 or bf16, got {precision!r}")
        self.name = "openvino" if precision == "fp32" else "openvino-bf16"
        meta = read_metadata(path)
        if "quantization" in meta:
            raise CirlError(
                f"{path} is a quantized model; run it with --engine onnx-int8 (or onnx), and "
                "OpenVINO on the fp32 model it came from"
            )
        core = ov.Core()
        if precision == "bf16" and not cpu_has_bf16(core):
            raise CirlError(
                "--engine openvino-bf16: this CPU has no bf16 arithmetic (AVX512-BF16 or AMX); "
                "use --engine openvino (fp32) or auto"
            )
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            # subnormals as zero, as for onnxruntime (cirl.models.inference.subnormals_as_zero)
            "CPU_DENORMALS_OPTIMIZATION": True,
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            model = core.read_model(str(path))
            # like onnxruntime, OpenVINO leaves the mode on in the compiling thread (cirl.fpenv)
            with fpenv.preserved():
                self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError with long messages
            raise CirlError(
                f"{path}: OpenVINO cannot compile this model ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]}); use --engine onnx"
            ) from None
        inputs, outputs = model.inputs, model.outputs
        if len(inputs) != 1 or len(outputs) != 1 or inputs[0].get_partial_shape().rank != 4:
            raise CirlError(
                f"{path}: this ONNX model does not match the crack-model contract (one input "
                "(N, 3, H, W) and one output (N, 1, H, W))"
            )
        self.request = self.compiled.create_infer_request()
        self.metadata = meta
        self.stride = int(meta.get("stride", 16))
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = {"f32": "fp32"}.get(hint.to_string(), hint.to_string())
        self.description = _describe(path, meta)
        self.description.update(
            {"runtime": f"openvino {ov.__version__}", "inference_precision": self.precision}
        )

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with fpenv.flushing():
            result = self.request.infer([np.ascontiguousarray(batch, np.float32)])
        return np.array(result[self.compiled.output(0)], np.float32, copy=True)


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

        from cirl.models.checkpoint import build_from_checkpoint, file_sha256, load_checkpoint
        from cirl.models.device import resolve_device

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


def open_file(
    path: str | os.PathLike, engine: str, threads: int = 0, device: str = "auto"
) -> Engine:
    """The named engine (not ``auto``) on a model file, without the accuracy gate's check.

    Raises:
        CirlError: when the file does not suit the engine (an ``.onnx`` file for ``torch``, a
            checkpoint for an ONNX engine, no ``NAME.int8.onnx`` for ``onnx-int8``).
    """
    path = Path(path)
    if engine == "torch":
        if path.suffix == ".onnx":
            raise CirlError(
                f"{path} is an ONNX model; --engine torch needs the .pt checkpoint it came from"
            )
        return TorchEngine(path, threads, device)
    if path.suffix == ".pt":
        raise CirlError(
            f"{path} is a PyTorch checkpoint; export it with `cirl export --checkpoint {path} "
            "--out model.onnx`, or predict with --engine torch"
        )
    quantized = model_file(path, engine)
    if quantized != path and not quantized.is_file():
        raise CirlError(
            f"--engine onnx-int8: {quantized} not found; write it with `cirl export "
            "--quantize static --data PREPARED`, or use --engine auto"
        )
    path = quantized
    if engine in ("onnx", "onnx-int8"):
        return OnnxEngine(path, threads, device)
    return OpenVinoEngine(path, threads, "bf16" if engine == "openvino-bf16" else "fp32")


def model_file(path: Path, engine: str) -> Path:
    """The file ``engine`` runs for the model ``path``: the int8 copy beside ``NAME.onnx`` for
    ``onnx-int8``, the file itself otherwise."""
    if engine == "onnx-int8" and not path.name.endswith(".int8.onnx"):
        return int8_path(path)
    return path


def _cuda_provider() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def check_contract(engine: Engine, path: Path) -> None:
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
