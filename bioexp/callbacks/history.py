"""``training_history.json`` (per-epoch loss curves) and ``training_config.json`` in the run dir."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only


class TrainingHistory(L.Callback):
    """After every training epoch, rewrite the history of each epoch-level metric whose name contains one
    of ``keys`` (all when empty); at fit start, write the task's and the data's hyperparameters."""

    def __init__(self, dirpath: str, keys: tuple[str, ...] = ()) -> None:
        self.dirpath, self.keys = Path(dirpath), tuple(keys)
        self.history: dict[str, list[float | None]] = defaultdict(list)
        self.epochs: list[int] = []

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        config = {"task": type(pl_module).__name__, "model": dict(pl_module.hparams),
                  "data": dict(datamodule.hparams) if datamodule is not None else {},
                  "trainer": {"max_epochs": trainer.max_epochs, "precision": str(trainer.precision),
                              "gradient_clip_val": trainer.gradient_clip_val}}
        self._write("training_config.json", config)

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {name.removesuffix("_epoch"): float(v) for name, v in trainer.callback_metrics.items()
                   if v.numel() == 1 and not name.endswith("_step") and (not self.keys or any(k in name for k in
                                                                                             self.keys))}
        self.epochs.append(trainer.current_epoch)
        for name in set(metrics) | set(self.history):
            self.history[name].extend([None] * (len(self.epochs) - 1 - len(self.history[name])))
            self.history[name].append(metrics.get(name))
        self._write("training_history.json", {"epoch": self.epochs, **dict(sorted(self.history.items()))})

    def _write(self, name: str, payload: dict[str, Any]) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        (self.dirpath / name).write_text(json.dumps(payload, indent=2, default=str) + "\n")
