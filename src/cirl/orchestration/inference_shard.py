"""The inference pipeline's plan and shard tasks: the plan written once, each shard's photos
predicted with ``cirl predict``'s own code and published per photo, resumable
(:mod:`cirl.orchestration.task_inference`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cirl.errors import CirlError
from cirl.orchestration.inference_io import (
    CHUNK,
    PARTITION,
    PIPELINE_NAME,
    PLAN_FILE,
    RUNTIME_PARAMS,
    SHARD_FILE,
    STATUSES,
    Location,
    _check_apart,
    _now,
    deal,
    list_photos,
    local_fingerprint,
    resolve_model,
)
from cirl.orchestration.task_base import (
    ArtifactLike,
    TrackingParams,
    _prepare_output,
    stage_config,
)


def plan(
    source: str,
    out: str,
    model: str,
    shards: int,
    predict_params: Mapping[str, Any],
    plan_artifact: ArtifactLike,
    tracking: TrackingParams = None,
    code_version: str = "",
) -> list[int]:
    """The first task: the model resolved, the photos listed and dealt; returns shard indices.

    Raises:
        CirlError: bad parameters, a model that does not resolve (checked first), no photo
            under ``source``, an output prefix that cannot be written.
    """
    cfg = stage_config("predict", predict_params)
    if int(shards) < 1:
        raise CirlError(f"shards must be >= 1, got {shards}")
    if not out:
        raise CirlError("out is required: the folder or s3://bucket/prefix the outputs go to")
    if cfg.engine == "torch":
        raise CirlError("the inference pipeline runs ONNX models: use engine auto or onnx")
    _check_apart(source, out)
    resolved = resolve_model(model, tracking)
    photos = list_photos(source)
    Location(out).check()
    threshold = (
        {"value": float(cfg.threshold), "source": "given (predict.threshold)"}
        if cfg.threshold != "auto"
        else _model_threshold(resolved)
    )
    dealt = deal(len(photos), shards)
    from cirl.config import to_dict

    record = {
        "pipeline": PIPELINE_NAME,
        "source": source,
        "out": out,
        "model": resolved,
        "predict_params": to_dict(cfg),
        "threshold": threshold,
        "partition": PARTITION,
        "shards_asked": int(shards),
        "shards": dealt,
        "photos": photos,
        "code_version": code_version,
        "planned_at": _now(),
    }
    folder = _prepare_output(plan_artifact)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PLAN_FILE).write_text(json.dumps(record, indent=2) + "\n")
    plan_artifact.metadata.update(
        {
            "photos": len(photos),
            "shards": len(dealt),
            "model": resolved["uri"],
            "model_version": resolved["version"],
        }
    )
    print(
        f"plan: {len(photos)} photo(s) of {source} in {len(dealt)} shard(s) ({PARTITION}); "
        f"model {model} -> {resolved['uri']}",
        file=sys.stderr,
    )
    return list(range(len(dealt)))


def _model_threshold(model: Mapping[str, Any]) -> dict:
    """``threshold: auto``: the model's calibrated one, else 0.5 (as ``cirl predict``)."""
    from cirl.deploy.predict_config import PredictConfig, decision_threshold

    return decision_threshold(PredictConfig(), dict(model))


def read_plan(plan_artifact: ArtifactLike) -> dict:
    return json.loads((Path(plan_artifact.path) / PLAN_FILE).read_text())


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def summary_row(photo: Mapping[str, Any], status: str, report: Mapping | None = None,
                reason: str = "") -> dict[str, str]:  # fmt: skip
    """A row of ``summary.csv`` as ``cirl predict`` writes it, every cell a string."""
    from cirl.deploy.photo_outputs import SUMMARY_COLUMNS

    row: dict[str, Any] = {
        "image": photo["source"],
        "name": photo["name"],
        "status": status,
        "reason": reason,
    }
    if report is not None and not reason:  # a photo done without its GeoJSON says why
        geojson = report.get("geojson")
        row["reason"] = (geojson.get("warning") if isinstance(geojson, Mapping) else "") or ""
    if report is not None:
        from cirl.deploy.photo_outputs import report_columns

        row.update(report_columns(report))
    return {k: _cell(row.get(k)) for k in SUMMARY_COLUMNS}


def is_finished(
    report: Mapping[str, Any] | None,
    photo: Mapping[str, Any],
    fingerprint: str | None,
    plan_record: Mapping[str, Any],
    present: set[str],
) -> bool:
    """Whether ``report`` (a ``NAME.json`` in the output prefix) stands for this photo's outputs
    made from the same photo (and world file) by this run's model version with this run's
    output parameters, all its files present."""
    if not isinstance(report, Mapping) or fingerprint is None:
        return False
    model, used = plan_record["model"], report.get("model") or {}
    params, wanted = report.get("params") or {}, plan_record["predict_params"]
    same_model = used.get("checkpoint_sha256") == model.get("checkpoint_sha256") and (
        model.get("name") is None
        or (
            used.get("registered_model") == model["name"]
            and str(used.get("registered_version")) == model["version"]
        )
    )
    geo = report.get("geojson")
    same_world = not (
        isinstance(geo, Mapping)
        and "world_file_fingerprint" in geo
        and wanted.get("geojson")
        and wanted.get("geo") == "auto"
        and geo["world_file_fingerprint"] != _world_fingerprint(photo)
    )
    return (
        report.get("image") == photo["source"]
        and report.get("input_fingerprint") == fingerprint
        and same_model
        and same_world
        and all(params.get(k) == v for k, v in wanted.items() if k not in RUNTIME_PARAMS)
        and params.get("threshold") == plan_record["threshold"]["value"]
        and bool(report.get("outputs"))
        and all(f in present for f in report["outputs"])
    )


def _world_fingerprint(photo: Mapping[str, Any]) -> str:
    """The first world file's fingerprint as ``cirl predict`` records it ("" when none)."""
    for sidecar in photo.get("sidecars", ()):
        if "key" in sidecar:
            return f"{sidecar['key']};etag={sidecar['etag']}"
        with contextlib.suppress(OSError):
            return f"{Path(sidecar['source']).name};{local_fingerprint(Path(sidecar['path']))}"
    return ""


def _fingerprint_now(photo: Mapping[str, Any]) -> str | None:
    """The photo's fingerprint as predict will record it (None: a local photo gone)."""
    if "key" in photo:
        return photo["fingerprint"]  # the download is pinned to the listed ETag
    try:
        return local_fingerprint(Path(photo["path"]))
    except OSError:
        return None


class _Publisher(threading.Thread):
    """Publishes each photo's files from predict's staging folder to the output prefix as soon
    as its ``NAME.json`` (written last by predict) appears there; the JSON goes last."""

    def __init__(self, staged: Path, out: Location, photos: dict[str, tuple], stale: set[str]):
        super().__init__(name="publish", daemon=True)
        self.staged, self.out, self.pending, self.stale = staged, out, dict(photos), stale
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.published: list[str] = []

    def run(self) -> None:
        while not self.error:
            stop = self.stopping.wait(0.2)
            self._pass()
            if stop:
                return

    def _pass(self) -> None:
        for name in list(self.pending):
            if self.error is not None or not (self.staged / f"{name}.json").is_file():
                continue
            photo, names, fingerprint = self.pending.pop(name)
            try:
                self._publish(name, photo, fingerprint, names)
            except BaseException as exc:  # re-raised by finish(), in the task's thread
                self.error = exc

    def _publish(
        self, name: str, photo: Mapping[str, Any], fingerprint: str, names: Mapping[str, str]
    ) -> None:
        report = _renamed(json.loads((self.staged / f"{name}.json").read_text()), names)
        report["image"], report["input_fingerprint"] = photo["source"], fingerprint
        if name in self.stale:  # an older report goes first, as cirl predict does
            self.out.delete(f"{name}.json")
        for file in report["outputs"]:
            if file != f"{name}.json":
                self.out.upload(file, self.staged / file)
        self.out.write(f"{name}.json", (json.dumps(report, indent=2) + "\n").encode())
        self.published.append(name)

    def finish(self) -> None:
        self.stopping.set()
        self.join()
        if self.error is not None:
            raise self.error


def _stage_inputs(
    chunk: Sequence[Mapping[str, Any]], folder: Path, source: str
) -> Iterator[tuple[Mapping[str, Any], Path | CirlError, dict[str, str]]]:
    """Each photo as a local file ``NAME.suffix`` (downloaded, or a link to it), its world
    files beside it; with what predict will write of the copies -> what names the originals."""
    if not chunk or "key" not in chunk[0]:
        for photo in chunk:
            original = Path(photo["path"])
            if not original.is_file():
                yield photo, CirlError(f"{photo['source']}: the photo no longer exists"), {}
                continue
            link = folder / f"{photo['name']}{original.suffix}"
            link.symlink_to(original)
            names = {str(link): photo["source"]}
            for sidecar in photo.get("sidecars", ()):
                world = folder / f"{photo['name']}{sidecar['as']}"
                with contextlib.suppress(OSError):
                    world.symlink_to(sidecar["path"])
                    names[str(world)] = sidecar["source"]
                    fingerprint = local_fingerprint(world)
                    names[f"{world.name};{fingerprint}"] = (
                        f"{Path(sidecar['source']).name};{fingerprint}"
                    )
            yield photo, link, names
        return
    from cirl.data import remote

    bucket, prefix = remote.parse_s3_uri(source)
    listing = remote.RemoteListing(source, bucket, prefix, (), remote.s3_client())

    def fetch(photo: Mapping[str, Any]) -> tuple[Path | CirlError, dict[str, str]]:
        obj = remote.RemoteObject(photo["key"], photo["etag"], photo["size"])
        path = folder / f"{photo['name']}{Path(photo['key']).suffix.lower()}"
        try:
            listing.download(obj, path)
        except CirlError as exc:
            return exc, {}
        names = {str(path): photo["source"]}
        for sidecar in photo.get("sidecars", ()):
            world = folder / f"{photo['name']}{sidecar['as']}"
            with contextlib.suppress(CirlError):  # predict then says the photo has none
                listing.download(
                    remote.RemoteObject(sidecar["key"], sidecar["etag"], sidecar["size"]), world
                )
                names[str(world)] = sidecar["source"]
                names[f"{world.name};{local_fingerprint(world)}"] = (
                    f"{sidecar['key']};etag={sidecar['etag']}"
                )
        return path, names

    with ThreadPoolExecutor(4) as pool:
        for photo, (local, names) in zip(chunk, pool.map(fetch, chunk), strict=True):
            yield photo, local, names


def _renamed(value: Any, names: Mapping[str, str]) -> Any:
    """``value`` (a report, a cell) with every staged copy's path or fingerprint replaced by
    what names the original (longest first: a path is never replaced inside a longer one)."""
    if isinstance(value, str):
        for old in sorted(names, key=len, reverse=True):
            value = value.replace(old, names[old])
        return value
    if isinstance(value, dict):
        return {k: _renamed(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v, names) for v in value]
    return value


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _predict_chunk(
    chunk: Sequence[Mapping[str, Any]],
    plan_record: Mapping[str, Any],
    cfg: Any,
    out: Location,
    stale: set[str],
    engines: list[dict],
) -> dict[str, dict[str, str]]:
    """One chunk of a shard: staged, predicted by ``predict.run``, published; its rows."""
    from cirl.deploy import predict
    from cirl.models.inference import subnormals_as_zero

    rows: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="cirl-shard-") as tmp:
        inputs, staged = Path(tmp) / "photos", Path(tmp) / "outputs"
        inputs.mkdir()
        ready: dict[str, tuple] = {}
        for photo, local, names in _stage_inputs(chunk, inputs, plan_record["source"]):
            if isinstance(local, CirlError):
                rows[photo["name"]] = summary_row(photo, "failed", reason=str(local))
            else:
                ready[photo["name"]] = (photo, names, _fingerprint_now(photo))
        if not ready:
            return rows
        publisher = _Publisher(staged, out, ready, stale)
        publisher.start()
        try:
            with subnormals_as_zero():  # as `cirl predict` runs it
                result = predict.run(
                    cfg,
                    inputs,
                    plan_record["model"]["uri"],
                    staged,
                    progress=False,
                    tracking_uri=plan_record["model"]["registry"],
                )
        except BaseException:
            with contextlib.suppress(Exception):  # publish what is done; predict's error wins
                publisher.finish()
            raise
        publisher.finish()
        summary = json.loads((staged / "predictions.json").read_text())
        engines.append(
            {
                "engine": result.engine,
                "why": (result.engine_choice or {}).get("why"),
                "threshold": summary.get("threshold"),
            }
        )
        for row in _read_csv(staged / "summary.csv"):
            photo, names, _ = ready[row["name"]]
            row["image"] = photo["source"]
            row["reason"] = _renamed(row["reason"], names)
            rows[row["name"]] = row
    return rows


def _reports(out: Location, names: Sequence[str]) -> dict[str, Any]:
    """The ``NAME.json`` of each name in the output prefix (None: unreadable), 8 at a time."""

    def read(name: str) -> Any:
        try:
            return json.loads(out.read(f"{name}.json") or b"null")
        except ValueError:
            return None

    if out.remote and names:
        out.client  # noqa: B018 - made once here, shared by the threads (boto3 clients are)
    with ThreadPoolExecutor(8) as pool:
        return dict(zip(names, pool.map(read, names), strict=True))


def predict_shard(plan_artifact: ArtifactLike, index: int, shard: ArtifactLike) -> dict:
    """One shard: its photos predicted (those finished before skipped), outputs published to
    the output prefix; ``shard.json`` (one summary row per photo, the engine) in ``shard``.

    Raises:
        CirlError: when the model cannot be opened or the outputs cannot be written (a photo
            that cannot be read is not an error: it is a ``failed`` row).
    """
    t0 = time.perf_counter()
    plan_record = read_plan(plan_artifact)
    cfg = stage_config("predict", plan_record["predict_params"])
    index = int(index)
    photos = [plan_record["photos"][i] for i in plan_record["shards"][index]]
    out = Location(plan_record["out"])
    present = out.names()
    rows: dict[str, dict[str, str]] = {}
    stale = {p["name"] for p in photos if f"{p['name']}.json" in present}
    reports = _reports(out, sorted(stale))
    todo = []
    for photo in photos:
        name = photo["name"]
        report = reports.get(name)
        if is_finished(report, photo, _fingerprint_now(photo), plan_record, present):
            rows[name] = summary_row(photo, "skipped", report)
        else:
            todo.append(photo)
    engines: list[dict] = []
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start : start + CHUNK]
        rows.update(_predict_chunk(chunk, plan_record, cfg, out, stale, engines))
    ordered = {p["name"]: rows[p["name"]] for p in photos}
    counts = {s: sum(r["status"] == s for r in ordered.values()) for s in STATUSES}
    record = {
        "index": index,
        "photos": len(photos),
        **counts,
        "engines": engines,
        "seconds": round(time.perf_counter() - t0, 2),
        "rows": ordered,
    }
    folder = _prepare_output(shard)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SHARD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    shard.metadata.update({"index": index, **counts})
    print(f"shard {index}: {json.dumps(counts)}", file=sys.stderr)
    return record
