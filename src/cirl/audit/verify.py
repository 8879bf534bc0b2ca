"""``cirl audit --verify``: the records checked against the files, the registered weights
scored again, the registered ONNX model run beside them.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from cirl.audit.checks import (
    _chain_differences,
    _check_files,
    _compare_scores,
    _eval_config,
    _registered_weights,
    _scores,
    _tensors_differ,
    locate_data,
)
from cirl.audit.record import _store, _tracking
from cirl.audit.results import AuditConfig, Difference, VerifyResult
from cirl.lineage.tracking import TrackingConfig


class _OnnxCheck:
    """The registered ONNX model run beside the re-evaluation: each tile's probabilities from
    the registered weights (the evaluation's own, not a second PyTorch pass) against ONNX's."""

    def __init__(self, record: dict, cfg: AuditConfig, store: str, folder: Path) -> None:
        from cirl.deploy.engine import OnnxEngine
        from cirl.lineage.fetch import fetch_model
        from cirl.method.metrics import SegmentationMetrics

        uri = f"models:/{record['name']}/{record['version']}"
        self.fetched = fetch_model(uri, store, folder / "onnx")
        self.engine = OnnxEngine(self.fetched.path, device=cfg.device)
        self.cfg = cfg
        self.differences: list[Difference] = []
        recorded = record["model"].get("checkpoint_sha256")
        in_file = self.engine.description.get("checkpoint_sha256")
        if in_file != recorded:
            self.differences.append(
                Difference(
                    "model",
                    f"checkpoint_sha256 in {self.fetched.path.name}",
                    str(recorded),
                    str(in_file),
                )
            )
        params = record["evaluation"].get("params") or {}
        self.metrics = SegmentationMetrics(
            float(params.get("threshold", 0.5)), 9, 0.0, float(params.get("empty_f1", 0.0))
        )
        self.largest = 0.0

    def __call__(self, item: dict, want: Any) -> None:
        import numpy as np

        image = item["image"][None].numpy()
        h, w = image.shape[-2:]
        stride = self.engine.stride
        padded = np.pad(image, ((0, 0), (0, 0), (0, (-h) % stride), (0, (-w) % stride)))
        got = self.engine(padded)[0, 0, :h, :w]
        self.largest = max(self.largest, float(np.abs(got - want).max()))
        self.metrics.add(
            item["tile_id"],
            np.clip(got, 0, 1),
            item["mask"][0].numpy() > 0.5,
            item["valid"][0].numpy() > 0.5,
        )

    def result(self) -> tuple[dict[str, Any], list[Difference]]:
        differences = list(self.differences)
        if not self.largest <= self.cfg.onnx_tolerance:
            differences.append(
                Difference(
                    "model",
                    f"ONNX model {self.fetched.path.name} vs checkpoint/model_state.pt "
                    "(max |prob diff|)",
                    f"<= {self.cfg.onnx_tolerance:g}",
                    f"{self.largest:.3g}",
                )
            )
        return {
            "file": self.fetched.path.name,
            "max_abs_prob_diff": self.largest,
            "tolerance": self.cfg.onnx_tolerance,
            "f1": self.metrics.summary()["f1"],
        }, differences


def verify(
    record: dict,
    cfg: AuditConfig,
    data: str | os.PathLike | None = None,
    tracking: TrackingConfig | None = None,
    workdir: str | os.PathLike | None = None,
    progress: bool = False,
) -> VerifyResult:
    """Check a model's records against the data and the weights (``cirl audit --verify``).

    Checks, each difference collected (nothing stops at the first):

    1. the prepared folder's manifest SHA-256 against the recorded ``test.manifest_sha256``, and
       every file of every tile (all splits) against the manifest's SHA-256 columns;
    2. the stage runs of the chain all read that manifest;
    3. the registered evaluation scored the recorded checkpoint (``cirl.checkpoint_sha256``),
       the registered weights (``checkpoint/model_state.pt``) hold the recorded model config,
       and, where the original checkpoint file is still here, its hash and tensors match;
    4. the registered weights re-evaluated on the recorded split (the recorded evaluation
       parameters, ``cfg.device``) give the recorded test scores within ``cfg.tolerance``;
    5. with ``cfg.onnx``: the registered ONNX file names the same checkpoint and its
       probabilities stay within ``cfg.onnx_tolerance`` of the weights' on that split.

    Args:
        record: from :func:`lineage`.
        cfg: tolerances and device.
        data: the prepared folder to use instead of the recorded one.
        tracking: the store the record came from.
        workdir: where data may be prepared again (:func:`locate_data`); None: not at all.
        progress: progress bar of the re-evaluation.

    Raises:
        CirlError: when the data cannot be found (with how to fetch it) or the store fails.
    """
    from cirl.method import evaluate
    from cirl.models.checkpoint import load_checkpoint

    t0 = time.perf_counter()
    tracking = _tracking(tracking)
    folder = locate_data(record, data, workdir, tracking)
    result = VerifyResult(data=str(folder), tolerance=cfg.tolerance)
    if data is None and str(folder) != str(record["data"].get("path")):
        result.notes.append(
            f"the recorded folder {record['data'].get('path')} is not here: prepared again "
            f"into {folder}"
        )
    result.files_checked, found = _check_files(folder, record)
    result.differences += found
    result.checks.append(
        f"manifest SHA-256 and {result.files_checked} tile files of {folder} against the manifest"
    )
    result.differences += _chain_differences(record)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        weights = _registered_weights(record, tracking, scratch)
        if weights is None:
            result.differences.append(
                Difference(
                    "model",
                    f"checkpoint/model_state.pt of run {record['model']['run_id']}",
                    "the registered weights",
                    "missing (registered without --checkpoint): nothing to re-evaluate",
                )
            )
            result.seconds = time.perf_counter() - t0
            return result
        payload = load_checkpoint(weights)
        _check_weights(record, payload, result)
        split = record["data"].get("split") or "test"
        onnx = None
        if cfg.onnx:
            _, store = _store(record["uri"], tracking)
            onnx = _OnnxCheck(record, cfg, store, scratch)
        summary = evaluate.run(
            _eval_config(record, cfg),
            folder,
            weights,
            scratch / "evaluation",
            progress=progress,
            on_tile=onnx,
        )
        result.metrics, found = _compare_scores(record["metrics"], _scores(summary), cfg.tolerance)
        result.differences += found
        result.checks.append(
            f"registered weights re-evaluated on the {split} split ({summary['images']} images, "
            f"device {cfg.device}): every test score within {cfg.tolerance:g}"
        )
        if onnx is not None:
            result.onnx, found = onnx.result()
            result.differences += found
            result.checks.append(
                f"registered ONNX model vs registered weights on the {split} split: max |prob "
                f"diff| {result.onnx['max_abs_prob_diff']:.3g} (<= {cfg.onnx_tolerance:g}); ONNX "
                f"F1 {result.onnx['f1']:.6g} (reported, not checked)"
            )
    result.seconds = time.perf_counter() - t0
    return result


def _check_weights(record: dict, payload: dict, result: VerifyResult) -> None:
    """The registered weights against the recorded model config and, where the original
    checkpoint file is still here, against its hash and tensors."""
    from cirl.hashing import file_sha256
    from cirl.models.checkpoint import load_checkpoint

    recorded_sha = record["model"].get("checkpoint_sha256")
    if record["model"].get("model_config") not in (None, payload["model_config"]):
        result.differences.append(
            Difference(
                "model",
                "model config of checkpoint/model_state.pt",
                json.dumps(record["model"]["model_config"], sort_keys=True),
                json.dumps(payload["model_config"], sort_keys=True),
            )
        )
    original = record["model"].get("checkpoint")
    if not (original and Path(original).is_file()):
        result.notes.append(
            f"the original checkpoint {original or '(path not recorded)'} is not here: the "
            "registered weights are checked through the scores they give"
        )
        return
    sha = file_sha256(original)
    if sha != recorded_sha:
        result.differences.append(Difference("model", original, str(recorded_sha), sha))
    else:
        differ, largest = _tensors_differ(load_checkpoint(original)["model"], payload["model"])
        if differ:
            result.differences.append(
                Difference(
                    "model",
                    f"tensors {', '.join(differ[:5])} of checkpoint/model_state.pt",
                    f"equal to {original}",
                    f"max |diff| {largest:.3g}",
                )
            )
    result.checks.append(f"the original checkpoint {original}: SHA-256 and tensors")
