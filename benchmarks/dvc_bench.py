"""``dvc push`` / ``dvc pull`` of a prepared dataset against plain boto3, to one S3 server.

Protocol: the default dataset of the main job (``cirl synth``: 20 photos of 2048x1536, then
``cirl prepare``: 240 tiles of 512x512, i.e. 480 PNG files plus manifest and card) is moved to
and from a local SeaweedFS S3 server (``weed server -s3`` on 127.0.0.1, started as in the tests)
by two clients with the same number of parallel transfers (``--jobs``, default DVC's own
default of 4 x CPU cores):

* ``boto3 upload`` / ``boto3 download``: a thread pool of ``upload_file`` / ``download_file``
  calls over the files (download lists the prefix first), in this process: the floor.
* ``dvc push`` / ``dvc pull``: ``dvc add`` of the folder in a scratch repository (not timed:
  hashing and copying into the cache is local work, printed separately), then ``dvc push -j``
  to a fresh remote prefix; for pull, workspace copy and cache are deleted and
  ``dvc pull -j`` fetches and checks out. Each is a ``python -m dvc`` process, so DVC's start-up
  is included; ``dvc --version`` is timed too to show that share.
* ``dvc push, up to date``: a second push when the remote has everything (DVC asks the
  remote which objects exist).

Each arm runs ``--repeat`` times and the median is reported with the ratio to boto3 for the
same direction. Results also go to a JSON file. Timings are of this machine in this run only.

    python benchmarks/dvc_bench.py [--repeat 3] [--jobs N] [--json bench_dvc.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the SeaweedFS helper of the tests, not a package module

from services import seaweed_s3  # noqa: E402

BUCKET = "bench"


def _run(argv: list[str], cwd: Path | None = None, env: dict | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
    return seconds


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _boto3_upload(client, root: Path, prefix: str, jobs: int) -> float:
    files = _files(root)
    start = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        futures = [
            pool.submit(client.upload_file, str(p), BUCKET, f"{prefix}/{p.relative_to(root)}")
            for p in files
        ]
        for f in futures:
            f.result()
    return time.perf_counter() - start


def _boto3_download(client, prefix: str, out: Path, jobs: int) -> float:
    start = time.perf_counter()
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]

    def fetch(key: str) -> None:
        path = out / key[len(prefix) + 1 :]
        path.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(BUCKET, key, str(path))

    with ThreadPoolExecutor(jobs) as pool:
        for f in [pool.submit(fetch, k) for k in keys]:
            f.result()
    return time.perf_counter() - start


def _same_tree(a: Path, b: Path) -> bool:
    files_a = [p.relative_to(a) for p in _files(a)]
    return files_a == [p.relative_to(b) for p in _files(b)] and all(
        (a / f).read_bytes() == (b / f).read_bytes() for f in files_a
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per arm (median reported)")
    parser.add_argument("--jobs", type=int, default=4 * (os.cpu_count() or 1))
    parser.add_argument("--json", default="bench_dvc.json", help="where to write results")
    args = parser.parse_args()
    cirl = [sys.executable, "-m", "cirl"]
    dvc = [sys.executable, "-m", "dvc"]
    with tempfile.TemporaryDirectory(prefix="cirl-dvc-bench-") as tmp:
        tmp = Path(tmp)
        _run([*cirl, "synth", "--out", str(tmp / "raw")])
        repo = tmp / "repo"
        data = repo / "prep"
        raw = str(tmp / "raw")
        _run([*cirl, "prepare", "--source", raw, "--format", "folder", "--out", str(data), "-q"])
        files = _files(data)
        n_bytes = sum(p.stat().st_size for p in files)
        with seaweed_s3(tmp / "s3") as s3:
            s3.make_bucket(BUCKET)
            client = s3.client()
            env = {
                **os.environ,
                **s3.env,
                "DVC_NO_ANALYTICS": "1",
                "DVC_GLOBAL_CONFIG_DIR": str(tmp / "dvc-global"),
                "DVC_SYSTEM_CONFIG_DIR": str(tmp / "dvc-system"),
                "DVC_SITE_CACHE_DIR": str(tmp / "dvc-site"),
            }
            _run([*dvc, "init", "--no-scm"], repo, env)
            _run([*dvc, "remote", "add", "-d", "store", f"s3://{BUCKET}/dvc-0"], repo, env)
            _run([*dvc, "remote", "modify", "store", "endpointurl", s3.url], repo, env)
            add_s = _run([*dvc, "add", "prep"], repo, env)
            startup_s = min(_run([*dvc, "--version"], repo, env) for _ in range(3))
            saved = tmp / "saved"
            shutil.copytree(data, saved)
            times: dict[str, list[float]] = {
                k: []
                for k in (
                    "boto3 upload",
                    "dvc push",
                    "dvc push, up to date",
                    "boto3 download",
                    "dvc pull",
                )
            }
            objects = {}
            for i in range(args.repeat):
                times["boto3 upload"].append(_boto3_upload(client, saved, f"plain-{i}", args.jobs))
                down = tmp / f"down-{i}"
                times["boto3 download"].append(
                    _boto3_download(client, f"plain-{i}", down, args.jobs)
                )
                assert _same_tree(saved, down), "boto3 round trip changed the files"
                shutil.rmtree(down)
                url = f"s3://{BUCKET}/dvc-{i}"
                _run([*dvc, "remote", "modify", "store", "url", url], repo, env)
                jobs = ["-j", str(args.jobs)]
                times["dvc push"].append(_run([*dvc, "push", *jobs], repo, env))
                times["dvc push, up to date"].append(_run([*dvc, "push", *jobs], repo, env))
                shutil.rmtree(data)
                shutil.rmtree(repo / ".dvc" / "cache")
                times["dvc pull"].append(_run([*dvc, "pull", *jobs], repo, env))
                assert _same_tree(saved, data), "dvc round trip changed the files"
                for name, prefix in (("boto3", f"plain-{i}/"), ("dvc", f"dvc-{i}/")):
                    listed = client.get_paginator("list_objects_v2").paginate(
                        Bucket=BUCKET, Prefix=prefix
                    )
                    objects[name] = sum(len(p.get("Contents", [])) for p in listed)
    rows = []
    for arm, values in times.items():
        base = times["boto3 upload" if "push" in arm or "upload" in arm else "boto3 download"]
        median = statistics.median(values)
        rows.append(
            {
                "arm": arm,
                "seconds_median": median,
                "seconds": values,
                "mb_per_s": n_bytes / 1e6 / median,
                "ratio_to_boto3": median / statistics.median(base),
            }
        )
    result = {
        "files": len(files),
        "bytes": n_bytes,
        "objects_in_bucket": objects,
        "jobs": args.jobs,
        "repeat": args.repeat,
        "cpu_count": os.cpu_count(),
        "dvc_add_seconds": add_s,
        "dvc_startup_seconds": startup_s,
        "rows": rows,
    }
    print(
        f"{len(files)} files, {n_bytes / 1e6:.1f} MB (20 synthetic 2048x1536 photos -> 512 px "
        f"tiles); objects stored: boto3 {objects['boto3']}, dvc {objects['dvc']}; "
        f"{args.jobs} parallel transfers; median of {args.repeat}"
    )
    print(f"{'arm':<24}{'seconds':>10}{'MB/s':>10}{'x boto3':>10}")
    for r in rows:
        print(
            f"{r['arm']:<24}{r['seconds_median']:>10.2f}{r['mb_per_s']:>10.1f}"
            f"{r['ratio_to_boto3']:>10.2f}"
        )
    print(f"(not in the table: dvc add {add_s:.2f} s; DVC start-up {startup_s:.2f} s per command)")
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
