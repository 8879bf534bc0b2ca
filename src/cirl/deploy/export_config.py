"""``cirl export``'s parameters and result, and how values are written into the ONNX model's
metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
