"""What ``predict`` writes per photo and for the folder: the outputs' names, the summary
CSV's columns and rows, which photos are already done (resume), and the reads of the next
photos started while this one is inferred.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cirl.deploy.predict_config import PredictConfig, PredictResult
from cirl.errors import CirlError
from cirl.staging import staged_file

SUMMARY_COLUMNS: tuple[str, ...] = (
    "image",
    "name",
    "status",
    "cracks",
    "total_length_px",
    "max_width_px",
    "longest_length_px",
    "total_length_mm",
    "max_width_mm",
    "crack_fraction",
    "width",
    "height",
    "seconds",
    "engine",
    "reason",
)
"""Columns of ``summary.csv``: one row per input photo."""


# the parameters that change a photo's outputs: a report made with other values is redone
_OUTPUT_PARAMS = (
    "tile",
    "overlap",
    "threshold",
    "mm_per_pixel",
    "min_crack_pixels",
    "max_crack_width",
    "overlay_alpha",
)


@dataclass(frozen=True)
class _Photo:
    """One input: where it is, its output name and what identifies its content."""

    source: str
    name: str
    fingerprint: str
    local: Path | None = None
    remote: object = None


def _local_fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"size={stat.st_size};mtime_ns={stat.st_mtime_ns}"


def _finished(out: Path, photo: _Photo, engine, cfg: PredictConfig) -> dict | None:
    """The report of an earlier run that already made this photo's outputs, if any."""
    try:
        report = json.loads((out / f"{photo.name}.json").read_text())
    except (OSError, ValueError):
        return None
    same = (
        report.get("image") == photo.source
        and report.get("input_fingerprint") == photo.fingerprint
        and report.get("model", {}).get("checkpoint_sha256")
        == engine.description.get("checkpoint_sha256")
        and all(report.get("params", {}).get(k) == getattr(cfg, k) for k in _OUTPUT_PARAMS)
        and all((out / f).is_file() for f in report.get("outputs", []))
    )
    return report if same else None


_TIMED = ("read", "predict", "measure", "write")


def _summary_row(photo: _Photo, status: str, report: dict | None, reason: str = "") -> dict:
    row = {"image": photo.source, "name": photo.name, "status": status, "reason": reason}
    if report is not None:
        cracks = report["cracks"]
        row.update(
            {
                "cracks": cracks["count"],
                "total_length_px": cracks["total_length_px"],
                "max_width_px": cracks["max_width_px"],
                "longest_length_px": cracks["longest_length_px"],
                "total_length_mm": cracks.get("total_length_mm", ""),
                "max_width_mm": cracks.get("max_width_mm", ""),
                "crack_fraction": round(report["crack_fraction"], 6),
                "width": report["width"],
                "height": report["height"],
                "seconds": round(sum(report["seconds"].get(k, 0.0) for k in _TIMED), 3),
                "engine": report["engine"],
            }
        )
    return row


MAX_ENDPOINT_FAILURES = 3
"""Photos in a row whose download failed at the endpoint (not the object) before a run gives
up: a store that stopped answering fails every remaining photo, each after its timeouts."""


OUTPUT_SUFFIXES = ("_mask.png", "_prob.png", "_overlay.jpg", "_cracks.csv", ".json")
"""The files of one photo ``NAME``: ``NAME`` + each suffix."""


def _abandon(out: Path, photo: _Photo, rows: list[dict], result: PredictResult, exc: OSError):
    """Stop a run whose outputs cannot be written: remove the photo's partial outputs, record
    what is done where it still fits, and raise the one-line error with the fix."""
    import contextlib

    from cirl.errors import describe_os_error

    for suffix in OUTPUT_SUFFIXES:
        with contextlib.suppress(OSError):
            (out / f"{photo.name}{suffix}").unlink(missing_ok=True)
    message = describe_os_error(exc)
    rows.append(_summary_row(photo, "failed", None, message))
    with contextlib.suppress(OSError):  # the same disk: it may not fit either
        _write_summary(out, rows)
    raise CirlError(
        f"stopped at {photo.source}: {message}. {len(result.done)} photo(s) done before it "
        f"have complete outputs in {out}; run the same command again to go on (finished "
        "photos are skipped)"
    )


def _write_summary(out: Path, rows: list[dict]) -> None:
    import csv

    with staged_file(out / "summary.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)


def _prefetched(photos: list[_Photo], listing, folder: Path, skip: set[str]):
    """Yield ``(photo, local path or CirlError)``; remote photos are downloaded one ahead."""
    from concurrent.futures import ThreadPoolExecutor

    if listing is None:
        for photo in photos:
            yield photo, photo.local
        return

    def fetch(photo: _Photo) -> Path | CirlError:
        path = folder / f"{photo.name}{Path(photo.remote.key).suffix.lower()}"
        try:
            listing.download(photo.remote, path)
        except CirlError as exc:
            return exc
        return path

    with ThreadPoolExecutor(1) as pool:
        todo = [p for p in photos if p.name not in skip]
        ahead = pool.submit(fetch, todo[0]) if todo else None
        index = 0
        for photo in photos:
            if photo.name in skip:
                yield photo, None
                continue
            current = ahead.result()
            index += 1
            ahead = pool.submit(fetch, todo[index]) if index < len(todo) else None
            yield photo, current
            if isinstance(current, Path):
                current.unlink(missing_ok=True)
