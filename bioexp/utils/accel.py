"""The GPU path: fast defaults, torch.compile of the nets, DDP per study, safe launches and data preparation.

Nothing here needs a GPU to be imported or tested: every CUDA-only setting is a no-op on CPU.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, OmegaConf
from torch import nn

from bioexp.errors import BioexpError

log = logging.getLogger("bioexp")

# Environment variables that say an external launcher (torchrun, SLURM) started this process as one rank.
EXTERNAL_LAUNCH_VARS = ("TORCHELASTIC_RUN_ID", "SLURM_PROCID")


def enable_fast_gpu_math() -> None:
    """TF32 matmuls and convolutions, and cuDNN autotuning: the fast settings on Ampere+ GPUs.

    ``set_float32_matmul_precision('high')`` only changes fp32 matmuls on CUDA (no-op on CPU); mixed-precision
    runs are unaffected. ``cudnn.benchmark`` picks the fastest convolution algorithm per input shape (shapes
    are fixed per study, so it tunes once).
    """
    if not torch.cuda.is_available():
        return
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


def auto_workers(fallback: int = 2, cap: int = 8) -> int:
    """Loader workers sized from the CPUs this process may use: on a CUDA machine, the CPUs per GPU minus one
    (the main process), at most ``cap``; on a machine without CUDA ``fallback`` (CPU runs share cores with
    the training itself)."""
    if not torch.cuda.is_available():
        return fallback
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_gpu = cpus // max(torch.cuda.device_count(), 1)
    return max(1, min(cap, per_gpu - 1))


def trained_children(task: nn.Module) -> list[tuple[str, nn.Module]]:
    """The task's nets: direct children that own parameters and are not torchmetrics metrics."""
    from torchmetrics import Metric

    return [(name, child) for name, child in task.named_children()
            if not isinstance(child, Metric) and any(True for _ in child.parameters())]


def compile_nets(task: nn.Module, options: dict[str, Any] | None = None) -> list[str]:
    """``torch.compile`` each net of the task in place (``nn.Module.compile``), not the LightningModule.

    Compiling the nets leaves ``self.log`` and the other Lightning hooks eager (they break graphs), keeps the
    state-dict keys unchanged (checkpoints load with or without compile), and also covers tasks that call
    their encoder directly instead of ``forward``. Returns the names of the compiled nets.
    """
    names = []
    for name, child in trained_children(task):
        child.compile(**(options or {}))
        names.append(name)
    return names


def to_channels_last(task: nn.Module) -> None:
    """NHWC memory layout for the 2-D nets (Tensor Cores read it without transposes); CUDA only."""
    if torch.cuda.is_available():
        for _, child in trained_children(task):
            child.to(memory_format=torch.channels_last)


class TaskDDPStrategy(DDPStrategy):
    """DDP whose ``find_unused_parameters`` comes from the task (``Task.ddp_find_unused_parameters``).

    Plain DDP crashes when a parameter gets no gradient (a projection head with its loss weight at 0, a
    frozen encoder during staged unfreezing, a backbone's mask token); finding unused parameters costs a
    graph traversal per step, so only the tasks that need it ask for it. ``find_unused_parameters`` given
    explicitly (not ``None``) overrides the task.
    """

    def __init__(self, *args: Any, find_unused_parameters: bool | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._find_unused_override = find_unused_parameters

    def configure_ddp(self) -> None:
        wanted = self._find_unused_override
        if wanted is None:
            wanted = bool(getattr(self.lightning_module, "ddp_find_unused_parameters", False))
        self._ddp_kwargs["find_unused_parameters"] = wanted
        super().configure_ddp()


def _trainer_is_distributed(trainer_cfg: DictConfig) -> bool:
    strategy = trainer_cfg.get("strategy")
    if isinstance(strategy, DictConfig):
        target = str(strategy.get("_target_", ""))
        spawn = strategy.get("start_method") in ("spawn", "fork", "forkserver")
        return "DDP" in target and not spawn
    name = str(strategy or "auto")
    devices = trainer_cfg.get("devices", 1)
    many = devices in (-1, "auto") or (isinstance(devices, int) and devices > 1) or isinstance(devices, list)
    return (name.startswith("ddp") and "spawn" not in name and "fork" not in name) or (name == "auto" and many)


def check_launch(cfg: DictConfig, multirun: bool) -> None:
    """Refuse a Hydra multirun with Lightning-launched DDP ranks: each rank would re-run the command line
    and start its own sweep (Lightning issue #11300). Under torchrun or SLURM the ranks exist before Hydra
    starts, and every rank runs the same sweep in lockstep (see docs/gpu.md)."""
    if not multirun or not _trainer_is_distributed(cfg.trainer):
        return
    if any(os.environ.get(v) for v in EXTERNAL_LAUNCH_VARS):
        return
    raise BioexpError("a multirun (-m, hparams_search=, *_cv) cannot launch its own DDP ranks (each rank would "
                      "start its own sweep); launch the ranks with torchrun or srun (docs/gpu.md), or use "
                      "trainer=gpu per trial")


@contextmanager
def node_lock(key: Any, timeout: float = 3600.0) -> Iterator[None]:
    """A lock shared by the processes of one machine (torchrun/SLURM ranks): one rank prepares data at a
    time; the next finds the files written and the caches built (``prepare_data`` is idempotent)."""
    from filelock import FileLock

    digest = hashlib.sha1(repr(key).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"bioexp-prepare-{digest}.lock"
    with FileLock(str(path), timeout=timeout):
        yield


def prepare_data_once(datamodule: Any, data_cfg: DictConfig) -> None:
    """``datamodule.prepare_data()`` behind a node-wide lock keyed by the data config."""
    with node_lock(OmegaConf.to_yaml(data_cfg, resolve=True)):
        datamodule.prepare_data()
