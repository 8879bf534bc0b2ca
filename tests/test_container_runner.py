"""KFP's DockerRunner through podman (:mod:`cirl.orchestration.container_runner`).

The unit tests run everywhere (a fake Docker client). The ``container`` tests need podman (as
root), the image ``$CIRL_IMAGE`` (default ``localhost/cirl:ci``) in the storage that
``CONTAINERS_STORAGE_CONF`` / ``CONTAINERS_CONF`` name, and ``CIRL_CONTAINER_TESTS=1``;
``.ci/image.sh`` builds the image and runs them that way. They are skipped otherwise.
"""

import os
from pathlib import Path

import pytest

from cirl.errors import CirlError

IMAGE = os.environ.get("CIRL_IMAGE", "localhost/cirl:ci")


class FakeContainer:
    def __init__(self, chunks, status):
        self.chunks, self.status, self.removed = chunks, status, False

    def logs(self, stream, follow):
        return iter(self.chunks)

    def wait(self):
        return {"StatusCode": self.status}

    def remove(self, force):
        self.removed = True


class FakeClient:
    """The part of ``docker.DockerClient`` that :func:`run_container` uses."""

    def __init__(self, container):
        self.container = container
        self.run_args = None
        self.images = self
        self.containers = self

    def get(self, image):
        return image

    def run(self, **kwargs):
        self.run_args = kwargs
        return self.container


def test_run_container_returns_the_status_and_log_and_removes_the_container(capsys):
    from cirl.orchestration.container_runner import run_container

    # "é" split across two chunks: the log is decoded as a stream
    container = FakeContainer([b"step 1\n", b"error: caf\xc3", b"\xa9 failed\n"], status=3)
    client = FakeClient(container)
    status = run_container(client, "img", ["sh"], {}, auto_remove=True, user="0:0")
    assert status == 3
    assert container.removed
    assert client.run_args["auto_remove"] is False
    assert client.run_args["image"] == "img:latest"
    assert client.run_args["user"] == "0:0"
    assert "step 1\nerror: café failed\n" in capsys.readouterr().out


def test_exit_status_fix_replaces_kfps_function_only_inside_the_block():
    from kfp.local import docker_task_handler

    from cirl.orchestration.container_runner import exit_status_fix, run_container

    original = docker_task_handler.run_docker_container
    with exit_status_fix():
        assert docker_task_handler.run_docker_container is run_container
    assert docker_task_handler.run_docker_container is original


def test_docker_runner_without_an_engine_says_how_to_start_one(monkeypatch, tmp_path):
    from cirl.orchestration.container_runner import docker_runner

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    with pytest.raises(CirlError, match="podman system service"):
        docker_runner()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """podman's Docker-compatible service on a private socket, ``DOCKER_HOST`` set to it."""
    if os.environ.get("CIRL_CONTAINER_TESTS") != "1":
        pytest.skip("needs podman and the image: set CIRL_CONTAINER_TESTS=1 (.ci/image.sh does)")
    from cirl.orchestration.container_runner import podman_service

    with podman_service(tmp_path_factory.mktemp("podman")) as running:
        yield running


@pytest.fixture
def kfp_local(service, tmp_path):
    """KFP's local runner set to run tasks in containers through ``service``."""
    from kfp import local

    from cirl.orchestration.container_runner import docker_runner

    outside = tmp_path / "outside"  # a folder outside the pipeline root, e.g. a raw dataset
    outside.mkdir()
    (outside / "photo.txt").write_text("a raw photo")
    runner = docker_runner(read_only=[outside])
    local.init(runner=runner, pipeline_root=str(tmp_path / "root"), raise_on_error=True)
    return tmp_path


@pytest.fixture
def components():
    """Two lightweight components on the image, nothing installed when they run."""
    from kfp import dsl

    on_image = dsl.component(base_image=IMAGE, install_kfp_package=False)

    @on_image
    def where(word: str, note: dsl.Output[dsl.Artifact]) -> str:
        import os
        import sys

        import cirl

        print(f"hello from the container: {word}")
        with open(note.path, "w") as f:
            f.write(word)
        return f"{sys.executable} cirl {cirl.__version__} uid {os.getuid()}"

    @on_image
    def read(path: str) -> str:
        with open(path) as f:
            return f.read()

    @on_image
    def fail(word: str):
        import sys

        print(f"error: the task failed on purpose after {word}", file=sys.stderr)
        sys.exit(2)

    return dsl, where, read, fail


@pytest.mark.container
def test_task_runs_in_the_image_and_its_outputs_come_back(kfp_local, components, capfd):
    _, where, _, _ = components
    task = where(word="crack")
    assert task.outputs["Output"] == f"/opt/venv/bin/python3 cirl 0.1.0 uid {os.getuid()}"
    note = Path(task.outputs["note"].path)
    assert note.is_relative_to(kfp_local / "root")
    assert note.read_text() == "crack"
    assert "hello from the container: crack" in capfd.readouterr().out


@pytest.mark.container
def test_read_only_folders_are_mounted_at_the_same_path(kfp_local, components):
    _, _, read, _ = components
    assert read(path=str(kfp_local / "outside" / "photo.txt")).output == "a raw photo"


@pytest.mark.container
def test_failing_task_fails_the_run_and_shows_its_log(kfp_local, components, capfd):
    dsl, where, _, fail = components

    @dsl.pipeline
    def two_tasks():
        first = where(word="first")
        fail(word=first.outputs["Output"])

    with pytest.raises(RuntimeError, match="FAILURE"):
        two_tasks()
    log = capfd.readouterr()
    text = log.out + log.err
    assert "hello from the container: first" in text
    assert "error: the task failed on purpose after /opt/venv/bin/python3" in text


@pytest.mark.container
def test_run_container_on_podman_returns_the_exit_status(service, capfd):
    import docker

    from cirl.orchestration.container_runner import run_container

    client = docker.from_env()
    try:
        before = {c.id for c in client.containers.list(all=True)}
        status = run_container(
            client, IMAGE, ["sh", "-c", "echo to stdout; echo error: to stderr >&2; exit 3"], {}
        )
        after = {c.id for c in client.containers.list(all=True)}
    finally:
        client.close()
    assert status == 3
    out = capfd.readouterr().out
    assert "to stdout" in out
    assert "error: to stderr" in out
    assert after <= before
