"""CI loss cost against the number of ambiguous pixels |S|: ours vs the dense brute force.

Protocol: one image, ``|S|`` ambiguous pixels (1k to 64k), features of ``--channels`` channels
(16: the last decoder feature of ``unet-small``), K = 20, float32 on the CPU. Each measurement
runs in a fresh subprocess: inputs are made, the peak resident memory is reset
(``/proc/self/clear_refs``), then forward + backward run ``--repeats`` times; reported are the
median seconds and the peak resident memory above the inputs.

* ``ours``: :func:`cirl.method.losses.ci_loss` (chunked top-K search without gradient, sums over
  ``O_m`` from totals; memory O(|S| K + chunk)).
* ``dense``: the textbook form: the full |S| x |S| cosine matrix, its top-K mask and the full
  matrix of ``p_m . p_n`` with autograd (memory O(|S|^2)); run only up to ``--dense-max``.

The two are checked to agree (relative difference printed) where both run.

    python benchmarks/ci_loss_bench.py [--sizes 1024,4096,16384,65536] [--json ci_bench.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time, statistics
import torch
import torch.nn.functional as F
from cirl.method.losses import ci_loss

impl = sys.argv[1]
size, channels, k, repeats = (int(v) for v in sys.argv[2:6])
g = torch.Generator().manual_seed(0)
side = int(size ** 0.5) + 1
prob0 = torch.rand(1, 1, side, side, generator=g)
features = torch.randn(1, channels, side, side, generator=g)
ambiguous = torch.zeros(1, 1, side, side, dtype=torch.bool)
ambiguous.view(-1)[:size] = True

def dense(prob):
    idx = torch.nonzero(ambiguous.view(-1)).squeeze(1)
    p = prob.view(-1)[idx]
    f = F.normalize(features.view(channels, -1)[:, idx].T, dim=1)
    pairs = torch.stack([1 - p, p], 1)
    with torch.no_grad():
        sim = f @ f.T
        sim.fill_diagonal_(float("-inf"))
        near = torch.zeros_like(sim, dtype=torch.bool)
        near.scatter_(1, sim.topk(k, dim=1).indices, True)
        del sim
        rest = ~near
        rest.fill_diagonal_(False)
    agree = pairs @ pairs.T
    psi = -(agree * near).sum(1) + (k / (size - 1 - k)) * (agree * rest).sum(1)
    return psi.mean()

def ours(prob):
    return ci_loss(prob, features, ambiguous, k=k, max_pixels=size)

fn = ours if impl == "ours" else dense
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
open("/proc/self/clear_refs", "w").write("5")
base = status("VmRSS:")
times = []
for _ in range(repeats):
    prob = prob0.clone().requires_grad_(True)
    t0 = time.perf_counter()
    loss = fn(prob)
    loss.backward()
    times.append(time.perf_counter() - t0)
peak = status("VmHWM:") - base
print(json.dumps({"seconds": statistics.median(times), "peak_bytes": peak, "loss": float(loss)}))
"""


def measure(impl: str, size: int, channels: int, k: int, repeats: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, impl, str(size), str(channels), str(k), str(repeats)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1024,2048,4096,8192,16384,32768,65536")
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dense-max", type=int, default=16384)
    parser.add_argument("--json", default="ci_loss_bench.json")
    args = parser.parse_args(argv)
    rows = []
    names = ("|S|", "ours s", "ours MiB", "dense s", "dense MiB", "time x", "mem x", "rel diff")
    widths = (7, 9, 9, 9, 10, 7, 7, 9)
    print(" ".join(f"{n:>{w}}" for n, w in zip(names, widths, strict=True)))
    for size in (int(s) for s in args.sizes.split(",")):
        ours = measure("ours", size, args.channels, args.k, args.repeats)
        dense = (
            measure("dense", size, args.channels, args.k, args.repeats)
            if size <= args.dense_max
            else None
        )
        row = {"size": size, "ours": ours, "dense": dense}
        if dense and "error" not in dense and "error" not in ours:
            row["time_ratio_dense_over_ours"] = dense["seconds"] / ours["seconds"]
            row["memory_ratio_dense_over_ours"] = dense["peak_bytes"] / max(ours["peak_bytes"], 1)
            row["relative_difference"] = abs(dense["loss"] - ours["loss"]) / abs(dense["loss"])
        rows.append(row)

        def fmt(x: dict | None, key: str, scale: float = 1.0, width: int = 9) -> str:
            if not x or key not in x:
                return f"{'-':>{width}}"
            return f"{x[key] / scale:{width}.3f}"

        print(
            f"{size:7d} {fmt(ours, 'seconds')} {fmt(ours, 'peak_bytes', 2**20)} "
            f"{fmt(dense, 'seconds')} {fmt(dense, 'peak_bytes', 2**20, 10)} "
            f"{row.get('time_ratio_dense_over_ours', float('nan')):7.2f} "
            f"{row.get('memory_ratio_dense_over_ours', float('nan')):7.1f} "
            f"{row.get('relative_difference', float('nan')):9.2e}",
            flush=True,
        )
    result = {
        "protocol": (
            f"one image, K={args.k}, {args.channels} feature channels, float32 CPU, forward + "
            f"backward, median of {args.repeats}, fresh process per point, peak RSS above inputs"
        ),
        "rows": rows,
    }
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
