"""The lineage of a registered model read back from the records (:func:`lineage`): the
version's tags, its register run, the pipeline run and each stage run under it, the dataset
card and the alias history.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import tempfile
from pathlib import Path
from typing import Any

from cirl import __version__
from cirl.errors import CirlError
from cirl.host import package_version
from cirl.lineage import schema
from cirl.lineage.fetch import files_run_id
from cirl.lineage.schema import Tag, VersionRecord
from cirl.lineage.tracking import TrackingConfig

# The stage runs a complete chain holds, by the arm of the registered model.
CIRL_CHAIN, BCE_CHAIN = schema.CIRL_CHAIN, schema.BCE_CHAIN


_RUN_TAGS = (
    Tag.MANIFEST_SHA256,
    Tag.GIT_COMMIT,
    Tag.GIT_DIRTY,
    Tag.DVC_DATA_MD5,
    Tag.SOURCE,
    Tag.CHECKPOINT_SHA256,
    Tag.KFP_RUN_ID,
    Tag.ERROR,
)


def _tracking(tracking: TrackingConfig | None) -> TrackingConfig:
    return tracking or TrackingConfig()


def _store(uri: str, tracking: TrackingConfig) -> tuple[Any, str]:
    from cirl.lineage.tracking import open_store

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
    from cirl.lineage.fetch import resolve_version

    return resolve_version(client, store, uri, "audit")


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


def _artifacts(client: Any, run_id: str, folder: str | None = None) -> set[str]:
    from cirl.lineage.tracking import artifact_error

    try:
        return {a.path for a in client.list_artifacts(run_id, folder)}
    except Exception as exc:  # artifact stores raise their own types
        raise artifact_error(exc, f"run {run_id}") from None


def _download(client: Any, run_id: str, path: str, folder: Path) -> Path:
    from cirl.lineage.tracking import artifact_error

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
    return schema.training_stage(params.get("phase", "?"), str(params.get("loss")))


def _run_entry(run: Any) -> dict[str, Any]:
    tags = run.data.tags
    stage = tags.get(Tag.STAGE, "")
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
        {k: v for k, v in parent.data.tags.items() if k in (Tag.CODE_VERSION, Tag.SOURCE)}
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

    from cirl.lineage import registry
    from cirl.lineage.tracking import dvc_data_hash

    tracking = _tracking(tracking)
    client, store = _store(uri, tracking)
    version, alias = _resolve(client, store, uri)
    name, number = version.name, str(version.version)
    tags = dict(version.tags)
    written = VersionRecord.from_tags(tags)
    files_run = files_run_id(version)
    try:
        register_run = client.get_run(files_run)
    except MlflowException:
        raise CirlError(
            f"cannot audit {uri}: its register run {files_run} is not in {store} (deleted?); "
            "the version's tags are all that is left"
        ) from None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        configs = {
            key: _json_artifact(client, files_run, f"configs/{key}.json", folder)
            for key in ("metrics", "train_config", "model_config", "provenance", "export")
        }
        train_config = configs["train_config"] or {}
        chain = _chain(client, register_run, "bce" if train_config.get("loss") == "bce" else "")
        prepare_runs = [r for r in chain["runs"] if r["stage"] == "prepare"]
        card, card_from = _dataset_card(client, prepare_runs, written.test_data, folder)
    evaluation = configs["metrics"] or {}
    aliases = sorted(
        a for a, v in client.get_registered_model(name).aliases.items() if str(v) == number
    )
    history = registry.alias_history(name, TrackingConfig(track=True, tracking_uri=store))
    model_config = configs["model_config"]
    if model_config is None:
        model_config = written.model_config
    return {
        "uri": uri,
        "name": name,
        "version": number,
        "alias": alias,
        "model": {
            "aliases": aliases,
            "registered_at": _iso(version.creation_timestamp),
            "run_id": files_run,
            "training_run_id": version.run_id if version.run_id != files_run else None,
            "source": version.source,
            "checkpoint_sha256": written.checkpoint_sha256,
            "checkpoint": (evaluation.get("provenance") or {}).get("checkpoint"),
            "checkpoint_epoch": (evaluation.get("provenance") or {}).get("checkpoint_epoch"),
            "model_config": model_config,
            "train_config": configs["train_config"],
            "provenance": configs["provenance"],
            "export": configs["export"],
            "artifacts": sorted(_artifacts(client, files_run)),
        },
        "data": {
            "dvc_data_md5": written.dvc_data_md5,
            "dvc_data_md5_at_prepare": (
                prepare_runs[0]["tags"].get(Tag.DVC_DATA_MD5) if prepare_runs else None
            ),
            "dvc_data_md5_here": dvc_data_hash(),
            "manifest_sha256": written.test_manifest_sha256,
            "split": written.test_split,
            "path": written.test_data,
            "dataset_card": card,
            "dataset_card_from": card_from,
        },
        "code": _code_entry(written, chain),
        "environment": {
            "python": written.python,
            "torch": written.torch,
            "onnxruntime": written.onnxruntime,
        },
        "metrics": written.scores,
        "evaluation": {
            "split": evaluation.get("split"),
            "params": evaluation.get("params"),
            "protocol": evaluation.get("protocol"),
        },
        "chain": chain,
        "alias_history": [_alias_move(m) for m in history],
        "audit": _reader(store),
    }


def _dataset_card(
    client: Any, prepare_runs: list[dict], data: str | None, folder: Path
) -> tuple[dict | None, str | None]:
    """The dataset card: the prepare run's artifact, else the recorded folder's own file."""
    card, card_from = None, None
    if prepare_runs:
        card = _json_artifact(
            client, prepare_runs[0]["run_id"], "outputs/dataset_card.json", folder
        )
        card_from = f"run {prepare_runs[0]['run_id']} (outputs/dataset_card.json)"
    local_card = Path(data or "") / "dataset_card.json"
    if card is None and data and local_card.is_file():
        try:
            card, card_from = json.loads(local_card.read_text()), str(local_card)
        except ValueError:
            card = None
    return card, card_from


def _code_entry(written: VersionRecord, chain: dict) -> dict[str, Any]:
    """The recorded code (commit, state, version, image, KFP run) and this checkout's."""
    from cirl.lineage.tracking import git_state

    commit, dirty = git_state()
    return {
        "git_commit": written.git_commit,
        "git_dirty": written.git_dirty,
        "cirl_version": written.cirl_version,
        "image_digest": written.image_digest,
        "kfp_run_id": written.kfp_run_id,
        "commits_in_chain": sorted(
            {r["tags"][Tag.GIT_COMMIT] for r in chain["runs"] if r["tags"].get(Tag.GIT_COMMIT)}
        ),
        "git_commit_here": commit,
        "git_dirty_here": dirty,
    }


def _alias_move(m: Any) -> dict[str, Any]:
    return {
        "moved_at": m.moved_at.isoformat(),
        "alias": m.alias,
        "version": m.version,
        "previous": m.previous,
        "reason": m.reason,
        "f1": m.f1,
        "champion_f1": m.champion_f1,
    }


def _reader(store: str) -> dict[str, Any]:
    """When, where from and with what the audit read the records."""
    return {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "tracking_uri": store,
        "cirl_version": __version__,
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "onnxruntime": package_version("onnxruntime"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_threads": _threads(),
    }


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


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
