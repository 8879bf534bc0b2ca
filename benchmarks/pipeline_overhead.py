"""Overhead of running the chain as a KFP pipeline (local SubprocessRunner) against calling the
same stage functions directly, at the same budget, on the same data, in one run.

    .venv/bin/python benchmarks/pipeline_overhead.py [--params params.yaml] [--n 20]

All arms run prepare -> train phase I -> select -> train phase II -> evaluate -> export with the
resolved ``params.yaml`` groups; the direct arm calls ``cirl.orchestration.tasks`` (what each
component body calls) in this process, without tracking; the pipeline arms are
``cirl.orchestration.pipeline.run_local`` on the committed ``pipelines/training.yaml``, once
with tracking off (the same work as the direct arm, plus the pipeline's open/register/close
tasks, which then do nothing) and once as ``make run`` runs it: every stage tracked in MLflow (a
SQLite store) and the model registered and promoted. Prints a table and writes JSON.
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
    """Enough of a KFP artifact for ``cirl.orchestration.tasks``: a path and metadata."""

    def log_metric(self, key: str, value: float) -> None:
        self.metadata[key] = value


def _artifact(path: Path) -> _Artifact:
    return _Artifact(path=str(path), metadata={})


def direct(raw: Path, work: Path, groups: dict) -> float:
    """The chain through ``cirl.orchestration.tasks`` in this process; returns seconds."""
    from cirl.orchestration import tasks

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
    parser.add_argument("--repeats", type=int, default=1, help="alternated runs per arm")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "pipeline_overhead.json")
    args = parser.parse_args()

    from cirl import config
    from cirl.data import synth
    from cirl.orchestration import pipeline

    groups = pipeline.stage_arguments(args.params)
    package = REPO / "pipelines" / "training.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw = tmp / "raw"
        synth.run(config.resolve(synth.SynthConfig, "synth", args.params, {"n": args.n}), raw)
        times: dict[str, list[float]] = {"direct": [], "kfp": [], "kfp_tracked": []}
        # alternated, the best of each: other load on the machine hits every arm alike
        for attempt in range(args.repeats):
            times["direct"].append(direct(raw, tmp / f"direct{attempt}", groups))
            for arm, track in (("kfp", False), ("kfp_tracked", True)):
                tracking = {
                    **groups["tracking_params"],
                    "track": track,
                    "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
                }
                arguments = {
                    "source": str(raw),
                    **groups,
                    "tracking_params": tracking,
                    "code_version": pipeline.code_version(),
                }
                t0 = time.perf_counter()
                pipeline.run_local(package, arguments, tmp / f"{arm}{attempt}")
                times[arm].append(time.perf_counter() - t0)
    t_direct = min(times["direct"])
    arms = {k: min(v) for k, v in times.items()}
    stages = 6  # prepare, phase I, select, phase II, evaluate, export
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "photos": args.n,
        "train": groups["train_params"],
        "runs_s": {k: [round(x, 2) for x in v] for k, v in times.items()},
        "direct_s": round(t_direct, 2),
        "kfp_local_s": round(arms["kfp"], 2),
        "kfp_tracked_registered_s": round(arms["kfp_tracked"], 2),
        "ratio_kfp_vs_direct": round(arms["kfp"] / t_direct, 3),
        "ratio_tracked_vs_direct": round(arms["kfp_tracked"] / t_direct, 3),
        "overhead_per_stage_s": round((arms["kfp"] - t_direct) / stages, 2),
    }
    print(f"{'arm':<44}{'seconds':>10}{'ratio':>8}")
    print(f"{'direct (cirl.orchestration.tasks, no tracking)':<44}{t_direct:>10.1f}{1:>8.3f}")
    for arm, label in (
        ("kfp", "KFP local SubprocessRunner, tracking off"),
        ("kfp_tracked", "KFP local, tracked + registered (make run)"),
    ):
        print(f"{label:<44}{arms[arm]:>10.1f}{arms[arm] / t_direct:>8.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
