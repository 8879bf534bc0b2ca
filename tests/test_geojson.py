"""NAME_cracks.geojson: centrelines and widths as GeoJSON, world files and GeoTIFF tags."""

from __future__ import annotations

import json
import math
import struct

import cv2
import numpy as np
import pytest

from cirl.deploy.geo import (
    Georeference,
    cracks_geojson,
    dumps_geojson,
    find_world_file,
    georeference,
    map_decimals,
    read_geotiff,
    read_world_file,
    world_file_names,
    write_cracks_geojson,
)
from cirl.deploy.measure import cracks_to_rows, measure_cracks
from cirl.deploy.skeleton import _skeleton
from cirl.errors import CirlError
from test_measure import band


def y_crack() -> np.ndarray:
    mask = np.zeros((240, 240), np.uint8)
    cv2.line(mask, (30, 30), (120, 120), 1, 3)
    cv2.line(mask, (210, 30), (120, 120), 1, 3)
    cv2.line(mask, (120, 120), (120, 220), 1, 3)
    return mask


def skeleton_pixels(mask: np.ndarray) -> set[tuple[int, int]]:
    """``(x, y)`` of the pruned skeleton of a one-component mask, as the measurement thins it."""
    ys, xs = np.nonzero(mask)
    y0, x0 = ys.min(), xs.min()
    crop = mask[y0 : ys.max() + 1, x0 : xs.max() + 1]
    component = np.pad((crop != 0).astype(np.uint8), 1)
    dist = cv2.distanceTransform(component, cv2.DIST_L2, 5)
    skeleton, _ = _skeleton(component, dist)
    rows, cols = np.nonzero(skeleton)
    return {(int(c) + x0 - 1, int(r) + y0 - 1) for r, c in zip(rows, cols, strict=True)}


def polyline_length(coords: list) -> float:
    pts = np.asarray(coords, dtype=np.float64)
    return float(np.hypot(*np.diff(pts, axis=0).T).sum())


def test_a_y_crack_is_a_multilinestring_on_its_skeleton_as_long_as_the_csv_says():
    mask = y_crack()
    (crack,) = measure_cracks(mask)
    collection = json.loads(dumps_geojson(cracks_geojson([crack], "y")))
    assert collection["type"] == "FeatureCollection" and collection["cirl:crs"] == "pixel"
    assert collection["crs"] is None and "pixel" in collection["cirl:note"]
    (feature,) = collection["features"]
    geometry = feature["geometry"]
    assert geometry["type"] == "MultiLineString" and len(geometry["coordinates"]) == 3
    on_skeleton = skeleton_pixels(mask)
    for line in geometry["coordinates"]:
        assert len(line) >= 2
        for x, y in line:
            assert isinstance(x, int) and isinstance(y, int)
            assert (x, y) in on_skeleton
    # the three branches meet: every line has an end at the junction
    ends = [tuple(p) for line in geometry["coordinates"] for p in (line[0], line[-1])]
    junction = max(set(ends), key=ends.count)
    assert ends.count(junction) >= 2
    total = sum(polyline_length(line) for line in geometry["coordinates"])
    row = cracks_to_rows([crack])[0]
    assert feature["id"] == row["id"] == 1
    assert abs(total - row["length_px"]) / row["length_px"] < 0.03  # the ends' d - 0.5 aside
    # the polylines plus the end corrections are the measured length
    extra = sum(sum(line.ends) for line in crack.centreline)
    assert total + extra == pytest.approx(crack.length_px, rel=0.005)
    for key, value in row.items():
        assert feature["properties"][key] == value
    widths = feature["properties"]["widths_px"]
    assert [len(w) for w in widths] == [len(line) for line in geometry["coordinates"]]


@pytest.mark.parametrize(("angle", "narrow"), [(0, 0.0), (90, 0.0), (30, 2.0), (135, 2.0)])
def test_a_straight_line_is_a_linestring_whose_widths_are_its_width(angle, narrow):
    mask = band((261, 261), (130, 130), angle, 201, 7)
    (crack,) = measure_cracks(mask)
    feature = cracks_geojson([crack])["features"][0]
    coords = feature["geometry"]["coordinates"]
    assert feature["geometry"]["type"] == "LineString"
    widths = feature["properties"]["widths_px"]
    assert len(widths) == len(coords) >= 20  # a vertex at least every 10 px of its 200
    steps = np.hypot(*np.diff(np.asarray(coords, np.float64), axis=0).T)
    assert steps.max() <= 10.0 * math.sqrt(2) + 1e-9
    # exact along an axis-aligned band, its ends included; digital edges at other angles read
    # narrow, as the CSV's max_width_px does (measure.py, step 3)
    assert all(7 - narrow <= w <= round(crack.max_width_px, 3) for w in widths), widths
    if not narrow:
        assert widths == [7.0] * len(widths)
    length = polyline_length(coords) + sum(crack.centreline[0].ends)
    assert length == pytest.approx(crack.length_px, rel=0.005)


def test_a_ring_is_a_closed_linestring_and_a_blob_a_point():
    mask = np.zeros((120, 120), np.uint8)
    cv2.circle(mask, (50, 50), 30, 1, 3)
    mask[100, 100] = 1  # a speck: its skeleton is itself
    ring, blob = measure_cracks(mask, min_pixels=1)
    features = cracks_geojson([ring, blob], mm_per_pixel=0.2)["features"]
    line = features[0]["geometry"]
    assert line["type"] == "LineString" and line["coordinates"][0] == line["coordinates"][-1]
    assert len(features[0]["properties"]["widths_px"]) == len(line["coordinates"])
    assert polyline_length(line["coordinates"]) == pytest.approx(ring.length_px, rel=0.005)
    assert features[1]["geometry"] == {"type": "Point", "coordinates": [100, 100]}
    assert features[1]["properties"]["widths_px"] == [1.0]
    assert features[1]["properties"]["widths_mm"] == [0.2]
    assert features[1]["properties"]["length_px"] == 1.0
    assert features[0]["properties"]["widths_mm"] == [
        round(w * 0.2, 3) for w in features[0]["properties"]["widths_px"]
    ]
    assert features[0]["properties"]["length_mm"] == round(ring.length_px * 0.2, 3)


def test_the_file_is_deterministic_and_one_feature_a_line(tmp_path):
    mask = y_crack()
    cv2.line(mask, (20, 230), (100, 232), 1, 2)
    cracks = measure_cracks(mask)
    write_cracks_geojson(tmp_path / "a.geojson", cracks, "p_cracks", 0.1, None, (240, 240))
    again = measure_cracks(mask.copy())
    write_cracks_geojson(tmp_path / "b.geojson", again, "p_cracks", 0.1, None, (240, 240))
    text = (tmp_path / "a.geojson").read_bytes()
    assert text == (tmp_path / "b.geojson").read_bytes()
    lines = text.decode().splitlines()
    assert len(lines) == 2 + len(cracks) and lines[-1].startswith("]")
    collection = json.loads(text)
    assert [f["id"] for f in collection["features"]] == [c.id for c in cracks]
    assert collection["cirl:image_size"] == [240, 240] and collection["name"] == "p_cracks"
    empty = json.loads(dumps_geojson(cracks_geojson([])))
    assert empty["features"] == []


# ------------------------------------------------------------------------------------------------
# world files
# ------------------------------------------------------------------------------------------------


def test_world_file_names_follow_gdal():
    assert world_file_names("a/p.jpg")[:3] == ["p.jgw", "p.jpgw", "p.wld"]
    assert world_file_names("p.tif")[:3] == ["p.tfw", "p.tifw", "p.wld"]
    assert world_file_names("p.png")[:3] == ["p.pgw", "p.pngw", "p.wld"]
    assert world_file_names("p.JPEG")[:3] == ["p.jgw", "p.jpegw", "p.wld"]
    assert "p.JGW" in world_file_names("p.jpg")


def test_the_world_file_beside_the_photo_is_found(tmp_path):
    photo = tmp_path / "p.png"
    photo.write_bytes(b"")
    assert find_world_file(photo) is None
    (tmp_path / "p.wld").write_text("1\n0\n0\n-1\n0\n0\n")
    assert find_world_file(photo) == tmp_path / "p.wld"
    (tmp_path / "p.pngw").write_text("1\n0\n0\n-1\n0\n0\n")
    assert find_world_file(photo) == tmp_path / "p.pngw"
    (tmp_path / "p.pgw").write_text("1\n0\n0\n-1\n0\n0\n")
    assert find_world_file(photo) == tmp_path / "p.pgw"


def test_a_world_file_maps_pixel_centres_with_its_rotation_terms(tmp_path):
    # A, D, B, E, C, F: B and D differ, so reading them in the wrong order shows
    (tmp_path / "p.jgw").write_text("0.5\n0.1\n0.2\n-0.5\n1000.25\n2000.75\n")
    georef = read_world_file(tmp_path / "p.jgw")
    assert georef.transform == (0.5, 0.2, 1000.25, 0.1, -0.5, 2000.75)
    assert georef.crs is None and georef.kind == "world file"
    assert georef.apply(0, 0) == (1000.25, 2000.75)  # the centre of the upper-left pixel
    x, y = georef.apply(10, 20)
    assert math.isclose(x, 0.5 * 10 + 0.2 * 20 + 1000.25)
    assert math.isclose(y, 0.1 * 10 - 0.5 * 20 + 2000.75)
    # through the GeoJSON: every pixel vertex lands where the transform puts it
    mask = np.zeros((60, 80), np.uint8)
    cv2.line(mask, (10, 20), (70, 20), 1, 3)
    (crack,) = measure_cracks(mask)
    collection = cracks_geojson([crack], georef=georef)
    assert collection["cirl:crs"] == "map" and collection["crs"] is None
    assert collection["cirl:georeference"]["source"] == "p.jgw"
    coords = collection["features"][0]["geometry"]["coordinates"]
    decimals = map_decimals(georef)
    for (px, py), (mx, my) in zip(crack.centreline[0].points, coords, strict=True):
        ex, ey = georef.apply(px, py)
        assert mx == round(ex, decimals) and my == round(ey, decimals)


@pytest.mark.parametrize(
    "transform",
    [
        (2.0, 0.0, 100.0, 0.0, -2.0, 900.0),  # north up, 2 units a pixel
        # rotated by 30 degrees, 0.5 units a pixel
        (
            0.5 * math.cos(math.pi / 6),
            0.5 * math.sin(math.pi / 6),
            0.0,
            0.5 * math.sin(math.pi / 6),
            -0.5 * math.cos(math.pi / 6),
            0.0,
        ),
    ],
)
def test_length_map_is_the_length_in_map_units(transform):
    georef = Georeference(transform, "EPSG:32633", "p.jgw", "world file")
    scale = math.sqrt(abs(transform[0] * transform[4] - transform[1] * transform[3]))
    cracks = measure_cracks(y_crack())
    props = cracks_geojson(cracks, georef=georef)["features"][0]["properties"]
    assert math.isclose(props["length_map"], cracks[0].length_px * scale, rel_tol=1e-5)
    member = cracks_geojson(cracks, georef=georef)["crs"]
    assert member == {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("0.5\n0\n0\n-0.5\n100\n", "holds 5 values"),
        ("0.5\n0\n0\n-0.5\n100\n200\n7\n", "holds 7 values"),
        ("0,5\n0\n0\n-0,5\n100\n200\n", "decimal point"),
        ("0.5\n0\n0\nnorth\n100\n200\n", "'north', is not a number"),
        ("0\n0\n0\n-0.5\n100\n200\n", "A*E - B*D = 0"),
        ("1\n2\n2\n4\n100\n200\n", "A*E - B*D = 0"),
        ("1\n0\n0\n-1\nnan\n200\n", "not a finite number"),
    ],
)
def test_a_bad_world_file_is_refused_with_its_name_and_the_fix(tmp_path, text, says):
    path = tmp_path / "bridge.jgw"
    path.write_text(text)
    with pytest.raises(CirlError) as caught:
        read_world_file(path)
    message = str(caught.value)
    assert str(path) in message and says in message
    assert "predict.geo: pixel" in message and "\n" not in message


# ------------------------------------------------------------------------------------------------
# GeoTIFF tags, in TIFF files written here byte by byte
# ------------------------------------------------------------------------------------------------

SHORT, LONG, DOUBLE, ASCII = 3, 4, 12, 2


def geotiff_bytes(
    image: np.ndarray, extra: dict[int, tuple[int, list]], order: str = "<", big: bool = False
) -> bytes:
    """An uncompressed 8-bit grey TIFF (one strip) with ``extra`` tags ``{tag: (type, values)}``.

    Classic TIFF or BigTIFF, in either byte order: header, pixels, tag values, the directory.
    """
    h, w = image.shape
    head = 16 if big else 8
    pixels = np.ascontiguousarray(image, np.uint8).tobytes()
    tags: dict[int, tuple[int, list]] = {
        256: (SHORT, [w]),
        257: (SHORT, [h]),
        258: (SHORT, [8]),
        259: (SHORT, [1]),
        262: (SHORT, [1]),
        273: (LONG, [head]),
        277: (SHORT, [1]),
        278: (SHORT, [h]),
        279: (LONG, [len(pixels)]),
        **extra,
    }
    codes = {SHORT: "H", LONG: "I", DOUBLE: "d"}
    inline = 8 if big else 4
    offset_code = "Q" if big else "I"
    values = bytearray()
    start = head + len(pixels) + (len(pixels) % 2)
    entries = []
    for tag in sorted(tags):
        kind, data = tags[tag]
        raw = data.encode() + b"\0" if kind == ASCII else None
        if raw is None:
            raw = struct.pack(order + codes[kind] * len(data), *data)
        count = len(raw) if kind == ASCII else len(data)
        if len(raw) <= inline:
            field = raw.ljust(inline, b"\0")
        else:
            field = struct.pack(order + offset_code, start + len(values))
            values += raw + b"\0" * (len(raw) % 2)
        entries.append(struct.pack(order + ("HHQ" if big else "HHI"), tag, kind, count) + field)
    directory = start + len(values)
    mark = b"II" if order == "<" else b"MM"
    if big:
        header = mark + struct.pack(order + "HHHQ", 43, 8, 0, directory)
    else:
        header = mark + struct.pack(order + "HI", 42, directory)
    ifd = struct.pack(order + ("Q" if big else "H"), len(entries)) + b"".join(entries)
    ifd += struct.pack(order + offset_code, 0)
    return header + pixels + b"\0" * (len(pixels) % 2) + bytes(values) + ifd


def geo_keys(*keys: tuple[int, int]) -> tuple[int, list]:
    """A GeoKeyDirectory holding ``(key, value)`` SHORT keys."""
    directory = [1, 1, 0, len(keys)]
    for key, value in sorted(keys):
        directory += [key, 0, 1, value]
    return SHORT, directory


def utm_tags(raster_type: int | None = 1) -> dict:
    keys = [(1024, 1), (3072, 32633)] + ([(1025, raster_type)] if raster_type else [])
    return {
        33550: (DOUBLE, [0.01, 0.02, 0.0]),
        33922: (DOUBLE, [0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0]),
        34735: geo_keys(*keys),
    }


@pytest.mark.parametrize(("order", "big"), [("<", False), (">", False), ("<", True), (">", True)])
def test_a_geotiff_tie_point_and_scale_with_pixel_is_area(tmp_path, order, big):
    path = tmp_path / "p.tif"
    path.write_bytes(geotiff_bytes(np.zeros((4, 6), np.uint8), utm_tags(1), order, big))
    georef = read_geotiff(path)
    assert georef is not None and georef.kind == "GeoTIFF" and georef.crs == "EPSG:32633"
    # PixelIsArea: the tie point is the upper-left pixel's outer corner, its centre half a
    # pixel in: x + 0.005, y - 0.01
    assert georef.apply(0, 0) == pytest.approx((500000.005, 3999999.99))
    assert georef.apply(10, 20) == pytest.approx((500000.105, 3999999.59))
    assert "PixelIsArea" in georef.notes[0]


def test_pixel_is_area_is_the_default_and_pixel_is_point_is_not_shifted(tmp_path):
    (tmp_path / "a.tif").write_bytes(geotiff_bytes(np.zeros((4, 6), np.uint8), utm_tags(None)))
    (tmp_path / "b.tif").write_bytes(geotiff_bytes(np.zeros((4, 6), np.uint8), utm_tags(2)))
    area, point = read_geotiff(tmp_path / "a.tif"), read_geotiff(tmp_path / "b.tif")
    assert area.apply(0, 0) == pytest.approx((500000.005, 3999999.99))
    assert point.apply(0, 0) == pytest.approx((500000.0, 4000000.0))
    assert point.apply(3, 2) == pytest.approx((500000.03, 3999999.96))


def test_a_geotiff_model_transformation_with_rotation_in_wgs84(tmp_path):
    a, b, d, e = 1e-6, 2e-7, 3e-7, -1e-6
    matrix = [a, b, 0.0, 13.4, d, e, 0.0, 52.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    tags = {34264: (DOUBLE, matrix), 34735: geo_keys((1024, 2), (1025, 1), (2048, 4326))}
    path = tmp_path / "p.tiff"
    path.write_bytes(geotiff_bytes(np.zeros((4, 6), np.uint8), tags, ">"))
    georef = read_geotiff(path)
    assert georef.crs == "EPSG:4326"
    # raster (col + 0.5, row + 0.5) through the matrix
    x, y = georef.apply(10, 20)
    assert x == pytest.approx(a * 10.5 + b * 20.5 + 13.4, abs=1e-12)
    assert y == pytest.approx(d * 10.5 + e * 20.5 + 52.5, abs=1e-12)
    mask = np.zeros((40, 60), np.uint8)
    cv2.line(mask, (5, 20), (55, 20), 1, 3)
    collection = cracks_geojson(measure_cracks(mask), georef=georef)
    assert collection["crs"]["properties"]["name"] == "urn:ogc:def:crs:OGC:1.3:CRS84"
    assert map_decimals(georef) == 9  # a thousandth of a 1.02e-6 degree pixel, or finer
    assert collection["cirl:georeference"]["crs"] == "EPSG:4326"


def test_a_tiff_without_geo_tags_and_other_files_have_no_georeference(tmp_path):
    plain = tmp_path / "plain.tif"
    plain.write_bytes(geotiff_bytes(np.zeros((4, 6), np.uint8), {}))
    assert read_geotiff(plain) is None
    jpeg = tmp_path / "p.jpg"
    cv2.imwrite(str(jpeg), np.zeros((8, 8, 3), np.uint8))
    assert read_geotiff(jpeg) is None
    assert georeference(jpeg) is None
    (tmp_path / "p.jgw").write_text("1\n0\n0\n-1\n10\n20\n")
    assert georeference(jpeg, tmp_path / "p.jgw").transform == (1.0, 0.0, 10.0, 0.0, -1.0, 20.0)


def test_the_geotiff_own_tags_win_over_a_world_file(tmp_path):
    path = tmp_path / "p.tif"
    path.write_bytes(geotiff_bytes(np.zeros((4, 6), np.uint8), utm_tags(2)))
    (tmp_path / "p.tfw").write_text("1\n0\n0\n-1\n10\n20\n")
    found = georeference(path, find_world_file(path))
    assert found.kind == "GeoTIFF" and found.apply(0, 0) == pytest.approx((500000.0, 4000000.0))


def test_a_hand_written_geotiff_is_a_tiff_opencv_reads(tmp_path):
    image = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    path = tmp_path / "p.tif"
    path.write_bytes(geotiff_bytes(image, utm_tags(1)))
    assert np.array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), image)


def test_unusable_geotiff_tags_are_refused_with_the_file_and_the_fix(tmp_path):
    gcps = {33922: (DOUBLE, [0, 0, 0, 1, 2, 0, 5, 5, 0, 3, 4, 0])}
    path = tmp_path / "gcp.tif"
    path.write_bytes(geotiff_bytes(np.zeros((4, 6), np.uint8), gcps))
    with pytest.raises(CirlError, match=r"gcp\.tif: .*2 tie points.*gdalwarp.*geo: pixel"):
        read_geotiff(path)
    flat = {**utm_tags(1), 33550: (DOUBLE, [0.0, 0.01, 0.0])}
    path = tmp_path / "flat.tif"
    path.write_bytes(geotiff_bytes(np.zeros((4, 6), np.uint8), flat))
    with pytest.raises(CirlError, match=r"flat\.tif: .*A\*E - B\*D = 0"):
        read_geotiff(path)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(geotiff_bytes(np.zeros((4, 6), np.uint8), utm_tags(1))[:-40])
    with pytest.raises(CirlError, match=r"cut\.tif: .*(truncated|cut short)"):
        read_geotiff(cut)
