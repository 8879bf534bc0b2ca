"""The prepared dataset as a torch ``Dataset``: tiles, masks, valid regions, ambiguity maps.

Training samples are square crops with flips and rotations by 90/180/270 degrees, applied
identically to image, mask, valid region and ambiguity map. A share ``crack_crops`` of the crops
is centred on a crack pixel of the tile drawn at random (nnU-Net's foreground oversampling: in
tiles where cracks cover well under 1% of the pixels, uniform crops mostly show no crack), the
rest are uniform; a tile without crack pixels always gets a uniform crop. Randomness comes from
a generator seeded by ``(seed, epoch, index)``, so an epoch is reproducible whatever the number
of loader workers, and a run resumed at an epoch boundary sees exactly the same samples.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from cirl.data.manifest import TileRecord, read_manifest
from cirl.errors import CirlError


def _read(path: Path, flags: int) -> np.ndarray:
    array = cv2.imread(str(path), flags)
    if array is None:
        raise CirlError(
            f"{path}: missing or unreadable tile; the prepared folder is incomplete or was "
            "changed, re-run `cirl prepare`"
        )
    return array


def read_tile(
    root: Path, record: TileRecord, ambiguity: Path | None = None
) -> dict[str, np.ndarray]:
    """Read one tile's arrays.

    Returns:
        ``image`` (H, W, 3) uint8 RGB, ``mask``, ``valid`` and ``ambiguous`` (H, W) bool.
    """
    image = cv2.cvtColor(_read(root / record.image, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    mask = _read(root / record.mask, cv2.IMREAD_GRAYSCALE) > 127
    if record.valid:
        valid = _read(root / record.valid, cv2.IMREAD_GRAYSCALE) > 127
    else:
        valid = np.ones(mask.shape, bool)
    if ambiguity is not None:
        ambiguous = (
            _read(ambiguity / "ambiguous" / f"{record.tile_id}.png", cv2.IMREAD_GRAYSCALE) > 127
        )
    else:
        ambiguous = np.zeros(mask.shape, bool)
    if not (image.shape[:2] == mask.shape == valid.shape == ambiguous.shape):
        raise CirlError(f"{root / record.image}: tile files of {record.tile_id} differ in size")
    return {"image": image, "mask": mask, "valid": valid, "ambiguous": ambiguous}


def to_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Arrays from :func:`read_tile` to ``(3, H, W)`` float in [0, 1] and ``(1, H, W)`` floats."""
    out = {
        "image": torch.from_numpy(np.ascontiguousarray(arrays["image"].transpose(2, 0, 1))).float()
        / 255.0
    }
    for key in ("mask", "valid", "ambiguous"):
        out[key] = torch.from_numpy(np.ascontiguousarray(arrays[key]))[None].float()
    return out


class TileDataset(Dataset):
    """Tiles of one split of a prepared folder.

    Args:
        root: the prepared folder (``manifest.csv`` inside).
        split: ``train``, ``val`` or ``test``.
        crop: side of the random training crop; 0 returns whole tiles (evaluation).
        augment: random flips and rotations (training).
        ambiguity: a ``cirl select`` output folder whose ``ambiguous/<tile_id>.png`` maps are
            loaded as the ``ambiguous`` field (zeros when None).
        seed: base seed of the augmentation.
        crack_crops: share of the training crops centred on a random crack pixel, in [0, 1];
            the rest (and every crop of a tile without crack) are uniform.

    Items are dicts: ``image`` (3, H, W) float RGB in [0, 1]; ``mask``, ``valid``, ``ambiguous``
    (1, H, W) float in {0, 1}; ``tile_id`` str.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        crop: int = 0,
        augment: bool = False,
        ambiguity: str | os.PathLike | None = None,
        seed: int = 0,
        crack_crops: float = 0.0,
    ) -> None:
        if not 0.0 <= crack_crops <= 1.0:
            raise CirlError(f"crack_crops must lie in [0, 1], got {crack_crops!r}")
        self.root = Path(root)
        self.records = [r for r in read_manifest(self.root) if r.split == split]
        if not self.records:
            raise CirlError(f"{self.root}: manifest has no tiles in split {split!r}")
        self.split, self.crop, self.augment, self.seed = split, crop, augment, seed
        self.crack_crops = crack_crops
        self.ambiguity = Path(ambiguity) if ambiguity is not None else None
        if self.ambiguity is not None and not (self.ambiguity / "ambiguous").is_dir():
            raise CirlError(
                f"{self.ambiguity}: no ambiguous/ folder; pass the output folder of `cirl select`"
            )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (call before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        arrays = read_tile(self.root, record, self.ambiguity)
        if self.crop or self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            if self.crop:
                arrays = _random_crop(arrays, self.crop, record, rng, self.crack_crops)
            if self.augment:
                arrays = _flip_rotate(arrays, rng)
        item = to_tensors(arrays)
        item["tile_id"] = record.tile_id
        return item


def _random_crop(
    arrays: dict,
    crop: int,
    record: TileRecord,
    rng: np.random.Generator,
    crack_crops: float = 0.0,
) -> dict:
    """A ``crop`` x ``crop`` window inside the tile's real pixels (zero-padded if smaller).

    With probability ``crack_crops`` the window is centred on a crack pixel drawn uniformly
    from the tile's real pixels, then shifted to stay inside them; uniform otherwise, and
    whenever the tile has no crack pixel.
    """
    h, w = arrays["mask"].shape
    # padding lies bottom/right, so the photo's pixels are the box's extent from the top-left
    real_w, real_h = min(w, record.x1 - record.x0), min(h, record.y1 - record.y0)
    max_y, max_x = max(real_h - crop, 0), max(real_w - crop, 0)
    centre = None
    # no draw at crack_crops=0, so the uniform stream is the same as before the option existed
    if crack_crops > 0 and rng.random() < crack_crops:
        ys, xs = np.nonzero(arrays["mask"][:real_h, :real_w])
        if len(ys):
            pick = int(rng.integers(0, len(ys)))
            centre = int(ys[pick]), int(xs[pick])
    if centre is None:
        y = int(rng.integers(0, max_y + 1))
        x = int(rng.integers(0, max_x + 1))
    else:
        y = min(max(centre[0] - crop // 2, 0), max_y)
        x = min(max(centre[1] - crop // 2, 0), max_x)
    out = {}
    for key, array in arrays.items():
        part = array[y : y + crop, x : x + crop]
        if part.shape[:2] != (crop, crop):
            padded = np.zeros((crop, crop, *array.shape[2:]), array.dtype)
            padded[: part.shape[0], : part.shape[1]] = part
            part = padded
        out[key] = part
    return out


def _flip_rotate(arrays: dict, rng: np.random.Generator) -> dict:
    flip = bool(rng.integers(0, 2))
    turns = int(rng.integers(0, 4))
    out = {}
    for key, array in arrays.items():
        if flip:
            array = array[:, ::-1]
        out[key] = np.ascontiguousarray(np.rot90(array, turns, axes=(0, 1)))
    return out
