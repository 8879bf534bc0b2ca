"""Stage ``prepare``: raw dataset -> 512x512 tiles, 90/5/5 split, manifest and dataset card.

``run(cfg, source, fmt, out)`` is the one entry point; the CLI, the DVC stage and the KFP
component call it. Photos are sliced in parallel, one photo per worker at a time, so memory is
bounded by the largest photo, not the dataset. Everything is written to a temporary folder and
moved into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from cirl import __version__
from cirl.config import to_dict
from cirl.data import remote
from cirl.data.images import encode_png
from cirl.data.manifest import TileRecord, manifest_text
from cirl.data.sources import Skip, Source, list_sources, load_source
from cirl.data.split import assign_splits, assign_with_official, parse_ratios
from cirl.data.tiling import EdgePolicy, TileBox, tile_grid
from cirl.errors import CirlError
from cirl.staging import staged_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareConfig:
    """Parameters of the data stage (``params.yaml`` group ``prepare``).

    Attributes:
        tile: tile side in pixels (no resizing); 0 keeps photos whole.
        edge: ``shift`` the last tile inward, or ``pad`` it (see :mod:`cirl.data.tiling`).
        split: train, val, test ratios.
        split_by: ``image`` keeps all tiles of a photo in one split; ``tile`` splits tiles.
        seed: random seed of the split.
        workers: parallel processes slicing photos.
        strict: turn every skipped file into an error (non-zero exit).
        png_level: PNG compression level of the tiles, 0-9 (lossless at every level).
    """

    tile: int = 512
    edge: EdgePolicy = "shift"
    split: tuple[float, float, float] = (0.9, 0.05, 0.05)
    split_by: Literal["image", "tile"] = "image"
    seed: int = 0
    workers: int = 1
    strict: bool = False
    png_level: int = 1

    def __post_init__(self) -> None:
        if self.tile != 0 and self.tile < 32:
            raise ValueError(f"key 'tile' must be 0 (whole photos) or >= 32, got {self.tile}")
        parse_ratios(self.split)
        if self.workers < 1:
            raise ValueError(f"key 'workers' must be >= 1, got {self.workers}")
        if not 0 <= self.png_level <= 9:
            raise ValueError(f"key 'png_level' must be in 0..9, got {self.png_level}")


@dataclass(frozen=True)
class PrepareResult:
    """What ``prepare`` wrote: the folder, tile counts per split and the skipped files."""

    out: Path
    tiles: dict[str, int]
    sources: dict[str, int]
    skipped: list[Skip] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Sliced:
    """A worker's answer for one photo (no pixels, only what the manifest and card need)."""

    index: int
    rows: list[dict] = field(default_factory=list)
    skip: Skip | None = None
    warning: str | None = None
    size: tuple[int, int] | None = None


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _crop(array: np.ndarray, box: TileBox) -> np.ndarray:
    part = array[box.y0 : box.y1, box.x0 : box.x1]
    if not box.padded:
        return np.ascontiguousarray(part)
    out = np.zeros((box.size_h, box.size_w, *array.shape[2:]), array.dtype)
    out[: part.shape[0], : part.shape[1]] = part
    return out


def _slice_one(job: tuple[int, Source, str, PrepareConfig, str]) -> _Sliced:
    index, source, source_file, cfg, staging = job
    result = _Sliced(index)
    try:
        loaded = load_source(source)
    except CirlError as exc:
        # the message already names the file and the fix
        result.skip = Skip(str(source.image), str(exc).removeprefix(f"{source.image}: "), "")
        return result
    h, w = loaded.image.shape[:2]
    result.size = (w, h)
    valid_full = loaded.valid if loaded.valid is not None else np.ones((h, w), bool)
    mask = loaded.mask & valid_full
    n_valid = int(valid_full.sum())
    if n_valid == 0:
        result.skip = Skip(str(source.fov), "field-of-view mask is empty", "check the mask")
        return result
    if int(mask.sum()) == n_valid:
        result.skip = Skip(
            str(source.label),
            "mask marks every pixel as crack (inverted mask?)",
            "masks must be 255 (or 1) on crack and 0 elsewhere; invert it or remove the pair",
        )
        return result
    if not loaded.label_was_binary:
        result.warning = (
            f"{source.label}: mask was not binary; binarised at >127 (half range). "
            "Check it, or save masks with values 0 and 255 only"
        )
    root = Path(staging)
    for box in tile_grid(w, h, cfg.tile, cfg.edge):
        tile_id = f"{source.source_id}_r{box.row:02d}_c{box.col:02d}"
        tile_mask = _crop(mask, box)
        tile_valid = _crop(valid_full, box)
        valid_pixels = int(tile_valid.sum())
        if valid_pixels == 0:
            continue  # a tile wholly outside the field of view carries nothing
        image_sha = _write(
            root / "images" / f"{tile_id}.png", encode_png(_crop(loaded.image, box), cfg.png_level)
        )
        mask_sha = _write(
            root / "masks" / f"{tile_id}.png",
            encode_png(tile_mask.astype(np.uint8) * 255, cfg.png_level),
        )
        valid_rel, valid_sha = "", ""
        if valid_pixels < tile_valid.size:
            valid_rel = f"valid/{tile_id}.png"
            valid_sha = _write(
                root / valid_rel, encode_png(tile_valid.astype(np.uint8) * 255, cfg.png_level)
            )
        result.rows.append(
            dict(
                tile_id=tile_id,
                source_id=source.source_id,
                source_file=source_file,
                x0=box.x0,
                y0=box.y0,
                x1=box.x1,
                y1=box.y1,
                tile_width=box.size_w,
                tile_height=box.size_h,
                image=f"images/{tile_id}.png",
                mask=f"masks/{tile_id}.png",
                valid=valid_rel,
                valid_fraction=valid_pixels / tile_valid.size,
                crack_fraction=int(tile_mask.sum()) / valid_pixels,
                image_sha256=image_sha,
                mask_sha256=mask_sha,
                valid_sha256=valid_sha,
            )
        )
    return result


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _strict_error(skips: list[Skip]) -> CirlError:
    lines = "\n  ".join(s.message() for s in skips[:20])
    more = f"\n  ... and {len(skips) - 20} more" if len(skips) > 20 else ""
    return CirlError(
        f"--strict: {len(skips)} file(s) cannot be used:\n  {lines}{more}\n"
        "fix them, or run without --strict to skip them (they are listed in dataset_card.json)"
    )


def _map(jobs: list, workers: int):
    if workers == 1 or len(jobs) == 1:
        yield from map(_slice_one, jobs)
        return
    with multiprocessing.get_context("forkserver").Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap(_slice_one, jobs, chunksize=1)


def run(
    cfg: PrepareConfig,
    source: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike,
    progress: bool = False,
) -> PrepareResult:
    """Import a raw dataset, slice it into tiles, split it and write manifest and card.

    Args:
        cfg: the stage's parameters.
        source: the raw dataset folder, or ``s3://bucket/prefix`` (downloaded first; endpoint
            and credentials from the ``AWS_*`` environment, see :mod:`cirl.data.remote`).
        fmt: its layout: ``folder``, ``cfd`` or ``drive``.
        out: the prepared folder to (re)create: ``images/``, ``masks/``, ``valid/`` (only for
            tiles with invalid pixels), ``manifest.csv``, ``dataset_card.json``.
        progress: show a progress bar on stderr.

    Returns:
        Counts per split and the files skipped.

    Raises:
        CirlError: bad input that cannot be skipped, or any skip under ``cfg.strict``.
    """
    if remote.is_s3_uri(source):
        with remote.fetched(str(source)) as fetched:
            return _run(cfg, fetched.root, fmt, Path(out), progress, fetched)
    return _run(cfg, Path(source), fmt, Path(out), progress, None)


def _run(
    cfg: PrepareConfig,
    source: Path,
    fmt: str,
    out: Path,
    progress: bool,
    fetched: remote.FetchedDataset | None,
) -> PrepareResult:
    ratios = parse_ratios(cfg.split)
    listing = list_sources(source, fmt)
    skipped = list(listing.skipped)
    if cfg.strict and skipped:
        raise _strict_error(skipped)
    warnings: list[str] = []
    with staged_dir(out) as tmp:
        for sub in ("images", "masks", "valid"):
            (tmp / sub).mkdir()
        jobs = [
            (i, s, _relative(s.image, source), cfg, str(tmp)) for i, s in enumerate(listing.sources)
        ]
        results: list[_Sliced] = []
        iterator = _map(jobs, cfg.workers)
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, total=len(jobs), desc="prepare", unit="photo")
        for sliced in iterator:
            if sliced.skip is not None:
                if cfg.strict:
                    raise _strict_error([sliced.skip])
                skipped.append(sliced.skip)
                log.warning("skipped %s", sliced.skip.message())
            if sliced.warning is not None:
                if cfg.strict:
                    raise CirlError(f"--strict: {sliced.warning}")
                warnings.append(sliced.warning)
                log.warning("%s", sliced.warning)
            results.append(sliced)
        used = [r for r in results if r.skip is None]
        if not used:
            raise CirlError(f"{source}: every photo was skipped; first: {skipped[0].message()}")
        sources = {listing.sources[r.index].source_id: listing.sources[r.index] for r in used}
        rows = [row for r in used for row in r.rows]
        if cfg.split_by == "tile" and all(s.split is None for s in sources.values()):
            assignment = assign_splits((row["tile_id"] for row in rows), ratios, cfg.seed)
            split_notes = [f"tiles assigned at random (tile-level split), seed {cfg.seed}"]
            for row in rows:
                row["split"] = assignment[row["tile_id"]]
        else:
            assignment, split_notes = assign_with_official(
                {k: s.split for k, s in sources.items()}, ratios, cfg.seed
            )
            if cfg.split_by == "tile":
                split_notes.append("split_by=tile ignored: the official split wins")
            for row in rows:
                row["split"] = assignment[row["source_id"]]
        records = [TileRecord(**row) for row in rows]
        text = manifest_text(records)
        (tmp / "manifest.csv").write_text(text)
        card = _card(
            cfg,
            source,
            fmt,
            records,
            used,
            sources,
            skipped,
            warnings,
            listing.notes + split_notes,
            text,
            fetched,
        )
        (tmp / "dataset_card.json").write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    return PrepareResult(out, card["tiles"], card["photos"], skipped, warnings)


def _card(
    cfg: PrepareConfig,
    source: Path,
    fmt: str,
    records: list[TileRecord],
    used: list[_Sliced],
    sources: dict[str, Source],
    skipped: list[Skip],
    warnings: list[str],
    notes: list[str],
    manifest: str,
    fetched: remote.FetchedDataset | None = None,
) -> dict:
    """The dataset card: what is in the prepared folder and how it was made."""
    tiles = Counter(r.split for r in records)
    photos = Counter({s: len({r.source_id for r in records if r.split == s}) for s in tiles})
    crack = defaultdict(float)
    valid = defaultdict(float)
    for r in records:
        n = r.valid_fraction * r.tile_width * r.tile_height
        valid[r.split] += n
        crack[r.split] += r.crack_fraction * n
    sizes = Counter(f"{r.size[0]}x{r.size[1]}" for r in used if r.size)
    order = ("train", "val", "test")
    return {
        "cirl_version": __version__,
        "source": fetched.uri if fetched else str(source),
        # where remote raw data came from, with every object's key and ETag (traceability)
        "source_remote": fetched.card() if fetched else None,
        "format": fmt,
        "params": to_dict(cfg),
        "photos": {s: photos.get(s, 0) for s in order},
        "tiles": {s: tiles.get(s, 0) for s in order},
        "crack_pixel_fraction": {
            s: round(crack[s] / valid[s], 6) if valid[s] else 0.0 for s in order
        },
        "tiles_without_crack": {
            s: sum(1 for r in records if r.split == s and r.crack_fraction == 0) for s in order
        },
        "tiles_with_invalid_pixels": sum(1 for r in records if r.valid),
        "image_sizes": dict(sorted(sizes.items())),
        "manifest_sha256": hashlib.sha256(manifest.encode()).hexdigest(),
        "notes": notes,
        "warnings": warnings,
        "skipped": [{"file": s.file, "reason": s.reason, "fix": s.fix} for s in skipped],
        "official_split": any(s.split is not None for s in sources.values()),
    }
