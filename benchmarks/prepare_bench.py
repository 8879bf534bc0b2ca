"""Slicing throughput of ``cirl prepare`` against the bare cost of the same OpenCV work.

Protocol: synthetic 7360x4912 photos (``cirl.data.synth``) are written as JPEG + PNG mask. Each arm
runs in its own fresh process (so peak memory is its own) over the same photos:

* ``bare``: one process decodes each photo and mask with OpenCV and encodes the same 512x512
  tiles (shift policy) as PNG files, nothing else: the floor for this work in one process.
* ``prepare-w1``: ``cirl.data.prepare.run`` with one worker (import, checks, hashing, manifest,
  card, staging and the final move included).
* ``prepare-w2``: the same with two worker processes.

Printed: seconds, megapixels/s of source pixels, the ratio to ``bare``, the peak resident
memory of the arm's own process (VmHWM) and of its whole process tree with the workers
(summed resident memory sampled every 100 ms).
Results also go to a JSON file.

    python benchmarks/prepare_bench.py [--n 4] [--json bench_prepare.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

W, H, TILE = 7360, 4912, 512


def _make_raw(root: Path, n: int) -> None:
    import cv2

    from cirl.data.synth import SynthConfig, render_sample

    cfg = SynthConfig(n=n, width=W, height=H)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        image, mask, _ = render_sample(cfg, i)
        cv2.imwrite(str(root / "images" / f"p{i:03d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(root / "masks" / f"p{i:03d}.png"), mask)


def _bare(raw: Path, out: Path) -> None:
    import cv2

    from cirl.data.tiling import tile_grid

    out.mkdir()
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    for image_path in sorted((raw / "images").iterdir()):
        image = cv2.imread(str(image_path))
        mask = cv2.imread(str(raw / "masks" / f"{image_path.stem}.png"), cv2.IMREAD_GRAYSCALE)
        for box in tile_grid(image.shape[1], image.shape[0], TILE, "shift"):
            name = f"{image_path.stem}_{box.row}_{box.col}"
            cv2.imwrite(str(out / f"{name}.png"), image[box.y0 : box.y1, box.x0 : box.x1], params)
            cv2.imwrite(str(out / f"{name}_m.png"), mask[box.y0 : box.y1, box.x0 : box.x1], params)


def _tree_rss_kib(root: int) -> int:
    """Resident memory of process ``root`` and all its descendants now, in KiB (from /proc)."""
    parent, rss = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text().splitlines()
        except OSError:  # the process ended meanwhile
            continue
        pid = int(entry.name)
        parent[pid] = int(stat.rsplit(")", 1)[1].split()[1])
        rss[pid] = next((int(x.split()[1]) for x in status if x.startswith("VmRSS")), 0)
    total = 0
    for pid in rss:
        p = pid
        while p and p != root:
            p = parent.get(p, 0)
        if p == root:
            total += rss[pid]
    return total


class _TreePeak:
    """Samples the summed resident memory of this process and its workers every 100 ms."""

    def __init__(self) -> None:
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.1):
            self.peak_kib = max(self.peak_kib, _tree_rss_kib(me))

    def __enter__(self) -> _TreePeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _arm(name: str, raw: Path, out: Path) -> dict:
    with _TreePeak() as sampler:
        start = time.perf_counter()
        if name == "bare":
            _bare(raw, out)
        else:
            from cirl.data.prepare import PrepareConfig, run

            workers = int(name.rsplit("w", 1)[1])
            cfg = PrepareConfig(tile=TILE, workers=workers, split=(0.5, 0.25, 0.25))
            run(cfg, raw, "folder", out)
        seconds = time.perf_counter() - start
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so this process would
    # report the parent's peak (the parent renders the 36 MP photos). The workers (forkserver
    # grandchildren, never waited for here) are covered by the sampled process-tree sum.
    status = Path("/proc/self/status").read_text().splitlines()
    own_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    return {
        "arm": name,
        "seconds": seconds,
        "peak_rss_mib": own_kib / 1024,
        "peak_tree_rss_mib": sampler.peak_kib / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4, help="number of 7360x4912 photos")
    parser.add_argument("--json", default="bench_prepare.json", help="where to write results")
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--raw", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:  # child process: run one arm and report
        print(json.dumps(_arm(args.arm, Path(args.raw), Path(args.out))))
        return
    with tempfile.TemporaryDirectory(prefix="cirl-bench-") as tmp:
        raw = Path(tmp) / "raw"
        _make_raw(raw, args.n)
        megapixels = args.n * W * H / 1e6
        rows = []
        for arm in ("bare", "prepare-w1", "prepare-w2"):
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--arm",
                    arm,
                    "--raw",
                    str(raw),
                    "--out",
                    str(Path(tmp) / arm),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["megapixels_per_s"] = megapixels / row["seconds"]
            rows.append(row)
    bare = rows[0]["seconds"]
    for row in rows:
        row["time_vs_bare"] = row["seconds"] / bare
    print(f"{args.n} photos of {W}x{H} ({megapixels:.0f} MP), tile {TILE}, PNG level 1")
    print(f"{'arm':<12}{'seconds':>10}{'MP/s':>10}{'x bare':>10}{'peak MiB':>10}{'tree MiB':>10}")
    for r in rows:
        print(
            f"{r['arm']:<12}{r['seconds']:>10.2f}{r['megapixels_per_s']:>10.1f}"
            f"{r['time_vs_bare']:>10.2f}{r['peak_rss_mib']:>10.0f}"
            f"{r['peak_tree_rss_mib']:>10.0f}"
        )
    Path(args.json).write_text(
        json.dumps({"photos": args.n, "size": [W, H], "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
