"""Inference engines against onnxruntime fp32: per tile, their accuracy, and a whole 36 MP photo.

Engines (``cirl.deploy.engine``): ``onnx`` (onnxruntime fp32, the reference), ``onnx-int8``
(the static int8 copy ``NAME.int8.onnx``), ``openvino`` (fp32), ``openvino-bf16`` (only where
the CPU has bf16 arithmetic), ``torch`` (PyTorch eager), and for the photo ``auto``.

Protocol, in three sections (``--sections``, default all):

* ``tiles``, per-tile latency: each model of ``--models`` with random weights (speed does not
  depend on them), exported with ``export.ExportConfig(quantize="static", gate=False)``, the int8
  copy calibrated on the training tiles of ``--data`` (random weights have no data of their
  own; the gated engines are opened with ``force``, as their accuracy is not what is timed
  here). 512x512 tiles at each batch of ``--batches``; all engines of a model held in one
  process and timed interleaved round-robin after one warm-up call each, median of
  ``--repeats``; reported as ms per tile, speed-up over onnxruntime fp32 (``onnx ms / engine
  ms``) and achieved GFLOP/s: the model's forward FLOPs (``torch.utils.flop_counter``, direct
  convolution, heads outside the exported graph included) per second, against this machine's
  fp32 matmul ceiling. For int8 and bf16 these are *effective* fp32-equivalent GFLOP/s (the
  same FLOP count, done in lower precision), which is why they can pass the fp32 ceiling.
  ``--isolate`` times each engine and batch alone in a fresh process instead (not
  interleaved), with its peak memory, for models whose engines do not fit in memory together.
* ``gate``, accuracy: the trained ``--checkpoint`` (default: a unet-small trained on DeepCrack's
  official split, ``runs/ablation_v2/seed0/bce/best.pt``) exported as ``cirl export --quantize
  static --data DATA`` does: int8 calibrated on DATA's training tiles, and the export's own
  accuracy gate run on DATA's **val** split (its verdicts go into the model's metadata and
  decide what ``--engine auto`` may use). Then :func:`cirl.deploy.gate.run_gate` on DATA's **test**
  split, as issue 12 asks: per-image F1 at 0.5, ODS and AP of onnxruntime fp32 and of each
  engine, their differences from fp32, the largest |probability difference|, pass/fail at
  0.005.
* ``photo``, a whole 36-megapixel photo: a synthetic 7360x4912 JPEG (``cirl.data.synth``),
  ``predict.run`` (tile 512, overlap 64, batch 4, under ``subnormals_as_zero`` as ``cirl
  predict`` runs it) with the trained checkpoint's export, each engine in a fresh
  subprocess; reported: the subprocess's wall time measured from outside (Python start-up,
  imports, model loading included: what a user waits for), the report's breakdown (read,
  infer, predict, measure, write), its peak resident memory (VmHWM), the crack count, and its
  mask's agreement with onnxruntime fp32's (share of differing pixels, IoU of crack pixels).
  ``auto`` finds its choice cached by a previous run on this machine, as it would after the
  first run: the one-time choice is made in a subprocess of its own beforehand and timed
  separately. The goal (issue 12): under 12 s on 2 cores at equal accuracy (an engine that
  passed the gate on the test split, or the fp32 reference).

    python benchmarks/inference_bench.py [--models unet-small,jtfn-small] [--batches 1,4]
        [--repeats 5] [--data runs/time_to_accuracy/prepared] [--checkpoint PT] [--json FILE]
    python benchmarks/inference_bench.py --quick      # smoke test: a few minutes
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CEILING_GFLOPS = 159.0
GOAL_SECONDS = 12.0
TOLERANCE = 0.005
TILE = 512
PHOTO_W, PHOTO_H = 7360, 4912
DEFAULT_DATA = "runs/time_to_accuracy/prepared"
DEFAULT_CHECKPOINT = "runs/ablation_v2/seed0/bce/best.pt"
PHOTO_ENGINES = "onnx,onnx-int8,openvino,openvino-bf16,auto"

PREDICT_CHILD = r"""
import json, sys, time
t_start = time.perf_counter()
from pathlib import Path
from cirl.models.inference import subnormals_as_zero
from cirl.deploy import predict
engine, model, image, out, force = sys.argv[1:6]
imports = time.perf_counter() - t_start
with subnormals_as_zero():  # as `cirl predict` runs it
    t0 = time.perf_counter()
    cfg = predict.PredictConfig(engine=engine, tile=512, overlap=64, batch=4, force=force == "1")
    result = predict.run(cfg, image, model, out, progress=False)
    run_seconds = time.perf_counter() - t0
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
report = json.load(open(Path(out) / f"{Path(image).stem}.json"))
print(json.dumps({"in_process_seconds": time.perf_counter() - t_start, "imports_seconds": imports,
                  "run_seconds": run_seconds, "peak_bytes": peak, "failed": result.failed,
                  "engine_used": report["engine"], "choice": report["model"].get("choice"),
                  "gate_at_export": report["model"].get("gate"),
                  "tiles": report["tiles"]["tiles"], "breakdown": report["seconds"],
                  "crack_pixels": report["crack_pixels"],
                  "crack_fraction": report["crack_fraction"], "cracks": report["cracks"]["count"],
                  "regions_not_measured": report["regions_not_measured"]["count"]}))
"""

CHOICE_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from cirl.deploy.gate import choose_engine
from cirl.models.inference import subnormals_as_zero
with subnormals_as_zero():
    choice = choose_engine(sys.argv[1], 512, 4, 0)
print(json.dumps({"seconds": time.perf_counter() - t0, **choice}))
"""

TILE_CHILD = r"""
import json, logging, statistics, sys, time
import numpy as np
from cirl.deploy.opener import load_engine
logging.disable(logging.WARNING)
engine_name, model, batch, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
engine = load_engine(model, engine_name, device="cpu", force=True)
x = np.random.default_rng(0).random((batch, 3, 512, 512), dtype=np.float32)
engine(x)
times = []
for _ in range(repeats):
    t = time.perf_counter()
    engine(x)
    times.append(time.perf_counter() - t)
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": statistics.median(times), "peak_bytes": peak}))
"""


def _child(code: str, *args: str, env: dict | None = None) -> tuple[dict, float]:
    """Run ``code`` in a fresh interpreter; its last stdout line (JSON) and its wall seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False, env=env
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise RuntimeError(tail)
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def tile_engines() -> list[str]:
    """The engines timed per tile on this machine."""
    from cirl.deploy.engine import cpu_has_bf16

    names = ["onnx", "onnx-int8", "openvino"]
    if cpu_has_bf16():
        names.append("openvino-bf16")
    return [*names, "torch"]


# ---------------------------------------------------------------------------------------------
# per tile


def _checkpoint(name: str, folder: Path) -> Path:
    import torch

    from cirl.models import build_model
    from cirl.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model(name, std_head=False).eval()
    path = folder / f"{name}.pt"
    save_checkpoint(path, {"model": model.state_dict(), "model_config": dict(model.config)})
    return path


def _forward_gflop(name: str, size: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cirl.models import build_model

    model = build_model(name, std_head=False).eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def _interleaved(engines: dict, x: np.ndarray, repeats: int) -> dict[str, float]:
    """Median seconds per call of each engine on ``x``, round-robin after one warm-up each."""
    for engine in engines.values():
        engine(x)
    times: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(repeats):
        for key, engine in engines.items():
            t = time.perf_counter()
            engine(x)
            times[key].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def _open(model: Path, ckpt: Path, name: str):
    """An engine for timing: gated engines forced (random weights have no gate to pass)."""
    from cirl.deploy.opener import load_engine

    logging.disable(logging.WARNING)  # "used anyway (--force)"
    try:
        return load_engine(ckpt if name == "torch" else model, name, device="cpu", force=True)
    finally:
        logging.disable(logging.NOTSET)


def tile_latency(
    name: str,
    folder: Path,
    data: Path,
    repeats: int,
    batches: list[int],
    engines: list[str],
    isolate: bool = False,
) -> dict:
    """ms per tile, speed-up over onnx fp32 and GFLOP/s of each engine at each batch."""
    from cirl.deploy import export

    ckpt = _checkpoint(name, folder)
    onnx_path = folder / f"{name}.onnx"
    t0 = time.perf_counter()
    result = export.run(
        export.ExportConfig(quantize="static", gate=False), ckpt, onnx_path, data=data
    )
    export_seconds = time.perf_counter() - t0
    gflop = _forward_gflop(name, TILE)
    if not isolate:
        opened = {e: _open(onnx_path, ckpt, e) for e in engines}
        rng = np.random.default_rng(0)
    rows = {}
    for batch in batches:
        extra: dict = {}
        if isolate:
            runs = {}
            for e in engines:
                model = ckpt if e == "torch" else onnx_path
                runs[e], _ = _child(TILE_CHILD, e, str(model), str(batch), str(repeats))
            seconds = {k: v["seconds"] for k, v in runs.items()}
            extra = {"peak_bytes": {k: v["peak_bytes"] for k, v in runs.items()}, "isolated": True}
        else:
            x = rng.random((batch, 3, TILE, TILE), dtype=np.float32)
            seconds = _interleaved(opened, x, repeats)
        ms = {k: 1000 * v / batch for k, v in seconds.items()}
        rows[f"batch{batch}"] = {
            "ms_per_tile": ms,
            "speedup_vs_onnx": {k: ms["onnx"] / v for k, v in ms.items()},
            "gflops_achieved": {k: gflop / (v / 1000) for k, v in ms.items()},
            **extra,
        }
    if not isolate:
        del opened
    return {
        "forward_gflop_per_tile": gflop,
        "export_seconds": export_seconds,
        "int8_quantize_seconds": result.report["int8"]["seconds"],
        "parity_max_abs_diff": result.parity_max_abs_diff,
        "latency": rows,
    }


def print_tiles(name: str, info: dict) -> None:
    for key, row in info["latency"].items():
        for engine, ms in row["ms_per_tile"].items():
            g = row["gflops_achieved"][engine]
            effective = " (effective)" if engine in ("onnx-int8", "openvino-bf16") else ""
            peak = row.get("peak_bytes", {}).get(engine)
            print(
                f"{name:11} {key[5:]:>5} {engine:14} {ms:9.1f} "
                f"{row['speedup_vs_onnx'][engine]:8.2f}x {g:8.1f} "
                f"{100 * g / CEILING_GFLOPS:6.0f}%{effective}"
                + (f"  peak {peak / 2**30:.1f} GiB (isolated)" if peak else ""),
                flush=True,
            )


# ---------------------------------------------------------------------------------------------
# accuracy gate


def gate_subset(data: Path, folder: Path, test_images: int) -> Path:
    """A copy of the prepared folder ``data`` with only its first ``test_images`` test tiles.

    The files are hard-linked where possible, else copied (a manifest may not point through
    symlinks out of its folder).
    """
    sub = folder / "prepared_subset"
    sub.mkdir(exist_ok=True)
    with open(data / "manifest.csv", newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    tests = [r for r in rows if r["split"] == "test"][:test_images]
    kept = [r for r in rows if r["split"] != "test"] + tests
    for row in kept:
        for key in ("image", "mask", "valid", "ambiguous"):
            if not row.get(key):
                continue
            target = sub / row[key]
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(data / row[key], target)
            except OSError:
                shutil.copy2(data / row[key], target)
    for entry in data.iterdir():
        if entry.is_file() and entry.name != "manifest.csv":
            shutil.copy2(entry, sub / entry.name)
    with open(sub / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    return sub


def export_trained(checkpoint: Path, data: Path, folder: Path) -> tuple[Path, dict]:
    """``cirl export --quantize static --data DATA``: int8 copy, gate on val in the metadata."""
    from cirl.deploy import export
    from cirl.deploy.engine import read_metadata

    models = folder / "trained"
    models.mkdir(exist_ok=True)
    onnx_path = models / f"{checkpoint.stem}.onnx"
    t0 = time.perf_counter()
    result = export.run(export.ExportConfig(quantize="static"), checkpoint, onnx_path, data=data)
    seconds = time.perf_counter() - t0
    return onnx_path, {
        "checkpoint": str(checkpoint),
        "model_config": json.loads(read_metadata(onnx_path)["model_config"]),
        "export_seconds": seconds,
        "int8": {k: v for k, v in result.report["int8"].items() if k != "model"},
        "val_gate": result.report.get("accuracy_gate"),
    }


def gate_on_test(onnx_path: Path, data: Path) -> dict:
    from cirl.deploy.engine import int8_path
    from cirl.deploy.gate import run_gate

    t0 = time.perf_counter()
    record = run_gate(onnx_path, data, split="test", tolerance=TOLERANCE, int8=int8_path(onnx_path))
    record["seconds"] = time.perf_counter() - t0
    return record


def print_gate(exported: dict, test: dict, data: Path, subset: int) -> None:
    val = exported.get("val_gate") or {}
    ref = test["reference_scores"]
    print(
        f"\naccuracy gate of {exported['checkpoint']} ({exported['model_config'].get('name')}) "
        f"on the TEST split of {data}"
        + (f" (first {subset} test images only: --gate-images)" if subset else "")
        + f", {ref['images']} images; tolerance {TOLERANCE} on each of F1/ODS/AP.\n"
        "  (the export's own gate, which decides what `--engine auto` may use, scores the VAL "
        "split; this reports TEST, as issue 12 asks; the val verdict is in the last column)"
    )
    print(
        f"  {'engine':14} {'F1':>7} {'ODS':>7} {'AP':>7} {'dF1':>8} {'dODS':>8} {'dAP':>8} "
        f"{'max|dp|':>8} {'test':>5} {'val':>5}"
    )
    print(f"  {'onnx (fp32)':14} {ref['f1']:7.4f} {ref['ods']:7.4f} {ref['ap']:7.4f}")
    for name, e in test["engines"].items():
        val_entry = val.get("engines", {}).get(name, {}) if isinstance(val, dict) else {}
        val_verdict = {True: "pass", False: "FAIL", None: "-"}[val_entry.get("passed")]
        if "skipped" in e:
            print(f"  {name:14} skipped: {e['skipped']}")
            continue
        d = e["delta"]
        print(
            f"  {name:14} {e['f1']:7.4f} {e['ods']:7.4f} {e['ap']:7.4f} {d['f1']:+8.4f} "
            f"{d['ods']:+8.4f} {d['ap']:+8.4f} {e['max_abs_prob_diff']:8.4f} "
            f"{'pass' if e['passed'] else 'FAIL':>5} {val_verdict:>5}",
            flush=True,
        )


# ---------------------------------------------------------------------------------------------
# whole photo


def synthetic_photo(folder: Path) -> Path:
    import cv2

    from cirl.data.synth import SynthConfig, render_sample

    path = folder / f"photo_{PHOTO_W}x{PHOTO_H}.jpg"
    if not path.exists():
        image, _, _ = render_sample(SynthConfig(width=PHOTO_W, height=PHOTO_H), 0)
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return path


def _agreement(mask: np.ndarray, reference: np.ndarray) -> dict:
    inter = int(np.count_nonzero(mask & reference))
    union = int(np.count_nonzero(mask | reference))
    return {
        "differing_pixel_fraction": float(np.count_nonzero(mask != reference)) / mask.size,
        "crack_iou": inter / union if union else 1.0,
    }


def whole_photo(onnx_path: Path, folder: Path, engines: list[str]) -> dict:
    """``predict.run`` on the 36 MP photo with each engine, each in a fresh subprocess."""
    import cv2

    image = synthetic_photo(folder)
    env = {**os.environ, "XDG_CACHE_HOME": str(folder / "cache")}  # auto's choice, ours only
    out: dict = {
        "image": f"synthetic {PHOTO_W}x{PHOTO_H} JPEG",
        "model": str(onnx_path),
        "engines": {},
    }
    if "auto" in engines:
        try:
            choice, wall = _child(CHOICE_CHILD, str(onnx_path), env=env)
            out["auto_choice"] = {**choice, "wall_seconds": wall}
        except RuntimeError as exc:
            out["auto_choice"] = {"error": str(exc)}
    reference = None
    for engine in engines:
        pred = folder / f"pred_{engine}"
        shutil.rmtree(pred, ignore_errors=True)
        model = onnx_path.with_suffix(".pt") if engine == "torch" else onnx_path
        force = "0" if engine == "auto" else "1"
        try:
            row, wall = _child(
                PREDICT_CHILD, engine, str(model), str(image), str(pred), force, env=env
            )
        except RuntimeError as exc:
            out["engines"][engine] = {"error": str(exc)}
            continue
        row["wall_seconds"] = wall
        row["megapixels_per_second"] = PHOTO_W * PHOTO_H / 1e6 / row["breakdown"]["predict"]
        mask = cv2.imread(str(pred / f"{image.stem}_mask.png"), cv2.IMREAD_GRAYSCALE) > 127
        if engine == "onnx":
            reference = mask
        if reference is not None:
            row["vs_onnx"] = _agreement(mask, reference)
        out["engines"][engine] = row
    return out


def print_photo(photo: dict) -> None:
    print(
        f"\nwhole photo: {photo['image']}, predict tile 512 overlap 64 batch 4, model "
        f"{photo['model']}, one fresh process per engine; wall = the process timed from outside "
        "(Python start-up, imports, model loading included); predict = tiling + infer + "
        "blending; other = wall - read - predict - measure - write (start-up, imports, loading)"
    )
    choice = photo.get("auto_choice")
    if choice:
        if "error" in choice:
            print(f"  auto's one-time choice failed: {choice['error']}")
        else:
            print(
                f"  auto's one-time engine choice (cached per machine, made beforehand): "
                f"{choice['engine']} in {choice['wall_seconds']:.1f} s; {choice['why']}"
            )
    print(
        f"  {'engine':18} {'wall s':>7} {'read':>5} {'infer':>6} {'predict':>7} {'measure':>7} "
        f"{'write':>6} {'other':>6} {'peak MiB':>8} {'cracks':>6} {'diff px':>8} {'crack IoU':>9}"
    )
    for engine, row in photo["engines"].items():
        if "error" in row:
            print(f"  {engine:18} error: {row['error']}")
            continue
        b, agree = row["breakdown"], row.get("vs_onnx", {})
        other = row["wall_seconds"] - sum(b[k] for k in ("read", "predict", "measure", "write"))
        label = engine if engine != "auto" else f"auto={row['engine_used']}"
        print(
            f"  {label:18} {row['wall_seconds']:7.1f} {b['read']:5.1f} {b['infer']:6.1f} "
            f"{b['predict']:7.1f} {b['measure']:7.1f} {b['write']:6.1f} {other:6.1f} "
            f"{row['peak_bytes'] / 2**20:8.0f} {row['cracks']:6d} "
            f"{agree.get('differing_pixel_fraction', float('nan')):8.2e} "
            f"{agree.get('crack_iou', float('nan')):9.4f}",
            flush=True,
        )


def goal(photo: dict, test_gate: dict | None) -> dict:
    """Whether an engine at equal accuracy ran the photo in under GOAL_SECONDS (wall)."""

    def accuracy(engine: str) -> tuple[bool | None, str]:
        if engine == "onnx":
            return True, "the fp32 reference"
        if test_gate is not None:
            entry = test_gate["engines"].get(engine, {})
            limit = test_gate.get("test_images_limit")
            return entry.get("passed"), "test-split gate " + (
                "passed" if entry.get("passed") else "failed"
            ) + (f" (first {limit} test images only)" if limit else "")
        return None, "no test-split gate run (--sections without gate)"

    rows = []
    for engine, row in photo["engines"].items():
        if "wall_seconds" not in row:
            continue
        used = row.get("engine_used", engine)
        equal, why = accuracy(used)
        rows.append(
            {
                "engine": engine,
                "runs": used,
                "wall_seconds": row["wall_seconds"],
                "equal": equal,
                "accuracy": why,
            }
        )
    rows.sort(key=lambda r: r["wall_seconds"])
    met = [r for r in rows if r["equal"] and r["wall_seconds"] < GOAL_SECONDS]
    equal = [r for r in rows if r["equal"]]
    return {
        "goal_seconds": GOAL_SECONDS,
        "met": bool(met),
        "met_by": met,
        "fastest_equal_accuracy": equal[0] if equal else None,
        "fastest": rows[0] if rows else None,
    }


def print_goal(g: dict) -> None:
    def fmt(r: dict) -> str:
        runs = f" (runs {r['runs']})" if r["runs"] != r["engine"] else ""
        return f"{r['engine']}{runs} {r['wall_seconds']:.1f} s, {r['accuracy']}"

    if g["met"]:
        print(
            f"goal: 36 MP photo under {GOAL_SECONDS:.0f} s (wall) at equal accuracy: MET by "
            + "; ".join(fmt(r) for r in g["met_by"])
        )
    else:
        best = g["fastest_equal_accuracy"]
        fastest = g["fastest"]
        print(
            f"goal: 36 MP photo under {GOAL_SECONDS:.0f} s (wall) at equal accuracy: NOT MET; "
            f"fastest at equal accuracy: {fmt(best) if best else 'none'}"
            + (f"; fastest of all: {fmt(fastest)}" if fastest and fastest != best else "")
        )


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="unet-small,jtfn-small", help="per-tile models")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--repeats", type=int, default=None, help="default 5 (--quick: 2)")
    parser.add_argument(
        "--data", default=DEFAULT_DATA, help="prepared DeepCrack (tile 0): calibration and gate"
    )
    parser.add_argument(
        "--checkpoint",
        "--whole-checkpoint",
        default=DEFAULT_CHECKPOINT,
        help="a model trained on --data, for the gate and the 36 MP photo",
    )
    parser.add_argument("--sections", default="tiles,gate,photo")
    parser.add_argument(
        "--photo-engines", default=PHOTO_ENGINES, help="engines for the photo (torch possible)"
    )
    parser.add_argument(
        "--gate-images",
        type=int,
        default=None,
        help="score only the first N test images (default all; --quick: 48)",
    )
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="per tile: each engine and batch alone in a fresh process, with its peak memory",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: unet-small only, batch 4, 2 repeats, 48 test images for the gate",
    )
    parser.add_argument("--json", default="inference_bench.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batches = "unet-small", "4"
    repeats = args.repeats or (2 if args.quick else 5)
    gate_images = args.gate_images if args.gate_images is not None else (48 if args.quick else 0)
    sections = set(filter(None, args.sections.split(",")))
    data, checkpoint = Path(args.data), Path(args.checkpoint)
    if not (data / "manifest.csv").is_file():
        parser.error(f"--data {data}: no manifest.csv (a folder written by `cirl prepare`)")
    if sections & {"gate", "photo"} and not checkpoint.is_file():
        parser.error(f"--checkpoint {checkpoint} not found (or --sections tiles)")

    import torch

    from cirl.deploy.engine import cpu_has_bf16
    from cirl.deploy.gate import machine

    engines = tile_engines()
    batches = [int(b) for b in args.batches.split(",")]
    models = list(filter(None, args.models.split(","))) if "tiles" in sections else []
    result: dict = {
        "protocol": __doc__,
        "command": [sys.argv[0], *(argv if argv is not None else sys.argv[1:])],
        "quick": args.quick,
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "cpu_has_bf16": cpu_has_bf16(),
        "ceiling_gflops": CEILING_GFLOPS,
        "repeats": repeats,
        "data": str(data),
        "tiles": {},
    }

    def save() -> None:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")

    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cirl-inference-") as tmp:
        folder = Path(tmp)
        if models:
            print(
                f"per tile: {TILE}x{TILE}, random weights, "
                + ("each engine alone in a fresh process" if args.isolate else "interleaved")
                + f", median of {repeats} after a warm-up; {result['threads']} threads; "
                f"GFLOP/s against the fp32 matmul ceiling of {CEILING_GFLOPS:.0f}; int8 and bf16 "
                "GFLOP/s are effective (fp32-equivalent) FLOPs"
            )
            print(
                f"{'model':11} {'batch':>5} {'engine':14} {'ms/tile':>9} {'vs onnx':>9} "
                f"{'GFLOP/s':>8} {'ceiling':>7}"
            )
        for name in models:
            result["tiles"][name] = tile_latency(
                name, folder, data, repeats, batches, engines, args.isolate
            )
            save()
            print_tiles(name, result["tiles"][name])
        onnx_path = None
        if sections & {"gate", "photo"}:
            gate_data = gate_subset(data, folder, gate_images) if gate_images else data
            onnx_path, exported = export_trained(checkpoint, gate_data, folder)
            shutil.copy2(checkpoint, onnx_path.with_suffix(".pt"))  # for --photo-engines torch
            result["trained_export"] = exported
            save()
        test_gate = None
        if "gate" in sections:
            test_gate = gate_on_test(onnx_path, gate_data)
            test_gate["test_images_limit"] = gate_images or None
            result["gate_test"] = test_gate
            save()
            print_gate(exported, test_gate, data, gate_images)
        if "photo" in sections:
            photo_engines = [
                e
                for e in filter(None, args.photo_engines.split(","))
                if e != "openvino-bf16" or result["cpu_has_bf16"]
            ]
            photo = whole_photo(onnx_path, folder, photo_engines)
            photo["goal"] = goal(photo, test_gate)
            result["whole_photo"] = photo
            save()
            print_photo(photo)
            print_goal(photo["goal"])
    result["seconds"] = time.perf_counter() - t_all
    save()
    print(f"benchmark took {result['seconds'] / 60:.1f} min; wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
