"""Per-epoch reseeding: each epoch's randomness depends on (seed, epoch) alone."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


class EpochSeed(L.Callback):
    """Reseed torch, numpy and ``random`` at the start of every training epoch.

    Shuffling, dataloader-worker seeds, random crops and dropout then no longer depend on how
    many epochs ran in this process, so a run resumed from ``last.ckpt`` continues exactly as
    the uninterrupted run would have. A checkpoint written mid-epoch also carries the generators'
    states, restored when training starts (Lightning skips the epoch-start hook on such a resume).
    """

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self._saved: dict[str, Any] | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.seed is None:
            return
        # + global_rank: DDP ranks draw different dropout, masks and noise (rank 0 keeps the one-process stream);
        # model init and data splits are seeded before this and stay identical on every rank.
        seed = (self.seed + 1_000_003 * trainer.current_epoch + trainer.global_rank) % 2**32
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        """The generators' states as tensors and plain lists (loadable with ``weights_only=True``)."""
        _, key, pos, has_gauss, gauss = np.random.get_state()
        return {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": [key.tolist(), int(pos), int(has_gauss), float(gauss)],
                "python": list(random.getstate()[1])}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved = state_dict or None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._saved is None:
            return
        state, self._saved = self._saved, None
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        key, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state(("MT19937", np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss))
        random.setstate((3, tuple(state["python"]), None))
