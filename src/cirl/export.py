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

With ``quantize: int8`` a dynamically quantized copy (``NAME.int8.onnx``, weights uint8) is
written too; given a prepared dataset, both models are scored on its split and the F1 change is
recorded in the export report.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from cirl import __version__
from cirl.config import to_dict
from cirl.errors import CirlError
from cirl.staging import staged_file


@dataclass(frozen=True)
class ExportConfig:
    """Parameters of the export (``params.yaml`` group ``export``).

    Attributes:
        opset: ONNX opset version.
        export_size: side of the example input used to capture the graph.
        check_height: height of the parity inputs (not the export size).
        check_width: width of the parity inputs.
        check_batch: batch of the parity inputs (not 1, to exercise the dynamic batch).
        tolerance: largest allowed |onnxruntime - PyTorch| on probabilities.
        quantize: ``none`` or ``int8`` (an extra dynamically quantized model).
        split: split of ``--data`` on which the int8 model's accuracy change is measured.
    """

    opset: int = 18
    export_size: int = 256
    check_height: int = 320
    check_width: int = 448
    check_batch: int = 2
    tolerance: float = 1e-4
    quantize: Literal["none", "int8"] = "none"
    split: Literal["train", "val", "test"] = "test"

    def __post_init__(self) -> None:
        if not 17 <= self.opset <= 23:
            raise ValueError(f"key 'opset' must be in 17..23, got {self.opset}")
        for key in ("export_size", "check_height", "check_width", "check_batch"):
            if getattr(self, key) < 1:
                raise ValueError(f"key {key!r} must be >= 1, got {getattr(self, key)}")
        if self.tolerance <= 0:
            raise ValueError(f"key 'tolerance' must be > 0, got {self.tolerance}")
        if self.split not in ("train", "val", "test"):
            raise ValueError(f"key 'split' must be train, val or test, got {self.split!r}")


@dataclass(frozen=True)
class ExportResult:
    """What the export wrote and measured."""

    out: Path
    parity_max_abs_diff: float
    report: dict


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


def _score(engine, data: Path, split: str) -> dict:
    """Per-image mean F1 at 0.5 (paper protocol) of an engine on a split, and seconds taken."""
    from cirl.data.tiles import TileDataset
    from cirl.metrics import SegmentationMetrics

    metrics = SegmentationMetrics()
    dataset = TileDataset(data, split)
    seconds = 0.0
    for item in dataset:
        image = item["image"][None].numpy()
        h, w = image.shape[-2:]
        ph, pw = (-h) % engine.stride, (-w) % engine.stride
        if ph or pw:
            image = np.pad(image, ((0, 0), (0, 0), (0, ph), (0, pw)))
        t0 = time.perf_counter()
        prob = engine(image)[0, 0, :h, :w]
        seconds += time.perf_counter() - t0
        metrics.add(
            item["tile_id"], np.clip(prob, 0, 1), item["mask"][0].numpy(), item["valid"][0].numpy()
        )
    summary = metrics.summary()
    return {
        "f1": summary["f1"],
        "ods": summary["ods"]["f1"],
        "ap": summary["ap"],
        "images": summary["images"],
        "seconds": seconds,
    }


def run(
    cfg: ExportConfig,
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    data: str | os.PathLike | None = None,
) -> ExportResult:
    """Export ``checkpoint`` to ``out`` (``.onnx``), check it, and write it atomically.

    Args:
        cfg: the stage's parameters.
        checkpoint: a ``cirl train`` checkpoint.
        out: the ONNX file to write (a report ``OUT.json`` is written beside it).
        data: optional prepared folder: with ``quantize: int8`` both models are scored on its
            ``cfg.split`` and the accuracy change is reported.

    Returns:
        The path, the parity and the report.

    Raises:
        CirlError: on a bad checkpoint, a failed check or parity above the tolerance (nothing
            is written then).
    """
    import onnx

    from cirl.checkpoint import (
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
    with staged_file(out) as tmp:
        t0 = time.perf_counter()
        _export_graph(wrapper, cfg, stride, tmp)
        report["export_seconds"] = time.perf_counter() - t0
        proto = onnx.load(str(tmp))
        _rename_dims(proto)
        meta = {
            "cirl_version": __version__,
            "opset": str(cfg.opset),
            "stride": str(stride),
            "input": "image: float32 (batch, 3, height, width) RGB in [0, 1]; height and width "
            f"multiples of {stride}",
            "output": "prob: float32 (batch, 1, height, width) crack probability (sigmoid "
            "included); threshold 0.5 as in training and evaluation",
            "model_config": json.dumps(model.config, sort_keys=True),
            "train_config": json.dumps(payload.get("config"), sort_keys=True),
            "provenance": json.dumps(payload.get("provenance"), sort_keys=True),
            "checkpoint_sha256": report["checkpoint_sha256"],
            "checkpoint_epoch": str(int(payload.get("epoch", -1)) + 1),
            "std_head": "removed",
        }
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
        onnx.save(proto, str(tmp))
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
    if cfg.quantize == "int8":
        report["int8"] = _quantize(out, cfg, data)
    with staged_file(out.with_name(out.name + ".json")) as tmp_report:
        tmp_report.write_text(json.dumps(report, indent=2) + "\n")
    return ExportResult(out, diff, report)


def _quantize(out: Path, cfg: ExportConfig, data: str | os.PathLike | None) -> dict:
    """Write ``NAME.int8.onnx`` (dynamic quantization) and measure what it changes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from cirl.engine import OnnxEngine

    target = out.with_name(out.stem + ".int8.onnx")
    with staged_file(target) as tmp:
        quantize_dynamic(
            str(out),
            str(tmp),
            weight_type=QuantType.QUInt8,
            op_types_to_quantize=["Conv", "ConvTranspose", "MatMul"],
        )
    info: dict = {
        "model": str(target),
        "method": "onnxruntime quantize_dynamic, uint8 weights and activations (Conv, "
        "ConvTranspose, MatMul)",
        "bytes": target.stat().st_size,
        "fp32_bytes": out.stat().st_size,
    }
    if data is not None:
        fp32 = _score(OnnxEngine(out, device="cpu"), Path(data), cfg.split)
        int8 = _score(OnnxEngine(target, device="cpu"), Path(data), cfg.split)
        info["accuracy"] = {
            "split": cfg.split,
            "protocol": "per-image mean F1 at 0.5 (JTFN), ODS and AP, whole tiles",
            "fp32": fp32,
            "int8": int8,
            "f1_change": int8["f1"] - fp32["f1"],
            "speed_ratio_int8_over_fp32": fp32["seconds"] / int8["seconds"],
        }
    return info
