"""The manifest: one row per tile, the contract between the data stage and everything after it.

Columns (``manifest.csv``, UTF-8, header row, ``\\n`` line ends, rows ordered by source then
tile):

======================  =====================================================================
``tile_id``             unique tile name; its files are ``images/ID.png`` and ``masks/ID.png``
``split``               ``train``, ``val`` or ``test``
``source_id``           the photo the tile comes from (all of a photo's tiles share a split
                        unless the split was made per tile)
``source_file``         the photo's path relative to the raw dataset folder
``x0,y0,x1,y1``         crop box in the photo (pixels, end exclusive)
``tile_width,tile_height``  size of the tile files (larger than the box where padded)
``image,mask,valid``    tile files relative to the prepared folder; ``valid`` is empty when
                        every pixel of the tile is valid, else a PNG (255 = valid)
``valid_fraction``      valid pixels / tile pixels
``crack_fraction``      crack pixels / valid pixels
``image_sha256`` ...    SHA-256 of the image, mask and valid-region files (empty if no file)
======================  =====================================================================

Reading is guarded twice. :func:`read_manifest` refuses file paths that are absolute or that
resolve (after ``..`` and symlinks) outside the manifest's folder, so a manifest cannot make a
stage open files elsewhere. :func:`verify_files` checks the files of the splits a run reads
against the SHA-256 columns, so a tile changed after ``cirl prepare`` is caught before it is
used (train, select and evaluate call it unless ``verify_data`` is off).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

from cirl.errors import CirlError


@dataclass(frozen=True)
class TileRecord:
    """One manifest row (see the module docstring for the meaning of each field)."""

    tile_id: str
    split: str
    source_id: str
    source_file: str
    x0: int
    y0: int
    x1: int
    y1: int
    tile_width: int
    tile_height: int
    image: str
    mask: str
    valid: str
    valid_fraction: float
    crack_fraction: float
    image_sha256: str
    mask_sha256: str
    valid_sha256: str


COLUMNS = tuple(f.name for f in fields(TileRecord))
FILE_COLUMNS = ("image", "mask", "valid")
"""Columns holding file paths relative to the prepared folder (``valid`` may be empty)."""
_INTS = {"x0", "y0", "x1", "y1", "tile_width", "tile_height"}
_FLOATS = {"valid_fraction", "crack_fraction"}


def _fmt(key: str, value: object) -> str:
    return f"{value:.6f}" if key in _FLOATS else str(value)


def manifest_text(records: list[TileRecord]) -> str:
    """The manifest as CSV text, byte-for-byte reproducible for the same records."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for record in records:
        row = asdict(record)
        writer.writerow([_fmt(k, row[k]) for k in COLUMNS])
    return buf.getvalue()


def _check_confined(path: Path, root: Path, number: int, record: TileRecord) -> None:
    """Refuse a row whose file paths are absolute or resolve outside ``root`` (resolved)."""
    fix = (
        "manifest paths must be relative paths inside the prepared folder; re-run "
        "`cirl prepare` to rewrite it, or correct the row"
    )
    where = f"{path}:{number} (tile {record.tile_id!r})"
    for column in FILE_COLUMNS:
        value = getattr(record, column)
        if not value:
            if column != "valid":
                raise CirlError(f"{where}: empty {column!r} path; {fix}")
            continue
        if os.path.isabs(value) or Path(value).is_absolute():
            raise CirlError(f"{where}: {column!r} path {value!r} is absolute; {fix}")
        resolved = (path.parent / value).resolve()
        if not resolved.is_relative_to(root):
            raise CirlError(
                f"{where}: {column!r} path {value!r} resolves to {resolved}, outside the "
                f"prepared folder {root} (through '..' or a symlink); {fix}"
            )


def read_manifest(path: str | os.PathLike) -> list[TileRecord]:
    """Read ``manifest.csv`` back into records.

    Every row's ``image``, ``mask`` and ``valid`` paths are checked to stay inside the folder
    of the manifest once ``..`` and symlinks are resolved (no absolute paths).

    Args:
        path: ``manifest.csv`` or the prepared folder holding it.

    Raises:
        CirlError: naming the file when it is missing or its columns are not the expected ones;
            naming the file, line and tile when a row is malformed or a path leads outside
            the folder.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.csv"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CirlError(f"{path} not found; point at a folder written by `cirl prepare`") from None
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise CirlError(
            f"{path}: unexpected columns {reader.fieldnames}; expected {list(COLUMNS)} "
            "(re-run `cirl prepare` with this version of cirl)"
        )
    root = path.parent.resolve()
    records = []
    for number, row in enumerate(reader, start=2):
        try:
            values = {
                k: int(v) if k in _INTS else float(v) if k in _FLOATS else v for k, v in row.items()
            }
        except (ValueError, TypeError) as exc:
            raise CirlError(f"{path}:{number}: malformed row ({exc})") from None
        record = TileRecord(**values)
        _check_confined(path, root, number, record)
        records.append(record)
    return records


class FileCheck(NamedTuple):
    """One file of a manifest row: the SHA-256 the manifest expects and the one it has
    (``actual`` None and ``error`` set when it cannot be read)."""

    record: TileRecord
    column: str
    path: Path
    expected: str
    actual: str | None
    error: OSError | None


def check_files(
    folder: str | os.PathLike,
    records: Iterable[TileRecord],
    split: str | Iterable[str] | None = None,
) -> Iterator[FileCheck]:
    """Hash each file of ``records`` (those of ``split`` only, when given) against its
    manifest column, one :class:`FileCheck` a file; each file read once, in 1 MiB blocks."""
    from cirl.hashing import file_sha256

    folder = Path(folder)
    splits = None if split is None else {split} if isinstance(split, str) else set(split)
    for record in records:
        if splits is not None and record.split not in splits:
            continue
        for column in FILE_COLUMNS:
            name = getattr(record, column)
            if not name:
                continue
            path, expected = folder / name, getattr(record, f"{column}_sha256")
            try:
                yield FileCheck(record, column, path, expected, file_sha256(path), None)
            except OSError as exc:
                yield FileCheck(record, column, path, expected, None, exc)


def verify_files(
    folder: str | os.PathLike,
    records: Iterable[TileRecord],
    split: str | Iterable[str] | None = None,
) -> int:
    """Check the files of ``records`` against the manifest's SHA-256 columns.

    Each file is read once, in 1 MiB blocks. Use it on records from :func:`read_manifest`
    (whose paths are confined to ``folder``).

    Args:
        folder: the prepared folder the records' paths are relative to.
        records: manifest rows, e.g. ``read_manifest(folder)``.
        split: only rows of this split (or these splits); None checks every row.

    Returns:
        The number of files checked.

    Raises:
        CirlError: naming the file, its tile, the expected and the actual SHA-256 (or that it
            is missing) and the fix: restore the data or re-run ``cirl prepare``.
    """
    fix = (
        "the prepared data changed after `cirl prepare`: restore the original files "
        f"(e.g. from the data remote) or re-run `cirl prepare` to rewrite {folder}"
    )
    checked = 0
    for check in check_files(folder, records, split):
        file, tile = check.path, check.record.tile_id
        if check.error is not None:
            raise CirlError(
                f"{file}: cannot read the {check.column} of tile {tile!r} "
                f"({check.error.strerror or check.error}); {fix}"
            )
        if check.actual != check.expected:
            raise CirlError(
                f"{file}: SHA-256 mismatch for the {check.column} of tile {tile!r}: the "
                f"manifest expects {check.expected or '(none)'}, the file has {check.actual}; {fix}"
            )
        checked += 1
    return checked
