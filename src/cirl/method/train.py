"""Stage ``train``: one small training loop for the BCE baseline, CIRL phase I and phase II.

* ``loss=bce``: plain BCE on valid pixels, no std head (the baseline).
* ``loss=cirl, phase=1``: BCE + ``aseg_weight`` * L_Aseg (Eq. 7) with the std head
  (``phase1_loss=aseg``: L_Aseg alone, as the paper's Fig. 3 names it; ``aseg_form``,
  ``std_init`` and ``std_clamp`` choose the form of the loss and of the head).
* ``loss=cirl, phase=2``: initialised from phase-I weights, std head dropped; BCE on valid pixels
  outside the ambiguous set A + ``beta`` * L_CI on A (Eq. 16). A comes from ``cirl select``
  (``selection=offline``), or is taken per batch from the current model
  (``selection=online``: A = M and ``(p - y)^2 > lam``).

JTFN-style models add their deep-supervision and boundary terms in every arm. Adam with the
paper's defaults. A checkpoint (``last.pt``) is written atomically after every epoch and
``best.pt`` whenever the validation F1 (per-image mean at 0.5) improves; the test split is never
looked at. ``resume`` continues from ``last.pt`` exactly: the data order and augmentation of an
epoch depend only on the seed and the epoch.

Runs are reproducible bit for bit on the same machine and thread count: every random stream is
seeded from ``(seed, epoch, purpose)``, and on CPU the loop runs under
``torch.use_deterministic_algorithms(True, warn_only=True)`` (restored afterwards), which makes
the CPU ops that add with float atomics (``index_put_`` with ``accumulate=True``, the backward
of advanced indexing) add in a fixed order and warns about any op without a deterministic
implementation. Before training, the train and val files are checked against the manifest's
SHA-256 (``verify_data``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from cirl import __version__
from cirl.config import to_dict
from cirl.distributed import (
    World,
    barrier,
    broadcast,
    global_batch_norm,
    joined,
    plain_batch_norm,
)
from cirl.errors import CirlError

# the names this module held before it was split, for callers that import them from here
from cirl.method.arithmetic import cpu_has_native_bf16, resolve_arithmetic  # noqa: F401
from cirl.method.determinism import (  # noqa: F401
    _generator,
    _mix,
    deterministic_algorithms,
    flushing_threads,
)
from cirl.method.step import _autocast, _new_model, compute_loss, learning_rate
from cirl.method.train_config import TrainConfig, TrainResult
from cirl.models.checkpoint import build_from_checkpoint, load_checkpoint, save_checkpoint
from cirl.models.device import resolve_device
from cirl.staging import staged_file

log = logging.getLogger(__name__)


@torch.no_grad()
def validate(
    model, data: Path, device: torch.device, autocast_dtype: torch.dtype | None = None
) -> dict:
    """Per-image mean P/R/F1 at 0.5 (the paper's protocol) on the validation split.

    ``autocast_dtype``: the training's autocast precision (bf16 on CPU halves the cost of a
    validation; its F1 only chooses ``best.pt``, the evaluate stage scores in fp32).
    """
    from cirl.data.tiles import TileDataset
    from cirl.method.metrics import SegmentationMetrics
    from cirl.models.inference import predict_prob

    model.eval()
    metrics = SegmentationMetrics()
    for item in TileDataset(data, "val"):
        with _autocast(device, autocast_dtype):
            prob = predict_prob(model, item["image"][None].to(device))
        prob = prob[0, 0].float().cpu().numpy()
        metrics.add(
            item["tile_id"], prob, item["mask"][0].numpy() > 0.5, item["valid"][0].numpy() > 0.5
        )
    summary = metrics.summary()
    return {"f1": summary["f1"], "precision": summary["precision"], "recall": summary["recall"]}


def _write_json(path: Path, payload) -> None:
    with staged_file(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")


def run(
    cfg: TrainConfig,
    data: str | os.PathLike,
    out: str | os.PathLike,
    init: str | os.PathLike | None = None,
    ambiguity: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train one arm and write ``OUT/last.pt``, ``OUT/best.pt``, ``OUT/history.json``.

    Args:
        cfg: the run's parameters.
        data: a prepared folder (``cirl prepare``).
        out: the run folder.
        init: phase II: the phase-I checkpoint to start from (required).
        ambiguity: phase II: the ``cirl select`` output folder (required).
        resume: continue from ``OUT/last.pt``.
        progress: show a progress bar.
        on_epoch: called with each epoch's history record after its checkpoint is written
            (how tracking layers such as MLflow see training without this module importing them).

    Raises:
        CirlError: on missing inputs, a train or val file that differs from the manifest
            (``verify_data``), a non-finite loss (the last good checkpoint is kept), or a
            resume whose stored config differs from ``cfg``.
    """
    data, out = Path(data), Path(out)
    _check_inputs(cfg, init, ambiguity)
    world = World.from_env()
    if world.size == 1:
        from cirl.method.ddp import launch, nodes

        if cfg.nproc > 1 or nodes() > 1:  # this process launches the data-parallel run
            return launch(cfg, data, out, init, ambiguity, resume, progress, on_epoch)
    if cfg.batch_size % world.size:
        raise CirlError(
            f"batch_size {cfg.batch_size} does not split over the run's {world.size} processes "
            "(nodes x nproc); choose a multiple"
        )
    if world.size > 1 and cfg.device != "cpu" and torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
    device = resolve_device(cfg.device)
    with joined(world, device):
        return _run(cfg, data, out, init, ambiguity, resume, progress and world.main, on_epoch,
                    world, device)  # fmt: skip


def _run(
    cfg: TrainConfig,
    data: Path,
    out: Path,
    init: Any,
    ambiguity: Any,
    resume: bool,
    progress: bool,
    on_epoch: Callable[[dict], None] | None,
    world: World,
    device: torch.device,
) -> TrainResult:
    """The training loop of one process (of ``world``'s, which only rank 0 validates, writes
    and reports)."""
    torch.manual_seed(cfg.seed)
    train_set = _datasets(cfg, data, ambiguity)
    model, provenance = _start_model(cfg, data, init, ambiguity)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history: list[dict] = []
    start_epoch, best_f1, best_epoch = 0, -1.0, -1
    last_path, best_path = out / "last.pt", out / "best.pt"
    state = _resume_state(cfg, last_path) if resume else None
    side = cfg.crop or int(train_set[0]["image"].shape[-1])
    loop = _arithmetic(cfg, device, side, state, model, provenance, world)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"] + 1, list(state["history"])
        best_f1, best_epoch = state["best_val_f1"], state["best_epoch"]
    if world.size > 1:
        provenance["world_size"] = world.size
    if world.main:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "config.json", {"train": to_dict(cfg), **provenance})

    loop.update(model=model, optimizer=optimizer, scaler=scaler, last_path=last_path)
    loop.update(world=world, forward=_data_parallel(model, world, device))
    loop["steps"] = cfg.steps_per_epoch or math.ceil(len(train_set) / cfg.batch_size)
    with deterministic_algorithms(device):
        for epoch in range(start_epoch, cfg.epochs):
            record = _train_epoch(cfg, train_set, epoch, loop, progress)
            if not world.main:  # rank 0 validates, writes and reports
                continue
            if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs:
                t_val = time.perf_counter()
                record["val"] = validate(model, data, device, loop["autocast"])
                record["val_seconds"] = time.perf_counter() - t_val
            history.append(record)
            log.info("epoch %d: %s", epoch + 1, record)
            improved = "val" in record and record["val"]["f1"] > best_f1
            if improved:
                best_f1, best_epoch = record["val"]["f1"], epoch + 1
            payload = {
                # contiguous: the same bytes whatever memory format trained them
                "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                "model_config": dict(model.config),
                "config": to_dict(cfg),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "history": history,
                "best_val_f1": best_f1,
                "best_epoch": best_epoch,
                "provenance": provenance,
            }
            # best first: an interruption between the two writes redoes this epoch identically
            if improved:
                save_checkpoint(best_path, payload)
            save_checkpoint(last_path, payload)
            _write_json(out / "history.json", history)
            if on_epoch is not None:
                on_epoch(record)
    if world.size > 1:
        plain_batch_norm(model)
        barrier()  # the other processes end once rank 0 has written the last epoch
    return TrainResult(out, best_path, last_path, best_epoch, best_f1, history, provenance)


def _data_parallel(model: Any, world: World, device: torch.device) -> Any:
    """What the loop calls forward: the model, or DDP around it with batch norm over the
    global batch (one process: the model itself, the same bits as ever)."""
    if world.size <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    global_batch_norm(model)
    ids = [world.local_rank] if device.type == "cuda" else None
    # buffers need no sync: batch norm keeps them equal on every process (global statistics)
    return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)


class _RankBatches:
    """The one-process run's batches (``batch_size`` indices each from ``sampler``), this
    process's equal, contiguous part of each: ranks 0..N-1 together see each global batch."""

    def __init__(self, sampler: Any, batch_size: int, world: World) -> None:
        self.sampler, self.batch_size, self.world = sampler, batch_size, world
        self.part = batch_size // world.size

    def __iter__(self):
        indices = list(self.sampler)
        start = self.world.rank * self.part
        for first in range(0, len(indices) - self.batch_size + 1, self.batch_size):
            yield indices[first + start : first + start + self.part]

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size


def _check_inputs(cfg: TrainConfig, init: Any, ambiguity: Any) -> None:
    phase2 = cfg.loss == "cirl" and cfg.phase == 2
    if phase2 and (init is None or (ambiguity is None and cfg.selection == "offline")):
        raise CirlError(
            "phase 2 needs --init (the phase-I best.pt) and --ambiguity (the `cirl select` "
            "folder; or --selection online, which selects per batch)"
        )
    if not phase2 and ambiguity is not None:
        raise CirlError("--ambiguity is only used by phase 2 (--phase 2 --loss cirl)")
    if phase2 and cfg.selection == "offline" and ambiguity is not None:
        from cirl.method.trained import is_sampled

        # an ambiguity folder not made by cirl select has no summary: its maps are read as-is
        summary = _selection_summary(ambiguity) or {}
        if is_sampled(summary):
            raise CirlError(
                f"{ambiguity}: this selection scored a sample of {summary['tiles_scored']} of "
                f"{summary['tiles']} tiles (select.max_tiles), a report for online selection; "
                "phase II with offline selection needs every tile's A: select again with "
                "select.max_tiles 0, or train with train.selection online"
            )


def _selection_summary(ambiguity: Any) -> dict | None:
    """The ``summary.json`` of a ``cirl select`` folder; None when the folder has none."""
    path = Path(ambiguity) / "summary.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise CirlError(f"{path}: not valid JSON ({exc}); run cirl select again") from None


def _datasets(cfg: TrainConfig, data: Path, ambiguity: Any) -> Any:
    """The training split's samples; the validation split is opened (and, with
    ``verify_data``, both are checked against the manifest) so a missing one fails first."""
    from cirl.data.tiles import TileDataset

    train_set = TileDataset(
        data,
        "train",
        crop=cfg.crop,
        augment=True,
        ambiguity=ambiguity if cfg.selection == "offline" else None,
        seed=cfg.seed,
        crack_crops=cfg.crack_crops,
    )
    val_set = TileDataset(data, "val")  # fail early, with a clear message, when there is none
    if cfg.verify_data:
        from cirl.data.manifest import verify_files

        t0 = time.perf_counter()
        files = verify_files(data, train_set.records + val_set.records)
        log.info("verified %d files in %.2f s", files, time.perf_counter() - t0)
    return train_set


def _start_model(cfg: TrainConfig, data: Path, init: Any, ambiguity: Any) -> tuple[Any, dict]:
    """The model to train (new, or phase I's weights for phase II) and the run's provenance."""
    from cirl.hashing import file_sha256

    model = _new_model(cfg)
    provenance = {
        "data": str(data),
        "manifest_sha256": file_sha256(data / "manifest.csv"),
        "init": str(init) if init else None,
        "ambiguity": str(ambiguity) if ambiguity else None,
        "cirl_version": __version__,
    }
    summary = _selection_summary(ambiguity) if ambiguity is not None else None
    if summary is not None:
        from cirl.method.trained import selection_record

        provenance["selection"] = selection_record(summary)
    if init is not None:
        payload = load_checkpoint(init)
        if payload["model_config"]["name"] != cfg.model:
            raise CirlError(
                f"--init {init} holds model {payload['model_config']['name']!r}, not {cfg.model!r}"
            )
        model = build_from_checkpoint(payload, std_head=cfg.uses_std_head)
        provenance["init_sha256"] = file_sha256(init)
    return model, provenance


def _resume_state(cfg: TrainConfig, last_path: Path) -> dict:
    """``last.pt`` to resume from, refused when its parameters differ (only the epoch count
    may grow: a finished run can be extended, nothing else)."""
    if not last_path.is_file():
        raise CirlError(f"--resume: {last_path} not found; start without --resume")
    state = load_checkpoint(last_path)
    # a key the stored run predates had its default then
    from cirl.config import defaults

    before = {**defaults(TrainConfig), **state["config"]}
    changed = sorted(k for k, v in to_dict(cfg).items() if before[k] != v and k != "epochs")
    if changed:
        raise CirlError(
            f"--resume: {last_path} was trained with other parameters ({', '.join(changed)}); "
            "resume with the same parameters (only --epochs may grow) or start a new run folder"
        )
    done = state["epoch"] + 1
    if cfg.epochs < done:
        raise CirlError(
            f"--resume: {last_path} already holds {done} epochs, more than --epochs "
            f"{cfg.epochs}; pass --epochs {done} or more"
        )
    return state


def _arithmetic(
    cfg: TrainConfig,
    device: Any,
    side: int,
    state: dict | None,
    model: Any,
    provenance: dict,
    world: World | None = None,
) -> dict:
    """Resolve the run's precision and memory format (a resumed run keeps its recorded ones),
    put the model in that format, and record them with this machine in the provenance. In a
    data-parallel run rank 0 chooses (it times the candidates) and the others take its choice."""
    from cirl.host import cpu

    world = world or World()
    chosen = None
    if world.main:
        chosen = resolve_arithmetic(cfg, device, side, (state or {}).get("provenance"))
    chosen = broadcast(chosen)
    precision, channels_last = chosen["precision"], chosen["channels_last"]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    provenance["precision"] = precision
    provenance["channels_last"] = channels_last
    provenance["arithmetic"] = {k: v for k, v in chosen.items() if k not in ("setting", "machine")}
    provenance["machine"] = {**cpu(), "threads": torch.get_num_threads()}
    return {
        "device": device,
        "autocast": {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision),
        "memory_format": memory_format,
    }


def _train_epoch(cfg: TrainConfig, train_set: Any, epoch: int, loop: dict, progress: bool) -> dict:
    """One epoch: its seeded sampler, crops and CI draws, the steps; its history record."""
    device, steps, model = loop["device"], loop["steps"], loop["model"]
    optimizer, scaler = loop["optimizer"], loop["scaler"]
    world = loop.get("world") or World()
    train_set.set_epoch(epoch)
    sampler = torch.utils.data.RandomSampler(
        train_set,
        replacement=True,
        num_samples=steps * cfg.batch_size,
        generator=_generator(_mix(cfg.seed, epoch, 1)),
    )
    batching: dict[str, Any] = {"batch_size": cfg.batch_size, "sampler": sampler, "drop_last": True}
    if world.size > 1:  # the same global batches, split across the processes
        batching = {"batch_sampler": _RankBatches(sampler, cfg.batch_size, world)}
    loader = DataLoader(
        train_set,
        **batching,
        num_workers=cfg.workers,
        persistent_workers=False,
        pin_memory=device.type == "cuda",
    )
    # rank 0's stream is the one-process run's (CI draws a subset of A only where an image
    # has more than max_pixels ambiguous pixels)
    ci_generator = _generator(_mix(cfg.seed, epoch, 2 + 1000 * world.rank))
    torch.manual_seed(_mix(cfg.seed, epoch, 3))
    model.train()
    sums: dict[str, float] = {}
    seen, t0 = 0, time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False)
    for step, batch in enumerate(loader):
        batch = {
            k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()
        }
        image = batch["image"].contiguous(memory_format=loop["memory_format"])
        with _autocast(device, loop["autocast"]):
            output = loop.get("forward", model)(image)
        loss, parts = compute_loss(cfg, output, batch, ci_generator)
        if not torch.isfinite(loss):
            _non_finite(loss, parts, epoch, step, loop["last_path"])
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, epoch * steps + step, cfg.epochs * steps)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        seen += batch["image"].shape[0] * world.size
        for key, value in {"loss": float(loss.detach()), **parts}.items():
            sums[key] = sums.get(key, 0.0) + value
        if bar is not None:
            bar.update(1)
            bar.set_postfix(
                loss=f"{sums['loss'] / (step + 1):.4f}",
                img_s=f"{seen / (time.perf_counter() - t0):.1f}",
            )
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    return {
        "epoch": epoch + 1,
        **{k: v / steps for k, v in sums.items()},
        "seconds": seconds,
        "images_per_s": seen / seconds,
    }


def _non_finite(loss: Any, parts: dict, epoch: int, step: int, last_path: Path) -> None:
    kept = (
        f"the last good checkpoint is {last_path}"
        if last_path.exists()
        else "no checkpoint was written"
    )
    raise CirlError(
        f"loss became {float(loss.detach())} at epoch {epoch + 1} "
        f"step {step + 1} ({parts}); {kept}. Lower --lr, check the data, or "
        "resume from the checkpoint"
    )
