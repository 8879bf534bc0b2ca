"""Overhead of running the chain as a KFP pipeline (local SubprocessRunner) against calling the
same stage functions directly, at the same budget, on the same data, in one run.

    .venv/bin/python benchmarks/pipeline_overhead.py [--params params.yaml] [--n 20]

Both arms run prepare -> train phase I -> select -> train phase II -> evaluate -> export with
the resolved ``params.yaml`` groups; the direct arm calls ``cirl.tasks`` (what each component
body calls) in this process; the pipeline arm is ``cirl.pipeline.run_local`` on the committed
``pipelines/training.yaml``. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]


class _Artifact(SimpleNamespace):
    """Enough of a KFP artifact for ``cirl.tasks``: a path and metadata."""

    def log_metric(self, key: str, value: float) -> None:
        self.metadata[key] = value


def _artifact(path: Path) -> _Artifact:
    return _Artifact(path=str(path), metadata={})


def direct(raw: Path, work: Path, groups: dict) -> float:
    """The chain through ``cirl.tasks`` in this process; returns seconds."""
    from cirl import tasks

    t0 = time.perf_counter()
    data = _artifact(work / "dataset")
    tasks.prepare(str(raw), "folder", groups["prepare_params"], data)
    p1 = _artifact(work / "phase1")
    tasks.train(data, groups["train_params"], p1, _artifact(work / "m1"), phase=1)
    amb = _artifact(work / "ambiguity")
    tasks.select(data, p1, groups["select_params"], amb, _artifact(work / "select.html"))
    p2 = _artifact(work / "phase2")
    tasks.train(
        data, groups["train_params"], p2, _artifact(work / "m2"), phase=2, init=p1, ambiguity=amb
    )
    ev = _artifact(work / "eval")
    tasks.evaluate(
        data,
        p2,
        groups["evaluate_params"],
        ev,
        _artifact(work / "m3"),
        _artifact(work / "report.html"),
    )
    tasks.export(p2, groups["export_params"], _artifact(work / "onnx"), data)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--n", type=int, default=20, help="synthetic photos")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "pipeline_overhead.json")
    args = parser.parse_args()

    from cirl import config, pipeline, synth

    groups = pipeline.stage_arguments(args.params)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw = tmp / "raw"
        synth.run(config.resolve(synth.SynthConfig, "synth", args.params, {"n": args.n}), raw)
        t_direct = direct(raw, tmp / "direct", groups)
        arguments = {"source": str(raw), **groups, "code_version": pipeline.code_version()}
        t0 = time.perf_counter()
        run = pipeline.run_local(REPO / "pipelines" / "training.yaml", arguments, tmp / "kfp")
        t_kfp = time.perf_counter() - t0
        tasks = 6
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "photos": args.n,
        "train": groups["train_params"],
        "direct_s": round(t_direct, 2),
        "kfp_local_s": round(t_kfp, 2),
        "kfp_inner_s": round(run.seconds, 2),
        "ratio": round(t_kfp / t_direct, 3),
        "overhead_per_task_s": round((t_kfp - t_direct) / tasks, 2),
    }
    print(f"{'arm':<28}{'seconds':>10}")
    print(f"{'direct (cirl.tasks)':<28}{t_direct:>10.1f}")
    print(f"{'KFP local SubprocessRunner':<28}{t_kfp:>10.1f}")
    print(f"ratio {result['ratio']:.3f}, overhead per task {result['overhead_per_task_s']:.2f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
