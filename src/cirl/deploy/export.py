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
from cirl.deploy.engine import int8_path
from cirl.deploy.gate import GATE_KEY
from cirl.errors import CirlError
from cirl.staging import staged_file

CALIBRATION_KEYS = ("decision_threshold", "threshold_calibration")
"""The metadata of the calibrated decision threshold (``cirl export --evaluation``)."""


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
        quantize: ``none``, ``static`` (an int8 copy calibrated on training tiles) or
            ``dynamic`` (an int8 copy quantized at run time).
        split: split of the prepared folder the accuracy gate scores (``val``: the test split
            stays for the model's report).
        gate: run the accuracy gate when a prepared folder is known.
        gate_tolerance: largest allowed |engine - fp32| of F1, ODS and AP for an engine to pass.
        calibration_tiles: training tiles that calibrate the static int8 copy.
    """

    opset: int = 18
    export_size: int = 256
    check_height: int = 320
    check_width: int = 448
    check_batch: int = 2
    tolerance: float = 1e-4
    quantize: Literal["none", "static", "dynamic"] = "none"
    split: Literal["train", "val", "test"] = "val"
    gate: bool = True
    gate_tolerance: float = 0.005
    calibration_tiles: int = 32

    def __post_init__(self) -> None:
        if not 17 <= self.opset <= 23:
            raise ValueError(f"key 'opset' must be in 17..23, got {self.opset}")
        for key in ("export_size", "check_height", "check_width", "check_batch"):
            if getattr(self, key) < 1:
                raise ValueError(f"key {key!r} must be >= 1, got {getattr(self, key)}")
        if self.tolerance <= 0:
            raise ValueError(f"key 'tolerance' must be > 0, got {self.tolerance}")
        if self.quantize not in ("none", "static", "dynamic"):
            raise ValueError(
                f"key 'quantize' must be none, static or dynamic, got {self.quantize!r}"
                + (
                    " (int8 is now 'dynamic'; 'static' is faster)"
                    if self.quantize == "int8"
                    else ""
                )
            )
        if not 0 < self.gate_tolerance < 1:
            raise ValueError(f"key 'gate_tolerance' must be in (0, 1), got {self.gate_tolerance}")
        if self.calibration_tiles < 1:
            raise ValueError(f"key 'calibration_tiles' must be >= 1, got {self.calibration_tiles}")
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
        if cfg.quantize != "none":
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
        else:
            gate = _gate(tmp, cfg, data, None, report)
            if gate is not None:
                _set_metadata(tmp, {GATE_KEY: json.dumps(gate, sort_keys=True)})
    with staged_file(out.with_name(out.name + ".json")) as tmp_report:
        tmp_report.write_text(json.dumps(report, indent=2) + "\n")
    return ExportResult(out, diff, report)


def _gate_data(
    data: str | os.PathLike | None, provenance: dict, cfg: ExportConfig, report: dict
) -> Path | None:
    """The prepared folder of the gate and the calibration: ``--data``, else the checkpoint's."""
    from cirl.hashing import file_sha256

    recorded = provenance.get("data")
    if data is not None:
        data = Path(data)
        if not (data / "manifest.csv").is_file():
            raise CirlError(
                f"--data {data}: no manifest.csv; pass a folder written by `cirl prepare`"
            )
        if recorded and provenance.get("manifest_sha256") not in (
            None,
            file_sha256(data / "manifest.csv"),
        ):
            report["gate_data_note"] = (
                f"--data {data} is not the dataset the model was trained on ({recorded}); the "
                "gate scores it anyway"
            )
        return data
    if not (cfg.gate or cfg.quantize == "static") or not recorded:
        return None
    folder = Path(recorded)
    manifest = folder / "manifest.csv"
    if manifest.is_file() and file_sha256(manifest) == provenance.get("manifest_sha256"):
        report["gate_data"] = f"the training data recorded in the checkpoint: {folder}"
        return folder
    report["gate_data"] = (
        f"the training data recorded in the checkpoint ({folder}) is not here or has changed; "
        "pass --data PREPARED to run the accuracy gate"
    )
    return None


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


def _set_metadata(path: Path, values: dict[str, str]) -> None:
    """Add or replace ``metadata_props`` entries of an ONNX file in place."""
    import onnx

    proto = onnx.load(str(path))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    for key, value in [*kept, *values.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def _gate(model: Path, cfg: ExportConfig, data: Path | None, int8: Path | None, report: dict):
    """Run the accuracy gate if asked and possible; record it in the report."""
    from cirl.deploy.gate import run_gate

    if not cfg.gate:
        report["accuracy_gate"] = {"skipped": "gate: false"}
        return None
    if data is None:
        report["accuracy_gate"] = {
            "skipped": "no prepared folder: pass --data PREPARED (the folder the model was "
            "trained on) so faster engines can be used by `cirl predict`"
        }
        return None
    t0 = time.perf_counter()
    gate = run_gate(model, data, cfg.split, cfg.gate_tolerance, int8)
    gate["seconds"] = time.perf_counter() - t0
    report["accuracy_gate"] = gate
    return gate


def _calibration_reader(data: Path, count: int, stride: int):
    """Feeds ``count`` training tiles, evenly spaced over the sorted split, to the calibrator.

    Tiles larger than 1024 px a side are centre-cropped to 1024 (ranges, not layout, matter).
    """
    from onnxruntime.quantization import CalibrationDataReader

    from cirl.data.tiles import TileDataset

    dataset = TileDataset(data, "train")
    if len(dataset) == 0:
        raise CirlError(
            f"{data}: no training tiles to calibrate the static int8 model on; pass the "
            "prepared folder the model was trained on as --data"
        )
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round())

    class Tiles(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(picks.astype(int).tolist())

        def get_next(self):
            index = next(self.items, None)
            if index is None:
                return None
            image = dataset[index]["image"].numpy()
            h, w = (min(side, 1024) // stride * stride for side in image.shape[-2:])
            top, left = (image.shape[-2] - h) // 2, (image.shape[-1] - w) // 2
            return {"image": np.ascontiguousarray(image[None, :, top : top + h, left : left + w])}

    return Tiles(), len(picks)


def _quantize(fp32: Path, target: Path, cfg: ExportConfig, data: Path | None) -> dict:
    """Write the int8 copy of ``fp32`` to ``target`` (static or dynamic) and describe it."""
    import logging
    import warnings

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from cirl.deploy.engine import read_metadata

    stride = int(read_metadata(fp32)["stride"])
    t0 = time.perf_counter()
    if cfg.quantize == "static":
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        if data is None:
            raise CirlError(
                "--quantize static calibrates on training tiles: pass --data PREPARED (the "
                "folder the model was trained on), or use --quantize dynamic"
            )
        reader, tiles = _calibration_reader(data, cfg.calibration_tiles, stride)
        pre = target.with_name(target.name + ".pre.onnx")
        level = logging.getLogger().level
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                logging.getLogger().setLevel(logging.ERROR)  # quantizer's per-bias chatter
                # symbolic shape inference cannot follow the dynamic height and width; ONNX's
                # own shape inference and the graph optimisation still run
                quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
                quantize_static(
                    str(pre),
                    str(target),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                )
        finally:
            logging.getLogger().setLevel(level)
            pre.unlink(missing_ok=True)
        method = {
            "method": "static",
            "tool": "onnxruntime.quantization.quantize_static, QDQ",
            "weights": "int8, per output channel",
            "activations": "uint8, ranges by MinMax calibration",
            "calibration": {"data": str(data), "split": "train", "tiles": tiles},
        }
    else:
        quantize_dynamic(
            str(fp32),
            str(target),
            weight_type=QuantType.QUInt8,
            op_types_to_quantize=["Conv", "ConvTranspose", "MatMul"],
        )
        method = {
            "method": "dynamic",
            "tool": "onnxruntime.quantization.quantize_dynamic",
            "weights": "uint8",
            "activations": "uint8, quantized at run time",
        }
    fp32_meta = read_metadata(fp32)
    carried = {k: v for k, v in fp32_meta.items() if k != GATE_KEY}
    _set_metadata(target, {**carried, "quantization": json.dumps(method, sort_keys=True)})
    return {
        **method,
        "seconds": time.perf_counter() - t0,
        "bytes": target.stat().st_size,
        "fp32_bytes": fp32.stat().st_size,
    }
