"""What a training actually was, from what it recorded: a phase II whose ambiguous set was
empty is plain BCE, whatever its run is called (read by every summary a person sees: ``cirl
pipeline show``, the reports, the MLflow runs and the registered version's tags).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrainedAs:
    """What a training actually was, whatever its run is called.

    Attributes:
        label: a short name for people (``CIRL (A = 3.1% of the marginal ring)``, ``BCE``...).
        cirl: the clustering-inspired loss acted on some pixels.
        warning: set when the run is called CIRL but trained as plain BCE, with the fix.
    """

    label: str
    cirl: bool
    warning: str | None = None


def trained_as(train: Mapping[str, Any] | None, selection: Mapping[str, Any] | None) -> TrainedAs:
    """What a training was, from its config (``train``: the checkpoint's ``config``) and, for
    phase II with an offline selection, the selection it read (``selection``: the
    ``selection`` record of its provenance, from ``cirl select``'s summary).

    A phase II whose ambiguous set A is empty, or whose CI weight ``beta`` is 0, trains exactly
    as BCE: said so, with the fix, so no summary calls such a model CIRL's.
    """
    train = dict(train or {})
    if train.get("loss") == "bce":
        return TrainedAs("BCE baseline", False)
    if int(train.get("phase", 1)) == 1:
        return TrainedAs("CIRL phase I (BCE + ambiguity-aware loss, std head)", False)
    if float(train.get("beta", 1.0)) == 0:
        return TrainedAs(
            "BCE (CIRL phase II with beta = 0)",
            False,
            "phase II trained with beta = 0: the clustering-inspired loss has no weight, so "
            "this model is plain BCE, not CIRL's; set train.beta > 0 (the paper's 0.2)",
        )
    if train.get("selection") == "online":
        return TrainedAs(
            f"CIRL (online selection: squared error > lambda {train.get('lam', '?')})", True
        )
    if not selection:
        return TrainedAs("CIRL phase II", True)
    fraction = float(selection.get("selected_fraction") or 0.0)
    if fraction > 0:
        return TrainedAs(f"CIRL (A = {fraction:.1%} of the marginal ring)", True)
    rule = selection.get("rule", "variance")
    name = "gamma" if rule == "variance" else "lambda"
    return TrainedAs(
        "BCE (CIRL phase II with an empty ambiguous set)",
        False,
        f"the selection picked no pixel ({rule} rule, {name} {selection.get('threshold')}), "
        "so phase II trained as plain BCE and this model is not CIRL's. Lower select.gamma, "
        "use select.rule: error, set select.fraction, or train.selection: online "
        "(docs/method.md)",
    )


def selection_record(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``cirl select``'s summary a phase-II training records in its provenance."""
    keys = ("rule", "threshold", "marginal_pixels", "selected_pixels", "selected_fraction")
    return {k: summary.get(k) for k in keys}


def is_sampled(summary: Mapping[str, Any]) -> bool:
    """Whether a selection's ``summary.json`` is of a sample of its split's tiles
    (``select.max_tiles``): a report for online selection, not a phase II's labels."""
    tiles = int(summary.get("tiles") or 0)
    return int(summary.get("tiles_scored", tiles) or 0) < tiles
