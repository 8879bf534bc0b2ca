"""KFP's local ``DockerRunner`` through podman, with the tasks' real exit status and logs.

KFP's local ``DockerRunner`` runs each task in a container through the Docker API
(``docker.from_env()``, so ``DOCKER_HOST``). Podman serves that API
(``podman system service``), which is how the tasks run in the project's image on a machine
without a Docker engine. One catch makes it unsafe as shipped (kfp 2.17.3):
``kfp.local.docker_task_handler.run_docker_container`` starts the container with
``auto_remove=True``, then streams its logs and waits for it. Podman removes such a container
the moment it exits, so ``logs()`` and ``wait()`` answer 404, and KFP reads that 404 as exit
status 0: **a failing task is reported as SUCCESS and its log is lost**. Giving
``DockerRunner(auto_remove=False)`` does not help: KFP passes its own ``auto_remove=True`` as
well, and the call fails on the duplicate keyword.

The fix here is the smallest one: replace that one function (:func:`run_container`) with one
that creates the container without auto-remove, streams its logs, waits for its exit status,
removes it, and returns the real status. :func:`docker_runner` installs it (process-wide,
idempotent; it behaves the same on a real Docker engine) and returns the runner to give
``kfp.local.init``. :func:`podman_service` starts podman's Docker-compatible service on a
private socket for the length of a ``with`` block.

Example::

    from kfp import local
    from cirl.orchestration.container_runner import docker_runner, podman_service

    with podman_service("/tmp/cirl-podman"):  # sets DOCKER_HOST inside the block
        local.init(runner=docker_runner(), pipeline_root="/abs/path/runs", raise_on_error=True)
        my_pipeline()

``kfp`` and ``docker`` are imported where used.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cirl.errors import CirlError

SERVICE_START_TIMEOUT_S = 30.0


def run_container(
    client: Any, image: str, command: list[str], volumes: dict[str, Any], **container_run_args
) -> int:
    """Run one task's container to the end: a drop-in for KFP's ``run_docker_container``.

    Unlike KFP's own, the container is not auto-removed, so its logs and exit status can still
    be read after it exits (podman removes an auto-remove container at once); it is removed
    here afterwards, also when interrupted.

    Args:
        client: a ``docker.DockerClient``.
        image: the image reference (``:latest`` is added when it has no tag, as KFP does);
            pulled when absent.
        command: the container's command (replaces the image's ``CMD``).
        volumes: bind mounts in docker-py's form, ``{host_path: {"bind": path, "mode": "rw"}}``.
        **container_run_args: the runner's other ``containers.run`` arguments (``user``,
            ``environment``, ...); ``auto_remove``, ``remove`` and ``detach`` are overridden.

    Returns:
        The container's exit status.
    """
    import docker
    from kfp.local.docker_task_handler import add_latest_tag_if_not_present

    image = add_latest_tag_if_not_present(image=image)
    try:
        client.images.get(image)
        print(f"Found image {image!r}\n")
    except docker.errors.ImageNotFound:
        print(f"Pulling image {image!r}")
        client.images.pull(image)
        print("Image pull complete\n")
    for key in ("auto_remove", "remove", "detach"):
        container_run_args.pop(key, None)
    container = client.containers.run(
        image=image,
        command=command,
        detach=True,
        stdout=True,
        stderr=True,
        volumes=volumes,
        auto_remove=False,
        **container_run_args,
    )
    try:
        # chunks may split a UTF-8 character; the task's own lines already end with \n
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for chunk in container.logs(stream=True, follow=True):
            print(decoder.decode(chunk), end="", flush=True)
        print(decoder.decode(b"", final=True), end="", flush=True)
        return int(container.wait()["StatusCode"])
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)


def install_exit_status_fix() -> None:
    """Make KFP's ``DockerTaskHandler`` use :func:`run_container` (idempotent, process-wide).

    ``DockerTaskHandler.run`` looks ``run_docker_container`` up in its module when it runs,
    so replacing that module attribute is enough; nothing else of KFP changes.
    """
    from kfp.local import docker_task_handler

    docker_task_handler.run_docker_container = run_container


@contextlib.contextmanager
def exit_status_fix() -> Iterator[None]:
    """:func:`install_exit_status_fix` for a ``with`` block; KFP's own function comes back
    after it."""
    from kfp.local import docker_task_handler

    original = docker_task_handler.run_docker_container
    docker_task_handler.run_docker_container = run_container
    try:
        yield
    finally:
        docker_task_handler.run_docker_container = original


def docker_runner(
    read_only: Sequence[str | os.PathLike] = (),
    read_write: Sequence[str | os.PathLike] = (),
    **container_run_args,
):
    """A ``kfp.local.DockerRunner`` whose tasks report their real exit status and logs.

    Installs :func:`install_exit_status_fix` and checks that the engine at ``DOCKER_HOST``
    (or Docker's default socket) answers. Tasks run as the calling user (``user=uid:gid``)
    unless ``user`` is given, so what they write under the pipeline root belongs to you, as
    with ``SubprocessRunner`` (the image's own user, uid 1000, could not write into a
    pipeline root made by another user).

    KFP mounts only the pipeline root into the tasks' containers: a task that reads a local
    folder outside it (a raw dataset) needs that folder in ``read_only``.

    Args:
        read_only: host folders or files mounted read-only at the same path in every task.
        read_write: host folders mounted writable at the same path (a SQLite tracking store's).
        **container_run_args: ``docker`` ``containers.run`` arguments for every task, as
            ``kfp.local.DockerRunner`` takes them.

    Raises:
        CirlError: when no container engine answers, with how to start podman's service.
    """
    import docker
    from kfp import local

    try:
        client = docker.from_env()
        try:
            client.ping()
        finally:
            client.close()
    except docker.errors.DockerException as exc:
        where = os.environ.get("DOCKER_HOST") or "Docker's default socket"
        raise CirlError(
            f"no container engine answers at {where} ({exc}); start podman's Docker-compatible "
            "service, e.g. `podman system service --time=0 unix:///tmp/podman.sock &` and "
            "`export DOCKER_HOST=unix:///tmp/podman.sock` (see docs/container.md)"
        ) from None
    install_exit_status_fix()
    container_run_args.setdefault("user", f"{os.getuid()}:{os.getgid()}")
    mounts = list(container_run_args.get("mounts", ()))
    for paths, ro in ((read_only, True), (read_write, False)):
        for path in (Path(p).resolve() for p in paths):
            if not path.exists():
                raise CirlError(f"cannot mount {path} into the tasks: it does not exist")
            mounts.append(docker.types.Mount(str(path), str(path), type="bind", read_only=ro))
    if mounts:
        container_run_args["mounts"] = mounts
    return local.DockerRunner(**container_run_args)


class PodmanService:
    """A ``podman system service`` process serving the Docker API on a unix socket.

    Attributes:
        docker_host: the ``DOCKER_HOST`` value that reaches it (``unix:///.../podman.sock``).
        pid: the service's process id.
        log: the file holding the service's own output.
    """

    def __init__(self, process: subprocess.Popen, docker_host: str, log: Path) -> None:
        self.process = process
        self.docker_host = docker_host
        self.pid = process.pid
        self.log = log

    def stop(self, timeout: float = 10.0) -> None:
        """End the service by its pid (SIGTERM, then SIGKILL after ``timeout`` s)."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_podman_service(
    directory: str | os.PathLike,
    *,
    storage_conf: str | os.PathLike | None = None,
    containers_conf: str | os.PathLike | None = None,
    timeout: float = SERVICE_START_TIMEOUT_S,
) -> PodmanService:
    """Start ``podman system service --time=0`` on ``directory/podman.sock`` and wait until it
    answers.

    Args:
        directory: a folder for the socket and the service's log (``podman-service.log``).
        storage_conf: ``CONTAINERS_STORAGE_CONF`` for the service (default: inherited).
        containers_conf: ``CONTAINERS_CONF`` for the service (default: inherited).
        timeout: seconds to wait for the socket to answer.

    Returns:
        The running service; call :meth:`PodmanService.stop` when done.

    Raises:
        CirlError: when podman is missing, or the service exits or does not answer in time
            (the message holds the end of its log).
    """
    import docker

    podman = shutil.which("podman")
    if podman is None:
        raise CirlError("podman is not installed; install it (apt-get install podman)")
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    socket = directory / "podman.sock"
    socket.unlink(missing_ok=True)
    env = dict(os.environ)
    if storage_conf is not None:
        env["CONTAINERS_STORAGE_CONF"] = str(storage_conf)
    if containers_conf is not None:
        env["CONTAINERS_CONF"] = str(containers_conf)
    log = directory / "podman-service.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [podman, "system", "service", "--time=0", f"unix://{socket}"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal goes to us, not to it
        )
    service = PodmanService(process, f"unix://{socket}", log)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            break
        if socket.exists():
            with contextlib.suppress(docker.errors.DockerException):
                client = docker.DockerClient(base_url=service.docker_host, timeout=5)
                try:
                    client.ping()
                    return service
                finally:
                    client.close()
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    service.stop()
    tail = log.read_text(errors="replace")[-2000:].strip()
    raise CirlError(
        f"podman's service on {socket} did not answer within {timeout:.0f} s "
        f"(exit status {process.returncode}); its log ({log}) ends with:\n{tail}"
    )


@contextlib.contextmanager
def podman_service(
    directory: str | os.PathLike,
    *,
    storage_conf: str | os.PathLike | None = None,
    containers_conf: str | os.PathLike | None = None,
) -> Iterator[PodmanService]:
    """:func:`start_podman_service` for a ``with`` block, with ``DOCKER_HOST`` pointing at it
    inside the block (KFP's handler calls ``docker.from_env()``); the service is stopped and
    ``DOCKER_HOST`` restored afterwards."""
    service = start_podman_service(
        directory, storage_conf=storage_conf, containers_conf=containers_conf
    )
    previous = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = service.docker_host
    try:
        yield service
    finally:
        if previous is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = previous
        service.stop()
