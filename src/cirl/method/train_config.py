"""The training stage's parameters (:class:`TrainConfig`, one dataclass for both phases and the
BCE baseline) and what a run returns (:class:`TrainResult`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


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
            saturate: :func:`cirl.method.losses.aseg_loss`).
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
        nproc: data-parallel processes (DDP launched by ``torchrun``; one GPU each on CUDA,
            gloo on CPU). Each global batch of ``batch_size`` (a multiple of ``nproc``) is split
            across them and every loss and batch-norm statistic is pooled over the global
            batch, so the run trains what one process would, up to float rounding
            (docs/cluster.md, "Data-parallel training").
        amp: mixed precision on CUDA (float16 autocast with a gradient scaler; ignored on CPU).
        precision: on CPU, ``fp32``, ``bf16`` (bfloat16 autocast of the forward pass, fp32
            weights, optimizer and loss) or ``auto`` (the faster of the two for this run's
            model, batch and crop, timed on this machine: :mod:`cirl.method.arithmetic`; bf16 only
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
    nproc: int = 1
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
            "nproc": self.nproc >= 1 and self.batch_size % self.nproc == 0,
            "precision": self.precision in ("auto", "fp32", "bf16"),
            "channels_last": self.channels_last in (True, False, "auto"),
            "val_every": self.val_every >= 1,
        }
        bad = [key for key, ok in checks.items() if not ok]
        if bad == ["nproc"] and self.nproc >= 1:
            raise ValueError(
                f"key 'nproc' ({self.nproc}) must divide batch_size ({self.batch_size}): each "
                "data-parallel process takes an equal part of the global batch"
            )
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
