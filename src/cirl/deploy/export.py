"""Stage ``export``: a checkpoint to an ONNX model of backbone + seg head, checked against PyTorch.

The exported graph takes ``image``: float32 ``(N, 3, H, W)`` RGB in [0, 1] with dynamic batch,
height and width (multiples of the model's stride, stored in the metadata) and returns
``prob``: float32 ``(N, 1, H, W)``, the sigmoid of the crack logits. The std head is not in the
graph (CIRL costs nothing at inference), nor are JTFN's auxiliary and boundary heads.

Checks before the file is moved into place:

* ``onnx.checker`` (full check, with shape inference);
* parity: onnxruntime against PyTorch on seeded random inputs of a size other than the export
  size; the maximum absolute difference must stay within ``tolerance`` (1e-4 for fp32).

Metadata (``metadata_props``): cirl version, opset, stride, input/output contract, the model
config, the training config, the checkpoint's SHA-256 and provenance (data folder and manifest
SHA-256, init checkpoint), and the measured parity.

Faster engines (``cirl.deploy.gate``): with a prepared folder (``--data``, or the folder recorded in
the checkpoint when it is still there) the **accuracy gate** scores onnxruntime fp32 (the
reference), OpenVINO fp32 and bf16 (where the CPU has it) and the int8 copy on ``split`` (the
validation split) and writes the verdicts into the model's metadata (``accuracy_gate``);
``cirl predict`` uses only engines that passed (``--engine auto`` picks the fastest of them).

``quantize: static`` writes ``NAME.int8.onnx``: onnxruntime's static quantization in QDQ
format, int8 weights per output channel and uint8 activations, their ranges calibrated on
``calibration_tiles`` real training tiles of the prepared folder (not random data), the graph
first optimised by ``quant_pre_process``. ``quantize: dynamic`` is the older dynamic
quantization (activations quantized at run time; measured slower than fp32 on CPUs here).

Modules: :mod:`~cirl.deploy.export_config` (parameters, result, metadata),
:mod:`~cirl.deploy.quantize` (the int8 copy and the accuracy gate).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cirl import __version__
from cirl.config import to_dict
from cirl.deploy.engine import int8_path
from cirl.deploy.export_config import CALIBRATION_KEYS, ExportConfig, ExportResult, _set_metadata
from cirl.deploy.gate import GATE_KEY
from cirl.deploy.quantize import _gate, _gate_data, _quantize
from cirl.errors import CirlError
from cirl.staging import staged_file


class ProbabilityModel(nn.Module):
    """A registry model reduced to what is deployed: image -> sigmoid(seg logits).

    The std head and any auxiliary or boundary heads are left out of the graph.

    Shapes: ``(N, 3, H, W)`` -> ``(N, 1, H, W)``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(image).logits)


def _round_up(value: int, stride: int) -> int:
    return -(-value // stride) * stride


def _rename_dims(model) -> None:
    """Give the dynamic axes readable names: batch, height, width."""
    names = ("batch", None, "height", "width")
    for value in (*model.graph.input, *model.graph.output):
        for dim, name in zip(value.type.tensor_type.shape.dim, names, strict=True):
            if name is not None:
                dim.ClearField("dim_value")
                dim.dim_param = name


def _export_graph(wrapper, cfg: ExportConfig, stride: int, path: Path) -> None:
    import logging
    import warnings

    size = _round_up(cfg.export_size, stride)
    example = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    dynamic = torch.export.Dim.DYNAMIC
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                wrapper,
                (example,),
                dynamo=True,
                input_names=["image"],
                output_names=["prob"],
                dynamic_shapes={"image": {0: dynamic, 2: dynamic, 3: dynamic}},
                opset_version=cfg.opset,
                verbose=False,
            )
        finally:
            logging.getLogger("torch.onnx").setLevel(level)
    program.save(str(path))


def parity(onnx_path: Path, wrapper, cfg: ExportConfig, stride: int) -> float:
    """Max |onnxruntime - PyTorch| on seeded random inputs of the check size."""
    import onnxruntime as ort

    h = _round_up(cfg.check_height, stride)
    w = _round_up(cfg.check_width, stride)
    x = torch.rand(cfg.check_batch, 3, h, w, generator=torch.Generator().manual_seed(1))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.inference_mode():
        want = wrapper(x).numpy()
    if got.shape != want.shape:
        raise CirlError(f"exported model returns shape {got.shape}, PyTorch {want.shape}")
    return float(np.abs(got - want).max())


def run(
    cfg: ExportConfig,
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    data: str | os.PathLike | None = None,
    evaluation: str | os.PathLike | None = None,
) -> ExportResult:
    """Export ``checkpoint`` to ``out`` (``.onnx``), check it, and write it atomically.

    Args:
        cfg: the stage's parameters.
        checkpoint: a ``cirl train`` checkpoint.
        out: the ONNX file to write (a report ``OUT.json`` is written beside it).
        data: a prepared folder for the accuracy gate and the static calibration; default:
            the folder recorded in the checkpoint, when it is still there and unchanged.
        evaluation: ``cirl evaluate``'s folder (or its ``metrics.json``) of this checkpoint:
            its calibrated decision threshold goes into the metadata (``decision_threshold``,
            ``threshold_calibration``), where ``cirl predict`` reads it.

    Returns:
        The path, the parity and the report.

    Raises:
        CirlError: on a bad checkpoint, a failed check or parity above the tolerance (nothing
            is written then).
    """
    import onnx

    from cirl.models.checkpoint import (
        build_from_checkpoint,
        file_sha256,
        load_checkpoint,
        zero_subnormal_,
    )

    checkpoint, out = Path(checkpoint), Path(out)
    if out.suffix != ".onnx":
        raise CirlError(f"--out {out}: the exported model's file name must end in .onnx")
    payload = load_checkpoint(checkpoint)
    model = build_from_checkpoint(payload, std_head=False).eval()
    zero_subnormal_(model)  # the deployed model carries no subnormal weights
    stride = int(model.stride)
    wrapper = ProbabilityModel(model).eval()
    report: dict = {
        "model": str(out),
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "params": to_dict(cfg),
        "cirl_version": __version__,
    }
    data = _gate_data(data, payload.get("provenance") or {}, cfg, report)
    calibration = (
        read_threshold_calibration(evaluation, report["checkpoint_sha256"]) if evaluation else None
    )
    report["threshold_calibration"] = calibration
    with staged_file(out, keep_suffix=True) as tmp:
        t0 = time.perf_counter()
        _export_graph(wrapper, cfg, stride, tmp)
        report["export_seconds"] = time.perf_counter() - t0
        proto = onnx.load(str(tmp))
        _rename_dims(proto)
        meta = _metadata(cfg, model, payload, stride, report, calibration)
        _write_checked(proto, meta, tmp)
        diff = parity(tmp, wrapper, cfg, stride)
        report["parity"] = {
            "max_abs_diff": diff,
            "tolerance": cfg.tolerance,
            "input": [
                cfg.check_batch,
                3,
                _round_up(cfg.check_height, stride),
                _round_up(cfg.check_width, stride),
            ],
        }
        if not diff <= cfg.tolerance:
            raise CirlError(
                f"ONNX and PyTorch differ by {diff:.3g} (> tolerance {cfg.tolerance:g}); the "
                "export is not written. Report this model config, or raise --tolerance knowingly"
            )
        entry = proto.metadata_props.add()
        entry.key, entry.value = "parity_max_abs_diff", f"{diff:.3g}"
        onnx.save(proto, str(tmp))
        report["opset"] = cfg.opset
        report["stride"] = stride
        _faster_engines(tmp, out, cfg, data, meta, calibration, report)
    with staged_file(out.with_name(out.name + ".json")) as tmp_report:
        tmp_report.write_text(json.dumps(report, indent=2) + "\n")
    return ExportResult(out, diff, report)


def _metadata(
    cfg: ExportConfig, model: Any, payload: dict, stride: int, report: dict, calibration: Any
) -> dict[str, str]:
    """The model's metadata: its contract, configs, provenance, checkpoint and threshold."""
    meta = {
        "cirl_version": __version__,
        "opset": str(cfg.opset),
        "stride": str(stride),
        "input": "image: float32 (batch, 3, height, width) RGB in [0, 1]; height and width "
        f"multiples of {stride}",
        "output": "prob: float32 (batch, 1, height, width) crack probability (sigmoid "
        "included); crack where prob >= decision_threshold (0.5, the paper's protocol, "
        "when the model records no calibration)",
        "model_config": json.dumps(model.config, sort_keys=True),
        "train_config": json.dumps(payload.get("config"), sort_keys=True),
        "provenance": json.dumps(payload.get("provenance"), sort_keys=True),
        "checkpoint_sha256": report["checkpoint_sha256"],
        "checkpoint_epoch": str(int(payload.get("epoch", -1)) + 1),
        "std_head": "removed",
    }
    if calibration is not None:
        meta["decision_threshold"] = f"{calibration['threshold']:g}"
        meta["threshold_calibration"] = json.dumps(calibration, sort_keys=True)
    return meta


def _write_checked(proto: Any, meta: dict[str, str], path: Path) -> None:
    """``proto`` with exactly ``meta`` as its metadata, checked by onnx.checker, to ``path``."""
    import onnx

    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "cirl"
    proto.producer_version = __version__
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise CirlError(f"exported model fails onnx.checker: {exc}") from None
    onnx.save(proto, str(path))


def _faster_engines(
    tmp: Path, out: Path, cfg: ExportConfig, data: Any, meta: dict, calibration: Any, report: dict
) -> None:
    """The int8 copy (``quantize``) and the accuracy gate's verdicts, in the models' metadata."""
    from cirl.hashing import file_sha256

    if cfg.quantize == "none":
        gate = _gate(tmp, cfg, data, None, report)
        if gate is not None:
            _set_metadata(tmp, {GATE_KEY: json.dumps(gate, sort_keys=True)})
        return
    with staged_file(int8_path(out), keep_suffix=True) as tmp8:
        report["int8"] = _quantize(tmp, tmp8, cfg, data)
        report["int8"]["model"] = str(int8_path(out))
        if calibration is not None:  # the int8 copy decides at the same threshold
            _set_metadata(tmp8, {k: meta[k] for k in CALIBRATION_KEYS})
        gate = _gate(tmp, cfg, data, tmp8, report)
        if gate is not None:
            own = {**gate, "engines": {"onnx-int8": gate["engines"]["onnx-int8"]}}
            _set_metadata(tmp8, {GATE_KEY: json.dumps(own, sort_keys=True)})
            gate["engines"]["onnx-int8"]["file_sha256"] = file_sha256(tmp8)
            _set_metadata(tmp, {GATE_KEY: json.dumps(gate, sort_keys=True)})


def read_threshold_calibration(
    evaluation: str | os.PathLike, checkpoint_sha256: str
) -> dict | None:
    """The calibrated decision threshold ``cirl evaluate`` recorded for this checkpoint.

    Args:
        evaluation: the evaluation folder or its ``metrics.json``.
        checkpoint_sha256: the exported checkpoint's SHA-256; the evaluation must be of it.

    Returns:
        ``threshold``, ``split``, ``images``, ``f1`` (the calibration split's per-image F1 at it)
        and the scored split's per-image F1 at it; None when the evaluation has no calibration
        (``calibrate: none``, or no images in the split).

    Raises:
        CirlError: on a missing or unreadable file, or an evaluation of another checkpoint.
    """
    path = Path(evaluation)
    if path.is_dir():
        path = path / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        raise CirlError(
            f"--evaluation {path}: not found; pass the folder `cirl evaluate --out` wrote"
        ) from None
    except (OSError, ValueError) as exc:
        raise CirlError(f"--evaluation {path}: not readable ({exc}); evaluate again") from None
    scored = (metrics.get("provenance") or {}).get("checkpoint_sha256")
    if scored != checkpoint_sha256:
        raise CirlError(
            f"--evaluation {path} scored another checkpoint (SHA-256 {str(scored)[:12]}, this "
            f"one {checkpoint_sha256[:12]}); evaluate the checkpoint you export"
        )
    calibration = metrics.get("threshold_calibration") or {}
    threshold = calibration.get("threshold")
    if threshold is None:
        return None
    scored_split = calibration.get("scored") or {}
    return {
        "threshold": float(threshold),
        "split": calibration.get("split"),
        "images": calibration.get("images"),
        "f1": calibration.get("f1"),
        "rule": calibration.get("rule"),
        "scored_split": scored_split.get("split"),
        "scored_f1": scored_split.get("f1"),
        "scored_f1_at_0.5": metrics.get("f1"),
    }


# what this module held before it was split, for callers that import it from here
from cirl.deploy.quantize import _calibration_reader  # noqa: E402, F401
