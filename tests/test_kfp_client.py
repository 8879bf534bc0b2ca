"""Contract tier of the cluster path: ``cirl pipeline submit`` / ``schedule`` through
``kfp.Client`` against a fake KFP API server on 127.0.0.1.

No Kubeflow cluster can run here, so :class:`FakeKFP` implements the few v2beta1 REST calls
the client makes (healthz, experiments list/create, runs create, recurringruns create), answers
them the way the real API server does (``UseProtoNames`` JSON, int64 as strings, errors as
``{"code", "message"}``), records every request, and rejects what the real server would
reject (unknown fields, a missing display name, a bad trigger). The tests check the exact
request bodies and that each fault ends in one ``error:`` line with exit status 2, fast.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml

from cirl.orchestration import pipeline
from cirl.orchestration.cli import main

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pipelines" / "training.yaml"
DIGEST = "registry.example.com/cirl@sha256:" + "ab" * 32
NOW = "2025-01-01T00:00:00Z"
API = "/apis/v2beta1"

# Fields of the v2beta1 messages the client may send (protojson rejects any other).
EXPERIMENT_FIELDS = {"display_name", "description", "namespace"}
RUN_FIELDS = {
    "display_name",
    "description",
    "experiment_id",
    "pipeline_spec",
    "pipeline_version_reference",
    "runtime_config",
    "service_account",
}
RECURRING_RUN_FIELDS = RUN_FIELDS | {"max_concurrency", "trigger", "mode", "no_catchup"}


class ApiError(Exception):
    """An error answer of the fake server: HTTP status and the gRPC-gateway JSON body."""

    def __init__(self, status: int, code: int, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class FakeKFP:
    """Just enough of the KFP v2beta1 REST API, on 127.0.0.1 in a thread.

    Args:
        mode: ``kfp`` (the API), ``404`` (a host that answers 404 to everything, like a web
            server or an ingress without the pipelines route) or ``login`` (a login page with
            status 200 for every path, like an auth proxy without a session).
        multi_user: answer as a multi-user deployment (listing needs a namespace).
        refuse: a message with which creating runs and recurring runs is refused (HTTP 400).
        token: the bearer token required, answering 403 otherwise like Istio's authorization
            policy in front of a multi-user Kubeflow.
    """

    def __init__(
        self,
        mode: str = "kfp",
        multi_user: bool = False,
        refuse: str | None = None,
        token: str | None = None,
    ):
        self.mode, self.multi_user, self.refuse, self.token = mode, multi_user, refuse, token
        self.requests: list[dict[str, Any]] = []
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.recurring_runs: dict[str, dict] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as urllib3's pool expects

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                fake._serve(self)

            do_POST = do_DELETE = do_PUT = do_PATCH = do_GET  # noqa: N815

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> FakeKFP:
        """Serve in a thread."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def calls(self, method: str, path: str) -> list[dict[str, Any]]:
        """The recorded requests with this method and path."""
        return [r for r in self.requests if r["method"] == method and r["path"] == path]

    # ----- HTTP ------------------------------------------------------------------------------

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        self.requests.append(
            {
                "method": h.command,
                "path": url.path,
                "query": dict(parse_qsl(url.query, keep_blank_values=True)),
                "headers": {k.lower(): v for k, v in h.headers.items()},
                "body": body,
            }
        )
        if self.token and h.headers.get("Authorization") != f"Bearer {self.token}":
            self._send(h, 403, b"RBAC: access denied", "text/plain")
            return
        if self.mode == "404":
            self._send(h, 404, b"404 page not found\n", "text/plain; charset=utf-8")
            return
        if self.mode == "login":
            page = b"<!DOCTYPE html><html><body><form>Log in</form></body></html>"
            self._send(h, 200, page, "text/html; charset=utf-8")
            return
        try:
            status, payload = self._route(h.command, url.path, self.requests[-1]["query"], body)
        except ApiError as exc:
            status = exc.status
            payload = {"error": exc.message, "code": exc.code, "message": exc.message}
        self._send(h, status, json.dumps(payload).encode(), "application/json")

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, data: bytes, content_type: str) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _route(self, method: str, path: str, query: dict, body: Any) -> tuple[int, dict]:
        if (method, path) == ("GET", f"{API}/healthz"):
            return 200, {
                "commit_sha": "0123abc",
                "tag_name": "2.5.0",
                "multi_user": self.multi_user,
                "pipeline_store": "database",
            }
        if (method, path) == ("GET", f"{API}/experiments"):
            return 200, self._list_experiments(query)
        if (method, path) == ("POST", f"{API}/experiments"):
            return 200, self._create_experiment(body)
        if (method, path) == ("POST", f"{API}/runs"):
            return 200, self._create_run(body)
        if (method, path) == ("POST", f"{API}/recurringruns"):
            return 200, self._create_recurring_run(body)
        raise ApiError(404, 5, "Not Found")

    # ----- the API ---------------------------------------------------------------------------

    @staticmethod
    def _check_fields(body: Any, allowed: set[str], kind: str) -> dict:
        if not isinstance(body, dict):
            raise ApiError(400, 3, f"{kind}: the request body is not a JSON object")
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise ApiError(400, 3, f'proto: unknown field "{unknown[0]}"')
        return body

    def _list_experiments(self, query: dict) -> dict:
        if self.multi_user and not query.get("namespace"):
            raise ApiError(
                400,
                3,
                "Invalid input error: In multi-user mode, ListExperiment requires "
                "filter by namespace.",
            )
        found = list(self.experiments.values())
        if query.get("namespace"):
            found = [e for e in found if e.get("namespace") == query["namespace"]]
        if query.get("filter"):
            for p in json.loads(query["filter"])["predicates"]:
                # protojson takes an enum as its number or its name
                assert p["operation"] in (1, "EQUALS"), p
                value = p.get("stringValue", p.get("string_value"))
                found = [e for e in found if e.get(p["key"]) == value]
        # EmitUnpopulated is off: an empty list is an empty object
        return {"experiments": found, "total_size": len(found)} if found else {}

    def _create_experiment(self, body: Any) -> dict:
        body = self._check_fields(body, EXPERIMENT_FIELDS, "experiment")
        if not body.get("display_name"):
            raise ApiError(400, 3, "Invalid input error: Experiment must have a non-empty name")
        if self.multi_user and not body.get("namespace"):
            raise ApiError(400, 3, "Invalid input error: Experiment namespace is empty")
        experiment = {
            "experiment_id": str(uuid.uuid4()),
            "display_name": body["display_name"],
            "created_at": NOW,
            "last_run_created_at": "1970-01-01T00:00:00Z",
            "storage_state": "AVAILABLE",
        } | ({"namespace": body["namespace"]} if body.get("namespace") else {})
        self.experiments[experiment["experiment_id"]] = experiment
        return experiment

    def _check_run(self, body: dict, kind: str) -> None:
        if not body.get("display_name"):
            raise ApiError(400, 3, f"Invalid input error: {kind} name cannot be empty")
        if body.get("experiment_id") and body["experiment_id"] not in self.experiments:
            raise ApiError(404, 5, f"Experiment {body['experiment_id']} not found")
        spec = body.get("pipeline_spec")
        if not spec:
            raise ApiError(400, 3, f"Invalid input error: {kind} has no pipeline spec")
        spec = spec.get("pipeline_spec", spec)  # {pipeline_spec, platform_spec} or the spec
        if "pipelineInfo" not in spec or "root" not in spec:
            raise ApiError(400, 3, "Invalid input error: not a pipeline spec")
        # every run-time parameter must be an input of the pipeline; required ones given
        inputs = spec["root"].get("inputDefinitions", {}).get("parameters", {})
        given = (body.get("runtime_config") or {}).get("parameters") or {}
        unknown = sorted(set(given) - set(inputs))
        if unknown:
            raise ApiError(400, 3, f"Invalid input error: unknown parameter {unknown[0]}")
        for name, definition in inputs.items():
            required = "defaultValue" not in definition and not definition.get("isOptional")
            if required and name not in given:
                raise ApiError(400, 3, f"Invalid input error: {name} is required")
        if self.refuse:
            raise ApiError(400, 3, self.refuse)

    def _create_run(self, body: Any) -> dict:
        body = self._check_fields(body, RUN_FIELDS, "run")
        self._check_run(body, "Run")
        run = body | {
            "run_id": str(uuid.uuid4()),
            "storage_state": "AVAILABLE",
            "service_account": body.get("service_account") or "pipeline-runner",
            "created_at": NOW,
            "scheduled_at": NOW,
            "finished_at": "1970-01-01T00:00:00Z",
            "state": "PENDING",
            "state_history": [{"update_time": NOW, "state": "PENDING"}],
        }
        self.runs[run["run_id"]] = run
        return run

    def _create_recurring_run(self, body: Any) -> dict:
        body = self._check_fields(body, RECURRING_RUN_FIELDS, "recurring run")
        self._check_run(body, "Recurring run")
        trigger = body.get("trigger") or {}
        if len(trigger) != 1 or not ({"cron_schedule", "periodic_schedule"} & set(trigger)):
            raise ApiError(400, 3, "Invalid input error: exactly one trigger is needed")
        if "cron_schedule" in trigger and len(trigger["cron_schedule"]["cron"].split()) != 6:
            raise ApiError(400, 3, "Invalid input error: the cron schedule needs six fields")
        # int64 in protojson: a number or a decimal string; KFP allows 1 to 10
        concurrency = body.get("max_concurrency", 1)
        if isinstance(concurrency, bool) or not str(concurrency).isdigit():
            raise ApiError(400, 3, f"proto: invalid value for int64 field: {concurrency!r}")
        if not 1 <= int(concurrency) <= 10:
            raise ApiError(400, 3, "Invalid input error: max concurrency must be 1 to 10")
        if body.get("mode", "MODE_UNSPECIFIED") not in ("ENABLE", "DISABLE", "MODE_UNSPECIFIED"):
            raise ApiError(400, 3, f"proto: invalid value for enum field mode: {body['mode']}")
        job = body | {
            "recurring_run_id": str(uuid.uuid4()),
            "max_concurrency": str(int(concurrency)),  # int64 is written as a string
            "service_account": body.get("service_account") or "pipeline-runner",
            "created_at": NOW,
            "updated_at": NOW,
            "status": "ENABLED" if body.get("mode") != "DISABLE" else "DISABLED",
        }
        self.recurring_runs[job["recurring_run_id"]] = job
        return job


# ----- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No endpoint, token or kfp context of this machine leaks in; record kfp's retry sleeps."""
    import kfp.client.client as kfp_client

    for name in (
        "KFP_HOST",
        "KFP_TOKEN",
        "KF_PIPELINES_ENDPOINT",
        "KF_PIPELINES_UI_ENDPOINT",
        "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME",
        "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME",
        "KF_PIPELINES_IAP_OAUTH2_CLIENT_ID",
        "KF_PIPELINES_APP_OAUTH2_CLIENT_ID",
        "KF_PIPELINES_APP_OAUTH2_CLIENT_SECRET",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(kfp_client.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "context.json"))
    sleeps: list[float] = []
    monkeypatch.setattr(kfp_client.time, "sleep", sleeps.append)
    yield
    # kfp retries a failed health check 5 times, 5 s apart: a wrong host would take 25 s
    assert not sleeps, f"the client slept between retries: {sleeps}"


@pytest.fixture
def kfp_server():
    """A fake KFP API server on 127.0.0.1, stopped after the test."""
    server = FakeKFP().start()
    yield server
    server.stop()


@pytest.fixture
def serve():
    """Start fake servers of any kind (``serve(mode=..., ...)``); all stopped after the test."""
    servers: list[FakeKFP] = []

    def start(**kwargs) -> FakeKFP:
        servers.append(FakeKFP(**kwargs).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def cirl(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``cirl ARGV``; returns the exit status, stdout and stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def submit_args(host: str, *extra: str) -> list[str]:
    """``pipeline submit`` with a source, a fixed code version and ``extra`` options."""
    return [
        "pipeline",
        "submit",
        "--source",
        "s3://bucket/raw",
        "--host",
        host,
        "--code-version",
        "test-1",
        *extra,
    ]


def schedule_args(host: str, *extra: str) -> list[str]:
    """``pipeline schedule`` every day at 02:00 with a source and ``extra`` options."""
    return [
        "pipeline",
        "schedule",
        "--source",
        "s3://bucket/raw",
        "--host",
        host,
        "--cron",
        "0 0 2 * * *",
        "--code-version",
        "test-1",
        *extra,
    ]


def package_docs(path: Path = PACKAGE) -> list[dict]:
    """The package's YAML documents: the pipeline spec and the platform spec."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def assert_one_error_line(code: int, out: str, err: str, *needles: str) -> str:
    """Exit status 2, nothing on stdout, one ``error:`` line on stderr holding ``needles``."""
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2, err
    assert out == ""
    assert len(errors) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


# ----- submit -----------------------------------------------------------------------------------


def test_submit_creates_the_experiment_once_and_sends_the_package(kfp_server, capsys):
    """First submit: look up the experiment by name, create it, start the run with the spec,
    the platform spec, the parameters, the experiment id and the run name; the second submit
    finds the experiment and creates no other."""
    code, out, err = cirl(
        capsys,
        *submit_args(kfp_server.url, "--experiment", "cracks", "--run-name", "first"),
        "--set",
        "train.epochs=3",
        "--set",
        "select.gamma=0.3",
    )
    assert code == 0, err
    result = json.loads(out)

    lookups = kfp_server.calls("GET", f"{API}/experiments")
    assert lookups, "the experiment was not looked up by name"
    assert json.loads(lookups[0]["query"]["filter"]) == {
        "predicates": [{"operation": 1, "key": "display_name", "stringValue": "cracks"}]
    }
    (create,) = kfp_server.calls("POST", f"{API}/experiments")
    assert create["body"] == {"display_name": "cracks", "namespace": ""}
    (experiment_id,) = kfp_server.experiments

    (run,) = kfp_server.calls("POST", f"{API}/runs")
    body = run["body"]
    assert set(body) == {"display_name", "experiment_id", "pipeline_spec", "runtime_config"}
    assert body["display_name"] == "first"
    assert body["experiment_id"] == experiment_id
    spec, platform = package_docs()
    assert body["pipeline_spec"] == {"pipeline_spec": spec, "platform_spec": platform}
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "cirl-training"
    kubernetes = body["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]
    train = kubernetes["deploymentSpec"]["executors"]["exec-train-phase1"]
    assert train["secretAsEnv"][0]["secretName"] == "cirl-credentials"
    assert train["secretAsEnv"][0]["optional"] is True
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in train[
        "tolerations"
    ]
    overrides = {"train": {"epochs": 3}, "select": {"gamma": 0.3}}
    assert body["runtime_config"] == {
        "parameters": {
            "source": "s3://bucket/raw",
            # a group named in --set: the package's compiled defaults plus the overrides
            "train_params": pipeline.stage_arguments(None, overrides, PACKAGE)["train_params"],
            "select_params": pipeline.stage_arguments(None, overrides, PACKAGE)["select_params"],
            "code_version": "test-1",
        }
    }
    assert body["runtime_config"]["parameters"]["train_params"]["epochs"] == 3
    assert body["runtime_config"]["parameters"]["select_params"]["gamma"] == 0.3
    (run_id,) = kfp_server.runs
    assert result == {
        "run_id": run_id,
        "experiment_id": experiment_id,
        "run_name": "first",
        "url": f"{kfp_server.url}/#/runs/details/{run_id}",
    }

    # again: the experiment is found by name, not created twice
    code, out, err = cirl(
        capsys, *submit_args(kfp_server.url, "--experiment", "cracks", "--run-name", "second")
    )
    assert code == 0, err
    assert len(kfp_server.calls("POST", f"{API}/experiments")) == 1
    second = kfp_server.calls("POST", f"{API}/runs")[-1]["body"]
    assert second["experiment_id"] == experiment_id
    assert second["display_name"] == "second"
    assert json.loads(out)["experiment_id"] == experiment_id


def test_submit_sends_every_group_of_a_params_file_and_a_default_run_name(
    kfp_server, tmp_path, capsys
):
    """``--params``: every stage group resolved from the file, ``--set`` over it; no run name
    given: ``cirl-training`` and the time."""
    params = tmp_path / "params.yaml"
    groups = yaml.safe_load((REPO / "params.yaml").read_text())
    groups["evaluate"]["tolerance"] = 2
    params.write_text(yaml.safe_dump(groups))

    code, out, err = cirl(
        capsys, *submit_args(kfp_server.url, "--params", str(params), "--set", "train.lr=0.01")
    )
    assert code == 0, err
    parameters = kfp_server.calls("POST", f"{API}/runs")[0]["body"]["runtime_config"]["parameters"]
    expected = pipeline.stage_arguments(params, {"train": {"lr": 0.01}})
    assert set(expected) == {f"{g}_params" for g in pipeline.STAGE_GROUPS}
    assert parameters == {"source": "s3://bucket/raw", "code_version": "test-1", **expected}
    assert parameters["evaluate_params"]["tolerance"] == 2
    assert parameters["train_params"]["lr"] == 0.01
    name = kfp_server.calls("POST", f"{API}/runs")[0]["body"]["display_name"]
    assert name.startswith("cirl-training 20"), name
    assert json.loads(out)["run_name"] == name


def test_image_option_replaces_every_executor_image(kfp_server, capsys):
    """``--image`` with a digest: every executor of the submitted spec runs on it, the rest of
    the spec is the package's; no warning."""
    code, _, err = cirl(capsys, *submit_args(kfp_server.url, "--image", DIGEST))
    assert code == 0, err
    assert "warning" not in err
    sent = kfp_server.calls("POST", f"{API}/runs")[0]["body"]["pipeline_spec"]
    executors = sent["pipeline_spec"]["deploymentSpec"]["executors"]
    assert len(executors) >= 6
    assert {e["container"]["image"] for e in executors.values()} == {DIGEST}

    spec, platform = package_docs()
    for executor in spec["deploymentSpec"]["executors"].values():
        executor["container"]["image"] = DIGEST
    assert sent == {"pipeline_spec": spec, "platform_spec": platform}


def test_image_by_tag_is_sent_with_a_warning(kfp_server, capsys):
    """A tag reference works but warns: KFP's cache would reuse outputs of a re-pushed tag."""
    code, _, err = cirl(capsys, *submit_args(kfp_server.url, "--image", "registry/cirl:v1"))
    assert code == 0, err
    assert "warning: image 'registry/cirl:v1' is referenced by tag" in err
    executors = kfp_server.calls("POST", f"{API}/runs")[0]["body"]["pipeline_spec"][
        "pipeline_spec"
    ]["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"registry/cirl:v1"}


def test_token_is_sent_as_a_bearer_header(kfp_server, monkeypatch, capsys):
    """``--token`` (or ``$KFP_TOKEN``) goes on every request as ``Authorization: Bearer``;
    without one, no Authorization header at all."""
    code, _, err = cirl(capsys, *submit_args(kfp_server.url, "--token", "s3cr3t"))
    assert code == 0, err
    assert kfp_server.requests
    assert {r["headers"].get("authorization") for r in kfp_server.requests} == {"Bearer s3cr3t"}

    kfp_server.requests.clear()
    monkeypatch.setenv("KFP_TOKEN", "from-env")
    assert cirl(capsys, *submit_args(kfp_server.url))[0] == 0
    assert {r["headers"].get("authorization") for r in kfp_server.requests} == {"Bearer from-env"}

    kfp_server.requests.clear()
    monkeypatch.delenv("KFP_TOKEN")
    assert cirl(capsys, *submit_args(kfp_server.url))[0] == 0
    assert all("authorization" not in r["headers"] for r in kfp_server.requests)


def test_host_from_the_environment(kfp_server, monkeypatch, capsys):
    """No ``--host``: ``$KFP_HOST``."""
    monkeypatch.setenv("KFP_HOST", kfp_server.url + "/")
    args = [a for a in submit_args("unused") if a not in ("--host", "unused")]
    code, out, err = cirl(capsys, *args)
    assert code == 0, err
    assert json.loads(out)["run_id"] in kfp_server.runs


def test_namespace_goes_to_the_experiment_in_a_multi_user_deployment(serve, capsys):
    """Multi-user KFP: without ``--namespace`` the lookup is refused with a hint; with it, the
    experiment is looked up and created in that namespace."""
    server = serve(multi_user=True)
    code, out, err = cirl(capsys, *submit_args(server.url))
    assert_one_error_line(code, out, err, "In multi-user mode", "--namespace")
    assert not server.calls("POST", f"{API}/runs")

    code, out, err = cirl(capsys, *submit_args(server.url, "--namespace", "team-a"))
    assert code == 0, err
    assert server.calls("GET", f"{API}/experiments")[-1]["query"]["namespace"] == "team-a"
    (create,) = server.calls("POST", f"{API}/experiments")
    assert create["body"] == {"display_name": "cirl", "namespace": "team-a"}


# ----- schedule ---------------------------------------------------------------------------------


def test_schedule_sends_a_six_field_cron_one_at_a_time_without_catchup(kfp_server, capsys):
    """The recurring run: cron in trigger.cron_schedule, max_concurrency 1 (an int64: kfp
    sends the number, the server answers the string), no catch-up, enabled, the spec and
    parameters of the package, and KFP's cache off for the DAG's top-level tasks (the same
    arguments every night would otherwise reuse the first night's outputs forever)."""
    code, out, err = cirl(
        capsys,
        *schedule_args(kfp_server.url, "--name", "nightly", "--image", DIGEST),
        "--set",
        "train.epochs=4",
    )
    assert code == 0, err
    (call,) = kfp_server.calls("POST", f"{API}/recurringruns")
    body = call["body"]
    (experiment_id,) = kfp_server.experiments
    spec, platform = package_docs()
    for executor in spec["deploymentSpec"]["executors"].values():
        executor["container"]["image"] = DIGEST
    for task in spec["root"]["dag"]["tasks"].values():
        task["cachingOptions"] = {}  # enableCache false, which protojson leaves out
    assert body == {
        "display_name": "nightly",
        "experiment_id": experiment_id,
        "mode": "ENABLE",
        "trigger": {"cron_schedule": {"cron": "0 0 2 * * *"}},
        "max_concurrency": 1,
        "no_catchup": True,
        "pipeline_spec": {"pipeline_spec": spec, "platform_spec": platform},
        "runtime_config": {
            "parameters": {
                "source": "s3://bucket/raw",
                "train_params": pipeline.stage_arguments(None, {"train": {"epochs": 4}}, PACKAGE)[
                    "train_params"
                ],
                "code_version": "test-1",
            }
        },
    }
    (job_id,) = kfp_server.recurring_runs
    assert kfp_server.recurring_runs[job_id]["max_concurrency"] == "1"
    assert json.loads(out) == {
        "recurring_run_id": job_id,
        "experiment_id": experiment_id,
        "cron": "0 0 2 * * *",
        "max_concurrency": 1,
        "no_catchup": True,
        "enable_caching": False,
    }
    assert not kfp_server.calls("POST", f"{API}/runs")


def test_five_field_cron_is_refused_before_any_request(kfp_server, capsys):
    """Unix cron (five fields) would shift every field by one on KFP: refused up front."""
    args = schedule_args(kfp_server.url)
    args[args.index("0 0 2 * * *")] = "0 2 * * *"
    code, out, err = cirl(capsys, *args)
    assert_one_error_line(code, out, err, "'0 2 * * *' has 5 fields", "six", "'0 0 2 * * *'")
    assert kfp_server.requests == []


# ----- faults -----------------------------------------------------------------------------------


def test_unreachable_endpoint(capsys):
    """A closed port: one error line naming the host (no retry loop: see ``_isolated``)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    host = f"http://127.0.0.1:{port}"
    code, out, err = cirl(capsys, *submit_args(host))
    assert_one_error_line(code, out, err, host, "Connection refused", "--host")


@pytest.mark.parametrize(
    ("mode", "needles"),
    [
        ("404", ("HTTP 404", "/apis/v2beta1/healthz", "--host")),
        ("login", ("text/html", "not KFP's JSON", "--token")),
    ],
)
def test_a_host_that_is_not_kfp(serve, capsys, mode, needles):
    """A server that answers 404 to everything, or a login page to everything: one error line
    after one health check, no experiment or run requested."""
    server = serve(mode=mode)
    code, out, err = cirl(capsys, *submit_args(server.url))
    assert_one_error_line(code, out, err, server.url, *needles)
    assert [r["path"] for r in server.requests] == [f"{API}/healthz"]  # asked once


def test_refused_credentials(serve, capsys):
    """An endpoint that wants another token: one error line with the answer and the fix."""
    server = serve(token="right")
    code, out, err = cirl(capsys, *submit_args(server.url, "--token", "wrong"))
    assert_one_error_line(
        code, out, err, server.url, "HTTP 403", "RBAC: access denied", "--token / KFP_TOKEN"
    )
    assert len(server.requests) == 1
    assert cirl(capsys, *submit_args(server.url, "--token", "right"))[0] == 0


def test_missing_host(capsys):
    """Neither ``--host`` nor ``$KFP_HOST``."""
    args = [a for a in submit_args("unused") if a not in ("--host", "unused")]
    code, out, err = cirl(capsys, *args)
    assert_one_error_line(code, out, err, "--host", "KFP_HOST")


def test_host_without_scheme(kfp_server, capsys):
    """``127.0.0.1:PORT`` (no http://) is refused before any request."""
    host = kfp_server.url.removeprefix("http://")
    code, out, err = cirl(capsys, *submit_args(host))
    assert_one_error_line(code, out, err, repr(host), "http://")
    assert kfp_server.requests == []


@pytest.mark.parametrize("verb", ["submit", "schedule"])
def test_refused_run_shows_the_server_message(serve, capsys, verb):
    """HTTP 400 on the run (or the recurring run): the server's message in the error line."""
    message = "Invalid input error: pipeline spec is too large for this deployment"
    server = serve(refuse=message)
    args = submit_args(server.url) if verb == "submit" else schedule_args(server.url)
    code, out, err = cirl(capsys, *args)
    assert_one_error_line(code, out, err, "HTTP 400", message)
