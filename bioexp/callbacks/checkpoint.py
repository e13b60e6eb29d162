"""Checkpoints a crash cannot corrupt, and mid-epoch checkpoints for long epochs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from bioexp.errors import BioexpError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file beside it, fsync it, then ``os.replace`` it into place.

    Lightning's own save stages the file in the system temp dir and moves it: across file systems that
    move is a copy, so a kill during it leaves a truncated ``last.ckpt``. Here the old file stays whole
    until the new one is complete. Remote (``scheme://``) paths keep Lightning's transactional upload.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return None


class StepCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` optimizer steps (off when null or 0), nothing else.

    For long epochs: a crash then loses at most N steps, and the resumed fit continues at the next
    batch (the datamodule and :class:`~bioexp.callbacks.seeding.EpochSeed` save where they stand).
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int | None = None) -> None:
        steps = every_n_train_steps or 0
        if steps < 0:
            raise BioexpError(f"callbacks.step_checkpoint.every_n_train_steps must be >= 0 (or null: off), got {steps}")
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, monitor=None, every_n_train_steps=steps,
                         every_n_epochs=0, enable_version_counter=False)

    # ModelCheckpoint writes ``last`` at every epoch end even with every_n_epochs=0; the epoch-level
    # checkpoint callback does that already.
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        return None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        return None
