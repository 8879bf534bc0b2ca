"""Overhead of MLflow tracking on training: the same training with and without a stage run.

Protocol: the ``train`` group of ``params.yaml`` (unet-small, 20 steps of batch 2, crop 256,
CPU) for ``--epochs`` epochs on a prepared folder, in this one process, arms alternating
(``off`` first in odd repeats, ``on`` first in even ones) so that drift of a shared machine
falls on both:

* ``off``: ``cirl.method.train.run`` alone.
* ``on``: the same call inside ``cirl.lineage.tracking.stage_run`` on a fresh SQLite store (run,
  params, ``config.json`` artifact, dataset input with the manifest hash, lineage tags, one
  ``log_batch`` of metrics per epoch through ``on_epoch``, ``history.json`` and ``config.json``
  artifacts at the end).

Printed: the fastest wall seconds of each arm and their ratio, and the tracking time timed
directly (opening the run before training, the per-epoch ``on_epoch`` calls, closing after
training) as a fraction of training: on a shared machine the wall ratio carries seconds of
noise, the timed parts do not. The store is created in the warm-up (its first open, which
builds the SQLite schema, is reported apart), as it exists already in steady use; ``import
mlflow``, paid once per process, is measured in a fresh interpreter. Results also go to a JSON
file.

    cirl synth --out /tmp/trk/raw
    cirl prepare --source /tmp/trk/raw --format folder --out /tmp/trk/prep -q
    python benchmarks/tracking_bench.py --data /tmp/trk/prep [--epochs 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _import_seconds() -> float:
    code = "import time; t = time.perf_counter(); import mlflow; print(time.perf_counter() - t)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="prepared folder (cirl prepare)")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="tracking_bench.json")
    args = parser.parse_args()

    import torch

    from cirl import config
    from cirl.lineage import tracking
    from cirl.method import train

    cfg = config.resolve(
        train.TrainConfig, "train", args.params, {"epochs": args.epochs, "device": "cpu"}
    )
    import_s = _import_seconds()
    import mlflow  # noqa: F401  # paid here once, measured apart above

    times: dict[str, list[float]] = {"off": [], "on": []}
    parts: dict[str, list[float]] = {"open": [], "epochs": [], "close": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tracked = tracking.TrackingConfig(
            track=True, tracking_uri=f"sqlite:///{root / 'mlflow.db'}"
        )
        # warm-up: first touch of the data and the model, and the store's creation (timed)
        warm = train.TrainConfig(**{**cfg.__dict__, "steps_per_epoch": 2, "epochs": 1})
        train.run(warm, args.data, root / "warm", progress=False)
        t0 = time.perf_counter()
        with tracking.stage_run("train", warm, tracked, data=args.data) as run:
            new_store_s = time.perf_counter() - t0
        for repeat in range(args.repeats):
            order = ("off", "on") if repeat % 2 == 0 else ("on", "off")
            for arm in order:
                out = root / f"{arm}{repeat}"
                if arm == "off":
                    t0 = time.perf_counter()
                    train.run(cfg, args.data, out, progress=False)
                    times["off"].append(time.perf_counter() - t0)
                    continue
                epoch_s = 0.0
                t0 = time.perf_counter()
                with tracking.stage_run("train", cfg, tracked, data=args.data, out=out) as run:
                    t_open = time.perf_counter()

                    def on_epoch(record: dict, run=run) -> None:
                        nonlocal epoch_s
                        t = time.perf_counter()
                        run.on_epoch(record)
                        epoch_s += time.perf_counter() - t

                    train.run(cfg, args.data, out, progress=False, on_epoch=on_epoch)
                    t_trained = time.perf_counter()
                t_end = time.perf_counter()
                times["on"].append(t_end - t0)
                parts["open"].append(t_open - t0)
                parts["epochs"].append(epoch_s)
                parts["close"].append(t_end - t_trained)

    # a shared machine adds seconds of noise to single runs: the fastest run of each arm is
    # the least disturbed, and the tracking parts are timed directly besides
    off, on = min(times["off"]), min(times["on"])
    tracking_s = sum(statistics.median(v) for v in parts.values())
    result = {
        "protocol": "params.yaml train group, device cpu; wall seconds of the stage call; "
        "fastest of the repeats per arm; arms alternate in one process; tracking parts are "
        "medians of the directly timed open/on_epoch/close",
        "machine": {
            "cpus": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "config": config.to_dict(cfg),
        "epochs": args.epochs,
        "repeats": args.repeats,
        "seconds": times,
        "fastest_off_s": off,
        "fastest_on_s": on,
        "ratio_on_off": on / off,
        "tracking_parts_s": {k: statistics.median(v) for k, v in parts.items()},
        "tracking_s": tracking_s,
        "tracking_fraction_of_off": tracking_s / off,
        "new_store_open_s": new_store_s,
        "import_mlflow_s": import_s,
    }
    rows = [
        ("off: train.run (fastest)", off),
        ("on: inside stage_run (fastest)", on),
        ("ratio on/off (wall)", on / off),
        ("tracking time (timed parts)", tracking_s),
        ("  open run, before training", result["tracking_parts_s"]["open"]),
        ("  on_epoch calls, all epochs", result["tracking_parts_s"]["epochs"]),
        ("  close run, after training", result["tracking_parts_s"]["close"]),
        ("tracking / off", tracking_s / off),
        ("open on a new SQLite store", new_store_s),
        ("import mlflow (once/process)", import_s),
    ]
    print(f"{'':<34}{'value':>10}")
    for label, value in rows:
        print(f"{label:<34}{value:>10.3f}")
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
