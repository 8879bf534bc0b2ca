"""Stage ``predict``: photos of any size to crack maps, overlays and crack measurements.

Sliding window: tiles of ``tile`` px with ``overlap`` px between neighbours (the last tile of a
row or column is shifted inward to end at the edge; a photo smaller than a tile is
reflect-padded). Each tile's probabilities are weighted by a window that falls linearly to
nearly zero across the overlap and are averaged where tiles overlap, so there are no seams.
Tiles run in batches of ``batch``; the photo is processed one row of tiles at a time and only
that strip is kept in floating point, so memory is the 8-bit photo, the 8-bit outputs and one
strip of ``tile`` rows, not a float copy of a 36-megapixel image.

Per photo ``NAME`` (its file stem) in the output folder:

=======================  =============================================================
``NAME_mask.png``        binary crack map, 255 = crack (probability >= threshold)
``NAME_prob.png``        probability, 8-bit (value / 255)
``NAME_overlay.jpg``     the photo for people to look at: each measured crack in its own
                         colour and numbered with its ``NAME_cracks.csv`` id (``id*``: a long
                         straight line, possibly a joint or edge), unmeasured components grey,
                         a legend (colours, threshold, count, longest and widest) and, with
                         ``mm_per_pixel``, a scale bar (``photo_outputs.render_overlay``)
``NAME.json``            report: sizes, conversions, model, engine, timings, crack summary
``NAME_cracks.csv``      one row per connected crack: length, widths, orientation, straightness
                         (px, and mm with ``mm_per_pixel``)
``NAME_cracks.geojson``  the same cracks as GeoJSON features (``geojson: true``): each one's
                         centreline and the width at each vertex, in pixel coordinates or, with
                         ``geo: auto`` and a georeferenced photo (GeoTIFF tags, or a world file
                         beside it, also beside an ``s3://`` object), in map coordinates
                         (:mod:`~cirl.deploy.geo`); not written, with a warning in
                         ``NAME.json``, when that georeference cannot be read
=======================  =============================================================

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

Modules: :mod:`~cirl.deploy.predict_config` (parameters, result, threshold),
:mod:`~cirl.deploy.windows` (a photo through tiles), :mod:`~cirl.deploy.photo_outputs` (the
files, the summary, resume).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cirl import __version__
from cirl.config import to_dict
from cirl.data.images import IMAGE_SUFFIXES, read_image_with_notes
from cirl.data.remote import EndpointError
from cirl.deploy.photo_outputs import (
    MAX_ENDPOINT_FAILURES,
    _abandon,
    _fetched_world,
    _finished,
    _local_fingerprint,
    _local_world,
    _Photo,
    _prefetched,
    _summary_row,
    _world_expected,
    _write_summary,
    render_overlay,
)
from cirl.deploy.predict_config import PredictConfig, PredictResult, decision_threshold
from cirl.deploy.windows import sliding_window
from cirl.errors import CirlError
from cirl.staging import staged_file, writable_dir

log = logging.getLogger(__name__)


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
    """Process one photo and write its outputs (the report last); returns its report."""
    from cirl.deploy.measure import summarize

    if photo is None:
        world, world_fingerprint = _local_world(path)
        photo = _Photo(
            str(path), name, _local_fingerprint(path), path, None, world, world_fingerprint
        )

    t0 = time.perf_counter()
    image_bgr, notes = read_image_with_notes(path)
    t_read = time.perf_counter() - t0
    h, w = image_bgr.shape[:2]
    t0 = time.perf_counter()
    prob8, mask, stats = sliding_window(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB), engine, cfg)
    t_predict = time.perf_counter() - t0
    t0 = time.perf_counter()
    cracks, too_wide = _measure(path, mask, cfg)
    t_measure = time.perf_counter() - t0
    region_pixels = int(sum(r["pixels"] for r in too_wide))
    mm = cfg.mm_per_pixel or None
    t0 = time.perf_counter()
    # an earlier run's report goes first: until the new one is written last, this photo has
    # no report, so a failure half-way never leaves new outputs under an old report
    (out / f"{name}.json").unlink(missing_ok=True)
    _write_outputs(out, name, image_bgr, prob8, mask, cracks, cfg)
    geojson = _write_geojson(out, name, path, photo, cracks, cfg, (w, h))
    t_write = time.perf_counter() - t0
    report = {
        "image": photo.source,
        "input_fingerprint": photo.fingerprint,
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
        "geojson": geojson,
        "outputs": [
            f"{name}_mask.png",
            f"{name}_prob.png",
            f"{name}_overlay.jpg",
            f"{name}.json",
            f"{name}_cracks.csv",
            *([geojson["file"]] if geojson["file"] else []),
        ],
    }
    _write_bytes(out / f"{name}.json", (json.dumps(report, indent=2) + "\n").encode())
    return report


def _measure(path: Path, mask: np.ndarray, cfg: PredictConfig) -> tuple[list, list[dict]]:
    """The mask's cracks, and its regions too wide to be one (said in a warning)."""
    from cirl.deploy.measure import measure_cracks

    too_wide: list[dict] = []
    cracks = measure_cracks(
        mask,
        min_pixels=cfg.min_crack_pixels,
        max_width_px=cfg.max_crack_width,
        too_wide=too_wide,
        centrelines=cfg.geojson,
    )
    if too_wide:
        log.warning(
            "%s: %d region(s) wider than %g px (%.1f%% of the photo) are not cracks and were "
            "not measured; if the model marks large areas, check that it was trained on photos "
            "like these (raise --max-crack-width for very close-up photos)",
            path,
            len(too_wide),
            cfg.max_crack_width,
            100.0 * sum(r["pixels"] for r in too_wide) / mask.size,
        )
    return cracks, too_wide


def _write_outputs(
    out: Path,
    name: str,
    image_bgr: np.ndarray,
    prob8: np.ndarray,
    mask: np.ndarray,
    cracks: list,
    cfg: PredictConfig,
) -> None:
    """The photo's mask, probabilities, overlay and crack table (each written atomically)."""
    from cirl.deploy.measure import write_cracks_csv

    _write_bytes(out / f"{name}_mask.png", _encode(".png", mask.view(np.uint8) * np.uint8(255)))
    _write_bytes(out / f"{name}_prob.png", _encode(".png", prob8))
    overlay = render_overlay(
        image_bgr,
        mask,
        cracks,
        alpha=cfg.overlay_alpha,
        threshold=cfg.threshold,
        mm_per_pixel=cfg.mm_per_pixel or None,
        min_pixels=cfg.min_crack_pixels,
        max_width=cfg.max_crack_width,
    )
    _write_bytes(
        out / f"{name}_overlay.jpg", _encode(".jpg", overlay, [cv2.IMWRITE_JPEG_QUALITY, 90])
    )
    with staged_file(out / f"{name}_cracks.csv") as tmp:
        write_cracks_csv(tmp, cracks, cfg.mm_per_pixel or None)


def _write_geojson(
    out: Path,
    name: str,
    path: Path,
    photo: _Photo,
    cracks: list,
    cfg: PredictConfig,
    size: tuple[int, int],
) -> dict:
    """``NAME_cracks.geojson`` (atomically), and what ``NAME.json`` says of it.

    A georeference that cannot be read (a bad world file, unusable GeoTIFF tags, a world
    file that could not be fetched) costs the photo its GeoJSON, not its other outputs: the
    message goes to the log and to the returned ``warning``, and no file is written (an
    older one is removed), so that map and pixel coordinates are never confused.
    """
    from cirl.deploy.geo import GEOJSON_SUFFIX, georeference, write_cracks_geojson

    target = out / f"{name}{GEOJSON_SUFFIX}"
    record: dict = {
        "file": None,
        "coordinates": None,
        "georeference": None,
        # a world file that could not be fetched is fetched again by the next run
        "world_file_fingerprint": "not fetched"
        if photo.world_error and cfg.geo == "auto"
        else _world_expected(photo, cfg),
        "warning": None,
    }
    if not cfg.geojson:
        target.unlink(missing_ok=True)
        return record
    georef = None
    try:
        if cfg.geo == "auto":
            if photo.world_error:
                raise CirlError(
                    f"{photo.world}: the world file could not be fetched ({photo.world_error})"
                )
            world = None
            if photo.world_remote is not None:
                world = _fetched_world(path, photo)
            elif photo.world:
                world = Path(photo.world)
            georef = georeference(
                path, world, photo_label=photo.source, world_label=photo.world or None
            )
    except CirlError as exc:
        # a downloaded photo is named by its s3:// URI, not the temporary copy's path
        message = str(exc).replace(str(path), photo.source)
        log.warning("%s: no %s%s: %s", photo.source, name, GEOJSON_SUFFIX, message)
        target.unlink(missing_ok=True)
        return {**record, "warning": f"not written: {message}"}
    with staged_file(target) as tmp:
        write_cracks_geojson(tmp, cracks, f"{name}_cracks", cfg.mm_per_pixel or None, georef, size)
    return {
        **record,
        "file": target.name,
        "coordinates": "pixel" if georef is None else "map",
        "georeference": None if georef is None else georef.describe(),
    }


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


def _inputs(inputs: str | os.PathLike, worlds: bool = True) -> tuple[list[_Photo], object]:
    """The photos of ``inputs`` (file, folder or ``s3://`` prefix) and the remote listing,
    each with the world file beside it, if any (looked for only with ``worlds``)."""
    from cirl.data.remote import is_s3_uri, list_objects
    from cirl.deploy.geo import WORLD_SUFFIXES

    if is_s3_uri(str(inputs)):
        # one listing for the photos and the world files beside them; the refusal names the
        # photos' suffixes only
        listed, wanted = ", ".join(IMAGE_SUFFIXES + WORLD_SUFFIXES), ", ".join(IMAGE_SUFFIXES)
        try:
            listing = list_objects(str(inputs), IMAGE_SUFFIXES + WORLD_SUFFIXES)
        except CirlError as exc:
            if listed not in str(exc):
                raise
            raise type(exc)(str(exc).replace(listed, wanted)) from None
        images = [o for o in listing.objects if o.key.lower().endswith(IMAGE_SUFFIXES)]
        if not images:  # world files only
            raise CirlError(
                f"{inputs}: no objects ending in {wanted} under prefix "
                f"{listing.prefix or '(bucket root)'!r} in bucket {listing.bucket!r}; check the "
                "prefix and that the photos were uploaded"
            )
        found = {}
        if worlds:
            found = {o.key: o for o in listing.objects if o.key.lower().endswith(WORLD_SUFFIXES)}
        names = _names([Path(o.key) for o in images])
        photos = [
            _remote_world(
                _Photo(listing.uri_of(o), names[Path(o.key)], f"etag={o.etag}", remote=o),
                listing,
                found,
            )
            for o in images
        ]
        return photos, listing
    files = list_inputs(Path(inputs))
    names = _names(files)
    return [
        _Photo(
            str(f), names[f], _local_fingerprint(f), f, None, *(_local_world(f) if worlds else ())
        )
        for f in files
    ], None


def _remote_world(photo: _Photo, listing: Any, worlds: dict) -> _Photo:
    """The photo with the world file beside its object (the first of GDAL's names), if any."""
    from dataclasses import replace as with_fields

    from cirl.deploy.geo import world_file_names

    key = photo.remote.key
    folder = key[: key.rfind("/") + 1]
    for name in world_file_names(key[len(folder) :]):
        found = worlds.get(folder + name)
        if found is not None:
            return with_fields(
                photo,
                world=listing.uri_of(found),
                world_fingerprint=f"{found.key};etag={found.etag}",
                world_remote=found,
            )
    return photo


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

    photos, listing = _inputs(inputs, cfg.geojson and cfg.geo == "auto")
    engine = _open_engine(cfg, model, tracking_uri)
    choice = engine.description.get("choice")
    threshold = decision_threshold(cfg, engine.description)
    cfg = replace(cfg, threshold=threshold["value"])
    log.info("threshold: %g (%s)", threshold["value"], threshold["source"])
    out = Path(out)
    writable_dir(out)
    result = PredictResult(out, engine=engine.name, engine_choice=choice)
    done_before: dict[str, dict] = {}
    if cfg.resume:
        for photo in photos:
            report = _finished(out, photo, engine, cfg)
            if report is not None:
                done_before[photo.name] = report
    bar = None
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

    rows: list[dict] = []
    try:
        with tempfile.TemporaryDirectory(prefix="cirl-predict-") as folder:
            fetched = _prefetched(photos, listing, Path(folder), set(done_before))
            _predict_photos(fetched, done_before, engine, cfg, out, result, rows, bar)
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


def _open_engine(cfg: PredictConfig, model: Any, tracking_uri: str | None) -> Any:
    """The model opened with the configured engine, the tile checked against its stride."""
    import threading

    from cirl.deploy.opener import load_engine

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
    return engine


def _predict_photos(
    fetched: Any,
    done_before: dict[str, dict],
    engine: Any,
    cfg: PredictConfig,
    out: Path,
    result: PredictResult,
    rows: list[dict],
    bar: Any,
) -> None:
    """Each photo in turn (those done before skipped); the summary rewritten after each. A
    photo that cannot be read is listed as failed; several in a row at an endpoint stop it."""
    endpoint_failures = 0
    for photo, local in fetched:
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


# what this module held before it was split, for callers that import it from here
from cirl.deploy.photo_outputs import OUTPUT_SUFFIXES, SUMMARY_COLUMNS  # noqa: E402, F401
from cirl.deploy.windows import blend_window, window_starts  # noqa: E402, F401
