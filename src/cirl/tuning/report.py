"""The sweep's report: trials.csv, sensitivity.csv, best.md, the plots, and the test scores of
the best setting and the default (scored once, kept in the study).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from cirl.method import recipe
from cirl.tuning.space import NUMERIC, OPTIONS, SweepConfig, SweepResult, _result
from cirl.tuning.study import _same_settings, open_study

log = logging.getLogger(__name__)


def report_study(
    cfg: SweepConfig,
    train_cfg,
    select_cfg,
    data: str | os.PathLike,
    out: str | os.PathLike,
    trial_roots: tuple[Path, ...] = (),
) -> SweepResult:
    """Write the reports of a study whose trials ran elsewhere (the sweep pipeline's last task).

    Args:
        trial_roots: folders holding the workers' ``trials/<n>/`` (their outputs), searched
            for the checkpoint of a trial whose recorded folder is not on this machine.
    """
    data, out = Path(data), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    url, study, _, default = open_study(cfg, train_cfg, select_cfg, out)
    best = report(study, cfg, out, data, default, trial_roots)
    return _result(study, out, url, best)


def _settings_label(key: str, value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _test_f1(study, trial, data: Path, trial_roots: tuple[Path, ...] = ()) -> dict | None:
    """The test scores of a trial's phase II, scored once (kept in the study)."""
    stored = study.user_attrs.get(f"test_{trial.number}")
    if stored:
        return stored
    number = trial.user_attrs.get("duplicate_of", trial.number)
    candidates = [Path(trial.user_attrs.get("folder", ""))]
    candidates += [Path(root) / "trials" / str(number) for root in trial_roots]
    folder = next((c for c in candidates if recipe.scored_checkpoint(c).is_file()), None)
    if folder is None:
        log.warning("trial %d: no checkpoint found for its test score", trial.number)
        return None
    out = folder / "test"
    if not (out / "metrics.json").is_file():
        from cirl.method.evaluate import EvaluateConfig

        cfg = EvaluateConfig(split="test", overlays=0, verify_data=False)
        recipe.evaluate(cfg, data, folder, out, fresh_process=True)
    metrics = json.loads((out / "metrics.json").read_text())
    scores = {
        "f1": metrics["f1"],
        "ods": metrics["ods"]["f1"],
        "ois": metrics["ois"],
        "ap": metrics["ap"],
    }
    study.set_user_attr(f"test_{trial.number}", scores)
    return scores


def report(
    study,
    cfg: SweepConfig,
    out: Path,
    data: Path,
    default: dict,
    trial_roots: tuple[Path, ...] = (),
) -> dict | None:
    """Write trials.csv, the sensitivity/importance plots and tables, and best.md/best.csv."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    keys = list(NUMERIC + OPTIONS)
    rows = []
    for t in trials:
        settings = t.user_attrs.get("settings", {})
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "varied": settings.get("varied", ""),
                **{k: settings.get(k, "") for k in keys},
                "val_f1": "" if t.value is None else f"{t.value:.6f}",
                "selected_fraction": t.user_attrs.get("selected_fraction", ""),
                "crack_share_of_a": t.user_attrs.get("crack_share_of_a", ""),
                "seconds": f"{t.user_attrs.get('seconds', 0):.1f}",
                "duplicate_of": t.user_attrs.get("duplicate_of", ""),
                "error": t.user_attrs.get("error", ""),
            }
        )
    _write_csv(out / "trials.csv", rows)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return None
    _plots(study, cfg, out, complete, default)

    defaults = [t for t in complete if _same_settings(t.user_attrs.get("settings", {}), default)]
    # ties go to the default (no change without a measured gain), then to the earlier trial
    best = max(complete, key=lambda t: (t.value, t in defaults, -t.number))
    table = [("best", best)] + ([("default", defaults[0])] if defaults else [])
    lines = [
        f"# Sweep `{cfg.study}` ({cfg.mode}): the best setting against the defaults",
        "",
        "Chosen on the validation split (per-image F1 at 0.5); test scored once, after the choice.",
        "",
        "| | trial | " + " | ".join(keys) + " | val F1 | test F1 | test ODS | test AP |",
        "|---|---|" + "---|" * len(keys) + "---|---|---|---|",
    ]
    csv_rows = []
    for name, t in table:
        scores = _test_f1(study, t, data, trial_roots) if cfg.test else None
        settings = t.user_attrs.get("settings", {})
        test = scores or {}
        lines.append(
            f"| {name} | {t.number} | "
            + " | ".join(_settings_label(k, settings.get(k, "")) for k in keys)
            + f" | {t.value:.4f} | "
            + " | ".join(f"{test[m]:.4f}" if m in test else "-" for m in ("f1", "ods", "ap"))
            + " |"
        )
        csv_rows.append(
            {
                "row": name,
                "trial": t.number,
                **{k: settings.get(k, "") for k in keys},
                "val_f1": t.value,
                **{f"test_{m}": v for m, v in test.items()},
            }
        )
    (out / "best.md").write_text("\n".join(lines) + "\n")
    _write_csv(out / "best.csv", csv_rows)
    return csv_rows[0]


def _write_csv(path: Path, rows: list[dict]) -> None:
    from cirl.staging import staged_file

    if not rows:
        return
    with staged_file(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _plots(study, cfg: SweepConfig, out: Path, complete: list, default: dict) -> None:
    """sensitivity.png/.csv (sensitivity mode) and importance.png/.csv (both modes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    importances: dict[str, float] = {}
    if cfg.mode == "sensitivity":
        base = [t for t in complete if t.user_attrs["settings"]["varied"] == "default"]
        varied = sorted(
            {t.user_attrs["settings"]["varied"] for t in complete} - {"default"},
            key=(NUMERIC + OPTIONS).index,
        )
        rows = []
        for key in varied:
            points = [t for t in complete if t.user_attrs["settings"]["varied"] == key] + base
            for t in points:
                rows.append(
                    {"parameter": key, "value": t.user_attrs["settings"][key], "val_f1": t.value,
                     "default": t in base, "trial": t.number}
                )  # fmt: skip
            values = [t.value for t in points]
            importances[key] = max(values) - min(values)
        _write_csv(out / "sensitivity.csv", rows)
        if varied:
            cols = min(4, len(varied))
            nrows = math.ceil(len(varied) / cols)
            fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.8 * nrows), squeeze=False)
            for ax, key in zip(axes.flat, varied, strict=False):
                mine = [r for r in rows if r["parameter"] == key]
                pts = sorted(
                    ((r["value"], r["val_f1"], r["default"]) for r in mine),
                    key=lambda r: (isinstance(r[0], str), r[0]),
                )
                labels = [_settings_label(key, v) for v, _, _ in pts]
                ys = [y for _, y, _ in pts]
                if key in NUMERIC:
                    xs = [float(v) for v, _, _ in pts]
                    ax.plot(xs, ys, "o-", color="tab:blue")
                    dx = [float(v) for v, _, d in pts if d]
                    ax.plot(dx, [y for _, y, d in pts if d], "r*", ms=12, label="default")
                    if key in ("beta", "k"):
                        ax.set_xscale("log")
                else:
                    colours = ["tab:red" if d else "tab:blue" for _, _, d in pts]
                    ax.bar(labels, ys, color=colours)
                    lo = min(ys)
                    ax.set_ylim(max(0.0, lo - 0.05), max(ys) + 0.02)
                ax.set_title(key)
                ax.set_ylabel("val F1")
                ax.grid(alpha=0.3)
            for ax in list(axes.flat)[len(varied) :]:
                ax.axis("off")
            fig.suptitle(f"{cfg.study}: val F1 (per image, 0.5) per parameter; red = default")
            fig.tight_layout()
            fig.savefig(out / "sensitivity.png", dpi=110)
            plt.close(fig)
    else:
        import optuna

        varied_params = {k for t in complete for k in t.params}
        if len(complete) >= 2 and varied_params:
            try:
                importances = optuna.importance.get_param_importances(study)
            except (RuntimeError, ValueError) as exc:  # too few distinct trials
                log.warning("parameter importances not computed: %s", exc)
    if importances:
        ordered = sorted(importances.items(), key=lambda kv: -kv[1])
        _write_csv(out / "importance.csv", [{"parameter": k, "importance": v} for k, v in ordered])
        fig, ax = plt.subplots(figsize=(5, 0.4 * len(ordered) + 1.2))
        ax.barh([k for k, _ in ordered][::-1], [v for _, v in ordered][::-1], color="tab:blue")
        ax.set_xlabel(
            "F1 range over its values" if cfg.mode == "sensitivity" else "fANOVA importance"
        )
        ax.set_title(f"{cfg.study}: parameter importance")
        fig.tight_layout()
        fig.savefig(out / "importance.png", dpi=110)
        plt.close(fig)
