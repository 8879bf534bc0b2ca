"""Crack measurement on a 36-megapixel photo's mask: hand-written skeletons vs scikit-image + skan.

Protocol:

* masks: the label of synthetic photo 0 at 7360x4912 (``cirl.data.synth.render_sample``), and two
  masks made from it: ``rough``, one-pixel bumps on 30% of the pixels just outside its edges
  (ragged edges like a model's; each bump can grow a spur) and ``broken``, the same cut by a
  one-pixel grid every 64 px (many small components: the cost per component shows);
* ``old``: ``src/cirl/measure.py`` (its path then) at ``--baseline`` (default: the commit before
  the switch to scikit-image and skan), loaded from ``git show`` as a temporary module;
  ``new``: the working tree's ``cirl.deploy.measure``;
* steady state: ``measure_cracks(mask)`` with default arguments, each implementation run once
  to warm up (numba compiles skan's graph code on the first call), then the two interleaved
  round-robin ``--repeats`` times; the median seconds;
* first call: each implementation in a fresh process: seconds to import it, its first
  ``measure_cracks`` on the label mask (for ``new`` this includes numba's compilation) and the
  second;
* agreement: the cracks of the two implementations matched by bounding box (the components do
  not depend on the skeleton code): the count of each, and per crack the relative difference
  ``new / old - 1`` of ``length_px``, ``mean_width_px`` and ``max_width_px`` (median and largest
  magnitude) and of the total length.

    python benchmarks/measure_bench.py [--baseline COMMIT] [--repeats 5] [--json measure.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BASELINE = "68d8a580ce18204631f68b53000c21fcf3a34ac5"
"""The last commit with the hand-written Zhang-Suen thinning and chain tracing (issue 12)."""

FIRST_CALL_CHILD = r"""
import json, sys, time
import numpy as np
folder, which = sys.argv[1], sys.argv[2]
sys.path.insert(0, folder)
t0 = time.perf_counter()
if which == "old":
    import measure_baseline as measure
else:
    from cirl.deploy import measure
t1 = time.perf_counter()
mask = np.load(f"{folder}/label.npy")
t2 = time.perf_counter()
measure.measure_cracks(mask)
t3 = time.perf_counter()
measure.measure_cracks(mask)
t4 = time.perf_counter()
print(json.dumps({"import_seconds": t1 - t0, "first_call_seconds": t3 - t2,
                  "second_call_seconds": t4 - t3}))
"""


def load_baseline(commit: str, folder: Path) -> ModuleType:
    """``src/cirl/measure.py`` (its path then) at ``commit``, written to ``folder``, imported."""
    source = subprocess.run(
        ["git", "show", f"{commit}:src/cirl/measure.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = folder / "measure_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("measure_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["measure_baseline"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def masks(seed: int = 0) -> dict[str, np.ndarray]:
    """The label of the 36 MP synthetic photo 0 and its ``rough`` and ``broken`` variants."""
    import cv2

    from cirl.data.synth import SynthConfig, render_sample

    _, label, _ = render_sample(SynthConfig(width=7360, height=4912), 0)
    crack = label > 0
    outside = (cv2.dilate(crack.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0) & ~crack
    ys, xs = np.nonzero(outside)
    bump = np.random.default_rng(seed).random(ys.size) < 0.3
    rough = crack.copy()
    rough[ys[bump], xs[bump]] = True
    broken = crack.copy()
    broken[::64] = False
    broken[:, ::64] = False
    return {"label": label, "rough": rough, "broken": broken}


def agreement(old: list, new: list) -> dict:
    """Count and relative differences ``new / old - 1`` of cracks matched by bounding box."""
    by_box = {c.bbox: c for c in new}
    pairs = [(a, by_box[a.bbox]) for a in old if a.bbox in by_box]
    out: dict = {"cracks_old": len(old), "cracks_new": len(new), "matched": len(pairs)}
    for key in ("length_px", "mean_width_px", "max_width_px"):
        rel = [abs(getattr(b, key) / getattr(a, key) - 1) for a, b in pairs if getattr(a, key)]
        out[key] = {
            "median_abs_rel": statistics.median(rel) if rel else 0.0,
            "max_abs_rel": max(rel, default=0.0),
        }
    total_old = sum(c.length_px for c in old)
    out["total_length_rel"] = sum(c.length_px for c in new) / total_old - 1 if total_old else 0.0
    return out


def steady_state(modules: dict[str, ModuleType], mask: np.ndarray, repeats: int) -> dict:
    """Median seconds of each implementation on ``mask``, interleaved after one warm-up each."""
    cracks = {name: module.measure_cracks(mask) for name, module in modules.items()}
    times: dict[str, list[float]] = {name: [] for name in modules}
    for _ in range(repeats):
        for name, module in modules.items():
            t = time.perf_counter()
            module.measure_cracks(mask)
            times[name].append(time.perf_counter() - t)
    seconds = {name: statistics.median(v) for name, v in times.items()}
    return {
        "seconds": seconds,
        "all_seconds": times,
        "new_over_old": seconds["new"] / seconds["old"],
        "agreement": agreement(cracks["old"], cracks["new"]),
    }


def first_call(folder: Path, which: str) -> dict:
    """Import, first and second ``measure_cracks`` seconds in a fresh process."""
    path = [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    proc = subprocess.run(
        [sys.executable, "-c", FIRST_CALL_CHILD, str(folder), which],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise RuntimeError(f"first call of {which} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=BASELINE, help="commit of the old measure.py")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--masks", default="label,rough,broken")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    import numba
    import skan
    import skimage

    import cirl.deploy.measure as new

    result: dict = {
        "protocol": (
            "synthetic photo 0 at 7360x4912, its label mask and rough/broken variants; "
            f"measure_cracks defaults; median of {args.repeats} interleaved runs after one "
            "warm-up each; first call in a fresh process"
        ),
        "baseline": args.baseline,
        "versions": {
            "scikit-image": skimage.__version__,
            "skan": skan.__version__,
            "numba": numba.__version__,
        },
        "cpus": os.cpu_count(),
        "load_average_before": os.getloadavg(),
        "masks": {},
    }
    with tempfile.TemporaryDirectory(prefix="cirl-measure-") as tmp:
        folder = Path(tmp)
        old = load_baseline(args.baseline, folder)
        all_masks = masks()
        np.save(folder / "label.npy", all_masks["label"])
        result["first_call"] = {which: first_call(folder, which) for which in ("old", "new")}
        print(f"{'first call':10} {'import s':>9} {'1st call s':>11} {'2nd call s':>11}")
        for which, row in result["first_call"].items():
            print(
                f"{which:10} {row['import_seconds']:9.2f} {row['first_call_seconds']:11.2f} "
                f"{row['second_call_seconds']:11.2f}"
            )
        print(
            f"\n{'mask':7} {'cracks':>13} {'old s':>7} {'new s':>7} {'new/old':>7} "
            f"{'|dlength| med/max':>19} {'|dmean w| med/max':>19} {'|dmax w| med/max':>18} "
            f"{'dtotal':>7}"
        )
        for name in filter(None, args.masks.split(",")):
            row = steady_state({"old": old, "new": new}, all_masks[name], args.repeats)
            row["crack_pixels"] = int(np.count_nonzero(all_masks[name]))
            result["masks"][name] = row
            agree = row["agreement"]
            cells = [
                f"{agree[k]['median_abs_rel']:8.2%}/{agree[k]['max_abs_rel']:<8.2%}"
                for k in ("length_px", "mean_width_px", "max_width_px")
            ]
            print(
                f"{name:7} {agree['cracks_old']:>6}/{agree['cracks_new']:<6} "
                f"{row['seconds']['old']:7.2f} {row['seconds']['new']:7.2f} "
                f"{row['new_over_old']:7.2f} {cells[0]:>19} {cells[1]:>19} {cells[2]:>18} "
                f"{agree['total_length_rel']:+7.2%}",
                flush=True,
            )
    result["load_average_after"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
