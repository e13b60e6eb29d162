"""Stop cleanly on a non-finite loss, without a host sync per step; no bad gradient ever reaches the weights."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from bioexp.errors import NonFiniteError


class FiniteLossGuard(L.Callback):
    """Raise :class:`NonFiniteError` when the training loss (or a gradient) became NaN/inf.

    The check stays on the device: each step's loss and gradients only update a device flag, and a step
    whose flag is set has its gradients zeroed (on the device, before clipping and the optimiser step), so
    a NaN never reaches the weights. The host reads the flag every ``check_every_n_steps`` steps, at the
    end of each training epoch and before any checkpoint is saved, and then stops the run; all DDP ranks
    agree before raising, so no rank hangs waiting for another. ``check_every_n_steps=1`` stops at the bad
    step itself (one host sync per step). Between a bad step and the check, stateful optimisers (Adam's
    moments, weight decay) may still move the weights by finite amounts; no checkpoint is written from them.
    Under float16 AMP, inf/NaN *gradients* are the loss scaler's business (it skips those steps itself);
    only the loss is checked there.
    """

    def __init__(self, check_every_n_steps: int = 50) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps
        self._step_bad: torch.Tensor | None = None   # this step's loss was non-finite
        self._first_bad: torch.Tensor | None = None  # (global step, loss, epoch) of the first bad step; -1: none
        self._count: torch.Tensor | None = None      # optimiser steps seen, counted on the device
        self._epoch: torch.Tensor | None = None

    def _reset(self, device: torch.device, start_step: int) -> None:
        self._step_bad = torch.zeros((), dtype=torch.bool, device=device)
        self._first_bad = torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64, device=device)
        self._count = torch.tensor(float(start_step), dtype=torch.float64, device=device)
        self._epoch = torch.zeros((), dtype=torch.float64, device=device)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset(pl_module.device, trainer.global_step)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._epoch is None:
            self._reset(pl_module.device, trainer.global_step)
        self._epoch.fill_(trainer.current_epoch)  # a fill kernel, no copy from the host

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if self._step_bad is None:
            self._reset(loss.device, trainer.global_step)
        self._step_bad = self._step_bad | ~torch.isfinite(loss.detach()).all()
        self._record(loss.detach())

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        bad = self._step_bad
        if grads and not str(trainer.precision).startswith("16"):
            # Under DDP the gradients are already all-reduced: one rank's NaN is every rank's NaN, so all
            # ranks zero the same step and the replicas stay identical.
            norms = torch._foreach_norm(grads)
            bad = bad | ~torch.isfinite(torch.stack(norms)).all()
        self._record(None, bad)
        for grad in grads:
            grad.masked_fill_(bad, 0.0)
        self._step_bad = torch.zeros_like(self._step_bad)
        self._count += 1

    def _record(self, loss: torch.Tensor | None, bad: torch.Tensor | None = None) -> None:
        """Keep the first bad step's (step, loss) on the device."""
        bad = self._step_bad if bad is None else bad
        first = bad & (self._first_bad[0] < 0)
        nan = torch.full_like(self._first_bad[1], float("nan"))
        value = nan if loss is None else loss.to(torch.float64).reshape(-1)[0]
        self._first_bad = torch.where(first, torch.stack([self._count, value, self._epoch]), self._first_bad)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: object,
                           batch_idx: int) -> None:
        if (batch_idx + 1) % self.check_every_n_steps == 0:
            self.check(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.check(trainer)

    def check(self, trainer: L.Trainer) -> None:
        """The host sync: raise if any step since the start of training had a non-finite loss or gradient."""
        if self._first_bad is None:
            return
        bad = bool(self._first_bad[0] >= 0) or bool(self._step_bad)
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        step, loss, epoch = self._first_bad.tolist()
        checkpoints = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        last = next((c.last_model_path or c.best_model_path for c in checkpoints
                     if c.last_model_path or c.best_model_path), "")
        where = f"epoch {int(epoch)}, step {int(step)}" if step >= 0 else "a step of another DDP rank"
        raise NonFiniteError(
            f"training loss became {loss} at {where}; that step's (non-finite) gradients were zeroed before "
            f"the weights were updated (last good checkpoint: "
            f"{last or 'none written yet'}). Lower model.optimizer.lr, set trainer.gradient_clip_val=1.0, "
            "or check the inputs for NaNs")
