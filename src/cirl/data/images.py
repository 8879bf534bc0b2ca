"""Decoding images and label masks from files, with clear errors for damaged input."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from cirl.errors import CirlError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
MASK_SUFFIXES = (*IMAGE_SUFFIXES, ".gif")

_PNG_END = b"IEND\xaeB`\x82"


class ImageReadError(CirlError):
    """An image or mask file that cannot be decoded (missing, corrupt or truncated)."""


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read ({exc.strerror})") from None


_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"<", "HTML or XML text"),
)


def _content(data: bytes) -> str:
    """What the bytes are, from their first bytes: an image kind, text, or unknown."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "a WebP image"
    head = data[:512]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown binary data"
    return "text" if all(c.isprintable() or c in "\r\n\t" for c in text) else "unknown data"


def _check_complete(path: Path, data: bytes) -> None:
    """Detect truncated JPEG/PNG files, which OpenCV would otherwise decode partly and silently,
    and files whose content is not what their name says."""
    if not data:
        raise ImageReadError(f"{path}: file is empty; replace it with a complete copy")
    suffix = path.suffix.lower()
    expected = {".jpg": "a JPEG image", ".jpeg": "a JPEG image", ".png": "a PNG image"}
    if suffix in expected and _content(data) != expected[suffix]:
        raise ImageReadError(
            f"{path}: not {expected[suffix]}, the file holds {_content(data)}; replace it "
            "with the photo, or remove it"
        )
    if suffix in (".jpg", ".jpeg"):
        tail = data[-4096:].rstrip(b"\x00\r\n\t ")
        if not tail.endswith(b"\xff\xd9"):
            raise ImageReadError(
                f"{path}: JPEG is truncated (no end-of-image marker); "
                "re-copy or re-export the file, or remove it"
            )
    elif suffix == ".png" and _PNG_END not in data[-64:]:
        raise ImageReadError(
            f"{path}: PNG is truncated (no IEND chunk); re-copy or re-export the file, or remove it"
        )


def _decode(path: Path, flags: int) -> np.ndarray:
    data = _read_bytes(path)
    _check_complete(path, data)
    array = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if array is None and path.suffix.lower() in (".gif", ".tif", ".tiff"):
        array = _decode_with_pillow(path)
    if array is None or array.size == 0:
        raise ImageReadError(
            f"{path}: not a readable image (corrupt or unsupported format); "
            f"supported: {', '.join(MASK_SUFFIXES)}"
        )
    return array


def _decode_with_pillow(path: Path) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "1", "LA", "PA"):
                im = im.convert("L")
            array = np.asarray(im)
    except (OSError, ValueError):
        return None
    if array.ndim == 3:
        array = cv2.cvtColor(
            array, cv2.COLOR_RGB2BGR if array.shape[2] == 3 else cv2.COLOR_RGBA2BGR
        )
    return array


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        hi = 1.0 if float(np.nanmax(array)) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(array) * (255.0 / hi), 0, 255).astype(np.uint8)
    return np.clip(array, 0, 255).astype(np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a photo as 8-bit BGR.

    Grayscale becomes three equal channels, 16-bit is scaled to 8-bit, alpha is dropped.

    Args:
        path: an image file (jpg, png, tif, bmp).

    Returns:
        ``(H, W, 3)`` uint8 array in BGR order.

    Raises:
        ImageReadError: naming the file when it is missing, empty, truncated or corrupt.
    """
    return read_image_with_notes(path)[0]


def read_image_with_notes(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """Like :func:`read_image`, also saying what was converted (for reports).

    Returns:
        ``(image, notes)``: ``(H, W, 3)`` uint8 BGR, and remarks such as ``"16-bit scaled to
        8-bit"``, ``"grayscale expanded to 3 channels"``, ``"alpha channel dropped"``.
    """
    path = Path(path)
    raw = _decode(path, cv2.IMREAD_UNCHANGED)
    notes = []
    if raw.dtype != np.uint8:
        notes.append(f"{raw.dtype} scaled to 8-bit")
    array = _to_uint8(raw)
    if array.ndim == 2 or array.shape[2] == 1:
        array = cv2.cvtColor(array.reshape(array.shape[:2]), cv2.COLOR_GRAY2BGR)
        notes.append("grayscale expanded to 3 channels")
    elif array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2BGR)
        notes.append("alpha channel dropped")
    return np.ascontiguousarray(array), notes


def read_label(path: str | os.PathLike) -> tuple[np.ndarray, bool]:
    """Read a label mask and binarise it.

    Values ``{0, 1}`` are taken as labels; otherwise a pixel is foreground when its largest
    channel exceeds half the type's range (>127 for 8-bit). Colour masks use the maximum over
    channels so a pure red or green annotation counts.

    Args:
        path: a mask file (png, bmp, tif, jpg, gif).

    Returns:
        ``(mask, was_binary)``: mask is ``(H, W)`` bool; ``was_binary`` is False when the file
        held values other than two levels {0, 1} or {0, max} (those deserve a warning).

    Raises:
        ImageReadError: naming the file when it is missing, empty, truncated or corrupt.
    """
    path = Path(path)
    array = _decode(path, cv2.IMREAD_UNCHANGED)
    if array.ndim == 3:
        array = array[:, :, :3].max(axis=2) if array.shape[2] >= 3 else array[:, :, 0]
    if array.dtype == np.bool_:
        return array.copy(), True
    top = 255 if array.dtype == np.uint8 else (65535 if array.dtype == np.uint16 else None)
    values = np.unique(array)
    if len(values) <= 2 and set(values.tolist()) <= {0, 1}:
        return array == 1, True
    was_binary = len(values) <= 2 and top is not None and set(values.tolist()) <= {0, top}
    threshold = (top // 2) if top is not None else 0.5 * float(values.max())
    return array > threshold, was_binary


def encode_png(array: np.ndarray, level: int = 1) -> bytes:
    """Encode an array as PNG bytes (compression ``level`` 0-9; 1 is fast and lossless)."""
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, level])
    if not ok:  # pragma: no cover - OpenCV only fails on unsupported dtypes
        raise CirlError(f"PNG encoding failed for an array of shape {array.shape}")
    return buf.tobytes()
