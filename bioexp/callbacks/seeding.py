"""Per-epoch reseeding: each epoch's randomness depends on (seed, epoch) alone."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch


class EpochSeed(L.Callback):
    """Reseed torch, numpy and ``random`` at the start of every training epoch.

    Shuffling, dataloader-worker seeds, random crops and dropout then no longer depend on how
    many epochs ran in this process, so a run resumed from ``last.ckpt`` continues exactly as
    the uninterrupted run would have.
    """

    def __init__(self, seed: int | None) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.seed is None:
            return
        # + global_rank: DDP ranks draw different dropout, masks and noise (rank 0 keeps the one-process stream);
        # model init and data splits are seeded before this and stay identical on every rank.
        seed = (self.seed + 1_000_003 * trainer.current_epoch + trainer.global_rank) % 2**32
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
