"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

Kept as a picklable callable so that the scheduler's state (its step count) round-trips
through a checkpoint and DeepSpeed can drive it like any ``torch.optim.lr_scheduler``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sc_fm.config import TrainConfig


@dataclass(frozen=True)
class WarmupCosine:
    """LR multiplier at optimizer step ``step`` (0-based): ``(step+1)/warmup`` during warmup,
    then a half cosine from 1 down to ``min_ratio`` at ``total`` steps (flat after that)."""

    warmup: int
    total: int
    min_ratio: float

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(self.total - self.warmup, 1)
        progress = min((step - self.warmup) / span, 1.0)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer,
                    train: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule of ``train`` (``warmup_steps``, ``max_steps``, ``min_lr_ratio``) on ``optimizer``."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(train.warmup_steps, train.max_steps, train.min_lr_ratio))
