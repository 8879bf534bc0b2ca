"""Tile geometry: cutting a photo into fixed-size tiles without resizing.

Edges that are not a multiple of the tile size are handled by one of two policies:

* ``shift`` (default): the last tile of a row or column is moved inward so that it ends at the
  image edge. Every tile is full of real pixels; the last tile overlaps its neighbour.
* ``pad``: tiles sit on a regular grid; the last ones stick out of the image and the part
  outside is zero-padded and recorded as invalid in the tile's valid-region mask.

A side shorter than the tile cannot be shifted, so under both policies that side is padded to
the tile size (bottom/right) with the padding marked invalid. ``tile = 0`` keeps each photo
whole as a single tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

EdgePolicy = Literal["shift", "pad"]


@dataclass(frozen=True)
class TileBox:
    """A tile's place: source pixels ``[y0:y1, x0:x1]`` go to the tile's top-left corner.

    Attributes:
        row, col: grid position.
        x0, y0, x1, y1: the crop box in source coordinates (end exclusive, inside the image).
        size_w, size_h: the tile's size; larger than the crop box where it is padded.
    """

    row: int
    col: int
    x0: int
    y0: int
    x1: int
    y1: int
    size_w: int
    size_h: int

    @property
    def padded(self) -> bool:
        """True when part of the tile lies outside the photo."""
        return (self.x1 - self.x0, self.y1 - self.y0) != (self.size_w, self.size_h)


def axis_starts(length: int, tile: int, edge: EdgePolicy) -> list[int]:
    """Start offsets of the tiles along one axis of ``length`` pixels."""
    if length <= tile:
        return [0]
    count = math.ceil(length / tile)
    starts = [i * tile for i in range(count)]
    if edge == "shift":
        starts[-1] = length - tile
    return starts


def tile_grid(width: int, height: int, tile: int, edge: EdgePolicy = "shift") -> list[TileBox]:
    """All tiles of a ``width`` x ``height`` photo, row by row.

    Args:
        width, height: the photo's size in pixels.
        tile: tile side in pixels; 0 keeps the photo whole.
        edge: ``shift`` or ``pad`` (see the module docstring).

    Returns:
        The tiles in row-major order.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if tile == 0:
        return [TileBox(0, 0, 0, 0, width, height, width, height)]
    if edge not in ("shift", "pad"):
        raise ValueError(f"edge must be 'shift' or 'pad', got {edge!r}")
    boxes = []
    for row, y0 in enumerate(axis_starts(height, tile, edge)):
        for col, x0 in enumerate(axis_starts(width, tile, edge)):
            boxes.append(
                TileBox(row, col, x0, y0, min(x0 + tile, width), min(y0 + tile, height), tile, tile)
            )
    return boxes
