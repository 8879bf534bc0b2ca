"""Data-parallel training: ``train.run`` with ``nproc > 1`` launches ``torchrun`` here.

Whoever calls :func:`cirl.method.train.run` (``cirl train --nproc N``, a pipeline task, a sweep
trial, ``cirl audit --retrain``) gets the same result object: :func:`launch` writes the run's
arguments to a file, starts ``python -m torch.distributed.run`` with ``N`` processes of
:func:`cirl.method.ddp_worker.main` (each calls ``train.run`` as one rank of the world
``torchrun`` made), waits, and reads the run back from its folder (checkpoints,
``history.json``; written by rank 0 only). The epochs' records reach ``on_epoch``
(tracking) once the run has ended.

On one machine the processes meet on a free local port (``--standalone``). On several, the
Kubeflow training operator's pods carry ``PET_NNODES``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``
and ``PET_MASTER_PORT``, which ``torchrun`` reads itself (docs/cluster.md).

CPU threads: each process gets ``cores // N`` (at least 1) unless ``OMP_NUM_THREADS`` is set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cirl.errors import CirlError

WORKER = "cirl.method.ddp_worker"
"""The module each process runs (:func:`cirl.method.ddp_worker.main`)."""


def launch(
    cfg: Any,
    data: Path,
    out: Path,
    init: Any,
    ambiguity: Any,
    resume: bool,
    progress: bool,
    on_epoch: Callable[[dict], None] | None,
) -> Any:
    """Train ``cfg`` in ``cfg.nproc`` processes; the run as :func:`train.run` returns it."""
    from cirl.config import to_dict
    from cirl.method.train_config import TrainResult
    from cirl.models.checkpoint import load_checkpoint

    _check_devices(cfg)
    before = _epochs_done(out) if resume else 0
    spec = {
        "cfg": to_dict(cfg),
        "data": str(data),
        "out": str(out),
        "init": str(init) if init else None,
        "ambiguity": str(ambiguity) if ambiguity else None,
        "resume": resume,
        "progress": progress,
    }
    with tempfile.TemporaryDirectory(prefix="cirl-ddp-") as tmp:
        spec_path = Path(tmp) / "run.json"
        spec_path.write_text(json.dumps(spec))
        done = subprocess.run(command(cfg.nproc, spec_path), env=_env(cfg.nproc), check=False)
    if done.returncode != 0:
        raise CirlError(
            f"data-parallel training ({cfg.nproc} processes) failed with exit status "
            f"{done.returncode}; the failing process's error is above. Fix it and run again "
            "(with --resume, from the last complete epoch)"
        )
    last, best = out / "last.pt", out / "best.pt"
    state = load_checkpoint(last)
    history = list(state["history"])
    if on_epoch is not None:
        for record in history[before:]:
            on_epoch(record)
    return TrainResult(
        out,
        best,
        last,
        int(state["best_epoch"]),
        float(state["best_val_f1"]),
        history,
        dict(state["provenance"]),
    )


def _check_devices(cfg: Any) -> None:
    """On CUDA every process takes one GPU: refuse a run that asks for more than there are."""
    import torch

    if cfg.device == "cpu" or not torch.cuda.is_available():
        return
    count = torch.cuda.device_count()
    if count < cfg.nproc:
        raise CirlError(
            f"nproc {cfg.nproc} needs {cfg.nproc} GPUs (one per process) but this machine has "
            f"{count}; set nproc to {count} or less, or --device cpu (gloo)"
        )


def nodes() -> int:
    """Machines of the run: the Kubeflow training operator's ``PET_NNODES`` (``2``, or ``1:4``
    for an elastic job: its largest), else 1."""
    value = os.environ.get("PET_NNODES", "") or "1"
    try:
        return int(value.split(":")[-1])
    except ValueError:
        raise CirlError(f"PET_NNODES={value!r} is not a node count like 2 or 1:4") from None


def command(nproc: int, spec_path: Path) -> list[str]:
    """The ``torchrun`` command line of a run of ``nproc`` processes per machine."""
    where = ["--standalone"] if nodes() <= 1 else []  # else torchrun reads PET_* itself
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *where,
        f"--nproc_per_node={nproc}",
        "-m",
        WORKER,
        str(spec_path),
    ]


def _env(nproc: int) -> dict[str, str]:
    """The processes' environment: marked as cirl's workers, CPU threads shared out, and on
    several machines the operator's ``MASTER_ADDR``/``MASTER_PORT`` as torchrun's."""
    from cirl.distributed import WORKER_ENV

    env = dict(os.environ)
    env[WORKER_ENV] = "1"
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    if nodes() > 1:
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if env.get(name) and not env.get(f"PET_{name}"):
                env[f"PET_{name}"] = env[name]
    return env


def _epochs_done(out: Path) -> int:
    try:
        return len(json.loads((out / "history.json").read_text()))
    except (OSError, ValueError):
        return 0
