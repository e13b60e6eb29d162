"""Stop cleanly on a non-finite loss, before it reaches the weights or a checkpoint."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from bioexp.errors import NonFiniteError


class FiniteLossGuard(L.Callback):
    """Raise :class:`NonFiniteError` when the training loss is NaN/inf.

    Checked before ``backward``, so the optimiser never steps on a bad gradient and the last
    checkpoint on disk stays the last good one; all DDP ranks agree before raising, so no rank
    hangs waiting for another.
    """

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        checkpoints = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        last = next((c.last_model_path or c.best_model_path for c in checkpoints
                     if c.last_model_path or c.best_model_path), "")
        raise NonFiniteError(
            f"training loss became {loss.detach().float().item()} at epoch {trainer.current_epoch}, "
            f"step {trainer.global_step}; stopped before the weights were updated "
            f"(last good checkpoint: {last or 'none written yet'}). Lower model.optimizer.lr, "
            "set trainer.gradient_clip_val=1.0, or check the inputs for NaNs")
