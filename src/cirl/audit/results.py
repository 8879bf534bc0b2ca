"""What an audit finds: its settings, each difference, and the results of verify, retrain and
the whole audit (JSON-able through ``to_dict``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class AuditConfig:
    """Parameters of a model audit (``params.yaml`` group ``audit``).

    Attributes:
        tolerance: largest absolute difference between a recorded test score and the
            registered weights re-evaluated (``--verify``; also the retrained scores when the
            weights are bit-identical). Same weights, files and code on the same kind of
            device give the same floats (scores are stored with repr): 1e-6 is far above
            rounding (~1e-15) and below what one changed pixel moves a mean F1 by on a test
            split of up to a few hundred images.
        onnx_tolerance: largest absolute difference of crack probability allowed between the
            registered ONNX model and the registered PyTorch weights on the test split (the
            parity bound ``cirl export`` enforces, 1e-4 for fp32).
        onnx: also run the registered ONNX model on the test split (``--verify``).
        retrain_tolerance: largest absolute difference of test F1 allowed between the
            retrained model and the registered one (``--retrain``). Bit-identical weights give
            0; on another CPU type, thread count or a GPU the weights drift, and one F1 point
            (0.01) is a judgement: a retrain that misses the model's quality fails, drift
            passes. Set it from the seed-to-seed spread of your own schedule.
        device: ``auto``, ``cpu`` or ``cuda`` for re-evaluation and retraining (replaces the
            recorded device; the report names both).
    """

    tolerance: float = 1e-6
    onnx_tolerance: float = 1e-4
    onnx: bool = True
    retrain_tolerance: float = 0.01
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        for key in ("tolerance", "onnx_tolerance", "retrain_tolerance"):
            value = getattr(self, key)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"key {key!r} must be a number >= 0, got {value}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"key 'device' must be auto, cpu or cuda, got {self.device!r}")


@dataclass(frozen=True)
class Difference:
    """One finding that fails an audit.

    ``kind`` is ``data`` (a file or the manifest), ``model`` (weights, hashes, the ONNX file),
    ``metric`` (a test score), ``weights`` (a retrained tensor) or ``lineage`` (records that
    disagree with each other); ``what`` names the file, hash, tensor or score.
    """

    kind: str
    what: str
    expected: str
    found: str

    def line(self) -> str:
        """One line for a terminal: ``metric test.f1: expected 0.61, found 0.59``."""
        return f"{self.kind} {self.what}: expected {self.expected}, found {self.found}"


class _Findings:
    """What verify and retrain share: they pass when nothing differs."""

    differences: list[Difference]

    @property
    def ok(self) -> bool:
        """True when nothing differs."""
        return not self.differences

    def to_dict(self) -> dict:
        """JSON-able content."""
        return {**dataclasses.asdict(self), "ok": self.ok}


@dataclass
class VerifyResult(_Findings):
    """What :func:`verify` checked and what differed (empty ``differences``: all agree)."""

    data: str
    files_checked: int = 0
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    onnx: dict[str, Any] | None = None
    checks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    tolerance: float = 0.0
    seconds: float = 0.0


@dataclass
class RetrainResult(_Findings):
    """What :func:`retrain` reproduced and what differed."""

    workdir: str
    data: str
    code: dict[str, Any] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    tolerance: float = 0.0
    seconds: float = 0.0

    @property
    def weights_identical(self) -> bool:
        """Whether the retrained weights equal the registered ones bit for bit."""
        return bool(self.weights.get("identical"))


@dataclass(frozen=True)
class AuditResult:
    """The audit: lineage, the optional checks, the report files."""

    lineage: dict
    verify: VerifyResult | None
    retrain: RetrainResult | None
    markdown: str
    paths: tuple[Path, ...]

    @property
    def differences(self) -> list[Difference]:
        """Every difference found by verify and retrain."""
        return [
            *(self.verify.differences if self.verify else []),
            *(self.retrain.differences if self.retrain else []),
        ]

    @property
    def ok(self) -> bool:
        """True when the checks that ran found nothing."""
        return not self.differences
