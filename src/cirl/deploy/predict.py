"""Stage ``predict``: photos of any size to crack maps, overlays and crack measurements.

Sliding window: tiles of ``tile`` px with ``overlap`` px between neighbours (the last tile of a
row or column is shifted inward to end at the edge; a photo smaller than a tile is
reflect-padded). Each tile's probabilities are weighted by a window that falls linearly to
nearly zero across the overlap and are averaged where tiles overlap, so there are no seams.
Tiles run in batches of ``batch``; the photo is processed one row of tiles at a time and only
that strip is kept in floating point, so memory is the 8-bit photo, the 8-bit outputs and one
strip of ``tile`` rows, not a float copy of a 36-megapixel image.

Per photo ``NAME`` (its file stem) in the output folder:

=====================  ===============================================================
``NAME_mask.png``      binary crack map, 255 = crack (probability >= threshold)
``NAME_prob.png``      probability, 8-bit (value / 255)
``NAME_overlay.jpg``   the photo with cracks in red, for people to look at
``NAME.json``          report: sizes, conversions, model, engine, timings, crack summary
``NAME_cracks.csv``    one row per connected crack: length, widths, orientation (px, and mm
                       with ``mm_per_pixel``)
=====================  ===============================================================

Over all photos: ``summary.csv`` (one row per photo: status, cracks, total length, widest
crack, crack fraction, seconds, engine; rewritten after every photo) and ``predictions.json``
(every input with its status, the engine and why it was chosen). A photo that cannot be read
is reported and skipped; the others are still processed; the command exits non-zero if any
failed. Every file is written to a temporary name and renamed into place when complete, and
``NAME.json`` last: a photo whose report exists (made from the same photo, by the same model,
with the same parameters) is skipped when the command runs again, so an interrupted batch
resumes where it stopped.

The input is a photo, a folder of photos, or an ``s3://bucket/prefix`` of photos (fetched one
at a time, the next while the current one is processed; endpoint and credentials from the
standard ``AWS_*`` environment, as for ``cirl prepare``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from cirl import __version__
from cirl.config import to_dict
from cirl.data.images import IMAGE_SUFFIXES, read_image_with_notes
from cirl.data.remote import EndpointError
from cirl.errors import CirlError
from cirl.staging import staged_file, writable_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictConfig:
    """Parameters of prediction (``params.yaml`` group ``predict``).

    Attributes:
        engine: ``auto`` (the fastest engine on this machine that passed the model's
            accuracy gate recorded in its metadata), ``onnx`` (onnxruntime fp32, the
            reference), ``onnx-int8`` (the static int8 copy beside the model), ``openvino``,
            ``openvino-bf16`` or ``torch`` (a ``.pt`` checkpoint).
        tile: sliding-window tile side, a multiple of the model's stride.
        overlap: pixels shared by neighbouring tiles (blended), < tile.
        batch: tiles per forward pass.
        threshold: crack where probability >= threshold; ``auto``: the model's calibrated
            decision threshold (the validation split's best, recorded by ``cirl export
            --evaluation``), else 0.5, the paper's protocol.
        threads: CPU threads of the engine (0 = its default).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        mm_per_pixel: ground sampling distance; > 0 adds millimetre columns, 0 = unknown.
        min_crack_pixels: connected cracks smaller than this are not measured (noise).
        max_crack_width: connected regions wider than this (pixels) are not cracks (stains,
            shadows, or a model that does not fit the photos): reported, not measured.
        overlay_alpha: opacity of the red crack colour in the overlay.
        force: use a low-precision engine (int8, bf16) whose accuracy gate failed or never ran.
        resume: skip photos whose outputs are already in the output folder, made from the same
            photo with the same model and parameters.
    """

    engine: str = "auto"
    tile: int = 512
    overlap: int = 64
    batch: int = 4
    threshold: float | Literal["auto"] = "auto"
    threads: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mm_per_pixel: float = 0.0
    min_crack_pixels: int = 20
    max_crack_width: float = 200.0
    overlay_alpha: float = 0.6
    force: bool = False
    resume: bool = True

    def __post_init__(self) -> None:
        from cirl.deploy.engine import ENGINES

        if self.engine not in ENGINES:
            raise ValueError(
                f"key 'engine' must be one of {', '.join(ENGINES)}, got {self.engine!r}"
            )
        if self.tile < 32:
            raise ValueError(f"key 'tile' must be >= 32, got {self.tile}")
        if not 0 <= self.overlap < self.tile // 2:
            raise ValueError(
                f"key 'overlap' must be in 0..{self.tile // 2 - 1} (under half the tile), "
                f"got {self.overlap}"
            )
        if self.batch < 1:
            raise ValueError(f"key 'batch' must be >= 1, got {self.batch}")
        if self.threshold != "auto" and not 0 < self.threshold < 1:
            raise ValueError(
                f"key 'threshold' must be auto or a number in (0, 1), got {self.threshold}"
            )
        if self.threads < 0:
            raise ValueError(f"key 'threads' must be >= 0, got {self.threads}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"key 'device' must be auto, cpu or cuda, got {self.device!r}")
        if not (self.mm_per_pixel >= 0 and np.isfinite(self.mm_per_pixel)):
            raise ValueError(f"key 'mm_per_pixel' must be a number >= 0, got {self.mm_per_pixel}")
        if self.min_crack_pixels < 1:
            raise ValueError(f"key 'min_crack_pixels' must be >= 1, got {self.min_crack_pixels}")
        if not self.max_crack_width > 0:
            raise ValueError(f"key 'max_crack_width' must be > 0, got {self.max_crack_width}")
        if not 0 <= self.overlay_alpha <= 1:
            raise ValueError(f"key 'overlay_alpha' must be in [0, 1], got {self.overlay_alpha}")


@dataclass
class PredictResult:
    """What happened to every input."""

    out: Path
    done: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Photos whose outputs an earlier run had already made (``resume``)."""
    engine: str = ""
    """The engine that ran (``auto`` resolved)."""
    engine_choice: dict | None = None
    """Why ``auto`` chose it, with its timings (None for a named engine)."""


def window_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one axis: step ``tile - overlap``, the last shifted to end at the edge.

    ``length`` must be >= ``tile`` (shorter sides are padded first).
    """
    if length < tile:
        raise ValueError(f"length {length} is shorter than the tile {tile}; pad it first")
    step = tile - overlap
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def blend_window(tile: int, overlap: int) -> np.ndarray:
    """``(tile,)`` weights: 1 in the middle, falling linearly to ``0.5 / overlap`` at the ends.

    The 2-D weight of a tile is the outer product of two of these. Weighted averaging makes
    the blend continuous across tile borders (each tile fades out where its neighbour takes
    over), and the weight stays positive, so a pixel covered by one tile only keeps its value.
    """
    if overlap == 0:
        return np.ones(tile, np.float32)
    index = np.arange(tile, dtype=np.float32)
    edge = np.minimum(index, tile - 1 - index) + 0.5
    return np.clip(edge / overlap, 0.0, 1.0).astype(np.float32)


def sliding_window(
    image_rgb: np.ndarray, engine, cfg: PredictConfig
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Run ``engine`` over ``image_rgb`` tile by tile and blend.

    Args:
        image_rgb: ``(H, W, 3)`` uint8 RGB photo of any size.
        engine: an engine from :func:`cirl.deploy.opener.load_engine`.
        cfg: tile, overlap, batch and threshold (``auto``: the engine's model's).

    Returns:
        ``(prob8, mask, stats)``: ``(H, W)`` uint8 probability (value / 255), ``(H, W)`` bool
        crack map (float probability >= threshold, before 8-bit rounding) and counts/timings.
    """
    if cfg.tile % engine.stride:
        raise CirlError(
            f"tile {cfg.tile} is not a multiple of the model's stride {engine.stride}; "
            f"use --tile {cfg.tile // engine.stride * engine.stride or engine.stride}"
        )
    threshold = decision_threshold(cfg, getattr(engine, "description", {}))["value"]
    h, w = image_rgb.shape[:2]
    T = cfg.tile
    ph, pw = max(T - h, 0), max(T - w, 0)
    if ph or pw:  # smaller than a tile: reflect so the model sees plausible context
        mode = cv2.BORDER_REFLECT_101 if min(h, w) > 1 else cv2.BORDER_REPLICATE
        image_rgb = cv2.copyMakeBorder(image_rgb, 0, ph, 0, pw, mode)
    H, W = image_rgb.shape[:2]
    ys, xs = window_starts(H, T, cfg.overlap), window_starts(W, T, cfg.overlap)
    ramp = blend_window(T, cfg.overlap)
    weight = np.outer(ramp, ramp)
    prob8 = np.zeros((h, w), np.uint8)
    mask = np.zeros((h, w), bool)
    # Strip accumulators for the rows [base, base + T) of the padded photo.
    num = np.zeros((T, W), np.float32)
    den = np.zeros((T, W), np.float32)
    base = 0
    infer_seconds = 0.0

    def flush(upto: int) -> None:
        """Finish rows [base, upto): no later tile row touches them."""
        nonlocal base, num, den
        rows = upto - base
        if rows <= 0:
            return
        p = num[:rows] / den[:rows]
        lo, hi = base, min(upto, h)
        if hi > lo:
            part = p[: hi - lo, :w]
            mask[lo:hi] = part >= threshold
            prob8[lo:hi] = np.clip(np.rint(part * 255.0), 0, 255).astype(np.uint8)
        num = np.concatenate([num[rows:], np.zeros((rows, W), np.float32)])
        den = np.concatenate([den[rows:], np.zeros((rows, W), np.float32)])
        base = upto

    boxes = [(y, x) for y in ys for x in xs]
    for start in range(0, len(boxes), cfg.batch):
        chunk = boxes[start : start + cfg.batch]
        if chunk[0][0] > base:
            flush(chunk[0][0])
        batch = np.stack([image_rgb[y : y + T, x : x + T] for y, x in chunk])
        batch = batch.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1 / 255)
        t0 = time.perf_counter()
        probs = engine(batch)[:, 0]
        infer_seconds += time.perf_counter() - t0
        for (y, x), p in zip(chunk, probs, strict=True):
            if y > base:  # a batch may span two tile rows
                flush(y)
            num[y - base : y - base + T, x : x + T] += p * weight
            den[y - base : y - base + T, x : x + T] += weight
    flush(H)
    stats = {
        "tiles": len(boxes),
        "grid": [len(ys), len(xs)],
        "padded_to": [H, W] if (ph or pw) else None,
        "infer_seconds": infer_seconds,
    }
    return prob8, mask, stats


def render_overlay(image_bgr: np.ndarray, mask: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """The photo with crack pixels tinted red (BGR uint8, same size)."""
    out = image_bgr.copy()
    red = np.array([0, 0, 255], np.float32)
    pixels = out[mask].astype(np.float32)
    out[mask] = np.clip((1 - alpha) * pixels + alpha * red, 0, 255).astype(np.uint8)
    return out


def _write_bytes(path: Path, data: bytes) -> None:
    with staged_file(path) as tmp:
        tmp.write_bytes(data)


def _encode(ext: str, array: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, array, params or [])
    if not ok:  # pragma: no cover - OpenCV only fails on unsupported arrays
        raise CirlError(f"could not encode an image of shape {array.shape} as {ext}")
    return buf.tobytes()


def list_inputs(path: Path) -> list[Path]:
    """The photos to process: one file, or the image files of a folder (not recursive).

    Raises:
        CirlError: when the path does not exist, or a folder holds no image file.
    """
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CirlError(f"input {path} does not exist; pass a photo or a folder of photos")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CirlError(
            f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder; "
            "pass a folder of photos or a single photo"
        )
    return files


def _names(files: list[Path]) -> dict[Path, str]:
    """Output names: the stem, or stem_ext where two inputs share a stem."""
    stems: dict[str, int] = {}
    for f in files:
        stems[f.stem] = stems.get(f.stem, 0) + 1
    return {
        f: f.stem if stems[f.stem] == 1 else f"{f.stem}_{f.suffix.lstrip('.').lower()}"
        for f in files
    }


def predict_one(
    path: Path, name: str, engine, cfg: PredictConfig, out: Path, photo: _Photo | None = None
) -> dict:
    """Process one photo and write its five outputs (the report last); returns its report."""
    from cirl.deploy.measure import measure_cracks, summarize, write_cracks_csv

    t0 = time.perf_counter()
    image_bgr, notes = read_image_with_notes(path)
    t_read = time.perf_counter() - t0
    h, w = image_bgr.shape[:2]
    t0 = time.perf_counter()
    prob8, mask, stats = sliding_window(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB), engine, cfg)
    t_predict = time.perf_counter() - t0
    t0 = time.perf_counter()
    too_wide: list[dict] = []
    cracks = measure_cracks(
        mask,
        min_pixels=cfg.min_crack_pixels,
        max_width_px=cfg.max_crack_width,
        too_wide=too_wide,
    )
    t_measure = time.perf_counter() - t0
    region_pixels = int(sum(r["pixels"] for r in too_wide))
    if too_wide:
        log.warning(
            "%s: %d region(s) wider than %g px (%.1f%% of the photo) are not cracks and were "
            "not measured; if the model marks large areas, check that it was trained on photos "
            "like these (raise --max-crack-width for very close-up photos)",
            path,
            len(too_wide),
            cfg.max_crack_width,
            100.0 * region_pixels / mask.size,
        )
    mm = cfg.mm_per_pixel or None
    t0 = time.perf_counter()
    # an earlier run's report goes first: until the new one is written last, this photo has
    # no report, so a failure half-way never leaves new outputs under an old report
    (out / f"{name}.json").unlink(missing_ok=True)
    _write_bytes(out / f"{name}_mask.png", _encode(".png", mask.view(np.uint8) * np.uint8(255)))
    _write_bytes(out / f"{name}_prob.png", _encode(".png", prob8))
    overlay = render_overlay(image_bgr, mask, cfg.overlay_alpha)
    _write_bytes(
        out / f"{name}_overlay.jpg", _encode(".jpg", overlay, [cv2.IMWRITE_JPEG_QUALITY, 90])
    )
    with staged_file(out / f"{name}_cracks.csv") as tmp:
        write_cracks_csv(tmp, cracks, mm)
    t_write = time.perf_counter() - t0
    report = {
        "image": photo.source if photo is not None else str(path),
        "input_fingerprint": photo.fingerprint if photo is not None else _local_fingerprint(path),
        "name": name,
        "width": w,
        "height": h,
        "conversions": notes,
        "engine": engine.name,
        "model": engine.description,
        "params": to_dict(cfg),
        "cirl_version": __version__,
        "tiles": stats,
        "crack_pixels": int(mask.sum()),
        "crack_fraction": float(mask.mean()),
        "cracks": summarize(cracks, mm),
        "regions_not_measured": {
            "why": f"wider than max_crack_width ({cfg.max_crack_width:g} px)",
            "count": len(too_wide),
            "pixels": region_pixels,
            "largest": sorted(too_wide, key=lambda r: -r["pixels"])[:20],
        },
        "mm_per_pixel": mm,
        "seconds": {
            "read": t_read,
            "predict": t_predict,
            "infer": stats["infer_seconds"],
            "measure": t_measure,
            "write": t_write,
        },
        "megapixels_per_second": h * w / 1e6 / t_predict if t_predict > 0 else None,
        "outputs": [
            f"{name}_mask.png",
            f"{name}_prob.png",
            f"{name}_overlay.jpg",
            f"{name}.json",
            f"{name}_cracks.csv",
        ],
    }
    _write_bytes(out / f"{name}.json", (json.dumps(report, indent=2) + "\n").encode())
    return report


def _warm_measure() -> None:
    """Import the measurement and compile its JIT paths on a tiny mask with a junction."""
    try:
        from cirl.deploy.measure import measure_cracks

        mask = np.zeros((40, 40), bool)
        mask[20, 5:35] = True
        mask[5:35, 20] = True
        mask[5:12, 5:12] = np.eye(7, dtype=bool)
        measure_cracks(mask, min_pixels=1)
    except Exception as exc:  # a warm-up only: the real call reports any problem
        log.debug("measurement warm-up failed: %s", exc)


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


def _inputs(inputs: str | os.PathLike) -> tuple[list[_Photo], object]:
    """The photos of ``inputs`` (file, folder or ``s3://`` prefix) and the remote listing."""
    from cirl.data.remote import is_s3_uri, list_objects

    if is_s3_uri(str(inputs)):
        listing = list_objects(str(inputs), IMAGE_SUFFIXES)
        names = _names([Path(o.key) for o in listing.objects])
        photos = [
            _Photo(listing.uri_of(o), names[Path(o.key)], f"etag={o.etag}", remote=o)
            for o in listing.objects
        ]
        return photos, listing
    files = list_inputs(Path(inputs))
    names = _names(files)
    return [_Photo(str(f), names[f], _local_fingerprint(f), local=f) for f in files], None


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


def decision_threshold(cfg: PredictConfig, model: dict) -> dict:
    """The threshold a run uses: ``value`` and ``source`` (why that one).

    Args:
        cfg: the stage's parameters (``threshold`` a number, or ``auto``).
        model: the engine's description (``decision_threshold`` where the model records one).
    """
    if cfg.threshold != "auto":
        return {"value": float(cfg.threshold), "source": "given (--threshold)"}
    recorded = model.get("decision_threshold")
    if recorded is None:
        return {
            "value": 0.5,
            "source": "0.5, the paper's protocol: the model records no calibrated threshold "
            "(export it with `cirl export --evaluation EVAL`)",
        }
    calibration = model.get("threshold_calibration") or {}
    return {
        "value": float(recorded),
        "source": f"calibrated on the {calibration.get('split', 'val')} split "
        f"({calibration.get('images', '?')} images, per-image F1 "
        f"{float(calibration.get('f1') or 0):.3f} there), recorded in the model",
    }


def run(
    cfg: PredictConfig,
    inputs: str | os.PathLike,
    model: str | os.PathLike,
    out: str | os.PathLike,
    progress: bool = True,
    tracking_uri: str | None = None,
) -> PredictResult:
    """Predict every photo of ``inputs`` with ``model`` and write the outputs to ``out``.

    Args:
        cfg: the stage's parameters.
        inputs: a photo or a folder of photos.
        model: an ``.onnx`` file (``engine: onnx``), a ``.pt`` checkpoint (``engine: torch``),
            or a registered model ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` (ONNX).
        out: the output folder (created; existing outputs of the same names are replaced).
        progress: show a progress bar.
        tracking_uri: the registry of a ``models:/`` model (default ``$MLFLOW_TRACKING_URI``,
            else ``sqlite:///mlflow.db`` in the working directory).

    Returns:
        The photos done and the ones that failed, with reasons.

    Raises:
        CirlError: when the model cannot be used or there is no input at all; a photo that
            cannot be read is not an error here, it is listed in ``failed``.
    """
    import tempfile
    import threading

    from cirl.deploy.opener import load_engine

    photos, listing = _inputs(inputs)
    engine = load_engine(
        model,
        cfg.engine,
        cfg.threads,
        cfg.device,
        tracking_uri,
        force=cfg.force,
        tile=cfg.tile,
        batch=cfg.batch,
    )
    # skan's import and numba's compilation cost about 3 s once per process: done in the
    # background while the first photo is read and inferred. Not earlier: `auto` times the
    # engines while loading, and a compiling thread beside it took one of the 2 cores here:
    # onnxruntime fp32 read 181-224 ms per tile, 89-96 ms without it (a photo's wall time
    # with a cached choice did not change: 5.5 s either way)
    threading.Thread(target=_warm_measure, name="warm-measure", daemon=True).start()
    choice = engine.description.get("choice")
    log.info(
        "engine: %s%s",
        engine.name,
        f" ({choice['why']}{', cached' if choice.get('cached') else ''})" if choice else "",
    )
    if cfg.tile % engine.stride:
        raise CirlError(
            f"tile {cfg.tile} is not a multiple of the model's stride {engine.stride}; "
            f"use --tile {max(cfg.tile // engine.stride, 1) * engine.stride}"
        )
    threshold = decision_threshold(cfg, engine.description)
    cfg = replace(cfg, threshold=threshold["value"])
    log.info("threshold: %g (%s)", threshold["value"], threshold["source"])
    out = Path(out)
    writable_dir(out)
    result = PredictResult(out, engine=engine.name, engine_choice=choice)
    rows: list[dict] = []
    done_before: dict[str, dict] = {}
    if cfg.resume:
        for photo in photos:
            report = _finished(out, photo, engine, cfg)
            if report is not None:
                done_before[photo.name] = report
    bar = None
    endpoint_failures = 0
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(photos), desc="predict", unit="photo", initial=len(done_before))

    def record(stopped: str | None = None) -> None:
        summary = {
            "model": engine.description,
            "engine": engine.name,
            "engine_choice": choice,
            "threshold": threshold,
            "params": to_dict(cfg),
            "done": result.done,
            "skipped": result.skipped,
            "failed": result.failed,
            **({"stopped": stopped} if stopped else {}),
        }
        _write_bytes(out / "predictions.json", (json.dumps(summary, indent=2) + "\n").encode())

    try:
        with tempfile.TemporaryDirectory(prefix="cirl-predict-") as folder:
            for photo, local in _prefetched(photos, listing, Path(folder), set(done_before)):
                if photo.name in done_before:
                    result.skipped.append(photo.source)
                    rows.append(_summary_row(photo, "skipped", done_before[photo.name]))
                    continue
                try:
                    if isinstance(local, CirlError):
                        raise local
                    report = predict_one(local, photo.name, engine, cfg, out, photo)
                    endpoint_failures = 0
                    result.done.append(photo.source)
                    rows.append(_summary_row(photo, "done", report))
                except OSError as exc:  # the output refused (full disk, read-only): stop here
                    _abandon(out, photo, rows, result, exc)
                except CirlError as exc:
                    # a downloaded photo is named by its s3:// URI, not the temporary copy's path
                    reason = str(exc)
                    if photo.remote is not None and isinstance(local, Path):
                        reason = reason.replace(str(local), photo.source)
                    log.warning("skipped %s", reason)
                    result.failed.append({"image": photo.source, "reason": reason})
                    rows.append(_summary_row(photo, "failed", None, reason))
                    at_endpoint = isinstance(exc, EndpointError)
                    endpoint_failures = endpoint_failures + 1 if at_endpoint else 0
                    if endpoint_failures >= MAX_ENDPOINT_FAILURES:
                        _write_summary(out, rows)
                        raise CirlError(
                            f"gave up after {endpoint_failures} photos in a row could not be "
                            f"fetched: {reason}. {len(result.done)} photo(s) done have complete "
                            f"outputs in {out}; run the same command again to go on"
                        ) from None
                _write_summary(out, rows)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(engine=engine.name, failed=len(result.failed), refresh=False)
    except CirlError as stop:  # the run stopped (outputs refused, endpoint gone): say so there
        import contextlib

        with contextlib.suppress(OSError):
            record(str(stop))
        raise
    if bar is not None:
        bar.close()
    _write_summary(out, rows)
    record()
    return result
