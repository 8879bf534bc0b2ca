"""Crack-segmentation metrics: the paper's per-image F1 at 0.5, and ODS, OIS, AP, IoU.

The accumulator keeps only a few counts and three cumulative histograms per image, so a test
split of any size streams through it; no image is kept.

Definitions (``t`` a threshold, ``r`` the tolerance in pixels, only valid pixels count):

- predicted pixels: ``prob >= t`` (``>=``, compared in float64).
- hits (true positives for precision): predicted pixels with a crack pixel within Euclidean
  distance ``r`` (``r = 0``: the pixel itself is crack).
- recalled (true positives for recall): crack pixels with a predicted pixel within ``r``.
- precision = hits / predicted (0 when nothing is predicted); recall = recalled / crack
  (0 when there is no crack); F1 = 2PR / (P + R) (0 when P + R = 0).
- IoU = hits / (hits + false positives + misses) = hits / (predicted + crack - recalled);
  with ``r = 0`` this is |prediction AND truth| / |prediction OR truth|.
- empty: no crack and nothing predicted. F1 and IoU are then ``empty_f1``: 0.0 by default,
  as JTFN's evaluation code scores such an image; 1.0 is the alternative. Precision and recall
  stay 0.

With a tolerance the hits and the recalled pixels come from two dilations by a disk of radius
``r`` (the truth, and a max-filter of the probabilities), so the threshold sweep needs no loop
over thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

AP_METHOD = (
    "step-wise (sklearn average_precision_score): sum over thresholds, from the highest down "
    "to 'every valid pixel predicted', of (recall gain) * precision"
)


@dataclass(frozen=True)
class Scores:
    """Precision, recall, F1 and IoU, each a float or an array of matching shape."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    iou: np.ndarray


@dataclass(frozen=True)
class PRCurve:
    """The dataset-pooled precision-recall curve over the threshold grid.

    Attributes:
        thresholds: (T,) increasing thresholds; a pixel is predicted where ``prob >= t``.
        precision: (T,) pooled precision at each threshold.
        recall: (T,) pooled recall at each threshold (non-increasing).
        f1: (T,) pooled F1 at each threshold.
    """

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray


def prf_scores(
    hits: np.ndarray | int,
    predicted: np.ndarray | int,
    recalled: np.ndarray | int,
    crack: np.ndarray | int,
    empty_f1: float = 0.0,
) -> Scores:
    """Precision, recall, F1 and IoU from counts (element-wise, any broadcastable shapes).

    Args:
        hits: predicted pixels with a crack pixel within the tolerance.
        predicted: predicted pixels.
        recalled: crack pixels with a predicted pixel within the tolerance.
        crack: crack pixels.
        empty_f1: F1 and IoU where ``crack == 0`` and ``predicted == 0``.

    Returns:
        The scores, with precision 0 where nothing is predicted, recall 0 where there is no
        crack, F1 0 where P + R = 0 (other than the empty case).
    """
    hits, predicted, recalled, crack = (
        np.asarray(a, dtype=np.float64) for a in (hits, predicted, recalled, crack)
    )
    hits, predicted, recalled, crack = np.broadcast_arrays(hits, predicted, recalled, crack)
    precision = np.divide(hits, predicted, out=np.zeros(hits.shape), where=predicted > 0)
    recall = np.divide(recalled, crack, out=np.zeros(hits.shape), where=crack > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros(hits.shape), where=total > 0)
    union = predicted + crack - recalled
    iou = np.divide(hits, union, out=np.zeros(hits.shape), where=union > 0)
    empty = (predicted == 0) & (crack == 0)
    f1 = np.where(empty, empty_f1, f1)
    iou = np.where(empty, empty_f1, iou)
    return Scores(precision=precision, recall=recall, f1=f1, iou=iou)


def threshold_grid(thresholds: int | Sequence[float]) -> np.ndarray:
    """The thresholds of the sweep.

    Args:
        thresholds: a count ``n`` (the grid ``k / (n + 1)`` for k = 1..n: 99 gives 0.01..0.99)
            or an explicit strictly increasing sequence of values in (0, 1].

    Returns:
        (T,) float64 thresholds, increasing.
    """
    if isinstance(thresholds, int | np.integer):
        if thresholds < 1:
            raise ValueError(f"thresholds must be a count >= 1 or a sequence, got {thresholds}")
        return np.arange(1, thresholds + 1, dtype=np.float64) / (thresholds + 1)
    grid = np.asarray(thresholds, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0:
        raise ValueError(f"thresholds must be a non-empty 1-D sequence, got shape {grid.shape}")
    if not (np.all(grid > 0) and np.all(grid <= 1) and np.all(np.diff(grid) > 0)):
        raise ValueError("thresholds must be strictly increasing values in (0, 1]")
    return grid


def disk(radius: float) -> np.ndarray:
    """A Euclidean disk structuring element: offsets (dx, dy) with dx^2 + dy^2 <= radius^2.

    Returns:
        (2R+1, 2R+1) uint8 kernel, R = floor(radius).
    """
    reach = math.floor(radius)
    offsets = np.arange(-reach, reach + 1)
    inside = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2 + 1e-9
    return inside.astype(np.uint8)


def _describe_grid(grid: np.ndarray, thresholds: int | Sequence[float]) -> str:
    if isinstance(thresholds, int | np.integer):
        return f"{thresholds} thresholds k/{thresholds + 1} ({grid[0]:.4g} to {grid[-1]:.4g})"
    return f"{grid.size} thresholds from {grid[0]:.4g} to {grid[-1]:.4g}"


@dataclass
class _ImageRecord:
    name: str
    valid: int
    crack: int
    # Counts at the operating threshold, computed directly (exact for any threshold).
    hits: int
    predicted: int
    recalled: int
    # (T + 1,) counts at threshold 0 (every valid pixel predicted) then each grid threshold.
    hits_curve: np.ndarray
    predicted_curve: np.ndarray
    recalled_curve: np.ndarray


class SegmentationMetrics:
    """Streams (probability, truth) pairs and scores them under one stated protocol.

    Only per-image counts and cumulative histograms over the threshold grid are kept
    (3 x T integers per image), never the images.

    Args:
        threshold: the operating threshold of the paper's protocol (0.5); predicted = ``>=``.
        thresholds: the sweep grid for pooled PR curve, ODS, OIS and AP: a count ``n`` (grid
            ``k / (n + 1)``, default 99: 0.01..0.99) or an increasing sequence in (0, 1].
        tolerance: distance in pixels (Euclidean) within which a predicted pixel and a crack
            pixel match; 0 = exact pixel match, 2 = the common relaxed crack protocol.
        empty_f1: F1 (and IoU) of an image with no crack and no prediction: 0.0 as in JTFN's
            code, or 1.0.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        thresholds: int | Sequence[float] = 99,
        tolerance: float = 0.0,
        empty_f1: float = 0.0,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if not (tolerance >= 0 and math.isfinite(tolerance)):
            raise ValueError(f"tolerance must be a finite distance >= 0 pixels, got {tolerance}")
        if empty_f1 not in (0.0, 1.0):
            raise ValueError(f"empty_f1 must be 0.0 (JTFN) or 1.0, got {empty_f1}")
        self.threshold = float(threshold)
        self.grid = threshold_grid(thresholds)
        self._grid_text = _describe_grid(self.grid, thresholds)
        self.tolerance = float(tolerance)
        self.empty_f1 = float(empty_f1)
        self._disk = disk(self.tolerance) if self.tolerance >= 1 else None
        self._records: list[_ImageRecord] = []
        self._names: set[str] = set()

    def __len__(self) -> int:
        return len(self._records)

    def _curve(self, values: np.ndarray) -> np.ndarray:
        """(T + 1,) counts of ``values >= t`` for t = 0 then each grid threshold, one histogram.

        Values of invalid pixels are -1 and are never counted.
        """
        # bin j = number of grid thresholds <= value, so value >= grid[k] iff bin > k.
        bins = np.searchsorted(self.grid, values, side="right")
        hist = np.bincount(bins, minlength=self.grid.size + 1)
        counts = np.cumsum(hist[::-1])[::-1].astype(np.int64)
        counts[0] = np.count_nonzero(values >= 0)
        return counts

    def add(
        self,
        name: str,
        prob: np.ndarray,
        truth: np.ndarray,
        valid: np.ndarray | None = None,
    ) -> None:
        """Score one image.

        Args:
            name: a unique name for the image (used in per-image rows and overlay names).
            prob: (H, W) crack probability in [0, 1].
            truth: (H, W) crack mask (bool, or any array where non-zero = crack).
            valid: (H, W) pixels that count (field of view, non-padded region); None = all.
        """
        if name in self._names:
            raise ValueError(f"image name {name!r} was added twice; names must be unique")
        prob = np.asarray(prob, dtype=np.float64)
        truth = np.asarray(truth) != 0
        if prob.ndim != 2 or truth.shape != prob.shape:
            raise ValueError(
                f"image {name!r}: prob {prob.shape} and truth {truth.shape} must be equal (H, W)"
            )
        if valid is None:
            valid = np.ones(prob.shape, dtype=bool)
        else:
            valid = np.asarray(valid) != 0
            if valid.shape != prob.shape:
                raise ValueError(
                    f"image {name!r}: valid {valid.shape} must match prob {prob.shape}"
                )
        if not np.all(np.isfinite(prob)) or prob.min(initial=0) < 0 or prob.max(initial=0) > 1:
            raise ValueError(
                f"image {name!r}: prob must be probabilities in [0, 1] (apply the sigmoid to "
                f"logits first); got range [{np.nanmin(prob):.4g}, {np.nanmax(prob):.4g}]"
            )
        truth &= valid
        # Invalid pixels get -1: never predicted at any threshold > 0.
        scored = np.where(valid, prob, -1.0)
        if self._disk is None:
            near_truth = truth
            reach = scored
        else:
            near_truth = cv2.dilate(truth.view(np.uint8), self._disk).astype(bool) & valid
            # Max of the probabilities within the disk: a crack pixel is recalled at t iff
            # some predicted pixel lies within the tolerance.
            reach = cv2.dilate(scored, self._disk, borderType=cv2.BORDER_CONSTANT, borderValue=-1)
        valid_values = scored[valid]
        hit_values = scored[near_truth]
        recall_values = reach[truth]
        t = self.threshold
        record = _ImageRecord(
            name=name,
            valid=int(valid_values.size),
            crack=int(recall_values.size),
            hits=int(np.count_nonzero(hit_values >= t)),
            predicted=int(np.count_nonzero(valid_values >= t)),
            recalled=int(np.count_nonzero(recall_values >= t)),
            hits_curve=self._curve(hit_values),
            predicted_curve=self._curve(valid_values),
            recalled_curve=self._curve(recall_values),
        )
        self._records.append(record)
        self._names.add(name)

    def _require_images(self) -> None:
        if not self._records:
            raise ValueError("no images were added; call add() for each test image first")

    def _stack(self, field: str) -> np.ndarray:
        return np.array([getattr(r, field) for r in self._records], dtype=np.int64)

    def _curves(
        self, with_zero: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(N, T) hits, predicted, recalled and (N, 1) crack counts over the grid.

        ``with_zero`` prepends threshold 0 (every valid pixel predicted): (N, T + 1).
        """
        start = 0 if with_zero else 1
        return (
            self._stack("hits_curve")[:, start:],
            self._stack("predicted_curve")[:, start:],
            self._stack("recalled_curve")[:, start:],
            self._stack("crack")[:, None],
        )

    def _best(self, f1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Best F1 along the last axis; ties go to the threshold nearest the operating one."""
        best = f1.max(axis=-1, keepdims=True)
        distance = np.abs(self.grid - self.threshold)
        index = np.where(f1 >= best, -distance, -np.inf).argmax(axis=-1)
        return best[..., 0], index

    def counts_at(self, threshold: float) -> dict[str, int]:
        """Pooled counts at a grid threshold, from the histograms (for checks and plots).

        Args:
            threshold: a value of the threshold grid.

        Returns:
            ``hits``, ``predicted``, ``recalled``, ``crack`` summed over images.
        """
        self._require_images()
        index = np.flatnonzero(np.isclose(self.grid, threshold, rtol=0, atol=1e-12))
        if index.size == 0:
            raise ValueError(f"threshold {threshold} is not on the grid {self._grid_text}")
        hits, predicted, recalled, crack = self._curves()
        k = int(index[0])
        return {
            "hits": int(hits[:, k].sum()),
            "predicted": int(predicted[:, k].sum()),
            "recalled": int(recalled[:, k].sum()),
            "crack": int(crack.sum()),
        }

    def best_mean_f1(self) -> tuple[float, float]:
        """The grid threshold that maximises the mean per-image F1 (the paper's metric at one
        threshold for every image), and that mean; ties go to the threshold nearest the
        operating one."""
        self._require_images()
        hits, predicted, recalled, crack = self._curves()
        mean = prf_scores(hits, predicted, recalled, crack, self.empty_f1).f1.mean(axis=0)
        best, index = self._best(mean)
        return float(self.grid[int(index)]), float(best)

    def held_out_gain(self, groups: Sequence[str]) -> dict:
        """What choosing :meth:`best_mean_f1`'s threshold gains over the operating threshold on
        images it was not chosen on: leave-one-group-out over ``groups`` (one name per image,
        in the order added: the photo each tile comes from, so that tiles of one photo never
        choose their own threshold).

        For each group the threshold is chosen on the other groups' images (the same rule:
        best mean per-image F1, ties nearest the operating threshold) and the group's images
        are scored at it and at the operating threshold.

        Returns:
            ``folds`` (groups), ``operating`` (the grid threshold nearest the operating one),
            ``gain`` (mean over images of F1 at the held-out choice minus F1 at the operating
            threshold; None with fewer than 2 groups), ``thresholds`` (each fold's choice, by
            group).
        """
        self._require_images()
        if len(groups) != len(self._records):
            raise ValueError(f"{len(groups)} group names for {len(self._records)} images")
        f1 = prf_scores(*self._curves(), self.empty_f1).f1  # (images, grid)
        names = np.asarray(groups, dtype=object)
        unique = sorted(set(groups))
        operating = int(np.abs(self.grid - self.threshold).argmin())
        at = float(self.grid[operating])
        if len(unique) < 2:
            return {"folds": len(unique), "operating": at, "gain": None, "thresholds": {}}
        gains = np.empty(len(names))
        chosen = {}
        for group in unique:
            held = names == group
            _, index = self._best(f1[~held].mean(axis=0))
            chosen[group] = float(self.grid[int(index)])
            gains[held] = f1[held, int(index)] - f1[held, operating]
        return {
            "folds": len(unique),
            "operating": at,
            "gain": float(gains.mean()),
            "thresholds": chosen,
        }

    def scores_at(self, threshold: float) -> dict:
        """The paper's scores at another grid threshold (a calibrated one), from the histograms.

        Args:
            threshold: a value of the threshold grid (e.g. the validation split's ODS
                threshold).

        Returns:
            ``threshold``; ``f1``, ``precision``, ``recall``, ``iou``: means over images;
            ``pooled``: {precision, recall, f1, iou} from counts summed over images.
        """
        self._require_images()
        index = np.flatnonzero(np.isclose(self.grid, threshold, rtol=0, atol=1e-12))
        if index.size == 0:
            raise ValueError(f"threshold {threshold} is not on the grid {self._grid_text}")
        k = int(index[0])
        hits, predicted, recalled, crack = self._curves()
        counts = (hits[:, k], predicted[:, k], recalled[:, k], crack[:, 0])
        each = prf_scores(*counts, self.empty_f1)
        pooled = prf_scores(*(c.sum() for c in counts), self.empty_f1)
        keys = ("f1", "precision", "recall", "iou")
        return {
            "threshold": float(self.grid[k]),
            **{key: float(np.mean(getattr(each, key))) for key in keys},
            "pooled": {key: float(getattr(pooled, key)) for key in keys},
        }

    def per_image(self) -> list[dict]:
        """One row per image, in the order added.

        Returns:
            Dicts with ``name``, ``precision``, ``recall``, ``f1``, ``iou`` (at the operating
            threshold), ``best_f1``, ``best_threshold`` (over the grid), ``crack_pixels``,
            ``predicted_pixels`` (at the operating threshold) and ``valid_pixels``.
        """
        self._require_images()
        at = prf_scores(
            self._stack("hits"),
            self._stack("predicted"),
            self._stack("recalled"),
            self._stack("crack"),
            self.empty_f1,
        )
        hits, predicted, recalled, crack = self._curves()
        best_f1, best_index = self._best(
            prf_scores(hits, predicted, recalled, crack, self.empty_f1).f1
        )
        return [
            {
                "name": r.name,
                "precision": float(at.precision[i]),
                "recall": float(at.recall[i]),
                "f1": float(at.f1[i]),
                "iou": float(at.iou[i]),
                "best_f1": float(best_f1[i]),
                "best_threshold": float(self.grid[best_index[i]]),
                "crack_pixels": r.crack,
                "predicted_pixels": r.predicted,
                "valid_pixels": r.valid,
            }
            for i, r in enumerate(self._records)
        ]

    def pr_curve(self) -> PRCurve:
        """The dataset-pooled precision-recall curve over the threshold grid."""
        self._require_images()
        hits, predicted, recalled, crack = self._curves()
        scores = prf_scores(
            hits.sum(0), predicted.sum(0), recalled.sum(0), crack.sum(), self.empty_f1
        )
        return PRCurve(
            thresholds=self.grid.copy(),
            precision=scores.precision,
            recall=scores.recall,
            f1=scores.f1,
        )

    def average_precision(self) -> float:
        """Area under the pooled PR curve, step-wise as sklearn's ``average_precision_score``.

        Thresholds are taken from the highest down; each adds (recall gain) x precision at that
        threshold, starting from recall 0 and ending with the point where every valid pixel is
        predicted (recall 1, precision = crack fraction), as sklearn's lowest score does. With
        probabilities on the grid this equals sklearn's value; otherwise it is its grid
        approximation.
        """
        self._require_images()
        hits, predicted, recalled, crack = self._curves(with_zero=True)
        scores = prf_scores(hits.sum(0), predicted.sum(0), recalled.sum(0), crack.sum())
        # From the highest threshold down to 0; recall is non-increasing in the threshold.
        recall = scores.recall[::-1]
        precision = scores.precision[::-1]
        gains = np.diff(recall, prepend=0.0)
        return float(np.sum(gains * precision))

    def protocol(self) -> str:
        """One sentence naming the protocol every number of :meth:`summary` follows."""
        empty = "0 (as in JTFN's code)" if self.empty_f1 == 0 else "1"
        if self.tolerance == 0:
            match = "tolerance 0 px (exact pixel match)"
        else:
            match = (
                f"tolerance {self.tolerance:g} px (a predicted pixel is correct and a crack pixel "
                f"recalled when the other class lies within {self.tolerance:g} px, Euclidean)"
            )
        return (
            f"JTFN protocol: crack where probability >= {self.threshold:g}; precision, recall, "
            f"F1 and IoU per image, reported as the mean over {len(self)} images; an image with "
            f"no crack and no prediction scores F1 = IoU = {empty}; precision is 0 with no "
            f"predicted pixel and recall 0 with no crack pixel; only valid pixels count; "
            f"{match}; pooled scores sum counts over images; ODS, OIS and AP over "
            f"{self._grid_text}; AP {AP_METHOD}."
        )

    def summary(self) -> dict:
        """All dataset scores, JSON-able.

        Returns:
            ``f1``, ``precision``, ``recall``, ``iou``: means over images at the operating
            threshold (the paper's protocol); ``pooled``: {precision, recall, f1, iou} from
            counts summed over images at the operating threshold; ``ods``: {f1, threshold,
            precision, recall} at the best single grid threshold (pooled counts); ``ois``: mean
            of each image's best F1 over the grid; ``ap``: step-wise area under the pooled PR
            curve; ``images``; ``pixels``: {valid, crack, predicted}; ``protocol``: a sentence;
            ``settings``: the protocol's parameters.
        """
        rows = self.per_image()
        pooled = prf_scores(
            sum(r.hits for r in self._records),
            sum(r.predicted for r in self._records),
            sum(r.recalled for r in self._records),
            sum(r.crack for r in self._records),
            self.empty_f1,
        )
        curve = self.pr_curve()
        ods_f1, ods_index = self._best(curve.f1)
        ods_index = int(ods_index)

        def mean(key: str) -> float:
            return float(np.mean([row[key] for row in rows]))

        return {
            "f1": mean("f1"),
            "precision": mean("precision"),
            "recall": mean("recall"),
            "iou": mean("iou"),
            "pooled": {
                "precision": float(pooled.precision),
                "recall": float(pooled.recall),
                "f1": float(pooled.f1),
                "iou": float(pooled.iou),
            },
            "ods": {
                "f1": float(ods_f1),
                "threshold": float(self.grid[ods_index]),
                "precision": float(curve.precision[ods_index]),
                "recall": float(curve.recall[ods_index]),
            },
            "ois": mean("best_f1"),
            "ap": self.average_precision(),
            "images": len(rows),
            "pixels": {
                "valid": sum(r.valid for r in self._records),
                "crack": sum(r.crack for r in self._records),
                "predicted": sum(r.predicted for r in self._records),
            },
            "protocol": self.protocol(),
            "settings": {
                "threshold": self.threshold,
                "comparison": "prob >= threshold",
                "average": "mean over images",
                "empty_f1": self.empty_f1,
                "tolerance_px": self.tolerance,
                "thresholds": self._grid_text,
                "ap_method": AP_METHOD,
            },
        }
