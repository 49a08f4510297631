"""The training losses and the learning-rate schedule.

:func:`loss_function` gives ``(logits, target, weight) -> loss`` for one of
:data:`~volseg.stages.train.config.LOSSES`, computed in fp32 whatever the autocast precision;
:func:`lr_factor` is the warm-up and cosine schedule, a pure function of the step and of the fraction
of the run done (so that a resumed run continues the same schedule).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from volseg.errors import OptionError
from volseg.stages.train.config import LOSSES

__all__ = ["LossFunction", "loss_function", "lr_factor", "masked_loss", "soft_dice"]

#: ``(logits, target, weight) -> scalar loss``; ``weight`` is the border-weight map (weighted BCE only).
LossFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def soft_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - Dice`` of ``sigmoid(logits)`` and ``target`` over the whole batch, smoothed by 1."""
    p = torch.sigmoid(logits)
    inter = (p * target).sum()
    return 1.0 - (2.0 * inter + 1.0) / (p.sum() + target.sum() + 1.0)


def masked_loss(kind: str) -> LossFunction:
    """``(logits, target, mask) -> loss`` of an affinity model: ``bce`` or ``bce_dice`` over the pairs
    where ``mask`` is 1 (a pair that leaves the patch, or is unknown, does not count), in fp32."""
    if kind not in ("bce", "bce_dice"):
        raise OptionError(f"--loss {kind!r}: affinities train with bce or bce_dice")

    def loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            raise ValueError("affinities: the batch holds no mask of the known pairs")
        logits = logits.float()
        counted = mask.sum().clamp_min(1.0)
        bce = (mask * F.binary_cross_entropy_with_logits(logits, target, reduction="none")).sum() / counted
        if kind == "bce":
            return bce
        p = torch.sigmoid(logits) * mask
        dice = 1.0 - (2.0 * (p * target).sum() + 1.0) / (p.sum() + (target * mask).sum() + 1.0)
        return bce + dice

    return loss


def loss_function(kind: str) -> LossFunction:
    """``(logits, target, weight) -> scalar loss`` for one of :data:`LOSSES`, computed in fp32."""
    if kind not in LOSSES:
        raise OptionError(f"--loss {kind!r}: use one of {', '.join(LOSSES)}")

    def loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        logits = logits.float()
        if kind == "dice":
            return soft_dice(logits, target)
        if kind == "weighted_bce":
            if weight is None:  # the patch dataset draws the map whenever this loss is chosen
                raise ValueError("weighted_bce: the batch holds no border-weight map")
            return (weight * F.binary_cross_entropy_with_logits(logits, target, reduction="none")).mean()
        bce = F.binary_cross_entropy_with_logits(logits, target)
        return bce + soft_dice(logits, target) if kind == "bce_dice" else bce

    return loss


def lr_factor(step: int, progress: float, warmup_steps: int) -> float:
    """Learning-rate multiplier: a linear warm-up, then a cosine from 1 to 0 over the run.

    ``progress`` is the fraction of the run done (of its steps, or of its time budget). The
    warm-up ends after ``warmup_steps`` steps or a tenth of the run, whichever comes first, so
    that short runs still spend most of their time at a useful learning rate.
    """
    warm = min(1.0, max((step + 1) / warmup_steps, 10.0 * progress)) if warmup_steps > 0 else 1.0
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
