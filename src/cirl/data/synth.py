"""Stage ``synth``: the embedded default dataset of concrete-like photos with crack masks.

No real data can be downloaded where this project runs, so ``synth`` renders a dataset in the
``folder`` raw layout (``images/synth_NNNN.jpg``, ``masks/synth_NNNN.png``, ``synth_card.json``)
that exercises what CIRL is about:

* concrete-like texture: several octaves of smooth noise, dark pores and light aggregate,
  a gentle illumination gradient;
* cracks as branching random walks whose width varies smoothly along the path, darker than the
  surface with soft, low-contrast edges (the pixels just outside a crack look like crack), some
  of them very thin and faint;
* unlabelled distractors: stains, straight formwork joints and a soft-edged shadow;
* label noise confined to the marginal ring: the annotated mask is the rendered ("true") crack
  drawn with its width perturbed by at most ``label_noise`` px, so annotation and truth disagree
  only near crack edges and no crack is ever added or removed.

Image ``i`` depends only on ``(seed, i)`` and the config, never on ``n`` or on ``workers``, so the
same config writes byte-identical files. ``run(cfg, out)`` is the one entry point.

The drawing itself (cracks, surface, distractors) is :mod:`cirl.data.synth_draw`.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cirl import __version__
from cirl.config import to_dict
from cirl.data.synth_draw import _CrackCanvas, _cracks, _distractors, _noise, _surface
from cirl.errors import CirlError
from cirl.staging import staged_dir

log = logging.getLogger(__name__)


CARD_NAME = "synth_card.json"


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the synthetic dataset (``params.yaml`` group ``synth``).

    Attributes:
        n: number of images.
        seed: random seed; image ``i`` uses the generator ``default_rng([seed, i])``.
        width: image width in pixels.
        height: image height in pixels.
        min_crack_width: thinnest drawn crack width in pixels.
        max_crack_width: widest drawn crack width in pixels.
        cracks_min: fewest main cracks per image (each may branch).
        cracks_max: most main cracks per image.
        label_noise: the label's width differs from the true crack's by at most this many px.
        jpeg_quality: JPEG quality of the photos, 1-100.
        distractors: add unlabelled stains, joints and shadows.
        workers: parallel processes rendering images (the output does not depend on it).
    """

    n: int = 20
    seed: int = 0
    width: int = 2048
    height: int = 1536
    min_crack_width: int = 1
    max_crack_width: int = 15
    cracks_min: int = 1
    cracks_max: int = 4
    label_noise: int = 2
    jpeg_quality: int = 95
    distractors: bool = True
    workers: int = 1

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"key 'n' must be >= 1, got {self.n}")
        if self.seed < 0:
            raise ValueError(f"key 'seed' must be >= 0, got {self.seed}")
        for key in ("width", "height"):
            if getattr(self, key) < 64:
                raise ValueError(f"key {key!r} must be >= 64 pixels, got {getattr(self, key)}")
        if self.min_crack_width < 1:
            raise ValueError(f"key 'min_crack_width' must be >= 1, got {self.min_crack_width}")
        if self.max_crack_width < self.min_crack_width:
            raise ValueError(
                f"key 'max_crack_width' must be >= min_crack_width ({self.min_crack_width}), "
                f"got {self.max_crack_width}"
            )
        if self.max_crack_width > 64:
            raise ValueError(f"key 'max_crack_width' must be <= 64, got {self.max_crack_width}")
        if self.cracks_min < 1:
            raise ValueError(f"key 'cracks_min' must be >= 1, got {self.cracks_min}")
        if self.cracks_max < self.cracks_min:
            raise ValueError(
                f"key 'cracks_max' must be >= cracks_min ({self.cracks_min}), got {self.cracks_max}"
            )
        if not 0 <= self.label_noise <= 5:
            raise ValueError(f"key 'label_noise' must be in 0..5, got {self.label_noise}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"key 'jpeg_quality' must be in 1..100, got {self.jpeg_quality}")
        if self.workers < 1:
            raise ValueError(f"key 'workers' must be >= 1, got {self.workers}")


@dataclass(frozen=True)
class SynthResult:
    """What ``synth`` wrote: the folder, the number of images, the mean label crack fraction."""

    out: Path
    images: int
    crack_fraction: float


def render_sample(
    cfg: SynthConfig, index: int, *, return_truth: bool = False
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Render image ``index`` of the dataset described by ``cfg``.

    The result depends only on ``cfg`` and ``index`` (generator ``default_rng([seed, index])``).

    Args:
        cfg: the dataset config.
        index: image number, ``>= 0``.
        return_truth: also return the rendered ("true") crack mask as ``info["truth"]``
            (bool ``(H, W)``); the label differs from it only within ``label_noise`` px of
            the true crack edges.

    Returns:
        ``(image, label, info)``: the photo, BGR uint8 ``(H, W, 3)``; the annotated mask,
        uint8 ``(H, W)`` with values 0 and 255; and a dict of JSON-able facts (``crack_fraction``
        of the label, ``truth_crack_fraction``, ``cracks``, ``paths`` (cracks plus branches),
        ``faint_cracks``, ``min_width``/``max_width`` of the drawn true widths, ``distractors``).
    """
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    rng = np.random.default_rng([cfg.seed, index])
    h, w = cfg.height, cfg.width
    canvas = _CrackCanvas(h, w)
    crack_info = _cracks(rng, cfg, canvas)
    grain = _noise(rng, h, w, 3.0)
    grey = _surface(rng, h, w, grain)
    if cfg.distractors:
        factor, stain, distractor_info = _distractors(rng, h, w)
        grey *= factor
    else:
        stain, distractor_info = None, {"stains": 0, "joints": 0, "shadow": False}
    # Crack darkness with some texture inside the crack, then the base level and colour.
    grey *= 1.0 - canvas.dark * (0.85 + 0.15 * np.clip(grain, -1.0, 1.0))
    base = float(rng.uniform(115, 170))
    tint = np.array([rng.uniform(0.93, 1.0), 1.0, rng.uniform(1.0, 1.06)], np.float32)
    grey += rng.standard_normal((h, w), dtype=np.float32) * np.float32(rng.uniform(2.0, 4.0) / base)
    channels = [grey, grey, grey]
    if stain is not None:  # stains are a little brownish: blue drops more than red
        channels[0] = grey * (1.0 - 0.5 * stain)
        channels[2] = grey * (1.0 + 0.2 * stain)
    image = cv2.merge(
        [cv2.convertScaleAbs(c, alpha=base * float(t)) for c, t in zip(channels, tint, strict=True)]
    )

    label = canvas.label.view(np.uint8) * np.uint8(255)
    size = h * w
    info: dict[str, Any] = {
        "index": index,
        "crack_fraction": round(float(np.count_nonzero(canvas.label)) / size, 6),
        "truth_crack_fraction": round(float(np.count_nonzero(canvas.truth)) / size, 6),
        **crack_info,
        "distractors": distractor_info,
    }
    if return_truth:
        info["truth"] = canvas.truth
    return image, label, info


def _stem(index: int) -> str:
    return f"synth_{index:04d}"


def _write_one(job: tuple[SynthConfig, int, Path]) -> dict[str, Any]:
    cfg, index, root = job
    image, label, info = render_sample(cfg, index)
    stem = _stem(index)
    image_path = root / "images" / f"{stem}.jpg"
    mask_path = root / "masks" / f"{stem}.png"
    if not cv2.imwrite(str(image_path), image, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality]):
        raise CirlError(f"could not write {image_path}; check the disk and the output folder")
    if not cv2.imwrite(str(mask_path), label, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise CirlError(f"could not write {mask_path}; check the disk and the output folder")
    return {"image": f"images/{stem}.jpg", "mask": f"masks/{stem}.png", **info}


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would oversubscribe


def run(cfg: SynthConfig, out: Path) -> SynthResult:
    """Render the dataset and write it to ``out`` atomically, in the ``folder`` raw layout.

    ``out/images/synth_NNNN.jpg`` (BGR, JPEG quality ``cfg.jpeg_quality``),
    ``out/masks/synth_NNNN.png`` (0/255) and ``out/synth_card.json`` (the resolved config,
    counts and per-image facts). Everything is written to a temporary folder beside ``out``
    that replaces ``out`` only when complete, so a failed run leaves a previous ``out`` intact.

    Args:
        cfg: the dataset config.
        out: the output folder (replaced if it exists).

    Returns:
        The folder, the number of images and the mean crack-pixel fraction of the labels.
    """
    out = Path(out)
    with staged_dir(out) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        jobs = [(cfg, i, tmp) for i in range(cfg.n)]
        workers = min(cfg.workers, cfg.n)
        if workers > 1:
            ctx = multiprocessing.get_context("forkserver")
            with ctx.Pool(workers, initializer=_worker_init) as pool:
                records = pool.map(_write_one, jobs, chunksize=1)
        else:
            records = [_write_one(job) for job in jobs]
        fraction = float(np.mean([r["crack_fraction"] for r in records]))
        card = {
            "generator": "cirl.synth",
            "version": __version__,
            "layout": "folder",
            "config": to_dict(cfg),
            "images": len(records),
            "size": {"width": cfg.width, "height": cfg.height},
            "crack_fraction_mean": round(fraction, 6),
            "per_image": records,
        }
        (tmp / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n")
    log.info("wrote %d synthetic images to %s", len(records), out)
    return SynthResult(out=out, images=len(records), crack_fraction=fraction)


# what this module held before it was split, for callers that import it from here
from cirl.data.synth_draw import draw_crack  # noqa: E402, F401
