"""The comparisons verify and retrain share: the recorded data found (or prepared again) and its
files checked against the manifest, the chain's completeness, weights tensor by tensor,
scores within a tolerance.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from cirl.audit.record import _artifacts, _download, _run_config, _store
from cirl.audit.results import AuditConfig, Difference
from cirl.errors import CirlError
from cirl.lineage.schema import Tag, VersionTestTags
from cirl.lineage.tracking import TrackingConfig


def _raw_source(source: str) -> str | None:
    """A recorded raw-data source usable here: an existing folder (as recorded, or relative
    to the repository) or an ``s3://`` URI (fetched by ``cirl prepare``)."""
    from cirl.lineage.tracking import REPO_ROOT

    if source.startswith("s3://"):
        return source
    if not source or "://" in source:
        return None
    path = Path(source)
    for candidate in (path,) if path.is_absolute() else (path, REPO_ROOT / path):
        if candidate.is_dir():
            return str(candidate)
    return None


def locate_data(
    record: dict,
    data: str | os.PathLike | None = None,
    workdir: str | os.PathLike | None = None,
    tracking: TrackingConfig | None = None,
) -> Path:
    """The prepared folder to check: ``data``, else the recorded one, else prepared again.

    When the recorded folder is gone, the chain holds its ``prepare`` run, and the raw data
    that run read is here (a folder) or reachable (``s3://``), ``cirl prepare`` runs again
    with the recorded parameters into ``workdir/prepared``. Preparation is byte-reproducible,
    so the same raw data gives the recorded manifest; :func:`verify` compares the hash.

    Raises:
        CirlError: when none of these is possible, naming the recorded path, its hashes and
            how to fetch it.
    """
    if data is not None:
        path = Path(data)
        if not (path / "manifest.csv").is_file():
            raise CirlError(
                f"--data {path}: no manifest.csv; pass a folder written by `cirl prepare`"
            )
        return path
    info = record["data"]
    recorded = info.get("path") or ""
    if recorded and (Path(recorded) / "manifest.csv").is_file():
        return Path(recorded)
    prepare_runs = [r for r in record["chain"]["runs"] if r["stage"] == "prepare"]
    card = info.get("dataset_card") or {}
    source = (prepare_runs[0]["tags"].get(Tag.SOURCE) if prepare_runs else None) or card.get(
        "source", ""
    )
    md5 = info.get("dvc_data_md5_at_prepare") or info.get("dvc_data_md5") or "not recorded"
    fix = (
        f"the recorded test data {recorded or '(no path recorded)'} is not on this machine "
        f"(manifest SHA-256 {str(info.get('manifest_sha256'))[:12]}, raw data DVC md5 {md5}, "
        f"raw source {source or 'not recorded'}). Fetch it: `dvc pull` (the raw data of that "
        "DVC hash, after `git checkout` of the commit that pins it) then `dvc repro prepare`, "
        "or `cirl pipeline run --source RAW`; then pass the prepared folder with --data DIR "
        "(its manifest hash is checked)"
    )
    raw = _raw_source(source)
    if not (prepare_runs and raw and card.get("format") and workdir is not None):
        raise CirlError(fix)
    from cirl.data import prepare

    cfg = _run_config(record, prepare_runs[0], "prepare", tracking)
    out = Path(workdir) / "prepared"
    try:
        prepare.run(cfg, raw, card["format"], out, progress=False)
    except CirlError as exc:
        raise CirlError(f"{fix}. Preparing it again from {raw} failed: {exc}") from None
    return out


def _check_files(folder: Path, record: dict) -> tuple[int, list[Difference]]:
    """The manifest's hash and every tile file's SHA-256 (all splits); every difference."""
    from cirl.data.manifest import check_files, read_manifest
    from cirl.hashing import file_sha256

    differences = []
    manifest = folder / "manifest.csv"
    expected = record["data"].get("manifest_sha256") or ""
    found = file_sha256(manifest)
    if found != expected:
        differences.append(Difference("data", str(manifest), expected or "(none)", found))
    checked = 0
    for check in check_files(folder, read_manifest(folder)):
        checked += 1
        got = "missing" if check.error is not None else check.actual
        if got != check.expected:
            differences.append(Difference("data", str(check.path), check.expected, got))
    return checked, differences


def _chain_differences(record: dict) -> list[Difference]:
    """Stage runs that read another dataset than the registered evaluation."""
    expected = record["data"].get("manifest_sha256")
    return [
        Difference(
            "lineage",
            f"cirl.manifest_sha256 of the {r['role']} run {r['run_id']}",
            str(expected),
            r["tags"][Tag.MANIFEST_SHA256],
        )
        for r in record["chain"]["runs"]
        if r["tags"].get(Tag.MANIFEST_SHA256) not in (None, expected)
    ]


def _registered_weights(record: dict, tracking: TrackingConfig, folder: Path) -> Path | None:
    """``checkpoint/model_state.pt`` of the register run, downloaded (None if not logged)."""
    client, _ = _store(record["uri"], tracking)
    path = "checkpoint/model_state.pt"
    if path not in _artifacts(client, record["model"]["run_id"], "checkpoint"):
        return None
    return _download(client, record["model"]["run_id"], path, folder)


def _tensors_differ(a: dict, b: dict) -> tuple[list[str], float]:
    """Names of tensors that are not bit-identical (or missing on one side), largest |a - b|."""
    import torch

    differ, largest = [], 0.0
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b or a[key].shape != b[key].shape:
            differ.append(key)
            largest = math.inf
        elif not torch.equal(a[key], b[key]):
            differ.append(key)
            delta = (a[key].double() - b[key].double()).abs().max().item()
            largest = max(largest, float(delta))
    return differ, largest


def _scores(summary: dict) -> dict[str, float]:
    from cirl.lineage.tracking import evaluation_scores

    return evaluation_scores(summary)


def _eval_config(record: dict, cfg: AuditConfig) -> Any:
    from cirl import config
    from cirl.method.evaluate import EvaluateConfig

    params = dict(record["evaluation"].get("params") or {})
    # an evaluation recorded before the threshold calibration existed calibrated nothing
    params.setdefault("calibrate", "none")
    params.update(
        split=record["data"].get("split") or params.get("split", "test"),
        device=cfg.device,
        overlays=0,  # pictures, not scores
        verify_data=False,  # every file was just checked
    )
    return config.from_mapping(EvaluateConfig, params, "recorded evaluation parameters")


def _compare_scores(
    recorded: dict[str, float | None],
    found: dict[str, float],
    tolerance: float,
    names: tuple[str, ...] | None = None,
) -> tuple[dict[str, dict[str, float | None]], list[Difference]]:
    table, differences = {}, []
    for key in sorted(set(recorded) | set(found)):
        want, got = recorded.get(key), found.get(key)
        delta = abs(got - want) if want is not None and got is not None else None
        table[key] = {"recorded": want, "found": got, "difference": delta}
        if names is not None and key not in names:
            continue
        if want is None or got is None or not delta <= tolerance:
            differences.append(
                Difference(
                    "metric",
                    VersionTestTags.score(key),
                    "(not recorded)" if want is None else repr(want),
                    ("(not computed)" if got is None else repr(got))
                    + ("" if delta is None else f" (|diff| {delta:.3g} > {tolerance:g})"),
                )
            )
    return table, differences
