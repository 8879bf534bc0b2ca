"""Shared fixtures: tiny raw datasets made on the fly, and the real datasets under ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """``../shared/datasets`` (or ``$CIRL_DATASETS``); under ``CI=true`` its absence fails."""
    path = Path(os.environ.get("CIRL_DATASETS", REPO.parent / "shared" / "datasets"))
    if not path.is_dir():
        message = f"real datasets not found at {path} (set CIRL_DATASETS)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def write_pair(root: Path, stem: str, w: int, h: int, seed: int, ext: str = ".jpg") -> None:
    """A random photo and a mask with one diagonal crack, in the folder layout."""
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 200, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    cv2.line(mask, (0, int(rng.integers(0, h))), (w - 1, int(rng.integers(0, h))), 255, 3)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(root / "images" / f"{stem}{ext}"), image)
    assert cv2.imwrite(str(root / "masks" / f"{stem}.png"), mask)


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    """Twenty 300x200 photos with masks in the ``folder`` layout, no official split."""
    root = tmp_path / "raw"
    for i in range(20):
        write_pair(root, f"img{i:02d}", 300, 200, seed=i)
    return root
