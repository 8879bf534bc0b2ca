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

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from cirl import __version__, fpenv
from cirl.checkpoint import build_from_checkpoint, load_checkpoint, save_checkpoint
from cirl.config import to_dict
from cirl.errors import CirlError
from cirl.staging import staged_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Parameters of a training run (``params.yaml`` groups ``train_phase1``, ``train_phase2``...).

    Attributes:
        model: registry name (``unet``, ``unet-small``, ``jtfn``, ``jtfn-small``).
        width: base width of the model; 0 keeps the registry preset.
        phase: 1 or 2 (CIRL phases); ignored by ``loss=bce``.
        loss: ``cirl`` or ``bce`` (the baseline).
        epochs: epochs of this run.
        steps_per_epoch: optimizer steps per epoch; 0 = one pass over the training tiles.
        batch_size: crops per optimizer step.
        crop: side of the random training crops in pixels (0 = whole tiles).
        crack_crops: share of the training crops centred on a random crack pixel of the tile,
            in [0, 1]; the rest, and every crop of a tile without crack, are uniform (the
            same sampling for every loss arm).
        lr: Adam learning rate (paper 1e-3).
        lr_schedule: ``constant`` (the paper) or ``cosine`` (from ``lr`` down to 0 over the
            run's ``epochs * steps_per_epoch`` steps; a function of the step, so a resumed run
            continues it exactly).
        pos_weight: weight of the crack pixels in the BCE terms (1 = plain BCE).
        dice: weight of a soft Dice term on the supervised pixels next to BCE (0 = none).
        weight_decay: Adam weight decay (paper 5e-4).
        lam: lambda of L_Aseg, Eq. 7 (paper 0.3); also the error threshold of online selection.
        aseg_weight: weight of L_Aseg in phase 1.
        phase1_loss: ``bce+aseg`` (BCE + ``aseg_weight`` * L_Aseg) or ``aseg`` (L_Aseg alone,
            as the paper's Fig. 3 and Sec. 4.1 name it).
        aseg_form: ``eq7`` (the paper's formula) or ``logistic`` (a surrogate with Eq. 7's
            boundary ``sigma^2 > lam`` whose head regresses the squared error and does not
            saturate: :func:`cirl.losses.aseg_loss`).
        std_init: ``default`` (PyTorch's init of the 1x1 conv) or ``lambda`` (zero weights,
            bias ``log(lam)``: every pixel starts at ``sigma^2 = lam``, Eq. 7's steepest point).
        std_clamp: ``hard`` (``s`` clipped to [-10, 10], zero gradient past it) or ``soft``
            (``10 tanh(s / 10)``).
        beta: weight of L_CI in phase 2 (paper 0.2).
        k: neighbours K of the CI loss (paper 20).
        max_pixels: cap on the ambiguous pixels |S| sampled per image for the CI loss.
        ci_reduction: ``image`` (Eq. 15: the mean over each image's ambiguous pixels) or
            ``batch`` (their sum over the batch divided by the pixels the BCE term averages
            over: an ambiguous pixel weighs what a supervised one does).
        selection: phase 2's A: ``offline`` (the ``cirl select`` folder, fixed for the run) or
            ``online`` (A = M and ``(p - y)^2 > lam`` of each batch under the current model;
            no ``--ambiguity`` needed).
        deep_supervision: weight of JTFN's extra heads.
        seed: seeds weights, data order, augmentation and CI sampling.
        workers: data-loader processes.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        amp: mixed precision on CUDA (float16 autocast with a gradient scaler; ignored on CPU).
        precision: on CPU, ``fp32``, ``bf16`` (bfloat16 autocast of the forward pass, fp32
            weights, optimizer and loss) or ``auto`` (the faster of the two for this run's
            model, batch and crop, timed on this machine: :mod:`cirl.arithmetic`; bf16 only
            when it beats fp32 by more than 5%). The resolved value and the timings are
            recorded with the run, and a resumed or audited run reuses them. Ignored on CUDA
            (``amp``). ``fp32`` is the dataclass default so that runs recorded before the
            option existed retrain as they ran; ``params.yaml`` says ``auto``.
        channels_last: NHWC memory format for the model and batches (``true``: faster
            convolutions on most CPUs, numerically equivalent up to float rounding), ``false``
            (NCHW) or ``auto`` (timed with ``precision``, as above; NCHW on CUDA).
        val_every: validate every N epochs (and at the last one).
        verify_data: check the train and val files against the manifest's SHA-256 before
            training (read once each; off only for data you trust and changed on purpose).
    """

    model: str = "unet-small"
    width: int = 0
    phase: Literal[1, 2] = 1
    loss: Literal["cirl", "bce"] = "cirl"
    epochs: int = 10
    steps_per_epoch: int = 0
    batch_size: int = 2
    crop: int = 256
    crack_crops: float = 0.0
    lr: float = 1e-3
    lr_schedule: Literal["constant", "cosine"] = "constant"
    pos_weight: float = 1.0
    dice: float = 0.0
    weight_decay: float = 5e-4
    lam: float = 0.3
    aseg_weight: float = 1.0
    phase1_loss: Literal["bce+aseg", "aseg"] = "bce+aseg"
    aseg_form: Literal["eq7", "logistic"] = "eq7"
    std_init: Literal["default", "lambda"] = "default"
    std_clamp: Literal["hard", "soft"] = "hard"
    beta: float = 0.2
    k: int = 20
    max_pixels: int = 4096
    ci_reduction: Literal["image", "batch"] = "image"
    selection: Literal["offline", "online"] = "offline"
    deep_supervision: float = 1.0
    seed: int = 0
    workers: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    channels_last: bool | Literal["auto"] = False
    val_every: int = 1
    verify_data: bool = True

    def __post_init__(self) -> None:
        checks = {
            "phase": self.phase in (1, 2),
            "epochs": self.epochs >= 1,
            "steps_per_epoch": self.steps_per_epoch >= 0,
            "batch_size": self.batch_size >= 1,
            "crop": self.crop >= 0,
            "crack_crops": 0.0 <= self.crack_crops <= 1.0,
            "lr": self.lr > 0,
            "lr_schedule": self.lr_schedule in ("constant", "cosine"),
            "pos_weight": self.pos_weight > 0,
            "dice": self.dice >= 0,
            "weight_decay": self.weight_decay >= 0,
            "lam": self.lam > 0,
            "aseg_weight": self.aseg_weight >= 0,
            "phase1_loss": self.phase1_loss in ("bce+aseg", "aseg"),
            "aseg_form": self.aseg_form in ("eq7", "logistic"),
            "std_init": self.std_init in ("default", "lambda"),
            "std_clamp": self.std_clamp in ("hard", "soft"),
            "ci_reduction": self.ci_reduction in ("image", "batch"),
            "selection": self.selection in ("offline", "online"),
            "beta": self.beta >= 0,
            "k": self.k >= 1,
            "max_pixels": self.max_pixels >= self.k + 2,
            "width": self.width >= 0,
            "workers": self.workers >= 0,
            "device": self.device in ("auto", "cpu", "cuda"),
            "precision": self.precision in ("auto", "fp32", "bf16"),
            "channels_last": self.channels_last in (True, False, "auto"),
            "val_every": self.val_every >= 1,
        }
        bad = [key for key, ok in checks.items() if not ok]
        if bad:
            key = bad[0]
            raise ValueError(f"key {key!r} has an invalid value {getattr(self, key)!r}")
        from cirl.models import MODELS

        if self.model not in MODELS:
            raise ValueError(
                f"key 'model' has an invalid value {self.model!r}; valid names: "
                f"{', '.join(sorted(MODELS))}"
            )

    @property
    def uses_std_head(self) -> bool:
        """Only CIRL phase I trains the std head."""
        return self.loss == "cirl" and self.phase == 1


@dataclass(frozen=True)
class TrainResult:
    """Where the checkpoints are and how training went."""

    out: Path
    best: Path
    last: Path
    best_epoch: int
    best_val_f1: float
    history: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    def arithmetic_tags(self) -> dict[str, str]:
        """The run's arithmetic and CPU as MLflow tags (``cirl.precision``, ``cirl.cpu``...)."""
        prov = self.provenance
        chosen = prov.get("arithmetic") or {}
        here = prov.get("machine") or {}
        tags = {
            "cirl.precision": prov.get("precision"),
            "cirl.channels_last": prov.get("channels_last"),
            "cirl.arithmetic": chosen.get("why"),
            "cirl.arithmetic_ms_per_step": json.dumps(chosen["ms_per_step"])
            if chosen.get("ms_per_step")
            else None,
            "cirl.cpu": here.get("cpu"),
            "cirl.cpu_kind": here.get("kind"),
            "cirl.cpu_features": " ".join(here.get("features", [])) or None,
            "cirl.cpu_threads": here.get("threads"),
        }
        return {k: str(v) for k, v in tags.items() if v is not None}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CirlError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN reports native bfloat16 (AMX or AVX-512 BF16). Reported by the
    benchmarks only: it does not say that bf16 is faster here (:mod:`cirl.arithmetic`)."""
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
    rest is :func:`cirl.arithmetic.choose`; on CUDA ``amp`` decides and ``auto`` is NCHW.
    """
    if device.type != "cpu":
        return {
            "precision": "fp16" if cfg.amp and device.type == "cuda" else "fp32",
            "channels_last": cfg.channels_last is True,
            "why": f"{device.type}: amp {'on' if cfg.amp else 'off'}",
        }
    if recorded and recorded.get("precision") in ("fp32", "bf16"):
        want = (recorded["precision"], bool(recorded.get("channels_last")))
        from cirl.arithmetic import candidates

        if want in candidates(cfg.precision, cfg.channels_last):
            return {
                **(recorded.get("arithmetic") or {}),
                "precision": want[0],
                "channels_last": want[1],
                "why": "as recorded by the run resumed",
            }
    from cirl.arithmetic import choose

    return choose(cfg, side)


def learning_rate(cfg: TrainConfig, step: int, total: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total`` (``lr_schedule``)."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))


def _new_model(cfg: TrainConfig):
    from cirl.models import build_model

    kwargs = {"std_head": cfg.uses_std_head}
    if cfg.width:
        kwargs["base_width"] = cfg.width
    model = build_model(cfg.model, **kwargs)
    if cfg.uses_std_head and cfg.std_init == "lambda":
        with torch.no_grad():
            model.std_head.weight.zero_()
            model.std_head.bias.fill_(math.log(cfg.lam))
    return model


def compute_loss(
    cfg: TrainConfig, out, batch: dict, generator: torch.Generator | None
) -> tuple[torch.Tensor, dict]:
    """The loss of one batch for the configured arm, and its parts for logging."""
    from cirl.losses import aseg_loss, ci_loss, error_ambiguous, masked_bce, soft_dice_loss

    mask, valid = batch["mask"], batch["valid"]
    logits = out.logits.float()
    parts: dict[str, float] = {}
    if cfg.loss == "cirl" and cfg.phase == 2:
        if cfg.selection == "online":
            ambiguous = error_ambiguous(torch.sigmoid(logits), mask, valid, cfg.lam)
        else:
            ambiguous = batch["ambiguous"] * valid
        supervised = valid * (1.0 - ambiguous)
        bce = masked_bce(logits, mask, supervised, cfg.pos_weight)
        ci = ci_loss(
            torch.sigmoid(logits),
            out.features.float(),
            ambiguous > 0.5,
            k=cfg.k,
            max_pixels=cfg.max_pixels,
            generator=generator,
            reduction=cfg.ci_reduction,
            normaliser=supervised.sum().clamp_min(1.0),
        )
        loss = bce + cfg.beta * ci
        parts["ci"] = float(ci.detach())
        parts["ambiguous_fraction"] = float(ambiguous.sum() / valid.sum().clamp_min(1))
    else:
        supervised = valid
        bce = masked_bce(logits, mask, supervised, cfg.pos_weight)
        loss = bce
        if cfg.uses_std_head:
            aseg = aseg_loss(
                torch.sigmoid(logits),
                mask,
                out.log_var.float(),
                lam=cfg.lam,
                valid=valid,
                form=cfg.aseg_form,
                soft_clamp=cfg.std_clamp == "soft",
            )
            loss = cfg.aseg_weight * aseg
            if cfg.phase1_loss == "bce+aseg":
                loss = loss + bce
            parts["aseg"] = float(aseg.detach())
    parts["bce"] = float(bce.detach())
    if cfg.dice > 0:
        dice = soft_dice_loss(torch.sigmoid(logits), mask, supervised)
        loss = loss + cfg.dice * dice
        parts["dice"] = float(dice.detach())
    if (out.aux_logits or out.boundary_logits) and cfg.deep_supervision > 0:
        from cirl.models.jtfn import jtfn_deep_supervision_loss

        deep = jtfn_deep_supervision_loss(out, mask, supervised)
        loss = loss + cfg.deep_supervision * deep
        parts["deep"] = float(deep.detach())
    return loss, parts


def _autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to ``dtype`` on ``device``; None runs the block as it is (fp32)."""
    return torch.autocast(
        device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None
    )


@torch.no_grad()
def validate(
    model, data: Path, device: torch.device, autocast_dtype: torch.dtype | None = None
) -> dict:
    """Per-image mean P/R/F1 at 0.5 (the paper's protocol) on the validation split.

    ``autocast_dtype``: the training's autocast precision (bf16 on CPU halves the cost of a
    validation; its F1 only chooses ``best.pt``, the evaluate stage scores in fp32).
    """
    from cirl.data.tiles import TileDataset
    from cirl.inference import predict_prob
    from cirl.metrics import SegmentationMetrics

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
    from cirl.data.tiles import TileDataset

    data, out = Path(data), Path(out)
    phase2 = cfg.loss == "cirl" and cfg.phase == 2
    if phase2 and (init is None or (ambiguity is None and cfg.selection == "offline")):
        raise CirlError(
            "phase 2 needs --init (the phase-I best.pt) and --ambiguity (the `cirl select` "
            "folder; or --selection online, which selects per batch)"
        )
    if not phase2 and ambiguity is not None:
        raise CirlError("--ambiguity is only used by phase 2 (--phase 2 --loss cirl)")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
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
    model = _new_model(cfg)
    from cirl.checkpoint import file_sha256

    provenance = {
        "data": str(data),
        "manifest_sha256": file_sha256(data / "manifest.csv"),
        "init": str(init) if init else None,
        "ambiguity": str(ambiguity) if ambiguity else None,
        "cirl_version": __version__,
    }
    if init is not None:
        payload = load_checkpoint(init)
        if payload["model_config"]["name"] != cfg.model:
            raise CirlError(
                f"--init {init} holds model {payload['model_config']['name']!r}, not {cfg.model!r}"
            )
        model = build_from_checkpoint(payload, std_head=cfg.uses_std_head)
        provenance["init_sha256"] = file_sha256(init)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history: list[dict] = []
    start_epoch, best_f1, best_epoch = 0, -1.0, -1
    last_path, best_path = out / "last.pt", out / "best.pt"
    state = None
    if resume:
        if not last_path.is_file():
            raise CirlError(f"--resume: {last_path} not found; start without --resume")
        state = load_checkpoint(last_path)
        # Only the epoch count may change: a finished run can be extended, nothing else.
        # A key the stored run predates had its default then.
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
    side = cfg.crop or int(train_set[0]["image"].shape[-1])
    chosen = resolve_arithmetic(cfg, device, side, (state or {}).get("provenance"))
    precision, channels_last = chosen["precision"], chosen["channels_last"]
    autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    provenance["precision"] = precision
    provenance["channels_last"] = channels_last
    provenance["arithmetic"] = {k: v for k, v in chosen.items() if k not in ("setting", "machine")}
    from cirl.host import cpu

    provenance["machine"] = {**cpu(), "threads": torch.get_num_threads()}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"] + 1, list(state["history"])
        best_f1, best_epoch = state["best_val_f1"], state["best_epoch"]
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "config.json", {"train": to_dict(cfg), **provenance})

    steps = cfg.steps_per_epoch or math.ceil(len(train_set) / cfg.batch_size)
    with deterministic_algorithms(device):
        for epoch in range(start_epoch, cfg.epochs):
            train_set.set_epoch(epoch)
            sampler = torch.utils.data.RandomSampler(
                train_set,
                replacement=True,
                num_samples=steps * cfg.batch_size,
                generator=_generator(_mix(cfg.seed, epoch, 1)),
            )
            loader = DataLoader(
                train_set,
                batch_size=cfg.batch_size,
                sampler=sampler,
                num_workers=cfg.workers,
                drop_last=True,
                persistent_workers=False,
                pin_memory=device.type == "cuda",
            )
            ci_generator = _generator(_mix(cfg.seed, epoch, 2))
            torch.manual_seed(_mix(cfg.seed, epoch, 3))
            model.train()
            sums: dict[str, float] = {}
            seen, t0 = 0, time.perf_counter()
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(
                    total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False
                )
            for step, batch in enumerate(loader):
                batch = {
                    k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                    for k, v in batch.items()
                }
                image = batch["image"].contiguous(memory_format=memory_format)
                with _autocast(device, autocast_dtype):
                    output = model(image)
                loss, parts = compute_loss(cfg, output, batch, ci_generator)
                if not torch.isfinite(loss):
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
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(cfg, epoch * steps + step, cfg.epochs * steps)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                seen += batch["image"].shape[0]
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
            record = {
                "epoch": epoch + 1,
                **{k: v / steps for k, v in sums.items()},
                "seconds": seconds,
                "images_per_s": seen / seconds,
            }
            if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs:
                t_val = time.perf_counter()
                record["val"] = validate(model, data, device, autocast_dtype)
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
    return TrainResult(out, best_path, last_path, best_epoch, best_f1, history, provenance)
