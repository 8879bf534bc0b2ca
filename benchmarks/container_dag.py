"""The whole training pipeline on a tiny dataset: KFP's DockerRunner through podman against the
SubprocessRunner, same package, same arguments, tracking and registration on, in one run.

    sudo .venv/bin/python benchmarks/container_dag.py [--image localhost/cirl:ci]

Needs the image (``make image``, as root) and its private podman storage
(``/var/tmp/cirl-image-cache``, see docs/container.md). Both arms run every task of
``pipelines/training.yaml`` (open-run, prepare, phase I, select, phase II, evaluate, export,
register, close-run) on 5 synthetic 256x192 photos with 1-epoch training; each records into
its own SQLite store (with the docker runner its folder is mounted into every container).
The arms alternate, ``--repeats`` times each, and the best of each is compared. Prints a
table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("CIRL_IMAGE_CACHE", "/var/tmp/cirl-image-cache"))
TINY = {
    "prepare": {"tile": 128, "split": [0.6, 0.2, 0.2]},
    "train": {
        "width": 8,
        "epochs": 1,
        "steps_per_epoch": 2,
        "crop": 64,
        "k": 4,
        "device": "cpu",
    },
    "select": {"device": "cpu"},
    "evaluate": {"device": "cpu", "overlays": 1},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="localhost/cirl:ci")
    parser.add_argument(
        "--package",
        type=Path,
        default=REPO / "pipelines" / "training.yaml",
        help="compiled pipeline; it must match the code in the image",
    )
    parser.add_argument("--repeats", type=int, default=2, help="alternated runs per arm")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "container_dag.json")
    args = parser.parse_args()

    from cirl.data import synth
    from cirl.orchestration import pipeline
    from cirl.orchestration.container_runner import podman_service

    package = args.package
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        tmp = Path(tmp)
        raw = tmp / "raw"
        synth.run(synth.SynthConfig(n=5, width=256, height=192), raw)
        local_package = pipeline.with_image(package, args.image, tmp / "pipeline.yaml")
        seconds: dict[str, list[float]] = {"subprocess": [], "docker": []}
        tasks = {}
        # alternated, the best of each: other load on the machine hits both arms alike
        for attempt in range(args.repeats):
            for runner in ("subprocess", "docker"):
                store = tmp / f"{runner}{attempt}" / "store"
                store.mkdir(parents=True)
                uri = f"sqlite:///{store / 'mlflow.db'}"
                overrides = {**TINY, "tracking": {"tracking_uri": uri}}
                arguments = {
                    "source": str(raw),
                    **pipeline.stage_arguments(None, overrides, package),
                    "code_version": pipeline.code_version(),
                }
                out = tmp / f"{runner}{attempt}"
                t0 = time.perf_counter()
                if runner == "docker":
                    with podman_service(
                        tmp / "podman",
                        storage_conf=CACHE / "storage.conf",
                        containers_conf=CACHE / "containers.conf",
                    ):
                        run = pipeline.run_local(local_package, arguments, out, runner)
                else:
                    run = pipeline.run_local(local_package, arguments, out, runner)
                seconds[runner].append(time.perf_counter() - t0)
                tasks[runner] = sorted(p.name for p in run.run_dir.iterdir() if p.is_dir())
                assert (run.registration or {}).get("registered"), run.registration
    best = {k: min(v) for k, v in seconds.items()}
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "image": args.image,
        "tasks": len(tasks["docker"]),
        "subprocess_s": [round(x, 2) for x in seconds["subprocess"]],
        "podman_s": [round(x, 2) for x in seconds["docker"]],
        "ratio_of_best": round(best["docker"] / best["subprocess"], 3),
        "overhead_per_task_s": round(
            (best["docker"] - best["subprocess"]) / len(tasks["docker"]), 2
        ),
    }
    print(f"{'runner':<36}{'seconds':>10}")
    print(f"{'SubprocessRunner (best)':<36}{best['subprocess']:>10.1f}")
    print(f"{'DockerRunner via podman (best)':<36}{best['docker']:>10.1f}")
    print(
        f"ratio {result['ratio_of_best']:.3f}, {result['tasks']} tasks, "
        f"{result['overhead_per_task_s']:.2f} s per task"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
