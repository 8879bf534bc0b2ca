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
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

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


def read_manifest(path: str | os.PathLike) -> list[TileRecord]:
    """Read ``manifest.csv`` back into records.

    Raises:
        CirlError: naming the file when it is missing or its columns are not the expected ones.
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
    records = []
    for number, row in enumerate(reader, start=2):
        try:
            values = {
                k: int(v) if k in _INTS else float(v) if k in _FLOATS else v for k, v in row.items()
            }
        except ValueError as exc:
            raise CirlError(f"{path}:{number}: malformed row ({exc})") from None
        records.append(TileRecord(**values))
    return records
