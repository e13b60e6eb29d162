"""The progress bar: Rich, without a host sync per training step, optionally with the early-stopping patience."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """Rich progress bar that reads the logged values at most every ``metrics_interval_s`` seconds.

    Lightning's bar converts every ``prog_bar`` value to a Python number after each training step: on a GPU
    that is a host sync per step, which stalls the queue of kernels. Here the training values are read again
    only when ``metrics_interval_s`` has passed and at each epoch's last batch (validation and test values
    whenever the bar asks). ``show_patience`` adds ``patience=k/n``: validation epochs without improvement /
    the early-stopping limit.
    """

    def __init__(self, metrics_interval_s: float = 1.0, show_patience: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metrics_interval_s = metrics_interval_s
        self.show_patience = show_patience
        self._metrics: dict[str, Any] | None = None
        self._read_at = float("-inf")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._metrics, self._read_at = super().get_metrics(trainer, pl_module), time.monotonic()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        now = time.monotonic()
        if (self._metrics is None or now - self._read_at >= self.metrics_interval_s or not trainer.training
                or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch):
            self._metrics, self._read_at = super().get_metrics(trainer, pl_module), now
        metrics = dict(self._metrics)
        stopper = trainer.early_stopping_callback
        if self.show_patience and stopper is not None:
            metrics["patience"] = f"{stopper.wait_count}/{stopper.patience}"
        return metrics
