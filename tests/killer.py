"""A callback that SIGKILLs its own training process at a given point: a crash that no handler sees."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L


class KillAtStep(L.Callback):
    """Kill the process with SIGKILL after training batch ``step`` (global, counted from 0) has run."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
