"""Data-parallel training's shared state: which process of how many this is, and sums over the
whole global batch.

A data-parallel run (``torchrun``; :mod:`cirl.method.ddp`) splits each global batch across its
processes. For the run to train the model the one-process run trains, every quantity a loss or
a normalisation pools over the batch must be pooled over the **global** batch:
:func:`global_sum` is that sum. With one process it returns its argument unchanged (the same
bits as before data-parallel training existed); inside a data-parallel run it is an
all-reduce that autograd sees through (``torch.distributed.nn.functional.all_reduce``), so each
process computes the global batch's loss and, once DDP averages the gradients, the global
batch's gradient. :class:`GlobalBatchNorm2d` does the same for batch normalisation's statistics
(``torch.nn.SyncBatchNorm`` runs on GPUs only; this one on any device, gloo included).

Collectives must be called by every process in the same order: callers compute a pooled sum
on every process, also where the process has nothing to add (a zero).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that validates and writes checkpoints, history and tracking."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> World:
        """The world ``torchrun`` describes in ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` for the
        processes cirl launched (:data:`WORKER_ENV` set). Elsewhere one process: a Kubeflow
        PyTorchJob pod carries ``WORLD_SIZE`` and ``RANK`` too, for the launcher it runs."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1 or os.environ.get(WORKER_ENV) != "1":
            return cls()
        return cls(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


WORKER_ENV = "CIRL_DDP_WORKER"
"""Set to 1 in the processes of a data-parallel run cirl launched (``cirl.method.ddp``)."""


_ACTIVE: World = World()

# the autograd-aware all-reduce: torch 2.13 calls it deprecated in favour of a private module
warnings.filterwarnings(
    "ignore", message=r"torch\.distributed\.nn\.functional\.all_reduce is deprecated"
)


def active() -> World:
    """The data-parallel world this process trains in (rank 0 of 1 outside one)."""
    return _ACTIVE


@contextlib.contextmanager
def joined(world: World, device: torch.device) -> Iterator[World]:
    """Join the process group of ``world`` (gloo on CPU, NCCL on CUDA) for the block; pooled
    sums are global inside it. One process: nothing to join."""
    global _ACTIVE
    if world.size <= 1:
        yield world
        return
    import torch.distributed as dist

    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    previous, _ACTIVE = _ACTIVE, world
    try:
        yield world
    finally:
        _ACTIVE = previous
        if started:
            dist.destroy_process_group()


def global_sum(value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over every process of the run (autograd sees through the sum)."""
    if _ACTIVE.size <= 1:
        return value
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(value)


def global_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over the global batch (``values.mean()`` with one process)."""
    if _ACTIVE.size <= 1:
        return values.mean()
    count = torch.tensor(float(values.numel()), device=values.device, dtype=values.dtype)
    return global_sum(values.sum()) / global_sum(count)


def broadcast(obj: object) -> object:
    """Rank 0's ``obj`` on every process (one process: ``obj``)."""
    if _ACTIVE.size <= 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if _ACTIVE.size > 1:
        import torch.distributed as dist

        dist.barrier()


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """Batch normalisation whose training statistics are those of the global batch.

    Outside a data-parallel run it is :class:`torch.nn.BatchNorm2d` exactly. Inside one, the
    batch mean and (biased) variance come from sums over every process's part of the batch
    (:func:`global_sum`), and the running statistics are updated with them (the unbiased
    variance, as PyTorch does), so every process keeps the same buffers. Parameters and
    buffers are BatchNorm2d's: checkpoints are interchangeable.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if _ACTIVE.size <= 1 or not self.training:
            return super().forward(input)
        self._check_input_dim(input)
        dims = (0, 2, 3)
        count = torch.tensor(
            float(input.numel() // input.shape[1]), device=input.device, dtype=torch.float32
        )
        x = input.float()
        stats = global_sum(torch.cat([x.sum(dims), (x * x).sum(dims), count[None]]))
        channels = input.shape[1]
        total = stats[-1]
        mean = stats[:channels] / total
        var = (stats[channels : 2 * channels] / total - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                unbiased = var * (total / (total - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.to(self.running_mean))
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.to(self.running_var))
        shape = (1, channels, 1, 1)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def global_batch_norm(model: nn.Module) -> nn.Module:
    """``model`` with every ``BatchNorm2d`` computing global-batch statistics (in place)."""
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = GlobalBatchNorm2d
    return model


def plain_batch_norm(model: nn.Module) -> nn.Module:
    """Undo :func:`global_batch_norm` (in place): the model as every other process loads it."""
    for module in model.modules():
        if type(module) is GlobalBatchNorm2d:
            module.__class__ = nn.BatchNorm2d
    return model


__all__ = [
    "GlobalBatchNorm2d",
    "World",
    "active",
    "barrier",
    "broadcast",
    "global_batch_norm",
    "global_mean",
    "global_sum",
    "joined",
    "plain_batch_norm",
]
