"""Learning-rate schedules that the stock torch schedulers do not express in one object."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler


def warmup_cosine_factor(epoch: int, warmup_epochs: int, max_epochs: int) -> float:
    """Multiplier of the peak lr in epoch ``epoch`` (0-based).

    Linear warm-up ``(epoch + 1) / warmup_epochs`` (the first epoch already learns, the last warm-up epoch
    reaches the peak), then cosine decay ``0.5 * (1 + cos(pi * progress))`` over the remaining epochs.
    """
    if epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    progress = min(1.0, (epoch - warmup_epochs) / max(1, max_epochs - warmup_epochs))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineLR(LRScheduler):
    """:func:`warmup_cosine_factor` times each group's initial lr; step once per epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_epochs: int = 10, max_epochs: int = 100,
                 last_epoch: int = -1) -> None:
        if warmup_epochs < 0 or max_epochs < 1:
            raise ValueError(f"need warmup_epochs >= 0 and max_epochs >= 1, got {warmup_epochs} and {max_epochs}")
        self.warmup_epochs, self.max_epochs = warmup_epochs, max_epochs
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        factor = warmup_cosine_factor(self.last_epoch, self.warmup_epochs, self.max_epochs)
        return [base * factor for base in self.base_lrs]
