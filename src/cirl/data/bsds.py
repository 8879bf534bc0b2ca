"""Readers for the BSDS-style annotations of the CrackForest (CFD) release.

The ``.seg`` ASCII format: a header of ``key value`` lines (``width``, ``height``,
``segments``, ...) up to a line ``data``; then one run per line, ``segment row col_start
col_end`` (0-based, inclusive). In CFD, segment 1 is crack and segment 0 background; a few files
have extra segments (2, 3) for non-crack regions, which count as background.

The ``.mat`` files hold the same annotation as ``groundTruth{1}.Segmentation`` with labels
shifted by one (2 = crack, 1 = background).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cirl.errors import CirlError

CFD_CRACK_SEGMENT = 1


def read_seg(path: str | os.PathLike) -> np.ndarray:
    """Parse a BSDS ``.seg`` file into a segment-index map.

    Args:
        path: the ``.seg`` file.

    Returns:
        ``(H, W)`` int32 array of segment indices; pixels no run covers are -1.

    Raises:
        CirlError: naming the file and line when the header or a run is malformed.
    """
    path = Path(path)
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        raise CirlError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data_at = next(i for i, line in enumerate(lines) if line.strip() == "data")
    except StopIteration:
        raise CirlError(f"{path}: not a BSDS .seg file (no 'data' line)") from None
    header = {}
    for line in lines[:data_at]:
        key, _, value = line.strip().partition(" ")
        header[key] = value.strip()
    try:
        width, height = int(header["width"]), int(header["height"])
    except (KeyError, ValueError):
        raise CirlError(f"{path}: header must give integer 'width' and 'height'") from None
    if width <= 0 or height <= 0:
        raise CirlError(f"{path}: header gives an empty image ({width}x{height})")
    seg = np.full((height, width), -1, np.int32)
    for number, line in enumerate(lines[data_at + 1 :], start=data_at + 2):
        if not line.strip():
            continue
        try:
            segment, row, c0, c1 = (int(v) for v in line.split())
        except ValueError:
            raise CirlError(
                f"{path}:{number}: expected 'segment row col_start col_end', got {line!r}"
            ) from None
        if not (0 <= row < height and 0 <= c0 <= c1 < width):
            raise CirlError(
                f"{path}:{number}: run {line!r} lies outside the {width}x{height} image"
            )
        seg[row, c0 : c1 + 1] = segment
    return seg


def read_seg_mask(path: str | os.PathLike) -> np.ndarray:
    """The crack mask of a CFD ``.seg`` file: ``(H, W)`` bool, True on segment 1."""
    return read_seg(path) == CFD_CRACK_SEGMENT


def read_mat_mask(path: str | os.PathLike) -> np.ndarray:
    """The crack mask of a CFD ``groundTruth/*.mat`` file: ``(H, W)`` bool, True on label 2."""
    import scipy.io
    from scipy.io.matlab import MatReadError

    path = Path(path)
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
        gt = mat["groundTruth"]
        if isinstance(gt, np.ndarray):  # several annotators: take the first, as CFD has one
            gt = gt.flat[0]
        seg = np.asarray(gt.Segmentation)
    except (OSError, ValueError, KeyError, AttributeError, TypeError, MatReadError) as exc:
        raise CirlError(
            f"{path}: not a BSDS groundTruth .mat file with a Segmentation field ({exc})"
        ) from None
    return seg == CFD_CRACK_SEGMENT + 1
