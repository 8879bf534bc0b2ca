"""This machine: its CPU as runs record it, and the choices measured on it, kept per setting.

Two choices are made by timing on the machine itself and kept in ``$XDG_CACHE_HOME/cirl/``: the
training arithmetic (:mod:`cirl.method.arithmetic`, ``train-arithmetic.json``) and the inference
engine (:func:`cirl.deploy.gate.choose_engine`, ``engine-choice.json``). Each file maps a key (a
hash of everything the timing depends on) to the choice. A home that cannot be written only
loses the keeping: the choice is still made, with a warning. No torch here: prediction paths use
it.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

from cirl.errors import CirlError

log = logging.getLogger(__name__)

# The CPU features that decide how fast each arithmetic is (recorded with every training run).
FEATURES = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def _cpuinfo() -> tuple[str, set[str], str | None]:
    name, flags = platform.processor() or platform.machine(), set()
    ident: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and name in (platform.processor(), platform.machine()):
                name = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
            elif key in ("vendor_id", "cpu family", "model", "stepping") and key not in ident:
                ident[key] = value.strip()
    except OSError:
        pass
    return name, flags, _identity(ident)


def _identity(ident: dict[str, str]) -> str | None:
    """``AuthenticAMD family 25 model 17 stepping 1``: what tells CPUs apart whose model name
    a virtual machine reduces to ``AMD EPYC`` (a Zen 4 and a Zen 5 train at different speeds).
    None where ``/proc/cpuinfo`` has no x86 identity (another architecture, no Linux)."""
    if "cpu family" not in ident or "model" not in ident:
        return None
    parts = [ident.get("vendor_id", ""), f"family {ident['cpu family']}", f"model {ident['model']}"]
    if "stepping" in ident:
        parts.append(f"stepping {ident['stepping']}")
    return " ".join(p for p in parts if p)


def cpu() -> dict[str, Any]:
    """This machine's CPU as a run records it: model name, identity (vendor, family, model,
    stepping), logical cores, the features that decide the speed of each arithmetic
    (``amx_bf16``, ``avx512_bf16``...), and a one-line kind."""
    name, flags, ident = _cpuinfo()
    if "amx_bf16" in flags:
        kind = "AMX"
    elif "avx512_bf16" in flags:
        kind = "AVX-512 BF16, no AMX"
    elif "avx512f" in flags:
        kind = "AVX-512, no BF16"
    elif "avx2" in flags:
        kind = "AVX2"
    else:
        kind = platform.machine()
    return {
        "cpu": name,
        "cpu_id": ident,
        "logical_cores": os.cpu_count(),
        "features": [f for f in FEATURES if f in flags],
        "kind": kind,
        "arch": platform.machine(),
    }


def cache_file(name: str) -> Path:
    """``$XDG_CACHE_HOME/cirl/NAME`` (``~/.cache`` when the variable is unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "cirl" / name


def _read(path: Path) -> dict:
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def recall(name: str, key: str) -> dict | None:
    """The choice kept under ``key`` in cache file ``name``, or None."""
    entry = _read(cache_file(name)).get(key)
    return entry if isinstance(entry, dict) else None


def keep(name: str, key: str, entry: dict, what: str) -> None:
    """Keep ``entry`` under ``key`` in cache file ``name`` (written whole, atomically); a
    warning naming ``what`` and the file when it cannot be written."""
    from cirl.staging import staged_file

    path = cache_file(name)
    try:
        known = _read(path)
        known[key] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        with staged_file(path) as tmp:
            tmp.write_text(json.dumps(known, indent=2) + "\n")
    except (OSError, CirlError) as exc:  # a read-only home: the choice is made, not kept
        log.warning("could not cache %s in %s (%s)", what, path, exc)


def package_version(name: str) -> str | None:
    """The installed version of a Python package (None when it is not installed)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
