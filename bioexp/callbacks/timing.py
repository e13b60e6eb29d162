"""Throughput of the training loop: samples/s, step time, time spent waiting for data, peak GPU memory."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.data import extract_batch_size


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTiming(L.Callback):
    """Times training steps after ``warmup_steps`` (compilation, cuDNN autotuning, worker start-up).

    Data wait is the host time between the end of one step and the start of the next (the loader's
    ``next`` plus the copy to the device); the step time is wall time per step over the measurement windows
    (the training part of each epoch, validation excluded), with the device synchronised only at a window's
    two ends (no sync per step, so asynchronous execution is measured as it runs). ``samples_per_s`` counts
    all DDP ranks; ``epoch_s`` is each epoch's wall time, validation included. Rank 0 writes ``result`` as
    JSON to ``out`` at the end of training. For measurement runs only (the window ends synchronise).
    """

    def __init__(self, warmup_steps: int = 5, out: str | None = None) -> None:
        self.warmup_steps = warmup_steps
        self.out = out
        self.result: dict[str, Any] = {}
        self._steps = 0
        self._measured = 0
        self._samples = 0
        self._wait = 0.0
        self._last_end: float | None = None
        self._window: float | None = None  # start of the open measurement window
        self._elapsed = 0.0
        self._epoch_start = 0.0
        self._epoch_samples = 0
        self.epoch_s: list[float] = []
        self.samples_per_epoch = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start, self._epoch_samples = time.perf_counter(), 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        size = extract_batch_size(batch)
        self._epoch_samples += size
        if self._steps < self.warmup_steps:
            return
        if self._window is None:  # warm-up over, or a new epoch: the window opens with the device idle
            _sync(pl_module.device)
            self._window = time.perf_counter()
        elif self._last_end is not None:
            self._wait += time.perf_counter() - self._last_end
        self._samples += size

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._steps += 1
        if self._window is not None:
            self._measured += 1
        self._last_end = time.perf_counter()

    def _close_window(self, device: torch.device) -> None:
        """Validation and epoch ends are not training steps: the window closes before them."""
        if self._window is not None:
            _sync(device)
            self._elapsed += time.perf_counter() - self._window
            self._window, self._last_end = None, None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_window(pl_module.device)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_window(pl_module.device)
        _sync(pl_module.device)
        self.epoch_s.append(time.perf_counter() - self._epoch_start)
        self.samples_per_epoch = self._epoch_samples * trainer.world_size

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = pl_module.device
        self._close_window(device)
        elapsed, world = self._elapsed, trainer.world_size
        self.result = {
            "steps": self._steps, "measured_steps": self._measured, "world_size": world,
            "step_s": elapsed / self._measured if self._measured else None,
            "samples_per_s": self._samples * world / elapsed if elapsed > 0 else None,
            "data_wait_frac": self._wait / elapsed if elapsed > 0 else None,
            "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
            "epoch_s": self.epoch_s, "samples_per_epoch": self.samples_per_epoch,
            "precision": str(trainer.precision), "device": str(device),
        }
        if self.out and trainer.is_global_zero:
            Path(self.out).parent.mkdir(parents=True, exist_ok=True)
            Path(self.out).write_text(json.dumps(self.result, indent=2) + "\n")
