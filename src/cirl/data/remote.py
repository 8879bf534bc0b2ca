"""Raw datasets in an S3-compatible bucket: ``s3://bucket/prefix`` -> a local folder.

``fetched(uri)`` lists every object under the prefix, downloads them into a temporary folder
(keys relative to the prefix become paths, so the folder has the same layout as a local raw
dataset) and yields that folder with the key, ETag and size of every object, which
``prepare`` writes into the dataset card. The folder is removed afterwards.

Endpoint and credentials come from the standard environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_PROFILE``),
exactly as for the AWS CLI, so any S3-compatible store (AWS, MinIO, SeaweedFS, Ceph) works.
``boto3`` is imported only here, inside functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cirl.errors import CirlError

SCHEME = "s3://"
_THREADS = 8  # raw datasets are many small files: parallel GETs hide the per-request latency
_CREDENTIALS_FIX = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) to a key that may list "
    "and read the bucket"
)


@dataclass(frozen=True)
class RemoteObject:
    """One downloaded object: its key, ETag (quotes stripped) and size in bytes."""

    key: str
    etag: str
    size: int


@dataclass(frozen=True)
class FetchedDataset:
    """A remote raw dataset, downloaded.

    Attributes:
        uri: the ``s3://bucket/prefix`` it came from.
        endpoint: the S3 endpoint used (``AWS_ENDPOINT_URL``, or AWS's default).
        root: local folder holding the objects, laid out by key relative to the prefix.
        objects: every object, sorted by key.
    """

    uri: str
    endpoint: str
    root: Path
    objects: tuple[RemoteObject, ...]

    def card(self) -> dict:
        """The dataset card's record of where the raw data came from (no credentials)."""
        listing = "".join(f"{o.key}\t{o.etag}\t{o.size}\n" for o in self.objects)
        return {
            "uri": self.uri,
            "endpoint": self.endpoint,
            "objects": len(self.objects),
            "bytes": sum(o.size for o in self.objects),
            "listing_sha256": hashlib.sha256(listing.encode()).hexdigest(),
            "etags": {o.key: o.etag for o in self.objects},
        }


def is_s3_uri(source: str | os.PathLike) -> bool:
    """True for ``s3://...`` sources (a local path never starts with a scheme)."""
    return isinstance(source, str) and source.startswith(SCHEME)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/prefix`` into bucket and prefix (``""`` or ending in ``/``).

    Raises:
        CirlError: no bucket name.
    """
    bucket, _, prefix = uri[len(SCHEME) :].partition("/")
    if not bucket:
        raise CirlError(f"{uri}: no bucket name; write the source as s3://BUCKET/PREFIX")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _max_attempts() -> int:
    try:
        return max(1, int(os.environ.get("AWS_MAX_ATTEMPTS", "3")))
    except ValueError:
        raise CirlError(
            f"AWS_MAX_ATTEMPTS={os.environ['AWS_MAX_ATTEMPTS']!r} is not a whole number; "
            "set it to the number of attempts per S3 request, e.g. 3, or unset it"
        ) from None


class EndpointError(CirlError):
    """The S3 endpoint did not answer (refused, timed out, dropped the connection): a fault of
    the store, not of the object, so a run that meets it repeatedly gives up."""


def _read_timeout() -> float:
    text = os.environ.get("CIRL_S3_READ_TIMEOUT", "20")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise CirlError(
            f"CIRL_S3_READ_TIMEOUT={text!r} is not a number of seconds > 0; set it (e.g. 20) "
            "or unset it"
        )
    return value


def s3_client():
    """A boto3 S3 client configured from the environment.

    Path-style addressing when a custom endpoint is set (S3-compatible stores are usually
    reached by host name or IP, where bucket-as-subdomain does not resolve); short connect
    timeout and 3 attempts (``AWS_MAX_ATTEMPTS`` overrides) so an unreachable endpoint fails
    in seconds, not minutes; a read that gets no data for ``CIRL_S3_READ_TIMEOUT`` (20) s
    fails too (a server that stopped answering mid-run), and is retried like a connect.
    """
    import boto3
    from botocore.config import Config

    endpoint = _endpoint()
    config = Config(
        connect_timeout=5,
        read_timeout=_read_timeout(),
        retries={"max_attempts": _max_attempts(), "mode": "standard"},
        s3={"addressing_style": "path"} if endpoint else {},
        max_pool_connections=_THREADS * 2,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


def _error(uri: str, bucket: str, exc: Exception) -> CirlError:
    """Turn a botocore failure into one message that names the URI and the fix."""
    import botocore.exceptions as bx

    where = _endpoint() or "AWS S3"
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return CirlError(f"{uri}: no S3 credentials found; {_CREDENTIALS_FIX}")
    if isinstance(
        exc, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ProxyConnectionError
    ):
        return EndpointError(
            f"{uri}: cannot reach the S3 endpoint {where}; check AWS_ENDPOINT_URL "
            "(scheme, host and port) and that the server is running and reachable"
        )
    if isinstance(exc, bx.ReadTimeoutError | bx.ConnectionClosedError):
        return EndpointError(
            f"{uri}: the S3 endpoint {where} stopped answering (no data for "
            f"{_read_timeout():g} s, {_max_attempts()} attempt(s)); check that the server is "
            "up and not overloaded (CIRL_S3_READ_TIMEOUT and AWS_MAX_ATTEMPTS set the patience)"
        )
    if isinstance(exc, bx.ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("PreconditionFailed", "412"):
            return CirlError(
                f"{uri}: an object changed while it was being downloaded; run again once "
                "the upload to the bucket is complete"
            )
        if code in ("NoSuchBucket",) or (code == "404" and status == 404):
            return CirlError(
                f"{uri}: bucket {bucket!r} does not exist at {where}; check the bucket name "
                "(and AWS_ENDPOINT_URL), or create the bucket and upload the raw dataset"
            )
        if code in (
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "InvalidToken",
            "ExpiredToken",
            "AuthorizationHeaderMalformed",
        ):
            return CirlError(
                f"{uri}: {where} rejected the credentials ({code}); {_CREDENTIALS_FIX}"
            )
        if code in ("AccessDenied", "403", "Forbidden") or status == 403:
            return CirlError(
                f"{uri}: access denied by {where} ({code or status}); the key in "
                f"AWS_ACCESS_KEY_ID may be wrong or lack s3:ListBucket/s3:GetObject on "
                f"{bucket!r}; {_CREDENTIALS_FIX}"
            )
        return CirlError(f"{uri}: S3 request to {where} failed ({code or status}): {exc}")
    if isinstance(exc, bx.BotoCoreError):
        return CirlError(f"{uri}: S3 request to {where} failed: {exc}; check AWS_ENDPOINT_URL")
    return CirlError(f"{uri}: {exc}")


def _local_path(root: Path, key: str, prefix: str, uri: str) -> Path | None:
    rel = key[len(prefix) :]
    if not rel or rel.endswith("/"):
        return None  # a "folder" marker object, not a file
    parts = PurePosixPath(rel).parts
    if any(p in ("..", ".") for p in parts) or rel.startswith("/"):
        raise CirlError(f"{uri}: object key {key!r} escapes the prefix; rename the object")
    return root.joinpath(*parts)


def _list(client, bucket: str, prefix: str) -> list[RemoteObject]:
    objects = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            objects.append(RemoteObject(item["Key"], item["ETag"].strip('"'), int(item["Size"])))
    return sorted(objects, key=lambda o: o.key)


def _download(client, bucket: str, obj: RemoteObject, path: Path, uri: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = client.get_object(Bucket=bucket, Key=obj.key, IfMatch=f'"{obj.etag}"')["Body"].read()
    # a single-part upload's ETag is the MD5 of the bytes: check it (multipart ETags have "-")
    single_part = len(obj.etag) == 32 and "-" not in obj.etag
    if single_part and hashlib.md5(body, usedforsecurity=False).hexdigest() != obj.etag:
        raise CirlError(
            f"{uri}: object {obj.key!r} arrived corrupted (MD5 differs from its ETag); "
            "run again, and check the store if it repeats"
        )
    path.write_bytes(body)


def _listing(uri: str) -> tuple[object, str, str, list[RemoteObject]]:
    """A client, the bucket and prefix of ``uri``, and every object under the prefix.

    Raises:
        CirlError: naming the URI and the fix when the listing fails.
    """
    import botocore.exceptions as bx

    bucket, prefix = parse_s3_uri(uri)
    client = s3_client()
    try:
        return client, bucket, prefix, _list(client, bucket, prefix)
    except (bx.BotoCoreError, bx.ClientError) as exc:
        raise _error(uri, bucket, exc) from None


@contextlib.contextmanager
def fetched(uri: str) -> Iterator[FetchedDataset]:
    """Download every object under ``s3://bucket/prefix`` into a temporary folder.

    The folder is created under ``$TMPDIR`` and removed when the ``with`` block ends.

    Args:
        uri: ``s3://bucket/prefix`` (the prefix may be empty: the whole bucket).

    Yields:
        The local copy with the key, ETag and size of every object.

    Raises:
        CirlError: one message naming the URI and the fix, for wrong or missing credentials,
            a bucket that does not exist, a prefix with no objects, an unreachable endpoint,
            or a corrupted download.
    """
    import botocore.exceptions as bx

    client, bucket, prefix, objects = _listing(uri)
    if not objects:
        raise CirlError(
            f"{uri}: no objects under prefix {prefix or '(bucket root)'!r} in bucket "
            f"{bucket!r}; check the prefix (it is a key prefix, e.g. s3://{bucket}/raw/synth) "
            "and that the raw dataset was uploaded"
        )
    with tempfile.TemporaryDirectory(prefix="cirl-s3-") as tmp:
        root = Path(tmp)
        jobs = [(o, _local_path(root, o.key, prefix, uri)) for o in objects]
        jobs = [(o, p) for o, p in jobs if p is not None]
        try:
            with ThreadPoolExecutor(_THREADS) as pool:
                for future in [pool.submit(_download, client, bucket, o, p, uri) for o, p in jobs]:
                    future.result()
        except (bx.BotoCoreError, bx.ClientError) as exc:
            raise _error(uri, bucket, exc) from None
        yield FetchedDataset(uri, _endpoint() or "", root, tuple(o for o, _ in jobs))


@dataclass(frozen=True)
class RemoteListing:
    """The objects under an ``s3://`` prefix, and a client to fetch them one at a time."""

    uri: str
    bucket: str
    prefix: str
    objects: tuple[RemoteObject, ...]
    client: object

    def uri_of(self, obj: RemoteObject) -> str:
        return f"{SCHEME}{self.bucket}/{obj.key}"

    def download(self, obj: RemoteObject, path: Path) -> None:
        """Fetch one object to ``path`` (ETag-pinned, MD5-checked where the ETag is one).

        Raises:
            CirlError: naming the object and the fix.
        """
        import botocore.exceptions as bx

        try:
            _download(self.client, self.bucket, obj, path, self.uri_of(obj))
        except (bx.BotoCoreError, bx.ClientError) as exc:
            raise _error(self.uri_of(obj), self.bucket, exc) from None


def list_objects(uri: str, suffixes: tuple[str, ...] = ()) -> RemoteListing:
    """List the objects under ``s3://bucket/prefix`` (those ending in ``suffixes``, any case).

    For work that streams objects one by one (``cirl predict`` over thousands of photos)
    rather than downloading a whole dataset with :func:`fetched`.

    Raises:
        CirlError: as :func:`fetched`, including when no object matches.
    """
    client, bucket, prefix, objects = _listing(uri)
    objects = [
        o
        for o in objects
        if not o.key.endswith("/") and (not suffixes or o.key.lower().endswith(suffixes))
    ]
    if not objects:
        wanted = f" ending in {', '.join(suffixes)}" if suffixes else ""
        raise CirlError(
            f"{uri}: no objects{wanted} under prefix {prefix or '(bucket root)'!r} in bucket "
            f"{bucket!r}; check the prefix and that the photos were uploaded"
        )
    return RemoteListing(uri, bucket, prefix, tuple(objects), client)
