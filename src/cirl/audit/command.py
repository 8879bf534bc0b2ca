"""``cirl audit``: lineage, optionally verify and retrain, and the report files."""

from __future__ import annotations

import dataclasses
import json
import os

from cirl.audit.checks import locate_data
from cirl.audit.record import lineage
from cirl.audit.report import markdown
from cirl.audit.results import AuditConfig, AuditResult
from cirl.audit.retrain import retrain, retrain_in_fresh_process
from cirl.audit.verify import verify
from cirl.lineage.tracking import TrackingConfig

# run() takes flags named like these functions
_verify, _retrain = verify, retrain


def run(
    cfg: AuditConfig,
    uri: str,
    out: str | os.PathLike,
    verify: bool = False,
    retrain: bool = False,
    data: str | os.PathLike | None = None,
    tracking: TrackingConfig | None = None,
    progress: bool = False,
) -> AuditResult:
    """Audit ``uri`` and write ``OUT/audit.md`` and ``OUT/audit.json``.

    Args:
        cfg: tolerances and device.
        uri: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.
        out: the report folder (also ``OUT/prepared`` when data is prepared again and
            ``OUT/retrain/`` with the retrained stages).
        verify: run :func:`verify`.
        retrain: run :func:`retrain`.
        data: the prepared folder to use instead of the recorded one.
        tracking: the store.
        progress: progress bars of the stages.

    Returns:
        The lineage, the checks' results, the Markdown and the files written.

    Raises:
        CirlError: on an unknown model or alias, a store that cannot be used, data that cannot
            be found, or records too incomplete to retrain.
    """
    from cirl.staging import staged_file, writable_dir

    record = lineage(uri, tracking)  # first: an unknown model leaves no report folder
    out = writable_dir(out)
    checked = retrained = None
    notes = []
    if verify or retrain:
        located = locate_data(record, data, out, tracking)
        if data is None and str(located) != str(record["data"].get("path")):
            notes.append(
                f"the recorded folder {record['data'].get('path')} is not here: prepared again "
                f"from the recorded raw data and parameters into {located}"
            )
        data = located
    if verify:
        from cirl.models.inference import subnormals_as_zero

        # as the evaluate stage scored (a trained model's subnormal activations took a Xeon
        # through its slow path: minutes instead of seconds); the retrain below runs in a
        # fresh process, never in this mode
        with subnormals_as_zero():
            checked = _verify(record, cfg, data, tracking, progress=progress)
        checked.notes[:0] = notes
    if retrain:
        retrained = retrain_in_fresh_process(
            record, cfg, out / "retrain", data, tracking, progress=progress
        )
        retrained.notes[:0] = notes
    text = markdown(record, checked, retrained)
    report = {
        "config": dataclasses.asdict(cfg),
        "ok": not ((checked and checked.differences) or (retrained and retrained.differences)),
        "lineage": record,
        "verify": checked.to_dict() if checked else None,
        "retrain": retrained.to_dict() if retrained else None,
    }
    paths = (out / "audit.md", out / "audit.json")
    with staged_file(paths[1]) as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    with staged_file(paths[0]) as tmp:
        tmp.write_text(text)
    return AuditResult(record, checked, retrained, text, paths)
