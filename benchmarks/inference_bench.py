"""Inference speed: onnxruntime vs PyTorch eager, per tile and on a whole 36-megapixel photo.

Protocol:

* per-tile latency: every model of the registry (random weights: speed does not depend on
  them), exported with ``cirl export``; 512x512 tiles at batch 1 and 8; the two engines are
  timed in one process, interleaved round-robin after a warm-up, median of ``--repeats``;
  reported as ms per tile, the ratio PyTorch / onnxruntime, and achieved GFLOP/s (forward FLOPs
  counted by ``torch.utils.flop_counter``) against this machine's fp32 matmul ceiling;
* whole photo: a synthetic 7360x4912 JPEG (``cirl.synth``), ``cirl predict`` with each engine
  (tile 512, overlap 64, batch 4) in a fresh subprocess, so its peak resident memory (VmHWM) is
  its own; reported as seconds, megapixels/s and peak memory.

    python benchmarks/inference_bench.py [--models unet-small,jtfn-small] [--json bench.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CEILING_GFLOPS = 159.0

PREDICT_CHILD = r"""
import json, sys, time
from cirl import predict
engine, model, image, out = sys.argv[1:5]
t0 = time.perf_counter()
cfg = predict.PredictConfig(engine=engine, tile=512, overlap=64, batch=4)
result = predict.run(cfg, image, model, out, progress=False)
seconds = time.perf_counter() - t0
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
report = json.load(open(f"{out}/{__import__('pathlib').Path(image).stem}.json"))
print(json.dumps({"seconds": seconds, "peak_bytes": peak, "failed": result.failed,
                  "tiles": report["tiles"]["tiles"], "infer_seconds": report["seconds"]["infer"],
                  "predict_seconds": report["seconds"]["predict"],
                  "measure_seconds": report["seconds"]["measure"],
                  "crack_fraction": report["crack_fraction"], "cracks": report["cracks"]["count"],
                  "regions_not_measured": report["regions_not_measured"]["count"]}))
"""


TILE_CHILD = r"""
import json, statistics, sys, time
import numpy as np
from cirl.engine import load_engine
engine_name, model, batch, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
engine = load_engine(model, engine_name)
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


def _isolated(engine: str, model: Path, batch: int, repeats: int) -> dict:
    """Median seconds per call and peak memory of one engine alone in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-c", TILE_CHILD, engine, str(model), str(batch), str(repeats)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise RuntimeError(f"{engine} batch {batch} on {model.name} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _checkpoint(name: str, folder: Path) -> Path:
    import torch

    from cirl.checkpoint import save_checkpoint
    from cirl.models import build_model

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


def tile_latency(
    name: str, folder: Path, repeats: int, batches: list[int], isolate: bool = False
) -> dict:
    """Median ms per tile of each engine at each batch, interleaved in this process.

    With ``isolate`` each engine and batch runs alone in a fresh process instead (not
    interleaved), for models too large to hold both engines' memory at once; the peak
    resident memory of each is reported too.
    """
    from cirl import export
    from cirl.engine import load_engine

    ckpt = _checkpoint(name, folder)
    onnx_path = folder / f"{name}.onnx"
    t0 = time.perf_counter()
    result = export.run(export.ExportConfig(), ckpt, onnx_path)
    export_seconds = time.perf_counter() - t0
    gflop = _forward_gflop(name, 512)
    if not isolate:
        engines = {
            "onnxruntime": load_engine(onnx_path, "onnx"),
            "torch": load_engine(ckpt, "torch"),
        }
        rng = np.random.default_rng(0)
    rows = {}
    for batch in batches:
        extra: dict = {}
        if isolate:
            runs = {
                "onnxruntime": _isolated("onnx", onnx_path, batch, repeats),
                "torch": _isolated("torch", ckpt, batch, repeats),
            }
            seconds = {k: v["seconds"] for k, v in runs.items()}
            extra = {"peak_bytes": {k: v["peak_bytes"] for k, v in runs.items()}, "isolated": True}
        else:
            x = rng.random((batch, 3, 512, 512), dtype=np.float32)
            seconds = _interleaved(engines, x, repeats)
        ms = {k: 1000 * v / batch for k, v in seconds.items()}
        rows[f"batch{batch}"] = {
            "ms_per_tile": ms,
            "torch_over_onnxruntime": ms["torch"] / ms["onnxruntime"],
            "gflops_achieved": {k: gflop / (v / 1000) for k, v in ms.items()},
            **extra,
        }
    return {
        "forward_gflop_per_tile": gflop,
        "export_seconds": export_seconds,
        "parity_max_abs_diff": result.parity_max_abs_diff,
        "latency": rows,
    }


def whole_photo(name: str, folder: Path, checkpoint: Path | None = None) -> dict:
    """``cirl predict`` on a 7360x4912 photo with each engine, each in a fresh process.

    With ``checkpoint`` (a trained model of architecture ``name``) the photo is predicted by
    it, so that the measurement step sees a realistic crack map; random weights mark large
    areas, which ``cirl predict`` reports as regions instead of measuring.
    """
    import cv2

    from cirl import export
    from cirl.synth import SynthConfig, render_sample

    models = folder  # where NAME.pt and NAME.onnx are
    if checkpoint is not None:
        models = folder / "trained"
        models.mkdir(exist_ok=True)
        shutil.copy2(checkpoint, models / f"{name}.pt")
        export.run(export.ExportConfig(), models / f"{name}.pt", models / f"{name}.onnx")

    image_path = folder / "photo_7360x4912.jpg"
    if not image_path.exists():
        image, _, _ = render_sample(SynthConfig(width=7360, height=4912), 0)
        cv2.imwrite(str(image_path), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    out = {}
    for engine, model in (("onnx", models / f"{name}.onnx"), ("torch", models / f"{name}.pt")):
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                PREDICT_CHILD,
                engine,
                str(model),
                str(image_path),
                str(models / f"pred_{engine}"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            out[engine] = {"error": proc.stderr.strip().splitlines()[-1]}
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["megapixels_per_second"] = 7360 * 4912 / 1e6 / row["predict_seconds"]
        out[engine] = row
    if "seconds" in out.get("onnx", {}) and "seconds" in out.get("torch", {}):
        out["torch_over_onnxruntime"] = (
            out["torch"]["predict_seconds"] / out["onnx"]["predict_seconds"]
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="unet-small,jtfn-small,unet,jtfn")
    parser.add_argument("--whole", default="unet-small", help="models for the 36 MP photo")
    parser.add_argument(
        "--whole-checkpoint",
        help="a trained checkpoint of the --whole model to predict the photo with "
        "(default: random weights)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="time each engine and batch alone in a fresh process, with its peak memory "
        "(for models whose two engines do not fit in memory together, e.g. jtfn at batch 8)",
    )
    parser.add_argument("--json", default="inference_bench.json")
    args = parser.parse_args(argv)
    import torch

    result = {
        "protocol": (
            f"tiles: random weights, 512x512, median of {args.repeats} interleaved runs after a "
            "warm-up; whole photo: synthetic 7360x4912 JPEG, cirl predict tile 512 overlap 64 "
            "batch 4, fresh process per engine, peak RSS (VmHWM), weights "
            f"{args.whole_checkpoint or 'random'}"
        ),
        "threads": torch.get_num_threads(),
        "ceiling_gflops": CEILING_GFLOPS,
        "models": {},
        "whole_photo": {},
    }
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory(prefix="cirl-inference-") as tmp:
        folder = Path(tmp)
        print(
            f"{'model':11} {'batch':>5} {'ORT ms/tile':>12} {'torch ms/tile':>14} {'torch/ORT':>9} "
            f"{'ORT GFLOP/s':>11} {'torch GFLOP/s':>13}"
        )
        for name in filter(None, args.models.split(",")):
            info = tile_latency(name, folder, args.repeats, batches, args.isolate)
            result["models"][name] = info
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")  # partial results
            for key, row in info["latency"].items():
                ms, g = row["ms_per_tile"], row["gflops_achieved"]
                print(
                    f"{name:11} {key[5:]:>5} {ms['onnxruntime']:12.1f} {ms['torch']:14.1f} "
                    f"{row['torch_over_onnxruntime']:9.2f} {g['onnxruntime']:11.1f} "
                    f"{g['torch']:13.1f}"
                    + (
                        f"  isolated, peak ORT {row['peak_bytes']['onnxruntime'] / 2**30:.1f} GiB, "
                        f"torch {row['peak_bytes']['torch'] / 2**30:.1f} GiB"
                        if "peak_bytes" in row
                        else ""
                    ),
                    flush=True,
                )
        for name in filter(None, args.whole.split(",")):
            ckpt = Path(args.whole_checkpoint) if args.whole_checkpoint else None
            if name not in result["models"] and ckpt is None:
                tile_latency(name, folder, 1, [1])  # writes the random-weight model files
            photo = whole_photo(name, folder, ckpt)
            photo["weights"] = str(ckpt) if ckpt else "random"
            result["whole_photo"][name] = photo
            for engine in ("onnx", "torch"):
                row = photo.get(engine, {})
                if "seconds" in row:
                    print(
                        f"{name} 7360x4912 {engine:5}: {row['predict_seconds']:.1f} s "
                        f"({row['megapixels_per_second']:.2f} MP/s, {row['tiles']} tiles), "
                        f"measure {row['measure_seconds']:.1f} s ({row['cracks']} cracks), "
                        f"total {row['seconds']:.1f} s, peak {row['peak_bytes'] / 2**20:.0f} MiB"
                    )
                else:
                    print(f"{name} 7360x4912 {engine}: {row}")
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"fp32 matmul ceiling about {CEILING_GFLOPS:.0f} GFLOP/s; wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
