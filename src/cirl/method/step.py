"""One training step's parts: the model built for training, the learning rate at a step, the
autocast context and the loss of a model output (BCE, the ambiguity-aware loss, BCE + CI).
"""

from __future__ import annotations

import math

import torch

from cirl.distributed import global_sum
from cirl.method.train_config import TrainConfig


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
    from cirl.method.losses import aseg_loss, ci_loss, error_ambiguous, masked_bce, soft_dice_loss

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
            normaliser=global_sum(supervised.sum()).clamp_min(1.0),
        )
        loss = bce + cfg.beta * ci
        parts["ci"] = float(ci.detach())
        parts["ambiguous_fraction"] = float(
            global_sum(ambiguous.sum()) / global_sum(valid.sum()).clamp_min(1)
        )
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
