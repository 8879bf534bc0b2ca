"""``cirl pipeline submit`` and ``schedule``: the compiled pipeline sent to a KFP endpoint, with
the endpoint's errors said in one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from cirl.errors import CirlError, first_line
from cirl.orchestration.package import load_package


def client(host: str | None, namespace: str | None = None, token: str | None = None):
    """A ``kfp.Client`` for ``host`` (or ``$KFP_HOST``), checked to answer as a KFP endpoint.

    Auth: ``token`` (or ``$KFP_TOKEN``) as a bearer token; otherwise kfp's own defaults
    (in-cluster service account, ``~/.config/kfp/context.json``). One health check, with a
    timeout: ``kfp.Client`` on its own retries it 5 times, 5 s apart, even on a 404.

    Raises:
        CirlError: naming the host when none is given, it cannot be reached, it answers with
            an HTTP error or with something that is not KFP's JSON (a login page).
    """
    import logging
    import warnings

    import kfp_server_api
    import urllib3

    host = host or os.environ.get("KFP_HOST")
    if not host:
        raise CirlError(
            "no KFP endpoint: pass --host https://kubeflow.example.com/pipeline or set KFP_HOST"
        )
    if not host.startswith(("http://", "https://")):
        raise CirlError(f"KFP host {host!r} must start with http:// or https://")
    host = host.rstrip("/")
    token = token or os.environ.get("KFP_TOKEN")
    healthz = f"{host}/apis/v2beta1/healthz"
    hint = (
        "check --host / KFP_HOST: the pipelines API, e.g. https://kubeflow.example.com/pipeline, "
        "or http://localhost:8080 through `kubectl port-forward -n kubeflow svc/ml-pipeline-ui "
        "8080:80`"
    )

    Client = _checked_client(host, healthz, hint)

    # urllib3 logs each retry of a refused connection; the error below says it once
    connection_log = logging.getLogger("urllib3.connectionpool")
    level = connection_log.level
    if not connection_log.isEnabledFor(logging.DEBUG):
        connection_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "This client only works", FutureWarning)
            kfp_client = Client(host=host, namespace=namespace or "kubeflow", existing_token=token)
            kfp_client.get_kfp_healthz()
    except CirlError:
        raise
    except kfp_server_api.ApiException as exc:
        raise _refused(exc, host, healthz, hint) from None
    except urllib3.exceptions.HTTPError as exc:  # refused, unknown name, timeout
        reason = str(getattr(exc, "reason", None) or exc).split(">: ")[-1]
        raise CirlError(f"cannot reach the KFP endpoint {host} ({reason}); {hint}") from None
    except Exception as exc:  # kfp's own config loading raises many types
        raise CirlError(f"KFP endpoint {host}: {_api_error(exc)}; {hint}") from None
    finally:
        connection_log.setLevel(level)
    return kfp_client


def _checked_client(host: str, healthz: str, hint: str) -> type:
    """``kfp.Client`` whose health check asks once and wants KFP's JSON back."""
    import kfp
    import kfp_server_api

    class Client(kfp.Client):
        """``kfp.Client`` whose health check asks once and wants KFP's JSON back."""

        checked = None

        def get_kfp_healthz(self, sleep_duration: int = 0):
            if self.checked is None:
                response = self._healthz_api.healthz_service_get_healthz(
                    _preload_content=False, _request_timeout=(10, 30)
                )
                try:
                    body = json.loads(response.data)
                except ValueError:
                    body = None
                if not isinstance(body, dict):
                    kind = response.headers.get("Content-Type") or "no content type"
                    raise CirlError(
                        f"{healthz} answered {kind}, not KFP's JSON: {host} is not a KFP "
                        "endpoint, or it wants a login (an auth proxy's page): give a token "
                        f"with --token / KFP_TOKEN; {hint}"
                    )
                self.checked = kfp_server_api.V2beta1GetHealthzResponse(
                    multi_user=body.get("multi_user")
                )
            return self.checked

    return Client


def _refused(exc: Any, host: str, healthz: str, hint: str) -> CirlError:
    """The endpoint's HTTP error (or a TLS failure before any answer) as one sentence."""
    if not exc.status:  # a TLS failure, raised before any answer
        return CirlError(f"cannot reach the KFP endpoint {host} ({_api_error(exc)}); {hint}")
    if exc.status in (401, 403):
        why = (
            f"refused the credentials ({_api_error(exc)}): pass a bearer token with "
            "--token / KFP_TOKEN"
        )
    elif exc.status == 404:
        why = f"has no KFP API: {healthz} answered HTTP 404; {hint}"
    else:
        why = f"answered its health check with {_api_error(exc)}; {hint}"
    return CirlError(f"KFP endpoint {host} {why}")


def _api_error(exc: BaseException) -> str:
    """One line for an exception from ``kfp.Client``: for an HTTP error, the status and the
    server's own message (KFP answers ``{"code": 3, "message": "..."}``)."""
    status = getattr(exc, "status", None)
    if not status:  # no HTTP answer: kfp's ApiException(status=0) holds the cause as text
        reason = getattr(exc, "reason", None)
        if isinstance(reason, str) and reason.strip():
            return " ".join(reason.split())[:300]
        return f"{type(exc).__name__}: {first_line(exc)}"
    body = getattr(exc, "body", None) or ""
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    try:
        answer = json.loads(body)
        message = answer.get("message") or answer.get("error") or ""
    except (ValueError, AttributeError):
        message = "" if body.lstrip().startswith("<") else body  # an HTML page says nothing
    message = " ".join(str(message).split())[:500]
    return f"HTTP {status} {getattr(exc, 'reason', '') or ''}".strip() + (
        f": {message}" if message else ""
    )


def _experiment_id(kfp_client, experiment: str, namespace: str | None) -> str:
    """The id of the experiment named ``experiment``, created if absent.

    Raises:
        CirlError: when the endpoint refuses to list or create experiments, or holds several
            of that name.
    """
    try:
        # kfp prints the experiment's link; stdout is for the command's JSON
        with contextlib.redirect_stdout(sys.stderr):
            try:
                found = kfp_client.get_experiment(experiment_name=experiment, namespace=namespace)
            except ValueError as exc:
                if not str(exc).startswith("No experiment is found"):
                    raise CirlError(f"{exc} Pass another --experiment.") from None
                found = kfp_client.create_experiment(name=experiment, namespace=namespace)
    except CirlError:
        raise
    except Exception as exc:
        hint = "" if namespace else "; a multi-user deployment needs --namespace"
        raise CirlError(
            f"KFP endpoint refused to find or create the experiment {experiment!r} "
            f"({_api_error(exc)}){hint}"
        ) from None
    return found.experiment_id


def submit(
    package: str | os.PathLike,
    arguments: Mapping[str, Any],
    host: str | None = None,
    experiment: str = "cirl",
    run_name: str | None = None,
    namespace: str | None = None,
    token: str | None = None,
) -> dict:
    """Start one run of the package on a KFP endpoint; returns its id and URL.

    Raises:
        CirlError: with the endpoint's own message when it refuses the run.
    """
    load_package(package)
    kfp_client = client(host, namespace, token)
    experiment_id = _experiment_id(kfp_client, experiment, namespace)
    name = run_name or f"cirl-training {time.strftime('%Y-%m-%d %H:%M:%S')}"
    try:
        with contextlib.redirect_stdout(sys.stderr):  # kfp prints the run's link
            result = kfp_client.create_run_from_pipeline_package(
                str(package),
                arguments=dict(arguments),
                run_name=name,
                experiment_id=experiment_id,
                namespace=namespace,
                enable_caching=None,
            )
    except Exception as exc:
        raise CirlError(f"KFP endpoint refused the run ({_api_error(exc)})") from None
    url = (host or os.environ.get("KFP_HOST", "")).rstrip("/")
    return {
        "run_id": result.run_id,
        "experiment_id": experiment_id,
        "run_name": name,
        "url": f"{url}/#/runs/details/{result.run_id}",
    }


def schedule(
    package: str | os.PathLike,
    arguments: Mapping[str, Any],
    cron: str,
    host: str | None = None,
    experiment: str = "cirl",
    job_name: str = "cirl-training-scheduled",
    namespace: str | None = None,
    token: str | None = None,
) -> dict:
    """A recurring run on a six-field cron schedule (seconds first), one at a time, no catch-up.

    KFP's cache is off for the scheduled runs: every run has the same arguments (the same
    ``source`` URI and ``code_version``), so with the cache each run after the first would
    reuse the first run's outputs and never see new photos under ``source``.

    Raises:
        CirlError: on a cron expression without six fields, or an endpoint that refuses it.
    """
    fields = cron.split()
    if len(fields) != 6:
        raise CirlError(
            f"--cron {cron!r} has {len(fields)} fields; KFP wants six, seconds first: "
            "'0 0 2 * * *' is every day at 02:00"
        )
    load_package(package)
    kfp_client = client(host, namespace, token)
    experiment_id = _experiment_id(kfp_client, experiment, namespace)
    try:
        job = kfp_client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=job_name,
            cron_expression=cron,
            max_concurrency=1,
            no_catchup=True,
            params=dict(arguments),
            pipeline_package_path=str(package),
            enabled=True,
            enable_caching=False,
        )
    except Exception as exc:
        raise CirlError(f"KFP endpoint refused the schedule ({_api_error(exc)})") from None
    return {
        "recurring_run_id": job.recurring_run_id,
        "experiment_id": experiment_id,
        "cron": cron,
        "max_concurrency": 1,
        "no_catchup": True,
        "enable_caching": False,
    }
