"""The training arithmetic chosen by measurement: precision and memory format of a step.

``precision: auto`` and ``channels_last: auto`` (``TrainConfig``) are resolved here by timing the
run's own training step (the configured model, loss, batch and crop: forward, loss, backward,
Adam) in each candidate arithmetic on this machine: fp32 or bfloat16 autocast, NCHW or NHWC.
Candidates alternate over a few rounds, so a change in the machine's load hits each alike; a
candidate's time is the median of its rounds. The fastest wins, except that bf16 must beat the
best fp32 candidate by more than :data:`MARGIN` (fp32 is the reference arithmetic, so a tie
within the noise goes to it). Whether the CPU *has* bf16 instructions decides nothing: a Xeon
with AVX-512 BF16 but no AMX trained 1.19x slower in bf16 than in fp32 + NHWC, an AMD EPYC with
the same instructions 1.8x faster.

The choice is cached per machine (CPU model, logical cores, threads), torch version, model,
width, batch, crop and candidates in ``$XDG_CACHE_HOME/cirl/train-arithmetic.json``; a run
records the choice with its timings (checkpoint provenance, ``config.json``, MLflow tags), and a
resumed or audited run reuses the recorded choice instead of measuring again, so it computes
what the recorded run computed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import statistics
import time
from typing import Any

import torch

from cirl import host
from cirl.method.train_config import TrainConfig

log = logging.getLogger(__name__)

MARGIN = 0.05
"""bf16 is chosen only when its step is this much faster than the best fp32 step."""

WARMUP = 1
ROUNDS = 3
PRUNE = 1.3
"""After each round, arms slower than this times the fastest drop out of the race."""

CACHE = "train-arithmetic.json"


def arm_name(precision: str, channels_last: bool) -> str:
    return precision + ("+cl" if channels_last else "")


def candidates(precision: str, channels_last: bool | str) -> list[tuple[str, bool]]:
    """The (precision, channels_last) pairs a request leaves open."""
    precisions = ["fp32", "bf16"] if precision == "auto" else [precision]
    layouts = [False, True] if channels_last == "auto" else [bool(channels_last)]
    return [(p, c) for p in precisions for c in layouts]


def _probe_batch(cfg: Any, side: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shape = (cfg.batch_size, 1, side, side)
    mask = (torch.rand(shape, generator=g) > 0.98).float()
    batch = {
        "image": torch.rand((cfg.batch_size, 3, side, side), generator=g),
        "mask": mask,
        "valid": torch.ones(shape),
    }
    if cfg.loss == "cirl" and cfg.phase == 2:
        # an ambiguous ring of ~2% of the pixels, so the CI term does its work
        batch["ambiguous"] = (torch.rand(shape, generator=g) > 0.98).float() * (1 - mask)
    return batch


def time_steps(cfg: Any, side: int, arms: list[tuple[str, bool]], rounds: int = ROUNDS) -> dict:
    """Median seconds per training step of each arm (after :data:`WARMUP` steps each)."""
    from cirl.method.step import _autocast, _new_model, compute_loss

    device = torch.device("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = _new_model(cfg)
    data = _probe_batch(cfg, side)
    runs = {}
    for precision, cl in arms:
        fmt = torch.channels_last if cl else torch.contiguous_format
        model = copy.deepcopy(base).to(memory_format=fmt).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)
        image = data["image"].contiguous(memory_format=fmt)
        dtype = torch.bfloat16 if precision == "bf16" else None
        runs[(precision, cl)] = (model, optimizer, image, dtype)

    def step(arm: tuple[str, bool]) -> float:
        model, optimizer, image, dtype = runs[arm]
        t0 = time.perf_counter()
        with _autocast(device, dtype):
            output = model(image)
        loss, _ = compute_loss(cfg, output, data, torch.Generator().manual_seed(0))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t0

    for arm in arms:
        for _ in range(WARMUP):
            step(arm)
    times: dict[tuple[str, bool], list[float]] = {arm: [] for arm in arms}
    racing = list(arms)
    for _ in range(rounds):
        for arm in racing:
            times[arm].append(step(arm))
        # an arm far behind the leader after a round cannot win: it is timed no further
        best = min(statistics.median(times[arm]) for arm in racing)
        racing = [arm for arm in racing if statistics.median(times[arm]) <= PRUNE * best]
    return {arm: statistics.median(values) for arm, values in times.items()}


def decide(seconds: dict[tuple[str, bool], float], margin: float = MARGIN) -> tuple[str, bool]:
    """The fastest arm, with bf16 only when it beats the best fp32 arm by more than ``margin``."""
    best = min(seconds, key=seconds.get)
    fp32 = [arm for arm in seconds if arm[0] == "fp32"]
    if best[0] != "fp32" and fp32:
        best_fp32 = min(fp32, key=seconds.get)
        if seconds[best] * (1 + margin) > seconds[best_fp32]:
            return best_fp32
    return best


def choose(cfg: Any, side: int) -> dict[str, Any]:
    """Resolve ``cfg.precision`` / ``cfg.channels_last`` on this CPU (see the module docstring).

    Args:
        cfg: the run's ``TrainConfig``.
        side: the side of the training crops (the crop, or the tile side when ``crop`` is 0).

    Returns:
        ``precision``, ``channels_last``, and for a measured choice ``ms_per_step`` per arm,
        ``why``, ``machine``, ``cached``, ``probe_seconds``.
    """
    arms = candidates(cfg.precision, cfg.channels_last)
    if len(arms) == 1:
        precision, cl = arms[0]
        return {"precision": precision, "channels_last": cl, "why": "as configured"}
    here = host.cpu()
    key_parts = {
        "cpu": here["cpu"],
        "cpu_id": here["cpu_id"],
        "logical_cores": here["logical_cores"],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": cfg.model,
        "width": cfg.width,
        "batch": cfg.batch_size,
        "side": side,
        "arms": [arm_name(p, c) for p, c in arms],
    }
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()
    known = host.recall(CACHE, key)
    if known is not None and {"precision", "channels_last"} <= set(known):
        return {**known, "cached": True}
    t0 = time.perf_counter()
    seconds = time_steps(cfg, side, arms)
    precision, cl = decide(seconds)
    ms = {arm_name(p, c): round(1000 * s, 1) for (p, c), s in seconds.items()}
    chosen = arm_name(precision, cl)
    fastest = min(ms, key=ms.get)
    why = f"measured here: {', '.join(f'{k} {v:.0f} ms' for k, v in ms.items())} per step"
    if fastest != chosen:
        why += f"; {fastest} is not faster than fp32 by more than {MARGIN:.0%}"
    entry = {
        "precision": precision,
        "channels_last": cl,
        "why": why,
        "ms_per_step": ms,
        "margin": MARGIN,
        "setting": key_parts,
        "machine": here,
        "probe_seconds": round(time.perf_counter() - t0, 2),
    }
    host.keep(CACHE, key, entry, "the training arithmetic")
    log.info("training arithmetic %s (%s)", chosen, why)
    return {**entry, "cached": False}


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN reports native bfloat16 (AMX or AVX-512 BF16). Reported by the
    benchmarks only: it does not say that bf16 is faster here (:mod:`cirl.method.arithmetic`)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def resolve_arithmetic(
    cfg: TrainConfig, device: torch.device, side: int, recorded: dict | None = None
) -> dict:
    """The run's arithmetic: ``precision`` (``fp16`` CUDA amp, ``bf16`` or ``fp32``) and
    ``channels_last``, with how they were chosen.

    ``recorded`` (the provenance of the run being resumed) wins over a new measurement for
    what the config leaves to ``auto``, so a resumed run computes as it started. On CPU the
    rest is :func:`cirl.method.arithmetic.choose`; on CUDA ``amp`` decides and ``auto`` is NCHW.
    """
    if device.type != "cpu":
        return {
            "precision": "fp16" if cfg.amp and device.type == "cuda" else "fp32",
            "channels_last": cfg.channels_last is True,
            "why": f"{device.type}: amp {'on' if cfg.amp else 'off'}",
        }
    if recorded and recorded.get("precision") in ("fp32", "bf16"):
        want = (recorded["precision"], bool(recorded.get("channels_last")))
        if want in candidates(cfg.precision, cfg.channels_last):
            return {
                **(recorded.get("arithmetic") or {}),
                "precision": want[0],
                "channels_last": want[1],
                "why": "as recorded by the run resumed",
            }
    return choose(cfg, side)
