"""The accuracy gate of the faster engines, and the choice of engine on this machine.

An engine other than the fp32 reference (onnxruntime on the exported ``.onnx``) computes the
same model differently: OpenVINO fuses and reorders, bf16 rounds activations to 8 mantissa
bits, the static int8 copy rounds weights and activations to 256 levels. Whether that changes
what the model finds is measured, not hoped for:

* :func:`run_gate` (``cirl export`` with a prepared folder) scores the reference and every
  candidate engine on one split of that folder (the validation split by default, the one
  recorded with the model) with the evaluation protocol (per-image F1 at 0.5, ODS, AP; whole
  tiles); a candidate **passes** when each of the three stays within ``tolerance`` (0.005) of
  the reference. The result goes into the model's ONNX metadata (key ``accuracy_gate``), and
  the int8 copy's own result into its metadata too.
* :func:`gate_status` reads it back; ``cirl predict`` refuses a low-precision engine (int8,
  bf16) whose gate failed or never ran, unless forced.
* :func:`choose_engine` (``cirl predict --engine auto``) times the reference and every engine
  that passed, on this machine, at the prediction's tile size and batch, and takes the fastest.
  The choice and its timings are cached per model file, machine and setting
  (``$XDG_CACHE_HOME/cirl/engine-choice.json``), so the timing runs once per machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from cirl.errors import CirlError
from cirl.hashing import file_sha256

log = logging.getLogger(__name__)

GATE_KEY = "accuracy_gate"
CACHE = "engine-choice.json"  # in $XDG_CACHE_HOME/cirl (cirl.host)
METRICS: tuple[str, ...] = ("f1", "ods", "ap")
PROTOCOL = (
    "per-image mean F1 at threshold 0.5 (the paper's protocol), ODS F1 and AP (pooled PR curve), "
    "whole tiles; a candidate passes when each is within the tolerance of the onnxruntime fp32 "
    "reference on the same split"
)


def score(engine, data: str | os.PathLike, split: str, keep: bool = False) -> dict:
    """F1 (per image, 0.5), ODS and AP of an engine on a split of a prepared folder.

    Args:
        engine: a :mod:`cirl.deploy.engine` engine.
        data: the prepared folder.
        split: ``train``, ``val`` or ``test``.
        keep: also return the probabilities (``"probs"``: tile id -> ``(H, W)`` float32).

    Returns:
        ``f1``, ``ods``, ``ap``, ``images``, ``seconds`` (inference only).
    """
    from cirl.data.tiles import TileDataset
    from cirl.method.metrics import SegmentationMetrics

    metrics = SegmentationMetrics()
    dataset = TileDataset(data, split)
    if len(dataset) == 0:
        raise CirlError(
            f"{data}: split {split!r} has no tiles; the accuracy gate needs a split to score on "
            "(choose another with --split)"
        )
    seconds = 0.0
    probs: dict[str, np.ndarray] = {}
    for item in dataset:
        image = item["image"][None].numpy()
        h, w = image.shape[-2:]
        ph, pw = (-h) % engine.stride, (-w) % engine.stride
        if ph or pw:
            image = np.pad(image, ((0, 0), (0, 0), (0, ph), (0, pw)))
        t0 = time.perf_counter()
        prob = np.clip(engine(image)[0, 0, :h, :w], 0, 1)
        seconds += time.perf_counter() - t0
        metrics.add(item["tile_id"], prob, item["mask"][0].numpy(), item["valid"][0].numpy())
        if keep:
            probs[item["tile_id"]] = prob
    summary = metrics.summary()
    result = {
        "f1": summary["f1"],
        "ods": summary["ods"]["f1"],
        "ap": summary["ap"],
        "images": summary["images"],
        "seconds": seconds,
    }
    if keep:
        result["probs"] = probs
    return result


def machine() -> str:
    """This machine's CPU, in words (the gate's speeds and the engine choice depend on it)."""
    from cirl.host import cpu

    here = cpu()
    ident = f" ({here['cpu_id']})" if here["cpu_id"] else ""
    return f"{here['cpu']}{ident}, {here['logical_cores']} logical cores"


def _candidates(int8: Path | None) -> dict[str, object]:
    """Engine name -> how to open it, or the reason it is not gated here."""
    from cirl.deploy.engine import cpu_has_bf16

    found: dict[str, object] = {}
    if int8 is not None:
        found["onnx-int8"] = int8
    found["openvino"] = "fp32"
    found["openvino-bf16"] = "bf16" if cpu_has_bf16() else "this CPU has no bf16 arithmetic"
    return found


def run_gate(
    model: str | os.PathLike,
    data: str | os.PathLike,
    split: str = "val",
    tolerance: float = 0.005,
    int8: str | os.PathLike | None = None,
) -> dict:
    """Score the fp32 reference and each candidate engine on ``split`` of ``data``.

    Args:
        model: the fp32 ``.onnx`` file (the reference and the OpenVINO candidates).
        data: a prepared folder.
        split: the split to score (``val``: never the test split the model is reported on).
        tolerance: largest allowed |candidate - reference| of F1, ODS and AP.
        int8: the quantized copy, when there is one (candidate ``onnx-int8``).

    Returns:
        The gate's record (JSON-able): reference scores, and per engine its scores, the
        differences, the largest probability difference, the time per image and ``passed``
        (or ``skipped`` with the reason).
    """
    from cirl.deploy.engine import OnnxEngine, OpenVinoEngine
    from cirl.models.inference import subnormals_as_zero

    if not tolerance > 0:
        raise CirlError(f"gate tolerance must be > 0, got {tolerance}")
    manifest = Path(data) / "manifest.csv"
    record: dict = {
        "reference": "onnx",
        "split": split,
        "data": str(data),
        "manifest_sha256": file_sha256(manifest) if manifest.is_file() else None,
        "tolerance": tolerance,
        "protocol": PROTOCOL,
        "machine": machine(),
        "engines": {},
    }
    with subnormals_as_zero():
        reference = score(OnnxEngine(model, device="cpu"), data, split, keep=True)
        ref_probs = reference.pop("probs")
        record["reference_scores"] = reference
        for name, how in _candidates(Path(int8) if int8 else None).items():
            if isinstance(how, str) and how not in ("fp32", "bf16"):
                record["engines"][name] = {"skipped": how, "passed": None}
                continue
            if name == "onnx-int8":
                engine = OnnxEngine(how, device="cpu")
            else:
                engine = OpenVinoEngine(model, precision=str(how))
            got = score(engine, data, split, keep=True)
            probs = got.pop("probs")
            diff = max(float(np.abs(probs[k] - ref_probs[k]).max()) for k in ref_probs)
            deltas = {k: got[k] - reference[k] for k in METRICS}
            entry = {
                **got,
                "delta": deltas,
                "max_abs_prob_diff": diff,
                "speed_vs_reference": reference["seconds"] / got["seconds"]
                if got["seconds"] > 0
                else None,
                "passed": all(abs(d) <= tolerance for d in deltas.values()),
            }
            if name == "onnx-int8":
                entry["file"] = Path(how).name
            record["engines"][name] = entry
            log.info(
                "gate %s: F1 %+.4f ODS %+.4f AP %+.4f vs fp32 -> %s",
                name,
                deltas["f1"],
                deltas["ods"],
                deltas["ap"],
                "pass" if entry["passed"] else "FAIL",
            )
    return record


def gate_status(metadata: dict[str, str], engine: str) -> dict:
    """The gate's verdict on ``engine`` from a model's metadata.

    Returns:
        ``{"passed": True|False|None, "reason": str}``; ``None`` when the gate never ran for
        this engine (no ``--data`` at export, or not available on the exporting machine).
    """
    raw = metadata.get(GATE_KEY)
    if not raw:
        return {
            "passed": None,
            "reason": "the model carries no accuracy gate: export it with --data PREPARED "
            "(the folder it was trained on) to run it",
        }
    gate = json.loads(raw)
    entry = gate.get("engines", {}).get(engine)
    if entry is None or entry.get("passed") is None:
        why = entry.get("skipped") if entry else "it was not among the gated engines"
        return {"passed": None, "reason": f"the gate did not run {engine}: {why}"}
    worst = max(METRICS, key=lambda k: abs(entry["delta"][k]))
    reason = (
        f"on {gate['split']} of {gate['data']}: {worst} differs from fp32 by "
        f"{entry['delta'][worst]:+.4f} (tolerance {gate['tolerance']:g})"
    )
    return {"passed": bool(entry["passed"]), "reason": reason}


def check_gate(opened, path: Path, force: bool) -> None:
    """Refuse a low-precision engine the model's accuracy gate did not pass, unless forced."""
    from cirl.deploy.engine import GATED, LOW_PRECISION

    if opened.name not in GATED:
        return
    status = gate_status(opened.metadata, opened.name)
    opened.description["gate"] = status
    if status["passed"]:
        return
    if status["passed"] is None and opened.name not in LOW_PRECISION:
        log.warning("%s with %s: %s", path, opened.name, status["reason"])
        return
    verdict = "failed" if status["passed"] is False else "has not passed"
    if force:
        log.warning(
            "%s: %s %s the accuracy gate (%s); used anyway (--force)",
            path,
            opened.name,
            verdict,
            status["reason"],
        )
        opened.description["gate"]["forced"] = True
        return
    raise CirlError(
        f"{path}: engine {opened.name} {verdict} the accuracy gate ({status['reason']}); use "
        "--engine onnx or auto, re-export with --data to gate it, or pass --force to use it "
        "anyway"
    )


def _time_engine(engine, tile: int, batch: int, repeats: int) -> float:
    """Median seconds per tile of ``engine`` on a seeded ``(batch, 3, tile, tile)`` input."""
    x = np.random.default_rng(0).random((batch, 3, tile, tile), dtype=np.float32)
    for _ in range(2):  # warm-up: compilation, allocation (onnxruntime settles on the 2nd)
        engine(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) / batch


def passed_engines(model: Path, metadata: dict[str, str]) -> list[str]:
    """The gated engines this model may use on this machine without forcing."""
    from cirl.deploy.engine import GATED, cpu_has_bf16, int8_path

    found = []
    for name in GATED:
        if not gate_status(metadata, name)["passed"]:
            continue
        if name == "onnx-int8":
            int8 = int8_path(model)
            gate = json.loads(metadata[GATE_KEY])
            recorded = gate["engines"][name].get("file_sha256")
            if not int8.is_file() or (recorded and file_sha256(int8) != recorded):
                continue
        if name == "openvino-bf16" and not cpu_has_bf16():
            continue
        found.append(name)
    return found


def choose_engine(
    model: str | os.PathLike, tile: int, batch: int, threads: int = 0, repeats: int = 3
) -> dict:
    """The fastest engine for ``model`` on this machine among the reference and those that
    passed its gate, timed at the prediction's tile and batch (cached).

    Returns:
        ``engine`` (its name), ``why`` (one sentence), ``ms_per_tile`` per engine timed,
        ``machine``, ``cached`` (whether the timing was reused).
    """
    from cirl.deploy.engine import read_metadata

    model = Path(model)
    metadata = read_metadata(model)
    if "quantization" in metadata:
        return {
            "engine": "onnx-int8",
            "why": "the model is a quantized copy: onnxruntime runs it",
            "cached": False,
        }
    candidates = ["onnx", *passed_engines(model, metadata)]
    if len(candidates) == 1:
        status = gate_status(metadata, "openvino")
        return {
            "engine": "onnx",
            "why": "no faster engine has passed the accuracy gate for this model ("
            + status["reason"]
            + ")",
            "cached": False,
        }
    key_parts = {
        "model_sha256": file_sha256(model),
        "candidates": candidates,
        "tile": tile,
        "batch": batch,
        "threads": threads,
        "machine": machine(),
        "versions": _versions(),
    }
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()
    from cirl import host

    known = host.recall(CACHE, key)
    if known is not None:
        return {**known, "cached": True}
    from cirl.deploy.engine import check_contract, open_file
    from cirl.models.inference import subnormals_as_zero

    timings = {}
    with subnormals_as_zero():
        for name in candidates:
            # the reference and engines that passed the gate: opened without its check
            engine = open_file(model, name, threads, "cpu")
            check_contract(engine, model)
            timings[name] = 1000 * _time_engine(engine, tile, batch, repeats)
            del engine
    best = min(timings, key=timings.get)
    choice = {
        "engine": best,
        "why": f"fastest on this machine of the fp32 reference and the engines that passed the "
        f"accuracy gate ({', '.join(f'{k} {v:.0f} ms' for k, v in timings.items())} per "
        f"{tile}x{tile} tile at batch {batch})",
        "ms_per_tile": timings,
        "machine": key_parts["machine"],
    }
    host.keep(CACHE, key, choice, "the engine choice")
    return {**choice, "cached": False}


def _versions() -> dict[str, str]:
    import onnxruntime
    import openvino

    return {"onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__}
