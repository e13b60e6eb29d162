"""A progress bar that also shows the early-stopping patience counter (``patience=3/10``)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class PatienceProgressBar(RichProgressBar):
    """Rich progress bar plus ``patience``: validation epochs without improvement / the limit."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        stopper = trainer.early_stopping_callback
        if stopper is not None:
            metrics["patience"] = f"{stopper.wait_count}/{stopper.patience}"
        return metrics
