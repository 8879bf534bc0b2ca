"""``cirl audit``: the lineage of a registered model, checked and reproduced on demand.

* :func:`lineage` follows a ``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``) back through
  the records: the version's tags (data, code, environment, test scores), its source run (the
  ``register`` run) and that run's artifacts (evaluation, training config, provenance), the
  parent pipeline run and every stage run nested under it (oldest first, each with its
  parameters, tags and metrics), the dataset card of the ``prepare`` run, and the alias
  history of the model (:func:`cirl.registry.alias_history`). A version registered outside a
  pipeline has no parent: the chain is reported incomplete, which is not an error.
* :func:`verify` checks the records against the files: the manifest's SHA-256, every tile's
  SHA-256 (all splits), the registered weights against the recorded checkpoint hash, the
  registered weights re-evaluated on the recorded test split against the recorded scores
  (``tolerance``), and the registered ONNX model against those weights (``onnx_tolerance``).
* :func:`retrain` runs the recorded training again (phase I, select, phase II, evaluate; or the
  BCE baseline and evaluate) with the recorded parameters on the recorded data, and compares
  the retrained weights (tensor by tensor) and test scores with the registered ones. The
  command runs it in a fresh process (:func:`retrain_in_fresh_process`), as a pipeline task
  trains, so nothing the verification left in the process reaches the training.
* :func:`run` does what the command does: lineage, optionally verify and retrain, and writes
  ``OUT/audit.md`` and ``OUT/audit.json`` (each replaced atomically).

Every finding that makes an audit fail is a :class:`Difference` (kind, what, expected, found),
so a report says exactly which file, hash or score differs. See ``docs/audit.md``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cirl import __version__
from cirl.errors import CirlError
from cirl.tracking import TrackingConfig

# The stage runs a complete chain holds, by the arm of the registered model.
CIRL_CHAIN = (
    "prepare",
    "train phase 1",
    "select",
    "train phase 2",
    "evaluate",
    "export",
    "register",
)
BCE_CHAIN = ("prepare", "train baseline", "evaluate", "export", "register")
_RUN_TAGS = (
    "cirl.manifest_sha256",
    "cirl.git_commit",
    "cirl.git_dirty",
    "cirl.dvc_data_md5",
    "cirl.source",
    "cirl.checkpoint_sha256",
    "cirl.kfp_run_id",
    "cirl.error",
)
_TEST_INFO = ("test.split", "test.manifest_sha256", "test.data")


@dataclass(frozen=True)
class AuditConfig:
    """Parameters of a model audit (``params.yaml`` group ``audit``).

    Attributes:
        tolerance: largest absolute difference between a recorded test score and the
            registered weights re-evaluated (``--verify``; also the retrained scores when the
            weights are bit-identical). Same weights, files and code on the same kind of
            device give the same floats (scores are stored with repr): 1e-6 is far above
            rounding (~1e-15) and below what one changed pixel moves a mean F1 by on a test
            split of up to a few hundred images.
        onnx_tolerance: largest absolute difference of crack probability allowed between the
            registered ONNX model and the registered PyTorch weights on the test split (the
            parity bound ``cirl export`` enforces, 1e-4 for fp32).
        onnx: also run the registered ONNX model on the test split (``--verify``).
        retrain_tolerance: largest absolute difference of test F1 allowed between the
            retrained model and the registered one (``--retrain``). Bit-identical weights give
            0; on another CPU type, thread count or a GPU the weights drift, and one F1 point
            (0.01) is a judgement: a retrain that misses the model's quality fails, drift
            passes. Set it from the seed-to-seed spread of your own schedule.
        device: ``auto``, ``cpu`` or ``cuda`` for re-evaluation and retraining (replaces the
            recorded device; the report names both).
    """

    tolerance: float = 1e-6
    onnx_tolerance: float = 1e-4
    onnx: bool = True
    retrain_tolerance: float = 0.01
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        for key in ("tolerance", "onnx_tolerance", "retrain_tolerance"):
            value = getattr(self, key)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"key {key!r} must be a number >= 0, got {value}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"key 'device' must be auto, cpu or cuda, got {self.device!r}")


@dataclass(frozen=True)
class Difference:
    """One finding that fails an audit.

    ``kind`` is ``data`` (a file or the manifest), ``model`` (weights, hashes, the ONNX file),
    ``metric`` (a test score), ``weights`` (a retrained tensor) or ``lineage`` (records that
    disagree with each other); ``what`` names the file, hash, tensor or score.
    """

    kind: str
    what: str
    expected: str
    found: str

    def line(self) -> str:
        """One line for a terminal: ``metric test.f1: expected 0.61, found 0.59``."""
        return f"{self.kind} {self.what}: expected {self.expected}, found {self.found}"


@dataclass
class VerifyResult:
    """What :func:`verify` checked and what differed (empty ``differences``: all agree)."""

    data: str
    files_checked: int = 0
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    onnx: dict[str, Any] | None = None
    checks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    tolerance: float = 0.0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when nothing differs."""
        return not self.differences

    def to_dict(self) -> dict:
        """JSON-able content."""
        return {**dataclasses.asdict(self), "ok": self.ok}


@dataclass
class RetrainResult:
    """What :func:`retrain` reproduced and what differed."""

    workdir: str
    data: str
    code: dict[str, Any] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    tolerance: float = 0.0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when nothing differs."""
        return not self.differences

    @property
    def weights_identical(self) -> bool:
        """Whether the retrained weights equal the registered ones bit for bit."""
        return bool(self.weights.get("identical"))

    def to_dict(self) -> dict:
        """JSON-able content."""
        return {**dataclasses.asdict(self), "ok": self.ok}


@dataclass(frozen=True)
class AuditResult:
    """The audit: lineage, the optional checks, the report files."""

    lineage: dict
    verify: VerifyResult | None
    retrain: RetrainResult | None
    markdown: str
    paths: tuple[Path, ...]

    @property
    def differences(self) -> list[Difference]:
        """Every difference found by verify and retrain."""
        return [
            *(self.verify.differences if self.verify else []),
            *(self.retrain.differences if self.retrain else []),
        ]

    @property
    def ok(self) -> bool:
        """True when the checks that ran found nothing."""
        return not self.differences


# --- reading the records -------------------------------------------------------------------


def _tracking(tracking: TrackingConfig | None) -> TrackingConfig:
    return tracking or TrackingConfig()


def _store(uri: str, tracking: TrackingConfig) -> tuple[Any, str]:
    from cirl.tracking import open_store

    try:
        return open_store(
            tracking.tracking_uri, tracking.tracking_timeout, tracking.experiment, must_exist=True
        )
    except CirlError as exc:
        # the store's hint names stage commands' --track, which the audit has no use for
        message = str(exc).replace(", or run without --track", "")
        raise CirlError(f"cannot audit {uri}: {message}") from None


def _resolve(client: Any, store: str, uri: str) -> tuple[Any, str | None]:
    """The model version a URI names, and the alias it was named by."""
    from mlflow.exceptions import MlflowException

    from cirl.registry import parse_model_uri

    name, alias, number = parse_model_uri(uri)
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        known = [m.name for m in client.search_registered_models(max_results=20)]
        raise CirlError(
            f"cannot audit {uri}: no registered model {name!r} at {store} (models there: "
            f"{', '.join(known) or 'none'}); set --tracking-uri / MLFLOW_TRACKING_URI to the "
            "registry that holds it"
        ) from None
    if alias is not None:
        try:
            return client.get_model_version_by_alias(name, alias), alias
        except MlflowException:
            raise CirlError(
                f"cannot audit {uri}: model {name!r} at {store} has no alias {alias!r} "
                f"(aliases: {', '.join(sorted(model.aliases)) or 'none'}); name a version "
                f"(models:/{name}/N) or one of the aliases"
            ) from None
    try:
        return client.get_model_version(name, number), None
    except MlflowException:
        raise CirlError(
            f"cannot audit {uri}: model {name!r} has no version {number} at {store}"
        ) from None


def _iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")


def _value(text: str) -> Any:
    """A run parameter (stored as text) as the value it was: number, bool, list or text."""
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, int | float | list | dict) else text


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _artifacts(client: Any, run_id: str, folder: str | None = None) -> set[str]:
    from cirl.tracking import artifact_error

    try:
        return {a.path for a in client.list_artifacts(run_id, folder)}
    except Exception as exc:  # artifact stores raise their own types
        raise artifact_error(exc, f"run {run_id}") from None


def _download(client: Any, run_id: str, path: str, folder: Path) -> Path:
    from cirl.tracking import artifact_error

    try:
        return Path(client.download_artifacts(run_id, path, str(folder)))
    except Exception as exc:  # artifact stores raise their own types
        raise artifact_error(exc, f"{path} of run {run_id}") from None


def _json_artifact(client: Any, run_id: str, path: str, folder: Path) -> dict | None:
    """A JSON artifact of a run, or None when the run has no such file."""
    parent = path.rsplit("/", 1)[0] if "/" in path else None
    if path not in _artifacts(client, run_id, parent):
        return None
    local = _download(client, run_id, path, folder / run_id)
    try:
        loaded = json.loads(local.read_text())
    except ValueError:
        return None
    return loaded if isinstance(loaded, dict) else None


def _role(stage: str, params: dict[str, Any]) -> str:
    if stage != "train":
        return stage
    if params.get("loss") == "bce":
        return "train baseline"
    return f"train phase {params.get('phase', '?')}"


def _run_entry(run: Any) -> dict[str, Any]:
    tags = run.data.tags
    stage = tags.get("cirl.stage", "")
    params = {k: _value(v) for k, v in sorted(run.data.params.items())}
    return {
        "run_id": run.info.run_id,
        "name": run.info.run_name,
        "stage": stage,
        "role": _role(stage, params),
        "status": run.info.status,
        "start_time": _iso(run.info.start_time),
        "end_time": _iso(run.info.end_time),
        "params": params,
        "metrics": dict(sorted(run.data.metrics.items())),
        "tags": {k: tags[k] for k in _RUN_TAGS if tags.get(k)},
    }


def _children(client: Any, parent: Any) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs(
            [parent.info.experiment_id],
            f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs += list(page)
        token = page.token
        if not token:
            break
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_name or ""))


def _chain(client: Any, register_run: Any, arm: str) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException

    expected = BCE_CHAIN if arm == "bce" else CIRL_CHAIN
    parent_id = register_run.data.tags.get("mlflow.parentRunId")
    if not parent_id:
        return {
            "complete": False,
            "parent": None,
            "runs": [_run_entry(register_run)],
            "missing": [s for s in expected if s != "register"],
            "note": (
                "registered outside a pipeline run: the register run has no parent, so the "
                "stage runs that made this model are not linked to it; the data, code and "
                "scores below come from the version's own tags and artifacts"
            ),
        }
    try:
        parent = client.get_run(parent_id)
    except MlflowException:
        return {
            "complete": False,
            "parent": {"run_id": parent_id},
            "runs": [_run_entry(register_run)],
            "missing": [s for s in expected if s != "register"],
            "note": f"the parent run {parent_id} is not in the store (deleted?)",
        }
    runs = [_run_entry(run) for run in _children(client, parent)]
    roles = {r["role"] for r in runs}
    missing = [s for s in expected if s not in roles]
    note = "" if not missing else f"no run of stage(s) {', '.join(missing)} under the parent run"
    entry = _run_entry(parent)
    entry["tags"].update(
        {k: v for k, v in parent.data.tags.items() if k in ("cirl.code_version", "cirl.source")}
    )
    return {
        "complete": not missing,
        "parent": entry,
        "runs": runs,
        "missing": missing,
        "note": note,
    }


def lineage(uri: str, tracking: TrackingConfig | None = None) -> dict[str, Any]:
    """Everything recorded about a registered model version, as JSON-able values.

    Args:
        uri: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.
        tracking: the store (its ``tracking_uri``; default ``$MLFLOW_TRACKING_URI``, else
            ``sqlite:///mlflow.db``). ``track`` does not matter: an audit only reads.

    Returns:
        ``model`` (version, aliases, run, checkpoint hash, configs), ``data`` (DVC hash,
        manifest hash, split, path, dataset card), ``code``, ``environment``, ``metrics`` (the
        registered test scores), ``evaluation`` (its parameters), ``chain`` (the parent run and
        its stage runs, oldest first, with params, metrics and tags; ``complete`` and
        ``missing``), ``alias_history`` and ``audit`` (when and where this was read).

    Raises:
        CirlError: on a malformed URI, an unknown model, alias or version, or a store that
            cannot be reached, naming the URI and the fix.
    """
    from mlflow.exceptions import MlflowException

    from cirl import registry
    from cirl.tracking import dvc_data_hash, git_state

    tracking = _tracking(tracking)
    client, store = _store(uri, tracking)
    version, alias = _resolve(client, store, uri)
    name, number = version.name, str(version.version)
    tags = dict(version.tags)
    try:
        register_run = client.get_run(version.run_id)
    except MlflowException:
        raise CirlError(
            f"cannot audit {uri}: its source run {version.run_id} is not in {store} (deleted?); "
            "the version's tags are all that is left"
        ) from None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        configs = {
            key: _json_artifact(client, version.run_id, f"configs/{key}.json", folder)
            for key in ("metrics", "train_config", "model_config", "provenance", "export")
        }
        train_config = configs["train_config"] or {}
        chain = _chain(client, register_run, "bce" if train_config.get("loss") == "bce" else "")
        prepare_runs = [r for r in chain["runs"] if r["stage"] == "prepare"]
        card, card_from = None, None
        if prepare_runs:
            card = _json_artifact(
                client, prepare_runs[0]["run_id"], "outputs/dataset_card.json", folder
            )
            card_from = f"run {prepare_runs[0]['run_id']} (outputs/dataset_card.json)"
    local_card = Path(tags.get("test.data", "")) / "dataset_card.json"
    if card is None and tags.get("test.data") and local_card.is_file():
        try:
            card, card_from = json.loads(local_card.read_text()), str(local_card)
        except ValueError:
            card = None
    evaluation = configs["metrics"] or {}
    aliases = sorted(
        a for a, v in client.get_registered_model(name).aliases.items() if str(v) == number
    )
    commit, dirty = git_state()
    history = registry.alias_history(name, TrackingConfig(track=True, tracking_uri=store))
    model_config = configs["model_config"]
    if model_config is None and tags.get("cirl.model_config"):
        model_config = json.loads(tags["cirl.model_config"])
    metrics = {
        k[len("test.") :]: _float(v)
        for k, v in sorted(tags.items())
        if k.startswith("test.") and k not in _TEST_INFO
    }
    return {
        "uri": uri,
        "name": name,
        "version": number,
        "alias": alias,
        "model": {
            "aliases": aliases,
            "registered_at": _iso(version.creation_timestamp),
            "run_id": version.run_id,
            "source": version.source,
            "checkpoint_sha256": tags.get("cirl.checkpoint_sha256"),
            "checkpoint": (evaluation.get("provenance") or {}).get("checkpoint"),
            "checkpoint_epoch": (evaluation.get("provenance") or {}).get("checkpoint_epoch"),
            "model_config": model_config,
            "train_config": configs["train_config"],
            "provenance": configs["provenance"],
            "export": configs["export"],
            "artifacts": sorted(_artifacts(client, version.run_id)),
        },
        "data": {
            "dvc_data_md5": tags.get("cirl.dvc_data_md5"),
            "dvc_data_md5_at_prepare": (
                prepare_runs[0]["tags"].get("cirl.dvc_data_md5") if prepare_runs else None
            ),
            "dvc_data_md5_here": dvc_data_hash(),
            "manifest_sha256": tags.get("test.manifest_sha256"),
            "split": tags.get("test.split", "test"),
            "path": tags.get("test.data"),
            "dataset_card": card,
            "dataset_card_from": card_from,
        },
        "code": {
            "git_commit": tags.get("cirl.git_commit"),
            "git_dirty": tags.get("cirl.git_dirty"),
            "cirl_version": tags.get("cirl.version"),
            "image_digest": tags.get("cirl.image_digest"),
            "kfp_run_id": tags.get("cirl.kfp_run_id"),
            "commits_in_chain": sorted(
                {
                    r["tags"]["cirl.git_commit"]
                    for r in chain["runs"]
                    if r["tags"].get("cirl.git_commit")
                }
            ),
            "git_commit_here": commit,
            "git_dirty_here": dirty,
        },
        "environment": {
            "python": tags.get("cirl.python"),
            "torch": tags.get("cirl.torch"),
            "onnxruntime": tags.get("cirl.onnxruntime"),
        },
        "metrics": metrics,
        "evaluation": {
            "split": evaluation.get("split"),
            "params": evaluation.get("params"),
            "protocol": evaluation.get("protocol"),
        },
        "chain": chain,
        "alias_history": [
            {
                "moved_at": m.moved_at.isoformat(),
                "alias": m.alias,
                "version": m.version,
                "previous": m.previous,
                "reason": m.reason,
                "f1": m.f1,
                "champion_f1": m.champion_f1,
            }
            for m in history
        ],
        "audit": {
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "tracking_uri": store,
            "cirl_version": __version__,
            "python": platform.python_version(),
            "torch": _package_version("torch"),
            "onnxruntime": _package_version("onnxruntime"),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "cpu_threads": _threads(),
        },
    }


def _package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


# --- the recorded data ---------------------------------------------------------------------


def _raw_source(source: str) -> str | None:
    """A recorded raw-data source usable here: an existing folder (as recorded, or relative
    to the repository) or an ``s3://`` URI (fetched by ``cirl prepare``)."""
    from cirl.tracking import REPO_ROOT

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
    source = (prepare_runs[0]["tags"].get("cirl.source") if prepare_runs else None) or card.get(
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
    from cirl import prepare

    cfg = _run_config(record, prepare_runs[0], "prepare", tracking)
    out = Path(workdir) / "prepared"
    try:
        prepare.run(cfg, raw, card["format"], out, progress=False)
    except CirlError as exc:
        raise CirlError(f"{fix}. Preparing it again from {raw} failed: {exc}") from None
    return out


def _check_files(folder: Path, record: dict) -> tuple[int, list[Difference]]:
    """The manifest's hash and every tile file's SHA-256 (all splits); every difference."""
    from cirl.checkpoint import file_sha256
    from cirl.data.manifest import FILE_COLUMNS, read_manifest

    differences = []
    manifest = folder / "manifest.csv"
    expected = record["data"].get("manifest_sha256") or ""
    found = file_sha256(manifest)
    if found != expected:
        differences.append(Difference("data", str(manifest), expected or "(none)", found))
    checked = 0
    for row in read_manifest(folder):
        for column in FILE_COLUMNS:
            name = getattr(row, column)
            if not name:
                continue
            path, want = folder / name, getattr(row, f"{column}_sha256")
            try:
                got = file_sha256(path)
            except OSError:
                got = "missing"
            checked += 1
            if got != want:
                differences.append(Difference("data", str(path), want, got))
    return checked, differences


def _chain_differences(record: dict) -> list[Difference]:
    """Stage runs that read another dataset than the registered evaluation."""
    expected = record["data"].get("manifest_sha256")
    return [
        Difference(
            "lineage",
            f"cirl.manifest_sha256 of the {r['role']} run {r['run_id']}",
            str(expected),
            r["tags"]["cirl.manifest_sha256"],
        )
        for r in record["chain"]["runs"]
        if r["tags"].get("cirl.manifest_sha256") not in (None, expected)
    ]


# --- the registered weights ----------------------------------------------------------------


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
    from cirl.tracking import evaluation_scores

    return evaluation_scores(summary)


def _eval_config(record: dict, cfg: AuditConfig) -> Any:
    from cirl import config
    from cirl.evaluate import EvaluateConfig

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
                    f"test.{key}",
                    "(not recorded)" if want is None else repr(want),
                    ("(not computed)" if got is None else repr(got))
                    + ("" if delta is None else f" (|diff| {delta:.3g} > {tolerance:g})"),
                )
            )
    return table, differences


class _OnnxCheck:
    """The registered ONNX model run beside the re-evaluation: each tile's probabilities from
    the registered weights (the evaluation's own, not a second PyTorch pass) against ONNX's."""

    def __init__(self, record: dict, cfg: AuditConfig, store: str, folder: Path) -> None:
        from cirl.engine import OnnxEngine
        from cirl.metrics import SegmentationMetrics
        from cirl.registry import fetch_model

        uri = f"models:/{record['name']}/{record['version']}"
        self.fetched = fetch_model(uri, store, folder / "onnx")
        self.engine = OnnxEngine(self.fetched.path, device=cfg.device)
        self.cfg = cfg
        self.differences: list[Difference] = []
        recorded = record["model"].get("checkpoint_sha256")
        in_file = self.engine.description.get("checkpoint_sha256")
        if in_file != recorded:
            self.differences.append(
                Difference(
                    "model",
                    f"checkpoint_sha256 in {self.fetched.path.name}",
                    str(recorded),
                    str(in_file),
                )
            )
        params = record["evaluation"].get("params") or {}
        self.metrics = SegmentationMetrics(
            float(params.get("threshold", 0.5)), 9, 0.0, float(params.get("empty_f1", 0.0))
        )
        self.largest = 0.0

    def __call__(self, item: dict, want: Any) -> None:
        import numpy as np

        image = item["image"][None].numpy()
        h, w = image.shape[-2:]
        stride = self.engine.stride
        padded = np.pad(image, ((0, 0), (0, 0), (0, (-h) % stride), (0, (-w) % stride)))
        got = self.engine(padded)[0, 0, :h, :w]
        self.largest = max(self.largest, float(np.abs(got - want).max()))
        self.metrics.add(
            item["tile_id"],
            np.clip(got, 0, 1),
            item["mask"][0].numpy() > 0.5,
            item["valid"][0].numpy() > 0.5,
        )

    def result(self) -> tuple[dict[str, Any], list[Difference]]:
        differences = list(self.differences)
        if not self.largest <= self.cfg.onnx_tolerance:
            differences.append(
                Difference(
                    "model",
                    f"ONNX model {self.fetched.path.name} vs checkpoint/model_state.pt "
                    "(max |prob diff|)",
                    f"<= {self.cfg.onnx_tolerance:g}",
                    f"{self.largest:.3g}",
                )
            )
        return {
            "file": self.fetched.path.name,
            "max_abs_prob_diff": self.largest,
            "tolerance": self.cfg.onnx_tolerance,
            "f1": self.metrics.summary()["f1"],
        }, differences


def verify(
    record: dict,
    cfg: AuditConfig,
    data: str | os.PathLike | None = None,
    tracking: TrackingConfig | None = None,
    workdir: str | os.PathLike | None = None,
    progress: bool = False,
) -> VerifyResult:
    """Check a model's records against the data and the weights (``cirl audit --verify``).

    Checks, each difference collected (nothing stops at the first):

    1. the prepared folder's manifest SHA-256 against the recorded ``test.manifest_sha256``, and
       every file of every tile (all splits) against the manifest's SHA-256 columns;
    2. the stage runs of the chain all read that manifest;
    3. the registered evaluation scored the recorded checkpoint (``cirl.checkpoint_sha256``),
       the registered weights (``checkpoint/model_state.pt``) hold the recorded model config,
       and, where the original checkpoint file is still here, its hash and tensors match;
    4. the registered weights re-evaluated on the recorded split (the recorded evaluation
       parameters, ``cfg.device``) give the recorded test scores within ``cfg.tolerance``;
    5. with ``cfg.onnx``: the registered ONNX file names the same checkpoint and its
       probabilities stay within ``cfg.onnx_tolerance`` of the weights' on that split.

    Args:
        record: from :func:`lineage`.
        cfg: tolerances and device.
        data: the prepared folder to use instead of the recorded one.
        tracking: the store the record came from.
        workdir: where data may be prepared again (:func:`locate_data`); None: not at all.
        progress: progress bar of the re-evaluation.

    Raises:
        CirlError: when the data cannot be found (with how to fetch it) or the store fails.
    """
    from cirl import evaluate
    from cirl.checkpoint import file_sha256, load_checkpoint

    t0 = time.perf_counter()
    tracking = _tracking(tracking)
    folder = locate_data(record, data, workdir, tracking)
    result = VerifyResult(data=str(folder), tolerance=cfg.tolerance)
    if data is None and str(folder) != str(record["data"].get("path")):
        result.notes.append(
            f"the recorded folder {record['data'].get('path')} is not here: prepared again "
            f"into {folder}"
        )
    result.files_checked, found = _check_files(folder, record)
    result.differences += found
    result.checks.append(
        f"manifest SHA-256 and {result.files_checked} tile files of {folder} against the manifest"
    )
    result.differences += _chain_differences(record)
    recorded_sha = record["model"].get("checkpoint_sha256")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        weights = _registered_weights(record, tracking, scratch)
        if weights is None:
            result.differences.append(
                Difference(
                    "model",
                    f"checkpoint/model_state.pt of run {record['model']['run_id']}",
                    "the registered weights",
                    "missing (registered without --checkpoint): nothing to re-evaluate",
                )
            )
            result.seconds = time.perf_counter() - t0
            return result
        payload = load_checkpoint(weights)
        if record["model"].get("model_config") not in (None, payload["model_config"]):
            result.differences.append(
                Difference(
                    "model",
                    "model config of checkpoint/model_state.pt",
                    json.dumps(record["model"]["model_config"], sort_keys=True),
                    json.dumps(payload["model_config"], sort_keys=True),
                )
            )
        original = record["model"].get("checkpoint")
        if original and Path(original).is_file():
            sha = file_sha256(original)
            if sha != recorded_sha:
                result.differences.append(Difference("model", original, str(recorded_sha), sha))
            else:
                differ, largest = _tensors_differ(
                    load_checkpoint(original)["model"], payload["model"]
                )
                if differ:
                    result.differences.append(
                        Difference(
                            "model",
                            f"tensors {', '.join(differ[:5])} of checkpoint/model_state.pt",
                            f"equal to {original}",
                            f"max |diff| {largest:.3g}",
                        )
                    )
            result.checks.append(f"the original checkpoint {original}: SHA-256 and tensors")
        else:
            result.notes.append(
                f"the original checkpoint {original or '(path not recorded)'} is not here: the "
                "registered weights are checked through the scores they give"
            )
        split = record["data"].get("split") or "test"
        onnx = None
        if cfg.onnx:
            _, store = _store(record["uri"], tracking)
            onnx = _OnnxCheck(record, cfg, store, scratch)
        summary = evaluate.run(
            _eval_config(record, cfg),
            folder,
            weights,
            scratch / "evaluation",
            progress=progress,
            on_tile=onnx,
        )
        result.metrics, found = _compare_scores(record["metrics"], _scores(summary), cfg.tolerance)
        result.differences += found
        result.checks.append(
            f"registered weights re-evaluated on the {split} split ({summary['images']} images, "
            f"device {cfg.device}): every test score within {cfg.tolerance:g}"
        )
        if onnx is not None:
            result.onnx, found = onnx.result()
            result.differences += found
            result.checks.append(
                f"registered ONNX model vs registered weights on the {split} split: max |prob "
                f"diff| {result.onnx['max_abs_prob_diff']:.3g} (<= {cfg.onnx_tolerance:g}); ONNX "
                f"F1 {result.onnx['f1']:.6g} (reported, not checked)"
            )
    result.seconds = time.perf_counter() - t0
    return result


# --- retraining ----------------------------------------------------------------------------


def _typed(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """Run parameters (text) as the types of ``cls``'s fields."""
    import typing

    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in params.items():
        if key not in hints:
            continue
        if hints[key] is str and not isinstance(value, str):
            value = str(value)
        values[key] = value
    return values


def _stored_config(
    record: dict, run: dict, tracking: TrackingConfig | None, path: str = "config.json"
) -> dict:
    client, _ = _store(record["uri"], _tracking(tracking))
    with tempfile.TemporaryDirectory() as tmp:
        stored = _json_artifact(client, run["run_id"], path, Path(tmp))
    return stored if isinstance(stored, dict) else {}


def _run_config(record: dict, run: dict, group: str, tracking: TrackingConfig | None) -> Any:
    """The resolved config of a stage run: its ``config.json`` artifact, else its params."""
    from cirl import config

    cls = config.stage_config(group)
    values = _stored_config(record, run, tracking).get(run["stage"])
    if not isinstance(values, dict):
        values = _typed(cls, run["params"])
    return config.from_mapping(cls, values, f"parameters of the {run['role']} run {run['run_id']}")


def as_trained(cfg: Any, provenance: dict | None) -> Any:
    """A training config with the arithmetic its run resolved (``precision: auto`` and
    ``channels_last: auto`` were measured on the machine that trained: the retrain computes
    what that run computed instead of measuring again)."""
    provenance = provenance or {}
    if provenance.get("precision") not in ("fp32", "bf16"):
        return cfg  # a CUDA run (fp16 amp) or one recorded before the arithmetic was
    return dataclasses.replace(
        cfg,
        precision=provenance["precision"],
        channels_last=bool(provenance.get("channels_last", cfg.channels_last is True)),
    )


def cpu_kind_warning(provenance: dict | None, tolerance: float) -> str | None:
    """Why bit-identical weights are not expected when the recorded CPU is another kind."""
    import torch

    from cirl.host import cpu

    recorded = (provenance or {}).get("machine")
    here = {**cpu(), "threads": torch.get_num_threads()}
    tail = (
        f"so bit-identical weights are not expected: the retrain is judged by test F1 within "
        f"the retrain tolerance {tolerance:g} (every score within the exact tolerance applies "
        "only when the weights come out identical)"
    )
    if not recorded:
        return (
            f"the training run recorded no CPU (trained before cirl recorded it); this is "
            f"{here['cpu']} ({here['kind']}): if that is another kind of CPU, {tail}"
        )
    threads = recorded.get("threads")
    keys = ("cpu", "features") if threads is None else ("cpu", "features", "threads")
    if all(recorded.get(k) == here[k] for k in keys):
        return None
    what = [
        f"{m.get('cpu')} ({m.get('kind')}, {m.get('threads')} threads)" for m in (recorded, here)
    ]
    return (
        f"trained on {what[0]}, retrained on {what[1]}: the kernels and the order of their "
        f"floating-point sums differ between CPU kinds and thread counts, {tail}"
    )


def _chain_run(record: dict, role: str, why: str) -> dict:
    runs = [r for r in record["chain"]["runs"] if r["role"] == role and r["status"] == "FINISHED"]
    if not runs:
        raise CirlError(
            f"cannot retrain {record['uri']}: no finished {role} run in its lineage ({why}); "
            + (record["chain"].get("note") or "")
            + ". Retraining needs a model registered by a tracked pipeline run "
            "(`cirl pipeline run` with tracking on, or stage commands with --track and "
            "--parent-run-id)"
        )
    return runs[-1]


def _name(path: str | None, default: str) -> str:
    return Path(path).name if path else default


def retrain(
    record: dict,
    cfg: AuditConfig,
    workdir: str | os.PathLike,
    data: str | os.PathLike | None = None,
    tracking: TrackingConfig | None = None,
    progress: bool = False,
) -> RetrainResult:
    """Train the registered model again from its records and compare (``cirl audit --retrain``).

    The registered training config is the one stored with the weights; the phase-I and select
    configs come from the chain's runs; the evaluation's from the registered evaluation. Only
    ``device`` is replaced (``cfg.device``). Checkpoint names follow the records (select reads
    the phase-I checkpoint its run names, phase II starts from the one its provenance names).
    Outputs go to ``workdir/{phase1,select,phase2,evaluation}`` (replaced).

    Compared: the retrained weights with the registered ones, tensor by tensor (the files
    differ anyway: they hold times and paths); test F1 within ``cfg.retrain_tolerance``, and
    every score within ``cfg.tolerance`` when the weights are bit-identical. A recorded git
    commit other than this checkout's is a warning (the code that runs is this checkout's).

    Raises:
        CirlError: when the records lack a stage's config (a version registered outside a
            pipeline run), the data cannot be found, or a stage fails.
    """
    import torch

    from cirl import evaluate, selection, train
    from cirl.checkpoint import load_checkpoint
    from cirl.config import from_mapping

    t0 = time.perf_counter()
    tracking = _tracking(tracking)
    workdir = Path(workdir)
    train_record = record["model"].get("train_config")
    if not train_record:
        raise CirlError(
            f"cannot retrain {record['uri']}: its register run has no configs/train_config.json "
            "(the training parameters); register models with `cirl register`"
        )
    final_cfg = from_mapping(train.TrainConfig, train_record, "registered training config")
    bce = final_cfg.loss == "bce"
    if bce:
        runs = {"final": _chain_run(record, "train baseline", "the baseline's training run")}
    else:
        runs = {
            "phase1": _chain_run(record, "train phase 1", "phase-I parameters"),
            "select": _chain_run(record, "select", "selection parameters"),
            "final": _chain_run(record, "train phase 2", "phase-II parameters"),
        }
    folder = locate_data(record, data, workdir, tracking)
    result = RetrainResult(workdir=str(workdir), data=str(folder), tolerance=cfg.retrain_tolerance)
    code = record["code"]
    result.code = {
        "recorded": code.get("git_commit"),
        "recorded_dirty": code.get("git_dirty"),
        "here": code.get("git_commit_here"),
        "here_dirty": code.get("git_dirty_here"),
    }
    if code.get("git_commit") != code.get("git_commit_here"):
        result.warnings.append(
            f"the model was trained from commit {code.get('git_commit') or '(not recorded)'}, "
            f"this checkout is {code.get('git_commit_here') or '(unknown)'}: the code that "
            "retrains is this checkout's. For the recorded code: `git worktree add "
            f"../audit-{str(code.get('git_commit'))[:8]} {code.get('git_commit')}` and run the "
            "audit from there"
        )
    if "true" in (code.get("git_dirty"), code.get("git_dirty_here")):
        result.warnings.append(
            "uncommitted changes (git dirty) when the model was trained or here: the commit "
            "does not fully name the code"
        )
    checked, found = _check_files(folder, record)
    if found:
        result.differences += found
        result.notes.append(f"{len(found)} of {checked} data files differ: not retrained")
        result.seconds = time.perf_counter() - t0
        return result
    result.notes.append(f"{checked} data files match the recorded manifest")

    def timed(stage: str, fn, *args, **kwargs):
        started = time.perf_counter()
        out = fn(*args, **kwargs)
        result.stages.append({"stage": stage, "seconds": time.perf_counter() - started})
        return out

    def device(c: Any) -> Any:
        if c.device != cfg.device:
            result.notes.append(f"{type(c).__name__}: device {c.device} (recorded) -> {cfg.device}")
        return dataclasses.replace(c, device=cfg.device)

    for name in ("phase1", "select", "phase2", "evaluation"):
        if (workdir / name).is_dir():
            shutil.rmtree(workdir / name)
    provenance = record["model"].get("provenance") or {}
    warning = cpu_kind_warning(provenance, cfg.retrain_tolerance)
    if warning:
        result.warnings.append(warning)
    if provenance.get("precision") in ("fp32", "bf16"):
        layout = " + channels_last" if provenance.get("channels_last") else ""
        result.notes.append(
            f"trained in the recorded arithmetic: {provenance['precision']}{layout}"
        )
    if bce:
        final = timed(
            "train baseline",
            train.run,
            device(as_trained(final_cfg, provenance)),
            folder,
            workdir / "phase2",
            progress=progress,
        )
    else:
        phase1_run, select_run = runs["phase1"], runs["select"]
        phase1_cfg = device(
            as_trained(
                _run_config(record, phase1_run, "train", tracking),
                # the training's own config.json: its config and provenance
                _stored_config(record, phase1_run, tracking, "outputs/config.json"),
            )
        )
        select_cfg = device(_run_config(record, select_run, "select", tracking))
        p1 = timed(
            "train phase 1", train.run, phase1_cfg, folder, workdir / "phase1", progress=progress
        )
        client, _ = _store(record["uri"], tracking)
        with tempfile.TemporaryDirectory() as tmp:
            summary = _json_artifact(
                client, select_run["run_id"], "outputs/summary.json", Path(tmp)
            )
        selected_from = _name((summary or {}).get("checkpoint"), "last.pt")
        timed(
            "select",
            selection.run,
            select_cfg,
            folder,
            p1.out / selected_from,
            workdir / "select",
            progress=progress,
        )
        init = _name(provenance.get("init"), "best.pt")
        final = timed(
            "train phase 2",
            train.run,
            device(as_trained(final_cfg, provenance)),
            folder,
            workdir / "phase2",
            init=p1.out / init,
            ambiguity=workdir / "select",
            progress=progress,
        )
        result.notes.append(
            f"select read phase-I {selected_from}; phase II started from phase-I {init}"
        )
    recorded_final = _run_config(record, runs["final"], "train", tracking)
    if dataclasses.replace(recorded_final, device=final_cfg.device) != final_cfg:
        result.differences.append(
            Difference(
                "lineage",
                f"training config of the {runs['final']['role']} run {runs['final']['run_id']}",
                json.dumps(train_record, sort_keys=True),
                json.dumps(dataclasses.asdict(recorded_final), sort_keys=True),
            )
        )
    checkpoint = final.out / _name(record["model"].get("checkpoint"), "best.pt")
    summary = timed(
        "evaluate",
        evaluate.run,
        _eval_config(record, cfg),
        folder,
        checkpoint,
        workdir / "evaluation",
        progress=progress,
    )
    epochs = final.history
    if epochs:
        result.notes.append(
            f"phase II / final training: {len(epochs)} epochs, "
            f"{sum(h['seconds'] for h in epochs) / len(epochs):.2f} s per epoch here"
        )
    with tempfile.TemporaryDirectory() as tmp:
        weights = _registered_weights(record, tracking, Path(tmp))
        registered = load_checkpoint(weights)["model"] if weights is not None else None
    retrained = load_checkpoint(checkpoint)
    if registered is None:
        result.notes.append("no registered weights (checkpoint/model_state.pt): not compared")
        result.weights = {"identical": None}
    else:
        differ, largest = _tensors_differ(registered, retrained["model"])
        result.weights = {
            "identical": not differ,
            "tensors": len(registered),
            "differ": differ,
            "max_abs_diff": largest,
            "checkpoint": str(checkpoint),
            "epoch": int(retrained.get("epoch", -1)) + 1,
            "same_kind_of_run": {
                "torch": record["environment"].get("torch") == _package_version("torch"),
                "device": final_cfg.device,
                "cpu_threads_here": torch.get_num_threads(),
            },
        }
    found_scores = _scores(summary)
    result.metrics, found = _compare_scores(
        record["metrics"], found_scores, cfg.retrain_tolerance, names=("f1",)
    )
    result.differences += found
    if result.weights_identical:
        _, exact = _compare_scores(record["metrics"], found_scores, cfg.tolerance)
        result.differences += exact
    result.seconds = time.perf_counter() - t0
    return result


# run() takes flags named like these functions
_verify, _retrain = verify, retrain


def retrain_in_fresh_process(
    record: dict,
    cfg: AuditConfig,
    workdir: str | os.PathLike,
    data: str | os.PathLike | None = None,
    tracking: TrackingConfig | None = None,
    progress: bool = False,
) -> RetrainResult:
    """:func:`retrain` in a new Python process (``spawn``), as each pipeline task trains in one.

    A process that has verified the model carries state that training inherits: onnxruntime's
    and PyTorch's thread pools, the threads' floating-point modes (:mod:`cirl.fpenv`), allocator
    and random-number state. Bit-identical weights are promised for the same code, data, seed
    and machine from a fresh start, so that is where the retrain runs. Errors come back as
    they were raised (a :class:`CirlError` stays one).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(retrain, record, cfg, workdir, data, tracking, progress).result()


# --- the report ----------------------------------------------------------------------------


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
    model, data, code, env = record["model"], record["data"], record["code"], record["environment"]
    out = [f"# Audit of {record['uri']} (version {record['version']} of {record['name']})", ""]
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
                (r["tags"].get("cirl.manifest_sha256") or "")[:12],
                (r["tags"].get("cirl.git_commit") or "")[:12],
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
    return "\n".join(out).rstrip() + "\n"


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
        from cirl.inference import subnormals_as_zero

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
