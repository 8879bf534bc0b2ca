"""Where the inference pipeline's photos and outputs live (a folder or an ``s3://`` prefix), the
listing and sharding of the photos and the model resolved once
(:mod:`cirl.orchestration.task_inference`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cirl.deploy.geo import world_file_names
from cirl.errors import CirlError
from cirl.orchestration.task_base import (
    TrackingParams,
    tracking_config,
)

PIPELINE_NAME = "cirl-inference"


DEFAULT_MODEL = "models:/cirl-crack@champion"


PLAN_FILE = "plan.json"


SHARD_FILE = "shard.json"


MERGE_FILE = "merge.json"


PARTITION = "round-robin: photo i of the sorted listing goes to shard i mod shards"


CHUNK = 16


"""Photos staged (downloaded) and predicted at a time in a shard: bounds a pod's disk use."""


TOP_PHOTOS = 6


"""Overlays shown on the report page: the photos with the longest cracks."""


# ``cirl pipeline run|submit --set``: the pipeline's own parameters, and the groups it takes
TOP_LEVEL = ("out", "model", "shards")


GROUPS = ("predict", "tracking")


RUNTIME_PARAMS = ("engine", "batch", "threads", "device", "force", "resume", "threshold")


"""Parameters that do not change a photo's outputs (the threshold is compared as resolved)."""


STATUSES = ("done", "skipped", "failed")


class Location:
    """The output prefix: a local folder or ``s3://bucket/prefix``, files addressed by name."""

    def __init__(self, uri: str) -> None:
        from cirl.data.remote import is_s3_uri, parse_s3_uri

        self.uri = str(uri)
        self.remote = is_s3_uri(self.uri)
        self._client = None
        if self.remote:
            self.bucket, self.prefix = parse_s3_uri(self.uri)
        else:
            self.folder = Path(self.uri)

    def uri_of(self, name: str) -> str:
        if self.remote:
            return f"s3://{self.bucket}/{self.prefix}{name}"
        return str(self.folder / name)

    @property
    def client(self) -> Any:
        if self._client is None:
            from cirl.data.remote import s3_client

            self._client = s3_client()
        return self._client

    @contextlib.contextmanager
    def _s3(self, what: str) -> Iterator[None]:
        import botocore.exceptions as bx

        try:
            yield
        except (bx.BotoCoreError, bx.ClientError) as exc:
            raise CirlError(f"{what}: {_s3_reason(exc, self.bucket)}") from None

    def check(self) -> None:
        """Fail now, not after the photos, when the prefix cannot be written."""
        from cirl.staging import writable_dir

        if not self.remote:
            writable_dir(self.folder)
            return
        with self._s3(f"output {self.uri}"):
            self.client.head_bucket(Bucket=self.bucket)

    def names(self) -> set[str]:
        """The files directly under the prefix (not in sub-folders)."""
        if not self.remote:
            if not self.folder.is_dir():
                return set()
            return {p.name for p in self.folder.iterdir() if p.is_file()}
        found = set()
        with self._s3(f"listing {self.uri}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"
            )
            for page in pages:
                found |= {o["Key"][len(self.prefix) :] for o in page.get("Contents", [])}
        return found

    def read(self, name: str) -> bytes | None:
        """The file's bytes, None when it does not exist."""
        if not self.remote:
            try:
                return (self.folder / name).read_bytes()
            except FileNotFoundError:
                return None
        import botocore.exceptions as bx

        with self._s3(f"reading {self.uri_of(name)}"):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)[
                    "Body"
                ].read()
            except bx.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise

    def write(self, name: str, data: bytes) -> None:
        """Write the file whole (atomically in a folder; one PUT on S3)."""
        if not self.remote:
            from cirl.staging import staged_file

            with staged_file(self.folder / name) as tmp:
                tmp.write_bytes(data)
            return
        with self._s3(f"writing {self.uri_of(name)}"):
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data)

    def upload(self, name: str, path: Path) -> None:
        if not self.remote:
            import shutil

            from cirl.staging import staged_file

            with staged_file(self.folder / name) as tmp:
                shutil.copyfile(path, tmp)
            return
        with self._s3(f"writing {self.uri_of(name)}"):
            self.client.upload_file(str(path), self.bucket, self.prefix + name)

    def delete(self, name: str) -> None:
        if not self.remote:
            (self.folder / name).unlink(missing_ok=True)
            return
        with self._s3(f"removing {self.uri_of(name)}"):
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + name)


def _s3_reason(exc: Exception, bucket: str) -> str:
    import botocore.exceptions as bx

    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return "no S3 credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    if isinstance(exc, bx.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchBucket", "404"):
            return f"bucket {bucket!r} does not exist; create it or check the output URI"
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return (
                f"the store refused the request ({code}); the key needs s3:ListBucket, "
                f"s3:GetObject and s3:PutObject on {bucket!r}"
            )
        return f"S3 request failed ({code}): {exc}"
    return f"S3 request failed: {exc}; check AWS_ENDPOINT_URL"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def resolve_model(model: str, tracking: TrackingParams = None) -> dict:
    """The model a run uses, fixed: for ``models:/NAME@ALIAS`` the version the alias names now.

    Returns:
        ``requested`` (as given), ``uri`` (what every shard opens: ``models:/NAME/N`` or the
        file), ``name``, ``version``, ``alias`` (None for a version or a file), ``run_id``,
        ``registry`` (the tracking URI), ``checkpoint_sha256`` and ``decision_threshold``
        (from the model's metadata), ``resolved_at``.

    Raises:
        CirlError: ``cannot resolve MODEL: ...`` naming the fix, for a malformed URI, a
            registry that cannot be reached, an unknown model, alias or version, a version
            without an ONNX file, or a file that is not an ONNX model.
    """
    from cirl.deploy.engine import is_registry_uri, read_metadata

    cfg = tracking_config(tracking)
    store_uri = (cfg.tracking_uri if cfg else "") or None
    timeout = cfg.tracking_timeout if cfg else 5.0
    record: dict[str, Any] = {"requested": model, "name": None, "version": None, "alias": None}
    if is_registry_uri(model):
        from cirl.lineage.fetch import fetch_model

        # resolved once, here: the alias's version now, its ONNX file fetched
        fetched = fetch_model(
            model, tracking_uri=store_uri, timeout=timeout, store_setting="tracking.tracking_uri"
        )
        path = fetched.path
        record.update(
            name=fetched.name,
            version=fetched.version,
            alias=fetched.alias,
            uri=f"models:/{fetched.name}/{fetched.version}",
            run_id=fetched.training_run_id,
            files_run_id=fetched.run_id,
            registry=fetched.registry,
        )
    else:
        path = Path(model)
        if path.suffix != ".onnx" or not path.is_file():
            raise CirlError(
                f"cannot resolve {model}: not a models:/NAME@ALIAS or models:/NAME/VERSION URI, "
                "nor an .onnx file; pass the registered model (default "
                f"{DEFAULT_MODEL}) or a file written by `cirl export`"
            )
        record.update(uri=str(path.resolve()), run_id=None, registry=None)
    meta = read_metadata(path)
    record["checkpoint_sha256"] = meta.get("checkpoint_sha256")
    if "decision_threshold" in meta:
        record["decision_threshold"] = float(meta["decision_threshold"])
        record["threshold_calibration"] = json.loads(meta.get("threshold_calibration", "{}"))
    record["resolved_at"] = _now()
    return record


def _output_names(paths: Sequence[Path]) -> list[str]:
    """``cirl predict``'s output names: the stem, or stem_ext where two inputs share a stem."""
    stems: dict[str, int] = {}
    for p in paths:
        stems[p.stem] = stems.get(p.stem, 0) + 1
    return [
        p.stem if stems[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}" for p in paths
    ]


def local_fingerprint(path: Path) -> str:
    """What ``cirl predict`` records as a local photo's ``input_fingerprint``."""
    stat = path.stat()
    return f"size={stat.st_size};mtime_ns={stat.st_mtime_ns}"


def _world_suffixes() -> tuple[str, ...]:
    """The suffixes of the world files a listing keeps beside the photos (GDAL's names)."""
    from cirl.deploy.geo import WORLD_SUFFIXES

    return tuple(sorted(WORLD_SUFFIXES))


def list_photos(source: str) -> list[dict]:
    """The photos of ``source`` as ``cirl predict`` lists and names them, sorted, each with the
    world files beside it (``sidecars``: staged beside the photo, where predict looks).

    Raises:
        CirlError: no photo, an unreadable listing, or two photos that would write the same
            output files.
    """
    from cirl.data.images import IMAGE_SUFFIXES
    from cirl.data.remote import is_s3_uri, list_objects

    if is_s3_uri(source):
        listing = list_objects(source, IMAGE_SUFFIXES + _world_suffixes())
        images = [o for o in listing.objects if o.key.lower().endswith(IMAGE_SUFFIXES)]
        if not images:  # world files only: the listing's own message for no photo
            list_objects(source, IMAGE_SUFFIXES)
        by_key = {o.key: o for o in listing.objects}
        photos = []
        for o in images:
            folder = o.key[: o.key.rfind("/") + 1]
            stem = Path(o.key).stem
            sidecars = [
                {
                    "as": n[len(stem) :],
                    "key": w.key,
                    "etag": w.etag,
                    "size": w.size,
                    "source": listing.uri_of(w),
                }
                for n in world_file_names(Path(o.key).name)
                if (w := by_key.get(folder + n)) is not None
            ]
            photos.append(
                {
                    "source": listing.uri_of(o),
                    "key": o.key,
                    "etag": o.etag,
                    "size": o.size,
                    "fingerprint": f"etag={o.etag}",
                    "sidecars": sidecars,
                }
            )
        paths = [Path(o.key) for o in images]
    else:
        from cirl.deploy.predict import list_inputs

        files = list_inputs(Path(source))
        photos = [
            {
                "source": str(f),
                "path": str(f.resolve()),
                "sidecars": [
                    {
                        "as": n[len(f.stem) :],
                        "path": str((f.parent / n).resolve()),
                        "source": str(f.parent / n),
                    }
                    for n in world_file_names(f.name)
                    if (f.parent / n).is_file()
                ],
            }
            for f in files
        ]
        paths = files
    seen: dict[str, str] = {}
    for photo, name in zip(photos, _output_names(paths), strict=True):
        if name in seen:
            raise CirlError(
                f"{seen[name]} and {photo['source']} would both write {name}_mask.png, "
                f"{name}.json, ...: outputs are named by the file name, not its folder; rename "
                "one, or run the folders as separate sources"
            )
        seen[name] = photo["source"]
        photo["name"] = name
    return photos


def deal(count: int, shards: int) -> list[list[int]]:
    """Round-robin: item ``i`` into shard ``i mod n``, ``n = min(shards, count)``."""
    n = max(1, min(int(shards), count))
    return [list(range(i, count, n)) for i in range(n)]


def _check_apart(source: str, out: str) -> None:
    """Outputs inside the source would be listed as photos by the next run."""
    from cirl.data.remote import is_s3_uri, parse_s3_uri

    if is_s3_uri(source) != is_s3_uri(out):
        return
    if is_s3_uri(source):
        (sb, sp), (ob, op) = parse_s3_uri(source), parse_s3_uri(out)
        inside = sb == ob and op.startswith(sp)
    else:
        inside = Path(out).resolve() == Path(source).resolve()
    if inside:
        raise CirlError(
            f"out {out} is inside source {source}: its overlays and masks would be read as "
            "photos by the next run; write the outputs under another prefix"
        )
