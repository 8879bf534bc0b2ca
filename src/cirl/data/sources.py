"""Importers: read a raw dataset layout into one internal form.

Every importer returns a :class:`SourceListing`: the usable :class:`Source` records (image,
label, optional field-of-view mask, optional official split) and the files it had to skip, each
with the reason and the fix. Pixels are not read here; :func:`load_source` reads one source at a
time, so a slicing worker holds a single image in memory.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from cirl.data import bsds
from cirl.data.images import IMAGE_SUFFIXES, MASK_SUFFIXES, read_image, read_label
from cirl.errors import CirlError

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
LabelKind = Literal["image", "seg", "mat"]


@dataclass(frozen=True)
class Source:
    """One raw image with its annotation.

    Attributes:
        source_id: unique name of the photo within the dataset (its stem).
        image: path of the photo.
        label: path of the annotation.
        label_kind: ``image`` (a mask picture), ``seg`` (BSDS ASCII) or ``mat`` (BSDS MATLAB).
        fov: optional field-of-view mask; nonzero = inside the region to learn and evaluate on.
        split: the dataset's official split for this photo, if it has one.
    """

    source_id: str
    image: Path
    label: Path
    label_kind: LabelKind = "image"
    fov: Path | None = None
    split: Split | None = None


@dataclass(frozen=True)
class Skip:
    """A file left out, with why and how to fix it."""

    file: str
    reason: str
    fix: str

    def message(self) -> str:
        """One line for logs and errors."""
        return f"{self.file}: {self.reason}" + (f"; {self.fix}" if self.fix else "")


@dataclass
class SourceListing:
    """What an importer found: usable sources, skipped files, and remarks for the card."""

    sources: list[Source] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class LoadedSource:
    """The pixels of one source.

    Attributes:
        image: ``(H, W, 3)`` uint8 BGR.
        mask: ``(H, W)`` bool, True on crack.
        valid: ``(H, W)`` bool field of view, or None when the whole image is valid.
        label_was_binary: False when the label file held more than two levels.
    """

    image: np.ndarray
    mask: np.ndarray
    valid: np.ndarray | None
    label_was_binary: bool


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def _require_dir(path: Path, what: str, fmt: str) -> None:
    if not path.is_dir():
        raise CirlError(
            f"{path}: missing {what} folder; the {fmt!r} format expects it "
            "(see `cirl prepare --help` and README, 'Raw dataset formats')"
        )


def _by_stem(
    files: list[Path], listing: SourceListing, what: str, key: Callable[[Path], str] | None = None
) -> dict[str, Path]:
    """Index files by stem; stems claimed by several files are skipped, all of them."""
    key = key or (lambda p: p.stem)
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in files:
        groups[key(path)].append(path)
    unique = {}
    for stem, paths in sorted(groups.items()):
        if len(paths) == 1:
            unique[stem] = paths[0]
            continue
        for path in paths:
            listing.skipped.append(
                Skip(
                    str(path),
                    f"duplicate {what} name {stem!r} (also: "
                    f"{', '.join(p.name for p in paths if p != path)})",
                    "keep exactly one file per name (rename or remove the others)",
                )
            )
    return unique


def _read_split_lists(folder: Path) -> dict[str, Split]:
    """``splits/{train,val,test}.txt`` -> stem -> split. Lines may hold names with suffixes."""
    assignment: dict[str, Split] = {}
    for split in SPLITS:
        path = folder / f"{split}.txt"
        if not path.exists():
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            name = line.strip()
            if not name or name.startswith("#"):
                continue
            stem = Path(name.split()[0]).stem
            if assignment.get(stem, split) != split:
                raise CirlError(
                    f"{path}:{number}: {stem!r} is already listed in {assignment[stem]}.txt; "
                    "a photo can belong to one split only"
                )
            assignment[stem] = split
    return assignment


def import_folder(root: Path) -> SourceListing:
    """``images/`` + ``masks/`` with matching stems; optional ``splits/{train,val,test}.txt``."""
    listing = SourceListing()
    _require_dir(root / "images", "images/", "folder")
    _require_dir(root / "masks", "masks/", "folder")
    images = _by_stem(_files(root / "images", IMAGE_SUFFIXES), listing, "image")
    masks = _by_stem(_files(root / "masks", MASK_SUFFIXES), listing, "mask")
    splits: dict[str, Split] = {}
    if (root / "splits").is_dir():
        splits = _read_split_lists(root / "splits")
        listed = set(splits) & set(images)
        listing.notes.append(
            f"official split from {root / 'splits'}: "
            + ", ".join(f"{s} {sum(1 for k in listed if splits[k] == s)}" for s in SPLITS)
        )
        for stem in sorted(set(splits) - set(images)):
            listing.notes.append(f"split lists name {stem!r}, which has no image: ignored")
    for stem, image in images.items():
        mask = masks.get(stem)
        if mask is None:
            listing.skipped.append(
                Skip(
                    str(image),
                    "no mask with the same name in masks/",
                    "add the mask or remove the image",
                )
            )
            continue
        split = splits.get(stem)
        if splits and split is None:
            listing.skipped.append(
                Skip(
                    str(image),
                    "not listed in any splits/*.txt while the dataset has an official split",
                    "add its name to one of splits/train.txt, val.txt or test.txt",
                )
            )
            continue
        listing.sources.append(Source(stem, image, mask, "image", None, split))
    for stem in sorted(set(masks) - set(images)):
        listing.skipped.append(
            Skip(str(masks[stem]), "mask without an image", "add the image or remove the mask")
        )
    return listing


def import_cfd(root: Path) -> SourceListing:
    """The CrackForest release: ``image/*.jpg``, ``seg/*.seg`` and/or ``groundTruth/*.mat``."""
    listing = SourceListing()
    _require_dir(root / "image", "image/", "cfd")
    if not (root / "seg").is_dir() and not (root / "groundTruth").is_dir():
        raise CirlError(
            f"{root}: the 'cfd' format needs seg/ (BSDS .seg files) or groundTruth/ (.mat files)"
        )
    images = _by_stem(_files(root / "image", IMAGE_SUFFIXES), listing, "image")
    segs = {p.stem: p for p in (root / "seg").glob("*.seg")} if (root / "seg").is_dir() else {}
    mats = (
        {p.stem: p for p in (root / "groundTruth").glob("*.mat")}
        if (root / "groundTruth").is_dir()
        else {}
    )
    unlabelled = 0
    for stem, image in images.items():
        if stem in segs:
            listing.sources.append(Source(stem, image, segs[stem], "seg"))
        elif stem in mats:
            listing.sources.append(Source(stem, image, mats[stem], "mat"))
        else:
            unlabelled += 1
            listing.skipped.append(
                Skip(
                    str(image),
                    "no annotation (neither seg/NAME.seg nor groundTruth/NAME.mat)",
                    "annotate it or leave it out; it is not treated as crack-free",
                )
            )
    if unlabelled:
        listing.notes.append(f"{unlabelled} CFD image(s) have no annotation and were skipped")
    return listing


_DRIVE_ID = re.compile(r"^(\d+)")


def _drive_key(path: Path) -> str:
    match = _DRIVE_ID.match(path.stem)
    return match.group(1) if match else path.stem


def _import_drive_part(root: Path, split: Split | None, listing: SourceListing) -> None:
    _require_dir(root / "images", "images/", "drive")
    _require_dir(root / "annotation_mask", "annotation_mask/", "drive")
    images = _by_stem(_files(root / "images", IMAGE_SUFFIXES), listing, "image", _drive_key)
    masks = _by_stem(_files(root / "annotation_mask", MASK_SUFFIXES), listing, "mask", _drive_key)
    fovs = (
        _by_stem(_files(root / "ignores", MASK_SUFFIXES), listing, "ignores mask", _drive_key)
        if (root / "ignores").is_dir()
        else {}
    )
    prefix = f"{split}_" if split else ""
    for key, image in images.items():
        if key not in masks:
            listing.skipped.append(
                Skip(
                    str(image),
                    "no annotation_mask with the same number",
                    "add it or remove the image",
                )
            )
            continue
        listing.sources.append(
            Source(prefix + key, image, masks[key], "image", fovs.get(key), split)
        )


def import_drive(root: Path) -> SourceListing:
    """DRIVE as JTFN distributes it: ``images/*.tif``, ``annotation_mask/*.png``, ``ignores/``.

    Files are matched on their leading number (``21_training.tif`` with ``21_manual1.png``).
    ``training/`` and ``test/`` sub-folders, when present, are the official split. The
    ``ignores/`` masks are the field of view: nonzero inside the retina (the valid region).
    """
    listing = SourceListing()
    parts = {"train": root / "training", "test": root / "test"}
    if any(p.is_dir() for p in parts.values()):
        for split, folder in parts.items():
            if folder.is_dir():
                _import_drive_part(folder, split, listing)
        listing.notes.append("official DRIVE split from training/ and test/")
    else:
        _import_drive_part(root, None, listing)
    return listing


IMPORTERS: dict[str, Callable[[Path], SourceListing]] = {
    "folder": import_folder,
    "cfd": import_cfd,
    "drive": import_drive,
}


def list_sources(root: str | os.PathLike, fmt: str) -> SourceListing:
    """Run the importer for ``fmt`` on ``root``.

    Raises:
        CirlError: for an unknown format (listing the valid ones), a missing folder, or a
            dataset with no usable image.
    """
    root = Path(root)
    if fmt not in IMPORTERS:
        raise CirlError(f"unknown format {fmt!r}; valid formats are: {', '.join(IMPORTERS)}")
    if not root.is_dir():
        raise CirlError(f"source folder {root} does not exist; pass the raw dataset's folder")
    listing = IMPORTERS[fmt](root)
    if not listing.sources:
        detail = (
            f" ({len(listing.skipped)} file(s) skipped, first: {listing.skipped[0].message()})"
            if listing.skipped
            else ""
        )
        raise CirlError(
            f"{root}: no usable image/annotation pairs found for format {fmt!r}{detail}; "
            "check the layout (README, 'Raw dataset formats')"
        )
    return listing


def load_source(source: Source) -> LoadedSource:
    """Read the pixels of one source and check that image, label and field of view agree.

    Raises:
        CirlError: naming the files when a file cannot be decoded or the sizes differ.
    """
    image = read_image(source.image)
    if source.label_kind == "seg":
        mask, was_binary = bsds.read_seg_mask(source.label), True
    elif source.label_kind == "mat":
        mask, was_binary = bsds.read_mat_mask(source.label), True
    else:
        mask, was_binary = read_label(source.label)
    h, w = image.shape[:2]
    if mask.shape != (h, w):
        raise CirlError(
            f"{source.label}: mask is {mask.shape[1]}x{mask.shape[0]} but image {source.image} is "
            f"{w}x{h}; masks must have the image's exact size (re-export the mask, do not resize)"
        )
    valid = None
    if source.fov is not None:
        valid, _ = read_label(source.fov)
        if valid.shape != (h, w):
            raise CirlError(
                f"{source.fov}: field-of-view mask is {valid.shape[1]}x{valid.shape[0]} but image "
                f"{source.image} is {w}x{h}; it must have the image's exact size"
            )
    return LoadedSource(image, mask, valid, was_binary)
