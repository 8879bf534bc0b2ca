"""``cirl prepare --source s3://...`` against a real S3 server (SeaweedFS on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cirl.data import remote
from cirl.data.prepare import PrepareConfig, run
from cirl.errors import CirlError
from conftest import write_pair
from services import seaweed_s3

BUCKET = "raw-datasets"
PREFIX = "tiny/v1"
URI = f"s3://{BUCKET}/{PREFIX}"
CFG = PrepareConfig(tile=128)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """Six 300x200 photos with masks, in the folder layout."""
    root = tmp_path_factory.mktemp("raw")
    for i in range(6):
        write_pair(root, f"img{i:02d}", 300, 200, seed=i)
    return root


@pytest.fixture(scope="module")
def s3(tmp_path_factory, raw):
    """A SeaweedFS S3 server holding ``raw`` under s3://raw-datasets/tiny/v1/."""
    with seaweed_s3(tmp_path_factory.mktemp("seaweed")) as server:
        server.make_bucket(BUCKET)
        server.make_bucket("empty-bucket")
        client = server.client()
        for path in sorted(p for p in raw.rglob("*") if p.is_file()):
            key = f"{PREFIX}/{path.relative_to(raw).as_posix()}"
            client.upload_file(str(path), BUCKET, key)
        yield server


@pytest.fixture
def s3_env(s3, monkeypatch, tmp_path):
    """Point the standard AWS variables at the server; no user config can leak in."""
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return s3


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.png")}


def test_prepare_from_s3_equals_local_folder(s3_env, raw, tmp_path):
    from_s3 = run(CFG, URI, "folder", tmp_path / "s3")
    from_disk = run(CFG, raw, "folder", tmp_path / "disk")
    assert from_s3.tiles == from_disk.tiles
    assert (tmp_path / "s3/manifest.csv").read_text() == (
        tmp_path / "disk/manifest.csv"
    ).read_text()
    assert _files(tmp_path / "s3") == _files(tmp_path / "disk")
    card = json.loads((tmp_path / "s3/dataset_card.json").read_text())
    assert card["source"] == URI
    origin = card["source_remote"]
    assert origin["uri"] == URI and origin["endpoint"] == s3_env.url and origin["objects"] == 12
    # every object is recorded with its ETag, which for a plain upload is the file's MD5
    expected = {
        f"{PREFIX}/{p.relative_to(raw).as_posix()}": hashlib.md5(p.read_bytes()).hexdigest()
        for p in raw.rglob("*")
        if p.is_file()
    }
    assert origin["etags"] == expected
    assert "cirl-secret-key" not in (tmp_path / "s3/dataset_card.json").read_text()
    local_card = json.loads((tmp_path / "disk/dataset_card.json").read_text())
    assert local_card["source_remote"] is None


def test_cli_prepare_from_s3(s3_env, tmp_path):
    env = {**os.environ, **s3_env.env}
    command = [sys.executable, "-m", "cirl", "prepare", "--source", f"{URI}/"]
    command += ["--format", "folder", "--out", str(tmp_path / "p"), "--tile", "128", "-q"]
    done = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tiles"] == {"train": 24, "val": 6, "test": 6}


def test_wrong_secret_key(s3_env, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(CirlError, match="rejected the credentials") as info:
        run(CFG, URI, "folder", tmp_path / "p")
    assert URI in str(info.value) and "AWS_SECRET_ACCESS_KEY" in str(info.value)
    assert not (tmp_path / "p").exists()


def test_unknown_access_key(s3_env, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with pytest.raises(CirlError, match=r"rejected the credentials \(InvalidAccessKeyId\)"):
        run(CFG, URI, "folder", tmp_path / "p")


def test_no_credentials(s3_env, monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(CirlError, match=r"no S3 credentials found.*AWS_ACCESS_KEY_ID"):
        run(CFG, URI, "folder", tmp_path / "p")


def test_missing_bucket(s3_env, tmp_path):
    with pytest.raises(CirlError, match="bucket 'no-such-bucket' does not exist") as info:
        run(CFG, "s3://no-such-bucket/tiny", "folder", tmp_path / "p")
    assert "s3://no-such-bucket/tiny" in str(info.value)


@pytest.mark.parametrize(
    "uri", [f"s3://{BUCKET}/tiny/v2", f"s3://{BUCKET}/tiny/v", "s3://empty-bucket"]
)
def test_empty_prefix(s3_env, tmp_path, uri):
    # "tiny/v" is a string prefix of "tiny/v1/...": a prefix is matched as a folder
    with pytest.raises(CirlError, match="no objects under prefix") as info:
        run(CFG, uri, "folder", tmp_path / "p")
    assert uri in str(info.value)


def test_unreachable_endpoint(monkeypatch, tmp_path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "cirl")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "cirl-secret-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # the default 3 attempts back off for seconds
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    with pytest.raises(CirlError, match="cannot reach the S3 endpoint") as info:
        run(CFG, URI, "folder", tmp_path / "p")
    assert f"127.0.0.1:{port}" in str(info.value) and "AWS_ENDPOINT_URL" in str(info.value)


def test_uri_parsing():
    assert remote.parse_s3_uri("s3://b/a/b/") == ("b", "a/b/")
    assert remote.parse_s3_uri("s3://b") == ("b", "")
    assert remote.is_s3_uri("s3://b/x") and not remote.is_s3_uri(Path("s3:/b"))
    with pytest.raises(CirlError, match="no bucket name"):
        remote.parse_s3_uri("s3:///prefix")


def test_key_cannot_escape_the_download_folder(tmp_path):
    with pytest.raises(CirlError, match="escapes the prefix"):
        remote._local_path(tmp_path, "p/../../etc/x", "p/", "s3://b/p")
    assert remote._local_path(tmp_path, "p/", "p/", "s3://b/p") is None
    assert remote._local_path(tmp_path, "p/images/a.jpg", "p/", "s3://b/p") == (
        tmp_path / "images" / "a.jpg"
    )


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    import torch

    from cirl.deploy import export
    from cirl.models import build_model
    from cirl.models.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    model = build_model("unet-small", base_width=4, std_head=False)
    save_checkpoint(root / "m.pt", {"model": model.state_dict(),
                                    "model_config": dict(model.config)})  # fmt: skip
    export.run(export.ExportConfig(gate=False), root / "m.pt", root / "m.onnx")
    return root / "m.onnx"


def _predict(uri: str, model: Path, out: Path) -> list[str]:
    from cirl.orchestration.cli import main

    return main(["predict", uri, "--model", str(model), "--out", str(out), "--engine", "onnx",
                 "--tile", "128", "--overlap", "16", "-q"])  # fmt: skip


def test_predict_names_a_bad_object_by_its_uri(s3_env, onnx_model, tmp_path, capsys):
    client = s3_env.client()
    client.put_object(Bucket=BUCKET, Key="mixed/bad.jpg", Body=b"this is a text file")
    client.upload_file(str(next((Path(__file__).parent).glob("conftest.py"))), BUCKET,
                       "mixed/notes.txt")  # fmt: skip
    write_pair(tmp_path / "one", "good", 200, 150, seed=1)
    client.upload_file(str(tmp_path / "one" / "images" / "good.jpg"), BUCKET, "mixed/good.jpg")
    assert _predict(f"s3://{BUCKET}/mixed", onnx_model, tmp_path / "out") == 1
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    (failed,) = summary["failed"]
    assert failed["image"] == f"s3://{BUCKET}/mixed/bad.jpg"
    assert (
        failed["reason"].startswith(f"s3://{BUCKET}/mixed/bad.jpg")
        and "cirl-predict" not in (failed["reason"])
    )
    assert summary["done"] == [f"s3://{BUCKET}/mixed/good.jpg"]


def test_predict_gives_up_on_an_endpoint_that_stopped_answering(s3_env, onnx_model, tmp_path,
                                                                monkeypatch, capsys):  # fmt: skip
    """The server is paused after the listing: each photo's read times out, and after three in
    a row the run stops with one line instead of waiting out every remaining photo."""
    import signal
    import time

    import cirl.deploy.predict

    monkeypatch.setenv("CIRL_S3_READ_TIMEOUT", "1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    listed = cirl.deploy.predict._inputs

    def list_then_pause(inputs, *args, **kwargs):
        found = listed(inputs, *args, **kwargs)
        os.kill(s3_env.pid, signal.SIGSTOP)
        return found

    monkeypatch.setattr(cirl.deploy.predict, "_inputs", list_then_pause)
    start = time.perf_counter()
    try:
        code = _predict(f"{URI}/images", onnx_model, tmp_path / "out")
    finally:
        os.kill(s3_env.pid, signal.SIGCONT)
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: gave up after 3 photos in a row"), err
    assert "stopped answering" in err and f"{URI}/images/img0" in err
    assert seconds < 60  # six photos at the default patience would wait minutes
    rows = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 and all(",failed," in r for r in rows[1:])
    recorded = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert recorded["stopped"].startswith("gave up") and len(recorded["failed"]) == 3
