"""The audit's Markdown report (``audit.md``)."""

from __future__ import annotations

import json
from typing import Any

from cirl.audit.results import Difference, RetrainResult, VerifyResult
from cirl.lineage.schema import Tag


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | dict):
        value = json.dumps(value, sort_keys=True)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return [*lines, ""]


def markdown(
    record: dict,
    verification: VerifyResult | None = None,
    retraining: RetrainResult | None = None,
) -> str:
    """The audit as Markdown: lineage, then the verification and retraining when given."""
    out = _header(record, verification, retraining)
    out += _model_section(record)
    out += _data_section(record)
    out += _code_section(record)
    out += _scores_section(record, verification, retraining)
    out += _chain_section(record)
    out += _alias_section(record)
    out += _checks_sections(verification, retraining)
    return "\n".join(out).rstrip() + "\n"


def _header(
    record: dict, verification: VerifyResult | None, retraining: RetrainResult | None
) -> list[str]:
    """The title, when and where it was read, the verdict and the warnings."""
    out: list[str] = []
    out += [f"# Audit of {record['uri']} (version {record['version']} of {record['name']})", ""]
    audit = record["audit"]
    out += [f"Read {audit['at']} from {audit['tracking_uri']} by cirl {audit['cirl_version']}.", ""]
    results = [x for x in (verification, retraining) if x is not None]
    if results:
        failed = sum(len(x.differences) for x in results)
        out += [
            f"**Result: {'PASSED' if not failed else f'FAILED ({failed} difference(s))'}**",
            "",
        ]
    if retraining is not None:
        out += [f"> **Warning:** {w}" for w in retraining.warnings] + (
            [""] if retraining.warnings else []
        )
    return out


def _model_section(record: dict) -> list[str]:
    """The registered version: its run, checkpoint, model config, export parity."""
    model = record["model"]
    out: list[str] = []
    out += ["## Model", ""]
    out += _table(
        ("", ""),
        [
            ("version", record["version"]),
            ("aliases now", ", ".join(model["aliases"]) or "none"),
            ("registered", model["registered_at"]),
            ("register run", model["run_id"]),
            ("checkpoint SHA-256", model["checkpoint_sha256"]),
            ("checkpoint", f"{model['checkpoint']} (epoch {model['checkpoint_epoch']})"),
            ("model config", model["model_config"]),
            (
                "export parity",
                ((model.get("export") or {}).get("parity") or {}).get("max_abs_diff"),
            ),
        ],
    )
    return out


def _data_section(record: dict) -> list[str]:
    """The data: DVC hashes, the manifest, the dataset card."""
    data = record["data"]
    out: list[str] = []
    card = data.get("dataset_card") or {}
    out += ["## Data", ""]
    out += _table(
        ("", ""),
        [
            ("raw data DVC md5 (at registration)", data["dvc_data_md5"]),
            ("raw data DVC md5 (at preparation)", data["dvc_data_md5_at_prepare"]),
            ("raw data DVC md5 (this checkout's data.dvc)", data["dvc_data_md5_here"]),
            ("manifest SHA-256", data["manifest_sha256"]),
            ("test split", data["split"]),
            ("prepared folder", data["path"]),
            ("source", card.get("source")),
            ("format", card.get("format")),
            ("tiles", card.get("tiles")),
            ("photos", card.get("photos")),
            ("preparation params", card.get("params")),
            ("dataset card from", data.get("dataset_card_from") or "not found"),
        ],
    )
    return out


def _code_section(record: dict) -> list[str]:
    """The code and environment, recorded and here."""
    code, env, audit = record["code"], record["environment"], record["audit"]
    out: list[str] = []
    out += ["## Code and environment", ""]
    dirty = {"true": " (dirty: uncommitted changes)", "false": " (clean)"}
    out += _table(
        ("", "recorded", "here"),
        [
            (
                "git commit",
                f"{code['git_commit'] or '-'}{dirty.get(code['git_dirty'] or '', '')}",
                f"{code['git_commit_here'] or '-'}{dirty.get(code['git_dirty_here'] or '', '')}",
            ),
            ("commits in the chain", code["commits_in_chain"], ""),
            ("cirl", code["cirl_version"], audit["cirl_version"]),
            ("python", env["python"], audit["python"]),
            ("torch", env["torch"], audit["torch"]),
            ("onnxruntime", env["onnxruntime"], audit["onnxruntime"]),
            ("image digest", code["image_digest"], ""),
            ("KFP run id", code["kfp_run_id"], ""),
        ],
    )
    if code["git_commit"] and code["git_commit"] != code["git_commit_here"]:
        out += ["**The recorded commit is not this checkout's.**", ""]
    return out


def _scores_section(
    record: dict, verification: VerifyResult | None, retraining: RetrainResult | None
) -> list[str]:
    """The test scores: recorded, re-evaluated, retrained."""
    data = record["data"]
    out: list[str] = []
    header = ["metric", "recorded"]
    columns = [("re-evaluated", verification), ("retrained", retraining)]
    header += [name for name, x in columns if x is not None]
    rows = []
    for key, value in record["metrics"].items():
        row = [key, value]
        for _, x in columns:
            if x is not None:
                row.append((x.metrics.get(key) or {}).get("found"))
        rows.append(tuple(row))
    out += [f"## Test scores ({data['split']} split)", ""]
    evaluation = record["evaluation"]
    if evaluation.get("protocol"):
        out += [str(evaluation["protocol"]), ""]
    out += _table(tuple(header), rows)
    out += ["Evaluation parameters: " + _cell(evaluation.get("params")), ""]
    return out


def _chain_section(record: dict) -> list[str]:
    """The pipeline run and each stage run of the chain."""
    out: list[str] = []
    chain = record["chain"]
    out += ["## Chain of runs", ""]
    parent = chain.get("parent")
    if parent and parent.get("name"):
        out += [
            f"Pipeline run `{parent['run_id']}` ({parent['name']}, {parent['status']}, "
            f"started {parent['start_time']}).",
            "",
        ]
    out += [
        f"Complete: {'yes' if chain['complete'] else 'no'}"
        + (f" (missing: {', '.join(chain['missing'])})" if chain["missing"] else "")
        + (f". {chain['note']}" if chain.get("note") else ""),
        "",
    ]
    out += _table(
        ("#", "stage", "run", "status", "started", "manifest SHA-256", "commit"),
        [
            (
                i + 1,
                r["role"],
                f"{r['name']} `{r['run_id']}`",
                r["status"],
                r["start_time"],
                (r["tags"].get(Tag.MANIFEST_SHA256) or "")[:12],
                (r["tags"].get(Tag.GIT_COMMIT) or "")[:12],
            )
            for i, r in enumerate(chain["runs"])
        ],
    )
    for i, r in enumerate(chain["runs"]):
        out += [f"### {i + 1}. {r['role']} (`{r['run_id']}`)", ""]
        if r["params"]:
            out += [
                "Parameters: " + ", ".join(f"`{k}={_cell(v)}`" for k, v in r["params"].items()),
                "",
            ]
        shown = {k: v for k, v in r["metrics"].items() if not k.startswith(("seconds", "images"))}
        if shown:
            out += [
                "Metrics (last value): " + ", ".join(f"{k} {_cell(v)}" for k, v in shown.items()),
                "",
            ]
    return out


def _alias_section(record: dict) -> list[str]:
    """The model's alias moves."""
    out: list[str] = []
    out += ["## Alias history", ""]
    if record["alias_history"]:
        out += _table(
            ("moved at (UTC)", "alias", "version", "previous", "reason"),
            [
                (m["moved_at"], m["alias"], m["version"] or "(removed)", m["previous"], m["reason"])
                for m in record["alias_history"]
            ],
        )
    else:
        out += [
            "No recorded alias moves (aliases set outside `cirl promote` are not recorded).",
            "",
        ]
    return out


def _checks_sections(
    verification: VerifyResult | None, retraining: RetrainResult | None
) -> list[str]:
    """What --verify and --retrain found."""
    out: list[str] = []
    if verification is not None:
        out += ["## Verification (--verify)", "", f"Data: {verification.data}", ""]
        out += [f"* checked: {c}" for c in verification.checks]
        out += [f"* note: {n}" for n in verification.notes]
        out += [f"* took {verification.seconds:.1f} s", ""]
        out += _differences(verification.differences)
    if retraining is not None:
        out += [
            "## Retraining (--retrain)",
            "",
            f"Data: {retraining.data}; outputs: {retraining.workdir}",
            "",
        ]
        out += _table(
            ("stage", "seconds"), [(s["stage"], round(s["seconds"], 1)) for s in retraining.stages]
        )
        weights = retraining.weights
        if weights.get("identical") is not None:
            out += [
                "Weights: "
                + (
                    f"bit-identical to the registered ones ({weights['tensors']} tensors)"
                    if weights["identical"]
                    else f"{len(weights['differ'])} of {weights['tensors']} tensors differ "
                    f"(max |diff| {weights['max_abs_diff']:.3g})"
                ),
                "",
            ]
        out += [f"* note: {n}" for n in retraining.notes]
        out += [
            f"* test F1 tolerance {retraining.tolerance:g}; took {retraining.seconds:.1f} s",
            "",
        ]
        out += _differences(retraining.differences)
    return out


def _differences(differences: list[Difference]) -> list[str]:
    if not differences:
        return ["No differences.", ""]
    return [
        "Differences:",
        "",
        *_table(
            ("kind", "what", "expected", "found"),
            [(d.kind, d.what, d.expected, d.found) for d in differences],
        ),
    ]
