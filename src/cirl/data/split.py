"""Train/validation/test assignment, grouped by source photo and deterministic for a seed."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping

from cirl.data.sources import SPLITS, Split
from cirl.errors import CirlError


def _round(x: float) -> int:
    return math.floor(x + 0.5)


def split_counts(n: int, ratios: tuple[float, float, float]) -> dict[Split, int]:
    """How many of ``n`` groups go to train, val and test for the given ratios.

    Validation and test get ``round(n * ratio)`` each, but at least one when their ratio is
    positive; train gets the rest and must keep at least one.
    """
    _, r_val, r_test = ratios
    n_val = max(_round(n * r_val), 1 if r_val > 0 else 0)
    n_test = max(_round(n * r_test), 1 if r_test > 0 else 0)
    if n - n_val - n_test < 1:
        raise CirlError(
            f"{n} photo(s) are too few for the split ratios {list(ratios)}: train would be empty; "
            "add photos, lower the val/test ratios, or use --split-by tile"
        )
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def assign_splits(
    ids: Iterable[str], ratios: tuple[float, float, float], seed: int
) -> dict[str, Split]:
    """Assign each id (a photo or a tile) to a split, at random but reproducibly.

    The ids are sorted first, so the result depends only on the set of ids, the ratios and the
    seed, not on listing order.

    Args:
        ids: unique names to assign.
        ratios: train, val, test fractions summing to 1.
        seed: the random seed.

    Returns:
        id -> split.
    """
    order = sorted(set(ids))
    random.Random(seed).shuffle(order)
    counts = split_counts(len(order), ratios)
    out: dict[str, Split] = {}
    at = 0
    for split in ("test", "val", "train"):
        for name in order[at : at + counts[split]]:
            out[name] = split
        at += counts[split]
    return out


def assign_with_official(
    official: Mapping[str, Split | None], ratios: tuple[float, float, float], seed: int
) -> tuple[dict[str, Split], list[str]]:
    """Honour an official split; carve validation photos out of its training part if it has none.

    Args:
        official: photo id -> its official split (None for all photos when there is none).
        ratios: train, val, test fractions, used when there is no official split, and for the
            validation share ``val / (train + val)`` carved out of an official training part.
        seed: the random seed.

    Returns:
        ``(assignment, notes)``: photo id -> split, and remarks for the dataset card.
    """
    if all(split is None for split in official.values()):
        return assign_splits(official, ratios, seed), [
            f"no official split: photos assigned at random with ratios {list(ratios)}, seed {seed}"
        ]
    missing = sorted(k for k, v in official.items() if v is None)
    if missing:
        raise CirlError(
            f"the dataset has an official split but {len(missing)} photo(s) have none "
            f"(first: {missing[0]}); list every photo in a split"
        )
    out: dict[str, Split] = dict(official)  # type: ignore[arg-type]
    notes = ["official split used"]
    if "val" not in out.values():
        train = sorted(k for k, v in out.items() if v == "train")
        r_train, r_val, _ = ratios
        share = r_val / (r_train + r_val) if r_train + r_val > 0 else 0.0
        carved = assign_splits(train, (1.0 - share, share, 0.0), seed)
        out.update(carved)
        n_val = sum(1 for v in carved.values() if v == "val")
        notes.append(
            f"official split has no validation part: {n_val} of its {len(train)} training "
            f"photos moved to val (share {share:.4f}, seed {seed})"
        )
    return out, notes


def parse_ratios(text: str | tuple[float, ...] | list[float]) -> tuple[float, float, float]:
    """Parse ``"0.9,0.05,0.05"`` (or a sequence) into checked train/val/test ratios."""
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise CirlError(f"split {text!r}: expected three numbers like 0.9,0.05,0.05") from None
    if len(values) != 3 or any(v < 0 for v in values) or values[0] <= 0:
        raise CirlError(
            f"split {text!r}: expected three non-negative ratios train,val,test with train > 0"
        )
    if abs(sum(values) - 1.0) > 1e-6:
        raise CirlError(f"split {text!r}: ratios must sum to 1 (they sum to {sum(values):g})")
    return values[0], values[1], values[2]


__all__ = ["SPLITS", "assign_splits", "assign_with_official", "parse_ratios", "split_counts"]
