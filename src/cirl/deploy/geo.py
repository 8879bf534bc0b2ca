"""``NAME_cracks.geojson``: every measured crack's centreline and widths as GeoJSON, in the
photo's pixel coordinates or, where the photo is georeferenced, in map coordinates.

The file is a GeoJSON FeatureCollection (RFC 7946's structure) with one Feature per row of
``NAME_cracks.csv``, the same ``id``: its geometry is the crack's centreline
(``Crack.centreline``: the skeleton paths the length is measured on, as the polylines it is
measured along, within 1 px, with a vertex at least every 10 px; every vertex a skeleton
pixel's centre), a ``LineString`` for a crack without branches (closed for a ring), a
``MultiLineString`` (one line per path between ends and junctions) for a branched one, and a
``Point`` for a blob whose skeleton is one pixel. Its properties are the CSV row (same names,
same values) plus ``widths_px``, the width at each vertex (the median of ``2 * d - 1``, ``d``
the distance transform the measurement uses, over the skeleton pixels nearest that vertex:
:class:`~cirl.deploy.skeleton.Polyline`), nested like the coordinates (a list per line),
``widths_mm`` with ``mm_per_pixel``, and ``length_map`` in map coordinates.

Coordinates:

- **pixel** (no georeference, or ``geo: pixel``): ``x`` = column, to the right, ``y`` = row,
  *downward*; the centre of pixel (column, row) is at ``(column, row)``, the convention of the
  CSV's ``cx``, ``cy`` and box (GDAL's raster convention puts it at ``column + 0.5``). RFC 7946
  says coordinates are WGS 84 longitude and latitude; these are not, so the collection says so
  in ``"cirl:crs": "pixel"`` and a note, and carries the legacy (GeoJSON 2008) member
  ``"crs": null``, "no CRS can be assumed".
- **map** (``geo: auto`` and the photo is georeferenced): the pixel centres through the
  photo's affine transform, ``x = A * col + B * row + C``, ``y = D * col + E * row + F``, in
  the traditional GIS order (easting or longitude first). The transform comes from the
  photo's own GeoTIFF tags when it has them, else from a world file beside it (as GDAL looks,
  internal first). ``"cirl:crs": "map"``; the legacy ``crs`` member names the CRS when known,
  ``urn:ogc:def:crs:EPSG::CODE`` (``urn:ogc:def:crs:OGC:1.3:CRS84`` for EPSG:4326), as GDAL's
  GeoJSON driver (QGIS's reader) writes and reads it, else ``null`` (a world file names no
  CRS: give the layer the photo's CRS in the GIS). ``length_map`` is the crack's length along
  the transformed polyline plus the end corrections (the crack goes on ``d - 0.5`` px past a
  skeleton end) mapped along the end segments' directions: ``length_px`` times the pixel size
  for a north-up square-pixel transform.

World files (``NAME.jgw``, ``NAME.jpgw``, ``NAME.pgw``, ``NAME.pngw``, ``NAME.tfw``,
``NAME.tifw``, ``NAME.bpw``, ``NAME.wld``... beside ``NAME.jpg``/``.png``/``.tif``/``.bmp``,
upper case too; :func:`world_file_names`) hold six numbers, one a line: A, D, B, E, C, F, in
the pixel-centre convention: ``(C, F)`` is the map position of the *centre* of the upper-left
pixel, which is the formula above as it stands. A GeoTIFF's ModelTiepoint (33922) with
ModelPixelScale (33550), or its ModelTransformation (34264), maps *raster space* instead:
with ``GTRasterTypeGeoKey`` (1025) PixelIsArea (the default) raster ``(0, 0)`` is the
upper-left pixel's outer corner, so a pixel's centre is at raster ``(col + 0.5, row + 0.5)``
and the transform is shifted by half a pixel to the centre convention; with PixelIsPoint
raster ``(0, 0)`` is already that pixel's centre. The EPSG code is ProjectedCSTypeGeoKey
(3072), else GeographicTypeGeoKey (2048), from the GeoKeyDirectory (34735); 32767
(user-defined) names none. The TIFF tags are read here with ``struct`` (classic TIFF and
BigTIFF, either byte order, the first image's IFD), without GDAL.

A world file that is not six numbers, or whose transform has a zero determinant, and GeoTIFF
tags that cannot be used (tie points without a pixel scale, a truncated directory) raise a
:class:`~cirl.errors.CirlError` naming the file and the fix; ``predict`` then writes the
photo's other outputs and records the message as the GeoJSON's warning in ``NAME.json``.

Same inputs, same bytes: keys sorted, pixel values rounded to 3 decimals (vertices are whole
pixels), map values to a thousandth of a pixel (:func:`map_decimals`), one Feature a line.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cirl.errors import CirlError

GEOJSON_SUFFIX = "_cracks.geojson"
"""The file of photo ``NAME``: ``NAME`` + this."""

WORLD_SUFFIXES: tuple[str, ...] = (
    ".jgw",
    ".jpgw",
    ".jpegw",
    ".pgw",
    ".pngw",
    ".tfw",
    ".tifw",
    ".tiffw",
    ".bpw",
    ".bmpw",
    ".wld",
)
"""Every world-file suffix :func:`world_file_names` can give (lower case)."""

_PIXEL_FIX = "set predict.geo: pixel (--geo pixel) for pixel coordinates"
_FIX = f"fix or remove it, or {_PIXEL_FIX}"

_MAX_WORLD_BYTES = 4096
"""A world file is six numbers: anything larger is not one."""

_MAX_TAG_VALUES = 1 << 20
"""Values of one TIFF tag read at most (a tie-point grid of 170 000 points)."""

_TIFF_TYPES = {
    1: ("B", 1),
    2: ("s", 1),
    3: ("H", 2),
    4: ("I", 4),
    5: ("II", 8),
    6: ("b", 1),
    7: ("B", 1),
    8: ("h", 2),
    9: ("i", 4),
    10: ("ii", 8),
    11: ("f", 4),
    12: ("d", 8),
    16: ("Q", 8),
    17: ("q", 8),
    18: ("Q", 8),
}
"""TIFF field types: struct code of one value and its size in bytes."""

MODEL_PIXEL_SCALE = 33550
MODEL_TIEPOINT = 33922
MODEL_TRANSFORMATION = 34264
GEO_KEY_DIRECTORY = 34735
_GEO_TAGS = (MODEL_PIXEL_SCALE, MODEL_TIEPOINT, MODEL_TRANSFORMATION, GEO_KEY_DIRECTORY)

GT_MODEL_TYPE = 1024
GT_RASTER_TYPE = 1025
GEOGRAPHIC_TYPE = 2048
PROJECTED_CS_TYPE = 3072
PIXEL_IS_AREA, PIXEL_IS_POINT = 1, 2
_USER_DEFINED = 32767


@dataclass(frozen=True)
class Georeference:
    """Where a photo's pixels are on the map.

    Attributes:
        transform: ``(A, B, C, D, E, F)``: the centre of pixel (col, row) is at
            ``x = A * col + B * row + C``, ``y = D * col + E * row + F`` (a world file's
            convention; a GeoTIFF's raster-space transform already converted).
        crs: ``EPSG:CODE`` when known, else None (a world file names no CRS).
        source: The file it came from, as the user named it (a path or an ``s3://`` URI).
        kind: ``world file`` or ``GeoTIFF``.
        notes: How it was read (the GeoTIFF raster type and the shift it implied).
    """

    transform: tuple[float, float, float, float, float, float]
    crs: str | None
    source: str
    kind: str
    notes: tuple[str, ...] = ()

    def apply(self, x: float, y: float) -> tuple[float, float]:
        """Map coordinates of the pixel position ``(x, y)`` (centre of pixel (x, y))."""
        a, b, c, d, e, f = self.transform
        return a * x + b * y + c, d * x + e * y + f

    def stretch(self, dx: float, dy: float) -> float:
        """Map length of the pixel-space vector ``(dx, dy)``."""
        a, b, _, d, e, _ = self.transform
        return math.hypot(a * dx + b * dy, d * dx + e * dy)

    def describe(self, file_name_only: bool = False) -> dict:
        """JSON-able: source (its file name only, if asked), kind, crs, transform, notes."""
        source = (
            self.source.replace("\\", "/").rsplit("/", 1)[-1] if file_name_only else self.source
        )
        return {
            "source": source,
            "kind": self.kind,
            "crs": self.crs,
            "transform": list(self.transform),
            "notes": list(self.notes),
        }


def _checked(transform: Sequence[float], label: str, what: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in transform)
    if not all(math.isfinite(v) for v in values):
        raise CirlError(f"{label}: {what} holds a value that is not a finite number; {_FIX}")
    a, b, _, d, e, _ = values
    det = a * e - b * d
    if not (math.isfinite(det) and det != 0.0):
        raise CirlError(
            f"{label}: {what} maps the photo onto a line or a point (pixel sizes "
            f"A={a:g}, E={e:g}, rotations B={b:g}, D={d:g}: A*E - B*D = 0); {_FIX}"
        )
    return values


# ------------------------------------------------------------------------------------------------
# World files
# ------------------------------------------------------------------------------------------------


def world_file_names(photo: str | os.PathLike) -> list[str]:
    """The world files GDAL looks for beside ``photo``, in its order, file names only.

    For ``NAME.jpg``: ``NAME.jgw`` (the suffix's first and last letters + ``w``),
    ``NAME.jpgw`` (the suffix + ``w``), ``NAME.wld``, then the same in upper case.
    """
    path = Path(photo)
    ext = path.suffix.lower().lstrip(".")
    stem = path.name[: len(path.name) - len(path.suffix)] if path.suffix else path.name
    if not ext:
        return [f"{stem}.wld", f"{stem}.WLD"]
    names = [f"{ext[0]}{ext[-1]}w", f"{ext}w", "wld"]
    names = list(dict.fromkeys(names))
    return [f"{stem}.{n}" for n in names] + [f"{stem}.{n.upper()}" for n in names]


def find_world_file(photo: str | os.PathLike) -> Path | None:
    """The first world file of :func:`world_file_names` beside a local ``photo``, or None."""
    path = Path(photo)
    for name in world_file_names(path):
        candidate = path.with_name(name)
        if candidate.is_file():
            return candidate
    return None


def read_world_file(path: str | os.PathLike, label: str | None = None) -> Georeference:
    """Read a world file: six numbers, one a line, A, D, B, E, C, F (pixel-centre convention).

    Args:
        path: The world file.
        label: How to name it in messages (default: ``path``).

    Raises:
        CirlError: naming the file and the fix when it cannot be read, does not hold exactly
            six finite numbers, or its transform has a zero determinant.
    """
    label = label or str(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_WORLD_BYTES + 1)
    except OSError as exc:
        raise CirlError(
            f"{label}: the world file cannot be read ({exc.strerror}); {_FIX}"
        ) from None
    expected = (
        "a world file holds six numbers, one a line: A, D, B, E, C, F (x pixel size, two "
        "rotation terms, y pixel size, negative for north up, then the map x and y of the "
        "upper-left pixel's centre)"
    )
    if len(data) > _MAX_WORLD_BYTES:
        raise CirlError(
            f"{label}: {expected}; this file is larger than {_MAX_WORLD_BYTES} bytes; {_FIX}"
        )
    try:
        tokens = data.decode("utf-8-sig").split()
    except UnicodeDecodeError:
        raise CirlError(f"{label}: {expected}; this one is not text; {_FIX}") from None
    if len(tokens) != 6:
        raise CirlError(f"{label}: {expected}; this one holds {len(tokens)} values; {_FIX}")
    values = []
    for line, token in enumerate(tokens, start=1):
        try:
            values.append(float(token))
        except ValueError:
            hint = " (write the decimal point as '.')" if "," in token else ""
            raise CirlError(
                f"{label}: {expected}; value {line}, {token[:40]!r}, is not a number{hint}; {_FIX}"
            ) from None
    a, d, b, e, c, f = values
    transform = _checked((a, b, c, d, e, f), label, "the world file")
    return Georeference(transform, None, label, "world file")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# GeoTIFF tags
# ------------------------------------------------------------------------------------------------


def _tiff_tags(path: str | os.PathLike, wanted: Sequence[int], label: str) -> dict | None:
    """The values of the ``wanted`` tags of a TIFF's first image; None when it is not a TIFF.

    Classic TIFF (version 42) and BigTIFF (43), little or big endian.

    Raises:
        CirlError: a TIFF whose directory or a wanted tag's values lie past its end.
    """
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size

        def read(offset: int, count: int) -> bytes:
            if offset < 0 or offset + count > size:
                raise CirlError(
                    f"{label}: its TIFF directory points past the end of the file (truncated?); "
                    f"{_FIX}"
                )
            handle.seek(offset)
            return handle.read(count)

        head = handle.read(16)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        if order is None or len(head) < 8:
            return None
        version = struct.unpack(order + "H", head[2:4])[0]
        if version == 42:
            big, (first,) = False, struct.unpack(order + "I", head[4:8])
        elif version == 43 and len(head) == 16:
            width, _ = struct.unpack(order + "HH", head[4:8])
            if width != 8:
                raise CirlError(f"{label}: a BigTIFF with {width}-byte offsets (not 8); {_FIX}")
            big, (first,) = True, struct.unpack(order + "Q", head[8:16])
        else:
            return None
        count_fmt, entry_fmt, entry_size, inline = (
            ("Q", "HHQ8s", 20, 8) if big else ("H", "HHI4s", 12, 4)
        )
        count_size = struct.calcsize(count_fmt)
        (entries,) = struct.unpack(order + count_fmt, read(first, count_size))
        table = read(first + count_size, entries * entry_size)
        found: dict[int, tuple] = {}
        for i in range(entries):
            tag, kind, n, field = struct.unpack_from(order + entry_fmt, table, i * entry_size)
            if tag not in wanted or kind not in _TIFF_TYPES:
                continue
            code, width = _TIFF_TYPES[kind]
            if n > _MAX_TAG_VALUES:
                raise CirlError(f"{label}: TIFF tag {tag} holds {n} values, too many; {_FIX}")
            nbytes = n * width
            if nbytes <= inline:
                raw = field[:nbytes]
            else:
                (offset,) = struct.unpack(order + ("Q" if big else "I"), field)
                raw = read(offset, nbytes)
            if kind == 2:
                found[tag] = (raw.split(b"\0", 1)[0].decode("latin-1"),)
            elif kind in (5, 10):
                pairs = struct.unpack(order + code[0] * (2 * n), raw)
                found[tag] = tuple(
                    p / q if q else math.nan for p, q in zip(pairs[::2], pairs[1::2], strict=True)
                )
            else:
                found[tag] = struct.unpack(order + code * n, raw)
        return found


def _geo_keys(directory: Sequence[int], label: str) -> dict[int, int]:
    """The GeoKeyDirectory's keys whose value is stored in the directory itself (SHORT)."""
    if len(directory) < 4:
        raise CirlError(f"{label}: its GeoKeyDirectory (tag 34735) is too short; {_FIX}")
    n = int(directory[3])
    if len(directory) < 4 + 4 * n:
        raise CirlError(
            f"{label}: its GeoKeyDirectory (tag 34735) lists {n} keys but holds fewer; {_FIX}"
        )
    keys = {}
    for i in range(n):
        key, location, count, value = (int(v) for v in directory[4 + 4 * i : 8 + 4 * i])
        if location == 0 and count == 1:
            keys[key] = value
    return keys


def read_geotiff(path: str | os.PathLike, label: str | None = None) -> Georeference | None:
    """A GeoTIFF's transform and CRS, from its own tags; None when it has none (or is no TIFF).

    The tie point (with the pixel scale) is used when present, else the transformation
    matrix (GDAL's order). The raster space is converted to the pixel-centre convention of
    :class:`Georeference`: half a pixel for PixelIsArea (the default), none for PixelIsPoint.

    Args:
        path: The photo.
        label: How to name it in messages (default: ``path``).

    Raises:
        CirlError: the tags are there but cannot be used (truncated, tie points without a
            pixel scale, a zero determinant), naming the file and the fix.
    """
    label = label or str(path)
    try:
        tags = _tiff_tags(path, _GEO_TAGS, label)
    except OSError as exc:
        raise CirlError(f"{label}: cannot read its TIFF tags ({exc.strerror}); {_FIX}") from None
    except struct.error:
        raise CirlError(f"{label}: its TIFF directory is cut short (truncated?); {_FIX}") from None
    if not tags or not ({MODEL_TIEPOINT, MODEL_TRANSFORMATION} & set(tags)):
        if tags and MODEL_PIXEL_SCALE in tags:
            raise CirlError(
                f"{label}: a GeoTIFF with a pixel scale (tag 33550) but no tie point (33922) "
                f"or transformation (34264): where it is on the map is not said; {_FIX}"
            )
        return None
    keys = _geo_keys(tags[GEO_KEY_DIRECTORY], label) if GEO_KEY_DIRECTORY in tags else {}
    raster = keys.get(GT_RASTER_TYPE, PIXEL_IS_AREA)
    notes = []
    if raster == PIXEL_IS_POINT:
        shift = 0.0
        notes.append("PixelIsPoint: raster (0, 0) is the upper-left pixel's centre, as here")
    else:
        shift = 0.5
        unknown = (
            "" if raster == PIXEL_IS_AREA else f" (raster type {raster} unknown: taken as area)"
        )
        notes.append(
            "PixelIsArea: raster (0, 0) is the upper-left pixel's outer corner, so pixel "
            f"centres are at raster (col + 0.5, row + 0.5){unknown}"
        )
    tiepoints = tags.get(MODEL_TIEPOINT, ())
    scale = tags.get(MODEL_PIXEL_SCALE, ())
    if len(tiepoints) >= 6 and len(scale) >= 2:
        i, j, _, x, y, _ = (float(v) for v in tiepoints[:6])
        sx, sy = float(scale[0]), float(scale[1])
        transform = (sx, 0.0, x + (shift - i) * sx, 0.0, -sy, y - (shift - j) * sy)
        if len(tiepoints) > 6:
            notes.append(f"{len(tiepoints) // 6} tie points: the first one used, with the scale")
    elif MODEL_TRANSFORMATION in tags:
        m = [float(v) for v in tags[MODEL_TRANSFORMATION]]
        if len(m) < 16:
            raise CirlError(
                f"{label}: its ModelTransformation (tag 34264) holds {len(m)} values, not 16; "
                f"{_FIX}"
            )
        a, b, d, e = m[0], m[1], m[4], m[5]
        transform = (a, b, m[3] + shift * (a + b), d, e, m[7] + shift * (d + e))
    else:
        raise CirlError(
            f"{label}: a GeoTIFF located by {len(tiepoints) // 6} tie points (ground control "
            "points) without a pixel scale (tag 33550): not an affine transform; warp it to a "
            f"regular grid first (gdalwarp), or {_PIXEL_FIX}"
        )
    return Georeference(
        _checked(transform, label, "its GeoTIFF transform"),  # type: ignore[arg-type]
        _epsg(keys),
        label,
        "GeoTIFF",
        tuple(notes),
    )


def _epsg(keys: dict[int, int]) -> str | None:
    """``EPSG:CODE`` from the geo keys: the projected CRS, else the geographic one."""
    model = keys.get(GT_MODEL_TYPE)
    order = (
        (GEOGRAPHIC_TYPE, PROJECTED_CS_TYPE) if model == 2 else (PROJECTED_CS_TYPE, GEOGRAPHIC_TYPE)
    )
    for key in order:
        code = keys.get(key)
        if code is not None and 0 < code < _USER_DEFINED:
            return f"EPSG:{code}"
    return None


def georeference(
    photo: str | os.PathLike,
    world: str | os.PathLike | None = None,
    *,
    photo_label: str | None = None,
    world_label: str | None = None,
) -> Georeference | None:
    """A photo's georeference: its own GeoTIFF tags, else the world file ``world``; or None.

    Args:
        photo: The photo (any format: a TIFF's tags are read, other files have none).
        world: Its world file, when one was found beside it (:func:`find_world_file`).
        photo_label: How to name the photo in messages.
        world_label: How to name the world file in messages (and in ``source``).

    Raises:
        CirlError: from :func:`read_geotiff` or :func:`read_world_file`.
    """
    found = read_geotiff(photo, photo_label)
    if found is not None:
        return found
    if world is not None:
        return read_world_file(world, world_label)
    return None


# ------------------------------------------------------------------------------------------------
# The GeoJSON document
# ------------------------------------------------------------------------------------------------


def map_decimals(georef: Georeference) -> int:
    """Decimals of map values: a thousandth of the shorter pixel side, 0 to 12 of them."""
    a, b, _, d, e, _ = georef.transform
    side = min(math.hypot(a, d), math.hypot(b, e))
    return max(0, min(12, math.ceil(-math.log10(side / 1000.0))))


def _num(value: float, decimals: int) -> float:
    return round(float(value), decimals) + 0.0  # + 0.0: no "-0.0"


def _crs_member(georef: Georeference | None) -> dict | None:
    if georef is None or georef.crs is None:
        return None
    code = georef.crs.split(":", 1)[1]
    name = "urn:ogc:def:crs:OGC:1.3:CRS84" if code == "4326" else f"urn:ogc:def:crs:EPSG::{code}"
    return {"type": "name", "properties": {"name": name}}


def _note(georef: Georeference | None) -> str:
    if georef is None:
        return (
            "coordinates are pixel positions in the photo, not longitude and latitude: x = "
            "column (to the right), y = row (downward), the centre of pixel (column, row) at "
            "(column, row); RFC 7946's WGS 84 does not apply, hence crs null (GeoJSON 2008: no "
            "CRS can be assumed)"
        )
    crs = (
        f"in {georef.crs}, named by the legacy crs member (GeoJSON 2008, read by GDAL and QGIS)"
        if georef.crs
        else "in a CRS the georeference does not name (a world file has none): give the layer "
        "the photo's CRS in the GIS"
    )
    return (
        f"coordinates are map coordinates (x easting or longitude, y northing or latitude) "
        f"from the {georef.kind} ({georef.describe(True)['source']}), {crs}; RFC 7946's "
        "WGS 84 longitude and latitude apply only to EPSG:4326"
    )


def _map_length(lines: Sequence, georef: Georeference) -> float:
    """A centreline's length in map units: the transformed polylines plus the end corrections
    along the direction of each end segment (a lone pixel: by the mean pixel size)."""
    a, b, _, d, e, _ = georef.transform
    total = 0.0
    for line in lines:
        pts = list(line.points)
        if len(pts) < 2:
            total += sum(line.ends) * math.sqrt(abs(a * e - b * d))
            continue
        ring = [*pts, pts[0]] if line.closed else pts
        for (x0, y0), (x1, y1) in itertools.pairwise(ring):
            total += georef.stretch(x1 - x0, y1 - y0)
        for extra, (xa, ya), (xb, yb) in (
            (line.ends[0], pts[0], pts[1]),
            (line.ends[1], pts[-1], pts[-2]),
        ):
            norm = math.hypot(xa - xb, ya - yb)
            if extra > 0.0 and norm > 0.0:
                total += extra * georef.stretch((xa - xb) / norm, (ya - yb) / norm)
    return total


def _geometry(lines: Sequence, georef: Georeference | None, decimals: int) -> tuple:
    """The GeoJSON geometry of a centreline and its per-vertex widths, nested alike."""
    if not lines:
        return None, []

    def position(x: int, y: int) -> list:
        if georef is None:
            return [int(x), int(y)]
        mx, my = georef.apply(x, y)
        return [_num(mx, decimals), _num(my, decimals)]

    coords, widths = [], []
    for line in lines:
        pts = [position(x, y) for x, y in line.points]
        wid = [_num(w, 3) for w in line.widths]
        if line.closed and len(pts) > 1:
            pts, wid = [*pts, pts[0]], [*wid, wid[0]]
        coords.append(pts)
        widths.append(wid)
    if len(coords) == 1 and len(coords[0]) == 1:
        return {"type": "Point", "coordinates": coords[0][0]}, widths[0]
    if len(coords) == 1:
        return {"type": "LineString", "coordinates": coords[0]}, widths[0]
    return {"type": "MultiLineString", "coordinates": coords}, widths


def cracks_geojson(
    cracks: Sequence,
    name: str = "cracks",
    mm_per_pixel: float | None = None,
    georef: Georeference | None = None,
    size: tuple[int, int] | None = None,
) -> dict:
    """The FeatureCollection of ``NAME_cracks.geojson`` (see the module docstring).

    Args:
        cracks: The measured cracks (:func:`cirl.deploy.measure.measure_cracks`), in CSV order.
        name: The collection's ``name`` (GDAL's layer name).
        mm_per_pixel: Millimetres per pixel: the CSV's mm columns and ``widths_mm``.
        georef: Map coordinates through this; None: pixel coordinates.
        size: ``(width, height)`` of the photo, recorded as ``cirl:image_size``.

    Raises:
        ValueError: ``mm_per_pixel`` is given but not finite and > 0.
    """
    from cirl.deploy.measure import cracks_to_rows

    rows = cracks_to_rows(cracks, mm_per_pixel)
    decimals = map_decimals(georef) if georef is not None else 3
    features = []
    for crack, row in zip(cracks, rows, strict=True):
        lines = getattr(crack, "centreline", ())
        geometry, widths = _geometry(lines, georef, decimals)
        properties = dict(row)
        properties["widths_px"] = widths
        if mm_per_pixel:
            scale = float(mm_per_pixel)
            properties["widths_mm"] = _scaled(widths, scale)
        if georef is not None:
            properties["length_map"] = _num(_map_length(lines, georef), decimals) if lines else None
        features.append(
            {"type": "Feature", "id": crack.id, "geometry": geometry, "properties": properties}
        )
    collection: dict = {
        "type": "FeatureCollection",
        "name": name,
        "crs": _crs_member(georef),
        "cirl:crs": "pixel" if georef is None else "map",
        "cirl:note": _note(georef),
        "features": features,
    }
    if size is not None:
        collection["cirl:image_size"] = [int(size[0]), int(size[1])]
    if georef is not None:
        collection["cirl:georeference"] = georef.describe(file_name_only=True)
    return collection


def _scaled(widths: list, scale: float) -> list:
    return [_scaled(w, scale) if isinstance(w, list) else _num(w * scale, 3) for w in widths]


def dumps_geojson(collection: dict) -> str:
    """The collection as text: keys sorted, compact, one Feature a line, a final newline."""
    dump = json.dumps
    options = {"sort_keys": True, "separators": (",", ":"), "allow_nan": False}
    head = dump({**collection, "features": None}, **options)
    body = ",\n".join(dump(f, **options) for f in collection["features"])
    body = f"[\n{body}\n]" if body else "[]"
    return head.replace('"features":null', f'"features":{body}', 1) + "\n"


def write_cracks_geojson(
    path: str | os.PathLike,
    cracks: Sequence,
    name: str = "cracks",
    mm_per_pixel: float | None = None,
    georef: Georeference | None = None,
    size: tuple[int, int] | None = None,
) -> None:
    """Write :func:`cracks_geojson` to ``path`` (UTF-8; its folder must exist)."""
    text = dumps_geojson(cracks_geojson(cracks, name, mm_per_pixel, georef, size))
    Path(path).write_text(text, encoding="utf-8")
