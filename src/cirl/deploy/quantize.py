"""``cirl export --quantize static``: the int8 copy of the model, calibrated on the prepared
data's training tiles, and the accuracy gate's data and verdicts written into the model.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from cirl.deploy.export_config import ExportConfig, _set_metadata
from cirl.deploy.gate import GATE_KEY
from cirl.errors import CirlError


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
