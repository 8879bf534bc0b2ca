"""Contract tests for requirements.lock, the pinned environment that `make install` syncs.

The lock (docs/install.md) pins every package of the project's venv with its sha256 hashes:
pyproject.toml's dependencies and dev extra, the CPU build of torch, uv and pip, resolved for
CPython 3.11 on Linux x86_64. These tests read it as text (no network, no uv): every declared
dependency is pinned at a version its specifier allows, every pin carries a hash, torch is the
CPU build, kfp and kfp-kubernetes move together, and the venv that `make install` built holds
exactly what the lock pins.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
TORCH_BUILD = Version("2.13.0+cpu")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")
REFRESH = "refresh it with `make lock` (docs/install.md)"
RESYNC = "re-sync the venv with `make install` (docs/install.md)"


def read_lock(path: Path) -> dict[str, tuple[Requirement, list[str]]]:
    """Parse a hashed requirements file.

    Args:
        path: a file written by `uv pip compile --generate-hashes` (or pip-compile).

    Returns:
        {canonical name: (requirement, its `--hash=sha256:...` options)}, in file order.
    """
    pins: dict[str, tuple[Requirement, list[str]]] = {}
    for line in path.read_text().replace("\\\n", " ").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        assert not line.startswith("-"), f"{path.name}: unexpected option line {line!r}"
        words = line.split()
        options = [w for w in words if w.startswith("--")]
        req = Requirement(" ".join(w for w in words if not w.startswith("--")))
        name = canonicalize_name(req.name)
        assert name not in pins, f"{path.name}: {req.name} is pinned twice"
        pins[name] = (req, [w for w in options if HASH.fullmatch(w)])
    return pins


def pinned_version(req: Requirement) -> Version:
    """The version of a `name==version` pin."""
    (spec,) = req.specifier
    return Version(spec.version)


@pytest.fixture(scope="module")
def lock() -> dict[str, tuple[Requirement, list[str]]]:
    assert LOCK.is_file(), f"{LOCK} is missing: {REFRESH}"
    return read_lock(LOCK)


def declared_requirements() -> list[Requirement]:
    """pyproject.toml's runtime dependencies and its `dev` extra (what `make install` installs)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = project["dependencies"] + project["optional-dependencies"]["dev"]
    return [Requirement(text) for text in texts]


def test_every_pin_is_exact_and_hashed(lock):
    for name, (req, hashes) in lock.items():
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", (
            f"{LOCK.name}: {req} is not pinned to one version (`name==version`): {REFRESH}"
        )
        assert hashes, f"{LOCK.name}: {name}=={specs[0].version} has no --hash=sha256: {REFRESH}"


@pytest.mark.parametrize("req", declared_requirements(), ids=str)
def test_declared_dependency_is_locked_within_its_specifier(lock, req):
    if req.marker is not None and not req.marker.evaluate():
        pytest.skip(f"{req}: not for this platform")
    name = canonicalize_name(req.name)
    assert name in lock, f"pyproject.toml declares {req}, {LOCK.name} does not pin it: {REFRESH}"
    version = pinned_version(lock[name][0])
    assert req.specifier.contains(version, prereleases=True), (
        f"pyproject.toml declares {req}, {LOCK.name} pins {version}: {REFRESH}"
    )


def test_torch_is_the_pinned_cpu_build(lock):
    assert pinned_version(lock["torch"][0]) == TORCH_BUILD, (
        f"{LOCK.name} pins torch {pinned_version(lock['torch'][0])}, expected {TORCH_BUILD} "
        f"(the CPU build; Makefile's TORCH_PIN): {REFRESH}"
    )
    cuda = sorted(n for n in lock if n.startswith(("nvidia-", "triton", "cuda-")))
    assert not cuda, f"{LOCK.name} pins CUDA packages {cuda}: torch must be the CPU build"


def test_kfp_and_kfp_kubernetes_share_one_version(lock):
    kfp, kfp_kubernetes = (pinned_version(lock[n][0]) for n in ("kfp", "kfp-kubernetes"))
    assert kfp == kfp_kubernetes, (
        f"{LOCK.name} pins kfp {kfp} and kfp-kubernetes {kfp_kubernetes}: pin both to one "
        f"version in pyproject.toml, then {REFRESH}"
    )


def test_the_install_tooling_is_locked(lock):
    # `uv pip sync` removes whatever the lock does not pin: uv and pip must be in it to stay.
    missing = {"uv", "pip", "setuptools"} - lock.keys()
    assert not missing, f"{LOCK.name} does not pin {sorted(missing)}: {REFRESH}"


def test_venv_matches_the_lock(lock):
    stamp = Path(sys.prefix) / ".installed"
    if not stamp.is_file():
        pytest.skip(
            f"not running in a venv built by `make install` (no {stamp}): "
            "the installed packages are not compared with the lock"
        )
    installed = {
        canonicalize_name(d.metadata["Name"]): Version(d.version)
        for d in importlib.metadata.distributions()
    }
    differ = [
        f"{name}: locked {pinned_version(req)}, installed {installed.get(name, 'nothing')}"
        for name, (req, _) in lock.items()
        if installed.get(name) != pinned_version(req)
    ]
    assert not differ, f"{sys.prefix} differs from {LOCK.name}: {differ}; {RESYNC}"
    unlocked = sorted(installed.keys() - lock.keys() - {"cirl"})
    assert not unlocked, (
        f"{sys.prefix} holds packages {LOCK.name} does not pin: {unlocked}; declare them in "
        f"pyproject.toml and {REFRESH}, or {RESYNC}"
    )
