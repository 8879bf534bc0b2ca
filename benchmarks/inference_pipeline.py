"""The inference pipeline (``pipelines/inference.py``) against one ``cirl predict`` over the same
S3 prefix with the same registered model, on this machine, in one run.

    .venv/bin/python benchmarks/inference_pipeline.py [--n 20] [--width 1024] [--height 768]
        [--shards 2,4] [--parallelism 2] [--model runs/synth/model.onnx] [--work DIR]

Protocol: ``--n`` synthetic photos (``cirl.data.synth``, seed 0) are uploaded to a SeaweedFS S3
server on 127.0.0.1 (``tests/services.py``); the model of ``make run`` (``runs/synth``: its
ONNX file, evaluation and checkpoint) is registered as ``cirl-crack`` in a fresh SQLite store
and made ``champion``. A warm-up ``cirl predict`` of one photo fetches the version into the
model cache and makes ``--engine auto``'s timed choice once (cached per machine), so that
every arm below finds both ready, as a second run would. Then, each once, in this order, each
a fresh process timed from outside (start-up, imports, model opening included: what a user
waits for):

* ``cirl predict s3://photos/bench --model models:/cirl-crack@champion`` (one process);
* ``cirl pipeline run --package P.yaml`` for each of ``--shards``, the package compiled with
  ``--parallelism`` (KFP's local runner runs at most 2 iterations of a ParallelFor at a time
  whatever the compiled value), outputs to ``s3://results/shardsN``.

Then the outputs are compared: every photo's files (mask, probability, overlay, crack CSV and
GeoJSON) byte for byte, the per-photo reports but for timings and the URI the model was named
by, and ``summary.csv`` but for its ``seconds`` column. Prints a table and writes
``WORK/benchmark.json``. The defaults' parameters are ``params.yaml``'s ``predict`` group.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # services.seaweed_s3

NAME = "cirl-crack"
TIMINGS = ("seconds", "megapixels_per_second")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def register(model: Path, store: str) -> str:
    """The make-run model as a new version of cirl-crack, made champion; returns the version."""
    from cirl.lineage import registry, tracking

    folder = Path(os.path.abspath(model)).parent  # runs/synth/model.onnx -> runs/synth
    evaluation = folder / "eval"
    checkpoint = folder / "phase2" / "best.pt"
    cfg = tracking.TrackingConfig(track=True, tracking_uri=store)
    result = registry.register(
        registry.RegisterConfig(name=NAME, promote=True),
        model,
        evaluation,
        checkpoint if checkpoint.is_file() else None,
        cfg,
    )
    return str(result.version)


def timed(command: list[str], env: dict, log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(command, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    seconds = time.perf_counter() - t0
    if done.returncode not in (0,):
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}; see {log}")
    return seconds


def objects(client, bucket: str, prefix: str) -> dict[str, bytes]:
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            found[item["Key"][len(prefix) :]] = body
    return found


def comparable(report: dict) -> dict:
    report = {k: v for k, v in report.items() if k not in TIMINGS}
    report["tiles"] = {k: v for k, v in report["tiles"].items() if k != "infer_seconds"}
    model = dict(report["model"])
    model.pop("model_uri", None)
    model.get("choice", {}).pop("cached", None)
    report["model"] = model
    return report


def rows(data: bytes) -> list[dict]:
    return [{**r, "seconds": ""} for r in csv.DictReader(io.StringIO(data.decode()))]


def compare(plain: Path, ours: dict[str, bytes]) -> dict:
    """Which of plain predict's files the pipeline wrote identically."""
    same, differ, missing = 0, [], []
    for path in sorted(plain.iterdir()):
        if path.name == "predictions.json":
            continue
        data = ours.get(path.name)
        if data is None:
            missing.append(path.name)
        elif path.name == "summary.csv":
            ok = rows(data) == rows(path.read_bytes())
            same, differ = (same + 1, differ) if ok else (same, [*differ, path.name])
        elif path.suffix == ".json":
            ok = comparable(json.loads(data)) == comparable(json.loads(path.read_text()))
            same, differ = (same + 1, differ) if ok else (same, [*differ, path.name])
        else:
            ok = data == path.read_bytes()
            same, differ = (same + 1, differ) if ok else (same, [*differ, path.name])
    return {"identical": same, "different": differ, "missing": missing}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--shards", default="2,4")
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--model", type=Path, default=REPO / "runs" / "synth" / "model.onnx")
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    args = parser.parse_args(argv)
    import signal

    # stopped with SIGTERM: unwind, so that the S3 server this started is stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not args.model.is_file():
        raise SystemExit(f"error: {args.model} not found; run `make run` first (or --model)")
    from cirl.data import synth
    from services import seaweed_s3

    work = args.work or Path(tempfile.mkdtemp(prefix="cirl-inference-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    store = f"sqlite:///{(work / 'mlflow.db').resolve()}"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": store,
        "CIRL_MODEL_CACHE": str(work / "model-cache"),
        "XDG_CACHE_HOME": str(work / "xdg"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "CIRL_PARENT_RUN_ID"):
        env.pop(key, None)
    os.environ.update({k: env[k] for k in ("MLFLOW_TRACKING_URI", "CIRL_MODEL_CACHE")})
    version = register(args.model, store)
    synth.run(synth.SynthConfig(n=args.n, width=args.width, height=args.height), work / "raw")
    photos = sorted((work / "raw" / "images").iterdir())
    cirl = [sys.executable, "-m", "cirl"]
    result: dict = {
        "date": dt.date.today().isoformat(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "photos": len(photos),
        "size": [args.width, args.height],
        "model": f"models:/{NAME}/{version} ({args.model})",
        "parallelism": args.parallelism,
        "arms": {},
    }
    with seaweed_s3(work / "seaweed") as server:
        env.update(server.env)
        server.make_bucket("photos")
        server.make_bucket("results")
        client = server.client()
        for path in photos:
            client.upload_file(str(path), "photos", f"bench/{path.name}")
        client.upload_file(str(photos[0]), "photos", f"warm/{photos[0].name}")
        model = f"models:/{NAME}@champion"
        warm = [*cirl, "predict", "s3://photos/warm", "--model", model, "-q",
                "--out", str(work / "warm")]  # fmt: skip
        result["warm_up_seconds"] = round(timed(warm, env, work / "warm.log"), 1)
        plain = [*cirl, "predict", "s3://photos/bench", "--model", model, "-q",
                 "--out", str(work / "plain")]  # fmt: skip
        seconds = timed(plain, env, work / "plain.log")
        result["arms"]["cirl predict"] = {"seconds": round(seconds, 1)}
        print(f"cirl predict: {seconds:.1f} s", flush=True)
        package = work / f"inference-p{args.parallelism}.yaml"
        subprocess.run([sys.executable, str(REPO / "pipelines" / "inference.py"),
                        "--parallelism", str(args.parallelism), "--out", str(package)],
                       check=True, cwd=REPO, stdout=subprocess.DEVNULL)  # fmt: skip
        for shards in (int(s) for s in args.shards.split(",")):
            run = [*cirl, "pipeline", "run", "--package", str(package),
                   "--source", "s3://photos/bench", "--set", f"out=s3://results/shards{shards}",
                   "--set", f"shards={shards}", "--out", str(work / f"run{shards}")]  # fmt: skip
            seconds = timed(run, env, work / f"run{shards}.log")
            ours = objects(client, "results", f"shards{shards}/")
            merged = json.loads(ours["merge.json"])
            arm = {
                "seconds": round(seconds, 1),
                "ratio_to_predict": round(seconds / result["arms"]["cirl predict"]["seconds"], 2),
                "counts": merged["counts"],
                "per_shard_seconds": [s["seconds"] for s in merged["shards"]["each"]],
                "engines": merged["engines"],
                "outputs": compare(work / "plain", ours),
            }
            result["arms"][f"pipeline shards={shards}"] = arm
            print(f"pipeline shards={shards}: {seconds:.1f} s ({arm['ratio_to_predict']}x), "
                  f"outputs {arm['outputs']}", flush=True)  # fmt: skip
    (work / "benchmark.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
