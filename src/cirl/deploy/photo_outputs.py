"""What ``predict`` writes per photo and for the folder: the outputs' names, the summary
CSV's columns and rows, which photos are already done (resume), the reads of the next
photos started while this one is inferred, and the overlay people look at
(:func:`render_overlay`: cracks coloured and numbered by their ``NAME_cracks.csv`` id, a
legend, a scale bar).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

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
    "geojson",
    "geo",
)


@dataclass(frozen=True)
class _Photo:
    """One input: where it is, its output name and what identifies its content.

    ``world`` is the world file found beside it (a path, or an ``s3://`` URI with
    ``world_remote`` its object, fetched beside the downloaded photo), ``""`` when none;
    ``world_fingerprint`` identifies its content, and ``world_error`` says why a remote one
    could not be fetched.
    """

    source: str
    name: str
    fingerprint: str
    local: Path | None = None
    remote: object = None
    world: str = ""
    world_fingerprint: str = ""
    world_remote: object = None
    world_error: str = ""


def _local_fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"size={stat.st_size};mtime_ns={stat.st_mtime_ns}"


def _local_world(path: Path) -> tuple[str, str]:
    """``(world file, its fingerprint)`` beside a local photo, ``("", "")`` when none."""
    from cirl.deploy.geo import find_world_file

    found = find_world_file(path)
    if found is None:
        return "", ""
    try:
        return str(found), f"{found.name};{_local_fingerprint(found)}"
    except OSError:
        return str(found), f"{found.name};unreadable"


def _world_expected(photo: _Photo, cfg: PredictConfig) -> str:
    """What ``NAME.json`` records of the world file its GeoJSON depends on (``""``: none)."""
    return photo.world_fingerprint if cfg.geojson and cfg.geo == "auto" else ""


def _finished(out: Path, photo: _Photo, engine, cfg: PredictConfig) -> dict | None:
    """The report of an earlier run that already made this photo's outputs, if any.

    A report from before ``NAME_cracks.geojson`` existed has no ``geojson`` parameter, so
    the photo is redone (and gets one); so is a photo whose world file appeared, changed or
    went away since.
    """
    try:
        report = json.loads((out / f"{photo.name}.json").read_text())
    except (OSError, ValueError):
        return None
    geojson = report.get("geojson") if isinstance(report.get("geojson"), dict) else {}
    same = (
        report.get("image") == photo.source
        and report.get("input_fingerprint") == photo.fingerprint
        and report.get("model", {}).get("checkpoint_sha256")
        == engine.description.get("checkpoint_sha256")
        and all(report.get("params", {}).get(k) == getattr(cfg, k) for k in _OUTPUT_PARAMS)
        and (
            not cfg.geojson or geojson.get("world_file_fingerprint") == _world_expected(photo, cfg)
        )
        and all((out / f).is_file() for f in report.get("outputs", []))
    )
    return report if same else None


_TIMED = ("read", "predict", "measure", "write")


def report_columns(report: dict) -> dict:
    """A done photo's columns of ``summary.csv``, from its ``NAME.json``."""
    cracks = report["cracks"]
    return {
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


def _summary_row(photo: _Photo, status: str, report: dict | None, reason: str = "") -> dict:
    row = {"image": photo.source, "name": photo.name, "status": status, "reason": reason}
    if report is not None and not reason:  # a done photo without its GeoJSON says why
        row["reason"] = (report.get("geojson") or {}).get("warning") or ""
    if report is not None:
        row.update(report_columns(report))
    return row


MAX_ENDPOINT_FAILURES = 3
"""Photos in a row whose download failed at the endpoint (not the object) before a run gives
up: a store that stopped answering fails every remaining photo, each after its timeouts."""


OUTPUT_SUFFIXES = (
    "_mask.png",
    "_prob.png",
    "_overlay.jpg",
    "_cracks.csv",
    "_cracks.geojson",
    ".json",
)
"""The files of one photo ``NAME``: ``NAME`` + each suffix (``_cracks.geojson`` unless
``geojson: false``, or its georeference could not be read: ``NAME.json`` says why)."""


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

    def fetch(photo: _Photo) -> tuple[_Photo, Path | CirlError]:
        path = folder / f"{photo.name}{Path(photo.remote.key).suffix.lower()}"
        try:
            listing.download(photo.remote, path)
        except CirlError as exc:
            return photo, exc
        if photo.world_remote is not None:  # beside the copy, as beside the object
            try:
                listing.download(photo.world_remote, _fetched_world(path, photo))
            except CirlError as exc:  # the photo is still processed, in pixel coordinates
                photo = replace(photo, world_error=str(exc))
        return photo, path

    with ThreadPoolExecutor(1) as pool:
        todo = [p for p in photos if p.name not in skip]
        ahead = pool.submit(fetch, todo[0]) if todo else None
        index = 0
        for photo in photos:
            if photo.name in skip:
                yield photo, None
                continue
            fetched, current = ahead.result()
            index += 1
            ahead = pool.submit(fetch, todo[index]) if index < len(todo) else None
            yield fetched, current
            if isinstance(current, Path):
                current.unlink(missing_ok=True)
                if photo.world_remote is not None:
                    _fetched_world(current, photo).unlink(missing_ok=True)


def _fetched_world(local: Path, photo: _Photo) -> Path:
    """Where the world file of a downloaded photo is put: beside its local copy."""
    return local.with_name(f"{photo.name}{Path(photo.world_remote.key).suffix.lower()}")


# ------------------------------------------------------------------------------------------------
# NAME_overlay.jpg: the photo with numbered cracks, a legend and a scale bar
# ------------------------------------------------------------------------------------------------

PALETTE_BGR: tuple[tuple[int, int, int], ...] = (
    (0, 0, 255),  # red
    (0, 215, 255),  # yellow
    (255, 255, 0),  # cyan
    (255, 0, 255),  # magenta
    (0, 140, 255),  # orange
    (0, 220, 0),  # green
    (255, 100, 0),  # blue
    (170, 0, 150),  # purple
)
"""Colours of the measured cracks (BGR); neighbouring cracks get different ones. None is
white or grey, the colours of the numbers and of the cracks not measured."""

UNMEASURED_BGR = (200, 200, 200)
"""Colour of the crack pixels that were not measured (too small, or too wide to be a crack)."""

LABEL_BGR = (255, 255, 255)
"""Colour of the crack numbers (drawn over a black outline) and of the legend's text."""

_OUTLINE_BGR = (0, 0, 0)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_PX = 27.0
"""Height that ``cv2.getTextSize`` gives text of this font at scale 1."""
_BOX_OPACITY = 0.65
"""How much the legend's and the scale bar's dark boxes hide the photo under them."""
_MIN_LEGEND_PX = 9
"""Smallest legend text, in pixels: a legend that does not fit at this size is shortened."""


def scale_bar(mm_per_px: float, width: int) -> tuple[float, int]:
    """The scale bar of a photo ``width`` pixels wide at ``mm_per_px`` millimetres per pixel.

    The bar's length is a round number of millimetres, 1, 2 or 5 x 10^k (0.5 mm, 2 mm, 1 cm,
    5 cm, 2 m...), the one whose bar is nearest, on a log scale, to 0.225 of the width (so
    between about 0.14 and 0.36 of it).

    Args:
        mm_per_px: The ground sampling distance, > 0.
        width: The photo's width in pixels, >= 1.

    Returns:
        ``(mm, px)``: the length in millimetres and the bar's length in whole pixels,
        ``round(mm / mm_per_px)`` (at least 1).

    Raises:
        ValueError: ``mm_per_px`` is not finite and > 0, or ``width`` < 1.
    """
    if not (isinstance(mm_per_px, int | float) and math.isfinite(mm_per_px) and mm_per_px > 0):
        raise ValueError(f"mm_per_px must be a finite number > 0, got {mm_per_px!r}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width!r}")
    target = 0.225 * width * mm_per_px
    k = math.floor(math.log10(target))
    candidates = [float(f"{m * 10.0**e:.12g}") for e in (k - 1, k, k + 1) for m in (1, 2, 5)]
    mm = min(candidates, key=lambda c: (abs(math.log(c / target)), c))
    return mm, max(1, math.floor(mm / mm_per_px + 0.5))


def format_length(mm: float) -> str:
    """A scale bar's length as people write it: ``0.5 mm``, ``5 mm``, ``2 cm``, ``1 m``."""
    if mm >= 1000:
        return f"{mm / 1000:g} m"
    if mm >= 10:
        return f"{mm / 10:g} cm"
    return f"{mm:g} mm"


@dataclass(frozen=True)
class OverlayLabel:
    """Where the overlay writes one crack's number."""

    id: int
    text: str
    anchor: tuple[int, int]
    """``(x, y)``: the point of the crack it names."""
    box: tuple[int, int, int, int]
    """``(x0, y0, x1, y1)``, exclusive: the text with its outline."""
    leader: bool
    """Whether a line joins the box to the anchor (the box had to move away from the crack)."""


@dataclass(frozen=True)
class OverlayLayout:
    """What :func:`render_overlay` draws besides the cracks' colours (for tests and callers)."""

    labels: list[OverlayLabel]
    legend_box: tuple[int, int, int, int] | None
    """``(x0, y0, x1, y1)`` exclusive, None when the photo is too small for any legend."""
    legend_lines: list[str]
    scale_bar: tuple[float, int] | None
    """``(mm, px)`` from :func:`scale_bar`; None without ``mm_per_pixel``."""
    scale_bar_box: tuple[int, int, int, int] | None
    bar: tuple[int, int, int, int] | None
    """``(x0, y0, x1, y1)`` exclusive: the white bar itself, ``x1 - x0`` = its pixels."""
    colours: list[int]
    """Index in :data:`PALETTE_BGR` of each crack, in the order of the cracks given."""
    unmeasured: int
    """Connected components of the mask that are not among the cracks (drawn grey)."""


def _text_style(height: float) -> tuple[float, int]:
    """``(scale, thickness)`` of text about ``height`` pixels tall."""
    return height / _FONT_PX, max(1, round(height / 9))


def _halo(height: float) -> int:
    """Width in pixels of the black outline around a number ``height`` pixels tall."""
    return max(2, round(height / 8))


def _draw_label(out: np.ndarray, label: OverlayLabel, height: float) -> None:
    """One number, white over a black outline: the text's own (anti-aliased) coverage as the
    white's opacity and that coverage dilated by :func:`_halo` as the black's. The outline
    is made from the drawn text, not from thicker strokes: OpenCV 5 draws its built-in fonts
    regular or bold whatever the thickness."""
    scale, thick = _text_style(height)
    pad = _halo(height) + 1
    x0, y0, x1, y1 = label.box
    glyph = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.putText(glyph, label.text, (pad, y1 - y0 - pad), _FONT, scale, 255, thick, cv2.LINE_AA)
    size = 2 * _halo(height) + 1
    halo = cv2.dilate(glyph, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    h, w = out.shape[:2]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx0 >= cx1 or cy0 >= cy1:
        return
    inside = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
    under = halo[inside][..., None].astype(np.float32) / 255.0
    cover = glyph[inside][..., None].astype(np.float32) / 255.0
    roi = out[cy0:cy1, cx0:cx1].astype(np.float32) * (1.0 - under)
    roi = roi * (1.0 - cover) + 255.0 * cover
    out[cy0:cy1, cx0:cx1] = (roi + 0.5).astype(np.uint8)


def _hits(boxes: np.ndarray, placed: np.ndarray) -> np.ndarray:
    """``(N, M)`` bool: whether each box of ``boxes`` (N, 4) overlaps each of ``placed`` (M, 4)."""
    a, b = boxes[:, None, :], placed[None, :, :]
    hit = (a[..., 0] < b[..., 2]) & (b[..., 0] < a[..., 2])
    hit &= (a[..., 1] < b[..., 3]) & (b[..., 1] < a[..., 3])
    return hit


def _colours(cracks: Sequence, gap: int) -> list[int]:
    """A palette index per crack, in order, each unlike those of earlier cracks whose box comes
    within ``gap`` pixels of its own (a greedy colouring; cycles when all are taken)."""
    boxes = np.array([c.bbox for c in cracks], np.int64).reshape(-1, 4)
    colours: list[int] = []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        prev = boxes[:i]
        near = (prev[:, 0] < x1 + gap) & (prev[:, 2] + gap > x0)
        near &= (prev[:, 1] < y1 + gap) & (prev[:, 3] + gap > y0)
        taken = {colours[j] for j in np.flatnonzero(near)}
        free = [k for k in range(len(PALETTE_BGR)) if k not in taken]
        colours.append(free[0] if free else i % len(PALETTE_BGR))
    return colours


def _anchor(crack) -> tuple[int, int]:
    if crack.anchor is not None:
        return crack.anchor
    return round(crack.centroid[0]), round(crack.centroid[1])


def _place_labels(
    cracks: Sequence, shape: tuple[int, int], reserved: list, height: float
) -> list[OverlayLabel]:
    """Each crack's number beside its anchor, clear of earlier numbers and ``reserved`` boxes
    where one of 24 places around it (3 distances, 8 directions: across the crack first, then
    along it, then the diagonals) is free; else at the first of them that overlaps the fewest
    numbers and no reserved box (a legend, a scale bar) if it can."""
    h, w = shape
    scale, thick = _text_style(height)
    pad = _halo(height) + 1
    placed = np.zeros((len(cracks) + len(reserved), 4), np.int64)
    for i, box in enumerate(reserved):
        placed[i] = box
    count = len(reserved)
    labels: list[OverlayLabel] = []
    for crack in cracks:
        text = f"{crack.id}{'*' if crack.straight else ''}"
        (tw, th), _ = cv2.getTextSize(text, _FONT, scale, thick)
        bw, bh = tw + 2 * pad, th + 2 * pad
        ax, ay = _anchor(crack)
        t = math.radians(crack.orientation_deg)
        along = np.array([math.cos(t), -math.sin(t)])  # image y points down
        across = np.array([math.sin(t), math.cos(t)])
        ways = [across, -across, along, -along]
        ways += [(s * across + u * along) / math.sqrt(2) for s in (1, -1) for u in (1, -1)]
        reach = 0.5 * math.hypot(bw, bh) + pad
        centres = np.array([[ax, ay] + way * reach * r for r in (1, 2, 3) for way in ways])
        x0 = np.clip(np.floor(centres[:, 0] - bw / 2), 0, max(w - bw, 0)).astype(np.int64)
        y0 = np.clip(np.floor(centres[:, 1] - bh / 2), 0, max(h - bh, 0)).astype(np.int64)
        boxes = np.stack([x0, y0, x0 + bw, y0 + bh], axis=1)
        hits = _hits(boxes, placed[:count])
        crowd = hits[:, len(reserved) :].sum(axis=1) + 10**6 * hits[:, : len(reserved)].sum(axis=1)
        box = tuple(int(v) for v in boxes[int(np.argmin(crowd))])
        placed[count] = box
        count += 1
        gap_x = max(box[0] - ax, ax - box[2], 0)
        gap_y = max(box[1] - ay, ay - box[3], 0)
        labels.append(OverlayLabel(crack.id, text, (ax, ay), box, math.hypot(gap_x, gap_y) > reach))
    return labels


def _legend_lines(
    cracks: Sequence,
    unmeasured: int,
    threshold,
    mm_per_pixel: float | None,
    min_pixels: int,
    max_width: float,
) -> list[tuple[str | None, str]]:
    """The legend's lines, each ``(swatch, text)``; swatch ``palette``, ``grey`` or None."""
    thr = _threshold_text(threshold)
    lines: list[tuple[str | None, str]] = []
    if cracks:
        lines.append(("palette", f"{_count(len(cracks), 'crack')}: # = id"))
        lines.append((None, "in the _cracks.csv table"))
    else:
        lines.append((None, "no crack measured"))
    if unmeasured:
        lines.append(("grey", f"grey: {unmeasured} not measured"))
        lines.append((None, f"(< {min_pixels} px, or > {max_width:g} px wide)"))
    lines.append((None, f"threshold: p >= {thr}"))
    if cracks:
        longest = max(cracks, key=lambda c: (c.length_px, -c.id))
        widest = max(cracks, key=lambda c: (c.max_width_px, -c.id))
        if mm_per_pixel:
            lines.append((None, f"longest: #{longest.id}, {_mm(longest.length_px * mm_per_pixel)}"))
            lines.append((None, f"widest: #{widest.id}, {_mm(widest.max_width_px * mm_per_pixel)}"))
        else:
            lines.append((None, f"longest: #{longest.id}, {longest.length_px:.0f} px"))
            lines.append((None, f"widest: #{widest.id}, {widest.max_width_px:.1f} px"))
    straight = sum(1 for c in cracks if c.straight)
    if straight:
        lines.append((None, f"#* ({straight}): straight line,"))
        lines.append((None, "possibly a joint or edge"))
    if not mm_per_pixel:
        lines.append((None, "lengths in px"))
        lines.append((None, "(set --mm-per-pixel for mm)"))
    return lines


def _shorter_legends(cracks: Sequence, unmeasured: int, threshold) -> list[list]:
    """The legends for photos too small for the full one: the colours, the grey and the
    threshold in a few short lines; else one line."""
    count = _count(len(cracks), "crack")
    compact: list[tuple[str | None, str]] = [
        ("palette", f"{count}: # = CSV id") if cracks else (None, "no crack measured")
    ]
    if unmeasured:
        compact.append(("grey", f"grey: {unmeasured} not measured"))
    compact.append((None, f"threshold: p >= {_threshold_text(threshold)}"))
    if any(c.straight for c in cracks):
        compact.append((None, "#*: straight (a joint?)"))
    line = [("palette" if cracks else None, f"{count}, p>={_threshold_text(threshold)}")]
    return [compact, line]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _threshold_text(threshold) -> str:
    return f"{threshold:.3g}" if isinstance(threshold, int | float) else str(threshold)


def _mm(value: float) -> str:
    if value >= 100:
        return f"{value:.0f} mm"
    if value >= 1:
        return f"{value:.1f} mm"
    return f"{value:.2f} mm"


def _block_size(lines: list[tuple[str | None, str]], height: float) -> tuple[int, int]:
    """``(width, height)`` in pixels of a legend of these lines at text ``height``."""
    scale, thick = _text_style(height)
    pad, step = round(0.6 * height) + 1, round(1.5 * height)
    indent = round(1.5 * height) if any(s for s, _ in lines) else 0
    widest = max(cv2.getTextSize(text, _FONT, scale, thick)[0][0] for _, text in lines)
    return indent + widest + 2 * pad, len(lines) * step + 2 * pad - round(0.5 * height)


def _corner(size: tuple[int, int], shape, margin: int, order: str, mask, avoid) -> tuple | None:
    """The box of ``size`` in the corner (of ``order``: t/b + l/r pairs) with the fewest
    crack pixels under it, not overlapping ``avoid``; None when it does not fit the photo."""
    (bw, bh), (h, w) = size, shape
    if bw + 2 * margin > w or bh + 2 * margin > h:
        return None
    best = None
    for corner in order.split():
        x0 = margin if corner[1] == "l" else w - margin - bw
        y0 = margin if corner[0] == "t" else h - margin - bh
        box = (x0, y0, x0 + bw, y0 + bh)
        if avoid is not None and _hits(np.array([box]), np.array([avoid]))[0, 0]:
            continue
        cost = int(np.count_nonzero(mask[y0 : y0 + bh, x0 : x0 + bw]))
        if best is None or cost < best[0]:
            best = (cost, box)
    return None if best is None else best[1]


def _darken(out: np.ndarray, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    roi = out[y0:y1, x0:x1]
    roi[...] = (roi.astype(np.float32) * (1.0 - _BOX_OPACITY) + 0.5).astype(np.uint8)


def _draw_legend(out, box, lines, height: float) -> None:
    scale, thick = _text_style(height)
    pad, step = round(0.6 * height) + 1, round(1.5 * height)
    indent = round(1.5 * height) if any(s for s, _ in lines) else 0
    _darken(out, box)
    x, y = box[0] + pad, box[1] + pad
    side = max(2, round(height))
    for swatch, text in lines:
        if swatch == "palette":
            stripe = max(1, side // 3)
            for k in range(3):
                cv2.rectangle(
                    out,
                    (x + k * stripe, y),
                    (x + (k + 1) * stripe - 1, y + side - 1),
                    PALETTE_BGR[k],
                    -1,
                )
        elif swatch == "grey":
            cv2.rectangle(
                out, (x, y), (x + 3 * max(1, side // 3) - 1, y + side - 1), UNMEASURED_BGR, -1
            )
        cv2.putText(out, text, (x + indent, y + side), _FONT, scale, LABEL_BGR, thick, cv2.LINE_AA)
        y += step


def render_overlay(
    image_bgr: np.ndarray,
    mask: np.ndarray,
    cracks: Sequence = (),
    *,
    alpha: float = 0.6,
    threshold: float | str = 0.5,
    mm_per_pixel: float | None = None,
    min_pixels: int = 20,
    max_width: float = 200.0,
    connectivity: int = 8,
    layout: list | None = None,
) -> np.ndarray:
    """The photo with its cracks coloured and numbered, a legend and a scale bar.

    Each crack of ``cracks`` (as :func:`cirl.deploy.measure.measure_cracks` gives them) is
    tinted with a colour of :data:`PALETTE_BGR` (neighbouring cracks in different colours)
    and numbered with its ``id``, the ``id`` of its row in ``NAME_cracks.csv``, in white with a
    black outline beside its anchor (the skeleton pixel nearest its centroid), clear of the
    other numbers where one of 24 places around it is free (a line joins a number pushed
    further away to its crack). A crack flagged ``straight`` is numbered ``id*``. The mask's
    other components (too small or too wide to be measured) are tinted grey. A legend in the
    corner with the fewest crack pixels says what the colours mean, the decision threshold,
    the number of cracks, and the longest and widest (in mm with ``mm_per_pixel``, else in px
    with a note). With ``mm_per_pixel`` a scale bar (:func:`scale_bar`) sits in another
    corner. The boxes go under the numbers (a crack may lie under one). Text sizes follow the
    photo's shorter side (numbers 2.5%, down to 1% when there are many; legend 2%; at least
    14 and 9 px); a legend too large for the photo is shortened to a few lines, then to one,
    or left out. The result is the photo's size and depends only on the inputs.

    Args:
        image_bgr: ``(H, W, 3)`` (or ``(H, W)`` grey) uint8 photo.
        mask: ``(H, W)`` bool (or non-zero = crack) mask the cracks were measured on.
        cracks: The measured cracks.
        alpha: Opacity of the crack colours.
        threshold: The decision threshold, for the legend.
        mm_per_pixel: Millimetres per pixel; None or 0: no scale bar, lengths in px.
        min_pixels: ``min_crack_pixels`` of the measurement, for the legend.
        max_width: ``max_crack_width`` of the measurement, for the legend.
        connectivity: The measurement's connectivity (8 or 4).
        layout: When given, an :class:`OverlayLayout` of what was drawn is appended to it.

    Returns:
        ``(H, W, 3)`` uint8 BGR image.
    """
    h, w = image_bgr.shape[:2]
    side = min(h, w)
    mm_per_pixel = mm_per_pixel or None
    out = np.ascontiguousarray(image_bgr).copy()
    if out.ndim == 2:  # a grey photo: the colours need three channels
        out = cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)
    binary = np.ascontiguousarray(mask != 0, dtype=np.uint8)
    count, labels = cv2.connectedComponents(binary, connectivity=connectivity, ltype=cv2.CV_32S)
    # numbers 2.5% of the shorter side, smaller where many would cover more than 4% of the
    # photo (a box is about twice as wide as tall), but not below 1% of it nor 14 px
    crowded = math.sqrt(0.04 * h * w / (2.0 * max(len(cracks), 1)))
    label_px = max(14.0, 0.01 * side, min(0.025 * side, crowded))
    colours = _colours(cracks, round(label_px))
    lut = np.empty((count, 3), np.float32)
    lut[:] = UNMEASURED_BGR
    measured = set()
    for crack, colour in zip(cracks, colours, strict=True):
        if crack.seed is not None:
            label = int(labels[crack.seed[1], crack.seed[0]])
        else:  # the component most of the crack's box belongs to
            x0, y0, x1, y1 = crack.bbox
            votes = np.bincount(labels[y0:y1, x0:x1].ravel(), minlength=2)
            votes[0] = 0
            label = int(np.argmax(votes))
        if label:
            lut[label] = PALETTE_BGR[colour]
            measured.add(label)
    where = np.flatnonzero(binary)
    flat = out.reshape(-1, 3)
    tint = lut[labels.reshape(-1)[where]]
    flat[where] = np.clip((1 - alpha) * flat[where] + alpha * tint + 0.5, 0, 255).astype(np.uint8)
    del labels, tint
    unmeasured = count - 1 - len(measured)

    # the legend: full where it fits (shrinking its text down to _MIN_LEGEND_PX), else shorter
    margin = max(2, round(0.01 * side))
    lines = _legend_lines(cracks, unmeasured, threshold, mm_per_pixel, min_pixels, max_width)
    legend_px = max(float(_MIN_LEGEND_PX), 0.02 * side)
    legend_box = None
    for option in (lines, *_shorter_legends(cracks, unmeasured, threshold)):
        size_px = legend_px
        while True:
            bw, bh = _block_size(option, size_px)
            if bw <= 0.6 * w and bh <= 0.6 * h:
                legend_box = _corner((bw, bh), (h, w), margin, "tl tr bl br", binary, None)
            if legend_box is not None or size_px <= _MIN_LEGEND_PX:
                break
            size_px = max(float(_MIN_LEGEND_PX), size_px * 0.85)
        if legend_box is not None:
            lines = option
            break
    # the scale bar
    bar = bar_box = bar_info = None
    if mm_per_pixel:
        bar_info = scale_bar(mm_per_pixel, w)
        bar_text = format_length(bar_info[0])
        bar_px = max(float(_MIN_LEGEND_PX), 0.02 * side)
        scale, thick = _text_style(bar_px)
        (tw, th), _ = cv2.getTextSize(bar_text, _FONT, scale, thick)
        bar_pad, bar_h = round(0.6 * bar_px) + 1, max(2, round(0.4 * bar_px))
        size = (max(bar_info[1], tw) + 2 * bar_pad, th + bar_h + 3 * bar_pad)
        bar_box = _corner(size, (h, w), margin, "br bl tr tl", binary, legend_box)
        if bar_box is not None:
            bx, by = bar_box[0] + bar_pad, bar_box[3] - bar_pad - bar_h
            bar = (bx, by, bx + bar_info[1], by + bar_h)
    reserved = [b for b in (legend_box, bar_box) if b is not None]
    placed = _place_labels(cracks, (h, w), reserved, label_px)

    # draw: the boxes, then leaders and numbers (on top where a crack lies under a box)
    if legend_box is not None:
        _draw_legend(out, legend_box, lines, size_px)
    if bar is not None:
        _darken(out, bar_box)
        scale, thick = _text_style(bar_px)
        origin = (bar[0], bar[1] - bar_pad)
        cv2.putText(out, bar_text, origin, _FONT, scale, LABEL_BGR, thick, cv2.LINE_AA)
        cv2.rectangle(out, (bar[0], bar[1]), (bar[2] - 1, bar[3] - 1), LABEL_BGR, -1)
    thick = _text_style(label_px)[1]
    for label in placed:
        if label.leader:
            x0, y0, x1, y1 = label.box
            end = (min(max(label.anchor[0], x0), x1 - 1), min(max(label.anchor[1], y0), y1 - 1))
            cv2.line(out, label.anchor, end, _OUTLINE_BGR, thick + 2, cv2.LINE_AA)
            cv2.line(out, label.anchor, end, LABEL_BGR, max(1, thick // 2), cv2.LINE_AA)
    for label in placed:
        _draw_label(out, label, label_px)
    if layout is not None:
        layout.append(
            OverlayLayout(
                labels=placed,
                legend_box=legend_box,
                legend_lines=[text for _, text in lines] if legend_box is not None else [],
                scale_bar=bar_info,
                scale_bar_box=bar_box,
                bar=bar,
                colours=colours,
                unmeasured=unmeasured,
            )
        )
    return out
