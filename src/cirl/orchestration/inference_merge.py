"""The inference pipeline's merge task: the summary CSV over every photo, the report page and
``merge.json`` (:mod:`cirl.orchestration.task_inference`).
"""

from __future__ import annotations

import csv
import io
import json
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cirl.orchestration.inference_io import (
    MERGE_FILE,
    PIPELINE_NAME,
    SHARD_FILE,
    STATUSES,
    TOP_PHOTOS,
    Location,
    _now,
)
from cirl.orchestration.inference_shard import (
    read_plan,
    summary_row,
)
from cirl.orchestration.task_base import (
    ArtifactLike,
    _prepare_output,
)


def _summary_csv(rows: Sequence[Mapping[str, str]]) -> bytes:
    from cirl.deploy.photo_outputs import SUMMARY_COLUMNS

    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def merge(
    plan_artifact: ArtifactLike,
    shards: Sequence[ArtifactLike],
    merged: ArtifactLike,
    page: ArtifactLike | None = None,
    metrics: Any = None,
) -> dict:
    """The last task: ``summary.csv``, ``report.html`` and ``merge.json`` (written last) in the
    output prefix and in ``merged``; the embedded page as ``page``; counts as ``metrics``."""
    plan_record = read_plan(plan_artifact)
    records = sorted(
        (json.loads((Path(a.path) / SHARD_FILE).read_text()) for a in shards),
        key=lambda r: r["index"],
    )
    reported: dict[str, dict[str, str]] = {}
    for record in records:
        reported.update(record["rows"])
    rows = [
        reported.get(p["name"]) or summary_row(p, "failed", reason="no shard reported this photo")
        for p in plan_record["photos"]
    ]
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    out = Location(plan_record["out"])
    engines: dict[str, int] = {}
    for row in rows:
        if row["engine"]:
            engines[row["engine"]] = engines.get(row["engine"], 0) + 1
    result = {
        "pipeline": PIPELINE_NAME,
        "source": plan_record["source"],
        "out": plan_record["out"],
        "model": plan_record["model"],
        "threshold": plan_record["threshold"],
        "params": plan_record["predict_params"],
        "photos": len(rows),
        "counts": counts,
        "failed": [
            {"image": r["image"], "reason": r["reason"]} for r in rows if r["status"] == "failed"
        ],
        "engines": engines,
        "shards": {
            "count": len(plan_record["shards"]),
            "asked": plan_record["shards_asked"],
            "partition": plan_record["partition"],
            "each": [{k: v for k, v in r.items() if k != "rows"} for r in records],
        },
        "code_version": plan_record["code_version"],
        "planned_at": plan_record["planned_at"],
        "merged_at": _now(),
        "outputs": {n: out.uri_of(n) for n in ("summary.csv", "report.html", MERGE_FILE)},
    }
    folder = _prepare_output(merged)
    folder.mkdir(parents=True, exist_ok=True)
    summary = _summary_csv(rows)
    (folder / "summary.csv").write_bytes(summary)
    out.write("summary.csv", summary)
    with tempfile.TemporaryDirectory(prefix="cirl-merge-") as tmp:
        shown = _top_overlays(rows, out, Path(tmp))
        linked = _page(result, rows, shown, Path(tmp), embed=False)
        out.write("report.html", linked.render().encode())
        if page is not None:
            from cirl.orchestration.task_reports import write_page

            write_page(page, _page(result, rows, shown, Path(tmp), embed=True))
    text = (json.dumps(result, indent=2) + "\n").encode()
    (folder / MERGE_FILE).write_bytes(text)
    out.write(MERGE_FILE, text)
    merged.metadata.update({"photos": len(rows), **counts, "model": plan_record["model"]["uri"]})
    if metrics is not None:
        for key, value in counts.items():
            metrics.log_metric(key, value)
    print(f"merge: {len(rows)} photo(s): {json.dumps(counts)}", file=sys.stderr)
    return result


def _top_overlays(rows: Sequence[Mapping[str, str]], out: Location, folder: Path) -> list[tuple]:
    """The overlays of the photos with the longest cracks (then the most crack pixels: regions
    too wide to measure count there), fetched into ``folder``."""
    made = [
        r
        for r in rows
        if r["status"] in ("done", "skipped")
        and (_number(r["cracks"]) > 0 or _number(r["crack_fraction"]) > 0)
    ]
    made.sort(
        key=lambda r: (-_number(r["total_length_px"]), -_number(r["crack_fraction"]), r["name"])
    )
    shown = []
    for row in made[:TOP_PHOTOS]:
        name = f"{row['name']}_overlay.jpg"
        data = out.read(name)
        if data is None:
            continue
        (folder / name).write_bytes(data)
        shown.append((row, folder / name))
    return shown


def _page(result: Mapping, rows: Sequence[Mapping[str, str]], shown: Sequence[tuple],
          folder: Path, embed: bool) -> Any:  # fmt: skip
    """The run's report page: counts, model, failures, the longest cracks, every photo."""
    import html
    from urllib.parse import quote

    from cirl.pages import Page

    counts, model = result["counts"], result["model"]
    page = Page(f"Crack inference: {result['photos']} photos", folder, embed=embed)
    page.fields(
        {
            "source": result["source"],
            "outputs": result["out"],
            "done": counts["done"],
            "skipped (finished before)": counts["skipped"],
            "failed": counts["failed"],
            "shards": f"{result['shards']['count']} ({result['shards']['partition']})",
            "engines": ", ".join(f"{k}: {v}" for k, v in result["engines"].items()) or "-",
            "threshold": f"{result['threshold']['value']:g} ({result['threshold']['source']})",
        }
    )
    page.heading("Model")
    page.fields(
        {
            "asked for": model["requested"],
            "used": model["uri"],
            "name": model.get("name"),
            "version": model.get("version"),
            "resolved from alias": model.get("alias"),
            "run id": model.get("run_id"),
            "resolved at": model.get("resolved_at"),
        }
    )
    if counts["failed"]:
        page.warning(f"{counts['failed']} photo(s) failed; the others are done.")
        page.table([(f["image"], f["reason"]) for f in result["failed"]], ["photo", "reason"])
    if shown:
        page.heading("The longest cracks, the most crack pixels")
        for row, path in shown:
            page.image(
                path,
                f"{row['name']}: {row['cracks']} crack(s), total length {row['total_length_px']} "
                f"px, widest {row['max_width_px']} px, crack fraction {row['crack_fraction']}",
            )
    page.heading("Every photo")
    header = ["photo", "status", "cracks", "total length px", "max width px", "crack fraction"]
    keys = ("name", "status", "cracks", "total_length_px", "max_width_px", "crack_fraction")
    if embed:
        page.table([[r[k] for k in keys] for r in rows], header)
        return page
    links = (
        ("_overlay.jpg", "overlay"),
        ("_mask.png", "mask"),
        ("_cracks.csv", "cracks"),
        (".json", "report"),
    )
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in [*header, "files"])
    lines = [f"<tr>{cells}</tr>"]
    for r in rows:
        values = [r[k] for k in keys]
        files = ""
        if r["status"] != "failed":
            files = " ".join(
                f'<a href="{quote(r["name"] + suffix)}">{label}</a>' for suffix, label in links
            )
        tds = "".join(f"<td>{html.escape(v)}</td>" for v in values)
        lines.append(f"<tr>{tds}<td>{files}</td></tr>")
    page.raw(f"<table>{''.join(lines)}</table>")
    page.raw('<p><a href="summary.csv">summary.csv</a> · <a href="merge.json">merge.json</a></p>')
    return page
