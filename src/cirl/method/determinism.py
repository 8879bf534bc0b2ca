"""Reproducible training: seeded generators per (seed, epoch, purpose), deterministic CPU
kernels, and subnormal floats computed (not flushed) while training.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import numpy as np
import torch

from cirl import fpenv

log = logging.getLogger(__name__)


def _mix(*values: int) -> int:
    """A stable 63-bit seed derived from several integers (seed, epoch, purpose)."""
    return int(np.random.SeedSequence(list(values)).generate_state(1, np.uint64)[0] >> 1)


def _generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


@contextlib.contextmanager
def deterministic_algorithms(device: torch.device) -> Iterator[None]:
    """On CPU, run the block with ``torch.use_deterministic_algorithms(True, warn_only=True)``
    and with subnormal floats computed, not flushed, in the calling thread.

    Both previous settings are restored on exit (the second with :mod:`cirl.fpenv`). PyTorch's
    worker threads keep the mode they were created with; a warning says when some flush (this
    process ran inference with subnormals as zero before its first parallel operation), because
    the weights then differ from a fresh process's. Off the CPU nothing changes (CUDA's
    deterministic mode needs ``CUBLAS_WORKSPACE_CONFIG`` set before start-up and slows several
    kernels).
    """
    if device.type != "cpu":
        yield
        return
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with fpenv.preserved():
            torch.set_flush_denormal(False)
            flushing = flushing_threads()
            if flushing:
                log.warning(
                    "%d of %d PyTorch threads flush subnormal floats to zero (inference ran "
                    "in this process first): the weights will differ from a fresh process's; "
                    "train in a process of its own to reproduce them",
                    flushing,
                    torch.get_num_threads(),
                )
            yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def flushing_threads() -> int:
    """How many of PyTorch's CPU threads compute subnormal floats as zero.

    One element-wise product over a tensor long enough that every thread takes an equal share
    (``at::parallel_for`` splits a range evenly, the calling thread first): a share whose
    subnormal results are all zero was computed by a flushing thread.
    """
    threads = torch.get_num_threads()
    # large shares (a small op may run on fewer threads than it has shares), 16 MB at most
    share = max(1 << 16, (1 << 22) // threads)
    product = torch.full((threads * share,), 1e-38) * 0.1  # subnormal, or zero when flushed
    # the bits, not a float comparison: a thread that reads subnormals as zero would say 0 == x
    bits = product.numpy().view(np.int32).reshape(threads, share)
    return int((bits == 0).all(axis=1).sum())
