# The project's one image: the cirl package, its pinned dependencies and kfp, in a venv at
# /opt/venv whose bin/ comes first on PATH (so `python3 -m kfp.dsl.executor_main`, which KFP's
# lightweight components run with install_kfp_package=False, sees everything). No ENTRYPOINT:
# KFP and Kubernetes run a task by replacing the command, and the Docker API (KFP's local
# DockerRunner) replaces only CMD, so an ENTRYPOINT would be prepended to every task's command.
#
# CPU (default; on a machine with a local wheel folder, see docs/container.md):
#   podman build -t cirl:cpu .
# GPU nodes (torch's CUDA build from PyTorch's index, which brings its CUDA runtime wheels):
#   podman build -t cirl:cu128 --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# On a CUDA base (Ubuntu 24.04's Python is 3.12, not the lock's 3.11) add DEPS=pyproject:
#   podman build -t cirl:cu128 --build-arg BASE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 --build-arg DEPS=pyproject .
# Behind a TLS-intercepting proxy (the CA is used by pip only, never copied into the image):
#   podman build -v /path/to/proxy-ca.crt:/run/extra-ca.crt:ro \
#     --build-arg EXTRA_CA=/run/extra-ca.crt .

ARG BASE=python:3.11-slim
FROM ${BASE}

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/cirl \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Python (the base's own if it has one with venv, e.g. python:3.11-slim; Debian's or Ubuntu's
# python3 otherwise), a venv for everything else, and the non-root user the tasks run as (uid
# 1000; Ubuntu 24.04 bases already have a user "ubuntu" with that uid, replaced here).
RUN set -eu; \
    if ! python3 -m venv /opt/venv >/dev/null 2>&1; then \
        rm -rf /opt/venv; \
        apt-get update -q; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            python3 python3-venv ca-certificates; \
        rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb; \
        python3 -m venv /opt/venv; \
    fi; \
    python -c 'import sys; assert sys.version_info >= (3, 11), f"cirl needs Python >= 3.11, the base has {sys.version.split()[0]}: choose another BASE"'; \
    old_user=$(getent passwd 1000 | cut -d: -f1); \
    if [ -n "$old_user" ]; then userdel "$old_user"; rm -rf "/home/$old_user"; fi; \
    useradd --uid 1000 --user-group --create-home --home-dir /home/cirl --shell /bin/sh cirl

# torch first, in its own layer: pinned, CPU by default. TORCH_INDEX is an extra index (PyTorch's
# CPU or CUDA wheels; empty: PyPI only, whose torch is a multi-GB CUDA build), FIND_LINKS a
# local wheel folder mounted into the build (-v /opt/wheels:/opt/wheels:ro). EXTRA_CA: a CA
# bundle mounted into the build, added to pip's own for this step only.
ARG TORCH=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG FIND_LINKS=
ARG EXTRA_CA=
RUN set -eu; \
    if [ -n "$EXTRA_CA" ]; then \
        cat "$(python -c 'from pip._vendor import certifi; print(certifi.where())')" "$EXTRA_CA" > /tmp/pip-ca.pem; \
        export PIP_CERT=/tmp/pip-ca.pem; \
    fi; \
    pip install -q --upgrade pip 'setuptools>=77'; \
    pip install -q ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} ${FIND_LINKS:+--find-links "$FIND_LINKS"} "$TORCH"; \
    rm -f /tmp/pip-ca.pem

# The dependencies: by default exactly requirements.lock (every package, version and sha256 the
# tests ran with; the dev tools included, so the image is the CI's venv), torch held where the
# layer above put it. DEPS=pyproject resolves pyproject.toml's ranges afresh instead: for a base
# whose Python is not the lock's (CPython 3.11, x86-64), such as the CUDA base above; that image
# is not reproducible (`pip freeze` in it says what it got). Rebuilt only when these files change.
ARG DEPS=lock
COPY pyproject.toml requirements.lock /tmp/cirl/
RUN set -eu; \
    if [ -n "$EXTRA_CA" ]; then \
        cat "$(python -c 'from pip._vendor import certifi; print(certifi.where())')" "$EXTRA_CA" > /tmp/pip-ca.pem; \
        export PIP_CERT=/tmp/pip-ca.pem; \
    fi; \
    cd /tmp/cirl; \
    pip freeze | grep -i '^torch==' > constraints.txt; \
    case "$DEPS" in \
    lock) \
        python -c "import re, sys; blocks = re.split(r'\n(?=[A-Za-z0-9])', open('requirements.lock').read()); keep = [b for b in blocks if re.match(r'[A-Za-z0-9]', b) and b.split('==')[0].lower() not in ('torch', 'pip', 'uv')]; open('image.txt', 'w').write('\n'.join(keep) + '\n')"; \
        pip install -q --no-deps --require-hashes ${FIND_LINKS:+--find-links "$FIND_LINKS"} -r image.txt; \
        pip check ;; \
    pyproject) \
        python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt; \
        pip install -q ${FIND_LINKS:+--find-links "$FIND_LINKS"} -r requirements.txt -c constraints.txt ;; \
    *) echo "DEPS must be lock or pyproject, got '$DEPS'" >&2; exit 1 ;; \
    esac; \
    cd /; rm -rf /tmp/cirl /tmp/pip-ca.pem

# The package itself, without dependencies and without network (setuptools is in the venv).
COPY --chown=root:root pyproject.toml README.md /src/cirl/
COPY --chown=root:root src /src/cirl/src
RUN pip install -q --no-deps --no-build-isolation /src/cirl && rm -rf /src/cirl && cirl --version

USER cirl
WORKDIR /home/cirl
CMD ["cirl", "--help"]
