"""HTML pages a person opens: the evaluation and selection reports, the sweep's page.

One page has two renderings:

* **linked** (``embed=False``): images are relative links to the files beside the page, so the
  page is small and the full-size images open from it; what a run folder holds
  (``eval/report.html`` next to ``pr_curve.png`` and ``overlays/``).
* **embedded** (``embed=True``): every image inlined as a downscaled JPEG thumbnail (a few
  tens of kB each), one self-contained file: what KFP's UI serves for an ``Output[HTML]`` and
  what MLflow's artifact view shows, neither of which can follow a relative link.

Text is escaped here; callers pass plain strings, never markup, except through :meth:`raw`.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cirl.errors import CirlError

THUMB_WIDTH = 960
"""Widest embedded thumbnail, in pixels (wider images are scaled down, never up)."""

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.2em auto;max-width:1100px;padding:0 1em;
color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ccc;padding:3px 10px;text-align:left;vertical-align:top}
th{background:#f4f4f4;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}figcaption{font-size:.92em;color:#444;margin-top:.3em}
img{max-width:100%;height:auto;border:1px solid #ddd}
.warning{background:#fdecea;border:2px solid #c62828;color:#8e0000;padding:.6em 1em;
font-weight:600;margin:1em 0}
.note{color:#555;font-size:.92em}
.swatch{display:inline-block;width:.9em;height:.9em;border:1px solid #888;
vertical-align:middle;margin:0 .25em 0 .6em}
""".strip()


def fmt(value: Any, digits: int = 4) -> str:
    """A value as a table shows it: floats to ``digits`` places, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


class Page:
    """An HTML page built from blocks, rendered linked or embedded.

    Args:
        title: the page's title and heading.
        folder: the folder the page will be written to (links are relative to it).
        embed: inline images as thumbnails instead of linking them.
    """

    def __init__(self, title: str, folder: str | os.PathLike, embed: bool = False) -> None:
        self.title = title
        self.folder = Path(folder)
        self.embed = embed
        self._blocks: list[str] = []

    def heading(self, text: str) -> None:
        self._blocks.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str, css: str = "") -> None:
        style = f' class="{css}"' if css else ""
        self._blocks.append(f"<p{style}>{html.escape(text)}</p>")

    def warning(self, text: str) -> None:
        """A message a reader must not miss (red box, ``role=alert``)."""
        self._blocks.append(f'<div class="warning" role="alert">{html.escape(text)}</div>')

    def legend(self, items: Iterable[tuple[str, str]]) -> None:
        """Colour swatches with their meaning: (CSS colour, text) pairs."""
        spans = "".join(
            f'<span class="swatch" style="background:{html.escape(colour)}"></span>'
            f"{html.escape(text)}"
            for colour, text in items
        )
        self._blocks.append(f'<p class="legend">{spans}</p>')

    def table(
        self,
        rows: Sequence[Sequence[Any]],
        header: Sequence[str] | None = None,
        digits: int = 4,
    ) -> None:
        """A table of rows (numbers right-aligned); ``header`` is its first row."""
        parts = []
        if header:
            parts.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        for row in rows:
            cells = []
            for value in row:
                css = ' class="num"' if isinstance(value, int | float) and value is not True else ""
                cells.append(f"<td{css}>{html.escape(fmt(value, digits))}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        self._blocks.append(f"<table>{''.join(parts)}</table>")

    def fields(self, rows: Mapping[str, Any], digits: int = 4) -> None:
        """A two-column table: name, value."""
        self.table([(k, v) for k, v in rows.items()], digits=digits)

    def image(self, path: str | os.PathLike, caption: str = "", alt: str = "") -> None:
        """A figure: the image (linked, or embedded as a thumbnail) and its caption.

        Raises:
            CirlError: when the image file is missing or cannot be read.
        """
        path = Path(path)
        if not path.is_file():
            raise CirlError(f"report image {path} is missing; write it before the page")
        src = _thumbnail_uri(path) if self.embed else _relative(path, self.folder)
        alt = html.escape(alt or caption or path.name)
        figure = f'<figure><img src="{src}" alt="{alt}">'
        if not self.embed:
            figure = f'<figure><a href="{src}"><img src="{src}" alt="{alt}"></a>'
        if caption:
            figure += f"<figcaption>{html.escape(caption)}</figcaption>"
        self._blocks.append(figure + "</figure>")

    def raw(self, markup: str) -> None:
        """Markup the caller built and escaped itself."""
        self._blocks.append(markup)

    def render(self) -> str:
        title = html.escape(self.title)
        return (
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{title}</title><style>{_STYLE}</style></head>\n<body>\n<h1>{title}</h1>\n"
            + "\n".join(self._blocks)
            + "\n</body></html>\n"
        )

    def write(self, path: str | os.PathLike) -> Path:
        """Write the page to ``path`` (atomically: a reader never sees half a page)."""
        from cirl.staging import staged_file

        path = Path(path)
        with staged_file(path) as tmp:
            Path(tmp).write_text(self.render(), encoding="utf-8")
        return path


def _relative(path: Path, folder: Path) -> str:
    from urllib.parse import quote

    return quote(os.path.relpath(path.resolve(), folder.resolve()).replace(os.sep, "/"))


def _thumbnail_uri(path: Path, width: int = THUMB_WIDTH) -> str:
    """The image as a ``data:`` URI of a JPEG at most ``width`` wide (PNG kept for small
    line art such as a plot, which JPEG would blur)."""
    import cv2
    import numpy as np

    picture = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if picture is None:
        raise CirlError(f"report image {path} cannot be read; write it again")
    if picture.shape[1] > width:
        height = max(1, round(picture.shape[0] * width / picture.shape[1]))
        picture = cv2.resize(picture, (width, height), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 82])
    if path.suffix.lower() == ".png" and path.stat().st_size < 120_000:
        ok_png, png = cv2.imencode(".png", picture, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        if ok_png and len(png) <= 1.5 * len(data):
            return "data:image/png;base64," + base64.b64encode(np.asarray(png)).decode("ascii")
    if not ok:  # pragma: no cover - OpenCV encodes any 8-bit BGR image
        raise CirlError(f"report image {path} could not be encoded")
    return "data:image/jpeg;base64," + base64.b64encode(np.asarray(data)).decode("ascii")


def rebase(page: str | os.PathLike, copy: str | os.PathLike) -> Path:
    """Write ``copy``: the linked page ``page`` as it reads from another folder (a ``<base>``
    pointing back at the page's own folder, so its relative links still resolve).

    A symlink would not do: browsers take the type from the link's target name but resolve
    relative links against the link's own folder.
    """
    from cirl.staging import staged_file

    page, copy = Path(page), Path(copy)
    text = page.read_text(encoding="utf-8")
    base = _relative(page.parent, copy.parent).rstrip("/") + "/"
    marker = "<head>"
    if marker not in text:
        raise CirlError(f"{page} is not a cirl report page (no <head>)")
    text = text.replace(marker, f'{marker}<base href="{html.escape(base)}">', 1)
    with staged_file(copy) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return copy
