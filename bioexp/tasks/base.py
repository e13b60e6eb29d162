"""What every task shares: optimiser/scheduler from config, self-describing checkpoints, init from weights."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import get_class, instantiate

from bioexp.errors import BioexpError

log = logging.getLogger(__name__)


def build(config: dict[str, Any], **kwargs: Any) -> Any:
    """Instantiate a plain ``{_target_: ..., **kwargs}`` dict (nets, optimisers, schedulers)."""
    return instantiate(config, _convert_="all", **kwargs)


class Task(L.LightningModule):
    """Base LightningModule: holds nets built from plain config dicts, never live objects.

    Keeping only primitive containers in ``hparams`` is what lets ``Task.load_from_checkpoint``
    rebuild the model with ``weights_only=True`` and without the Hydra config that trained it.
    ``scheduler`` may say ``total_steps: auto`` (filled from the trainer), ``interval``
    (``epoch`` or ``step``) and ``monitor`` (the metric a ReduceLROnPlateau steps on).
    """

    #: DDP must look for parameters without a gradient in this task (see ``bioexp.utils.accel.TaskDDPStrategy``);
    #: tasks whose graph leaves some parameters unused override it.
    ddp_find_unused_parameters: bool = False

    def __init__(self, optimizer: dict[str, Any], scheduler: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.optimizer_config = optimizer
        self.scheduler_config = scheduler
        self.accel: dict[str, Any] = {"compile": False, "channels_last": False}
        self._accel_done = False

    def set_accel(self, compile: bool | dict[str, Any] = False, channels_last: bool = False) -> None:  # noqa: A002
        """Run-time speed options (``model.compile``, ``model.channels_last``): not hyperparameters, so a
        checkpoint loads the same with or without them. ``compile`` may be a dict of ``torch.compile`` options."""
        self.accel = {"compile": compile, "channels_last": channels_last}

    def configure_model(self) -> None:
        """Apply :meth:`set_accel` once, before the strategy moves and wraps the model: the nets are compiled
        (not this LightningModule, whose hooks log and would break graphs)."""
        from bioexp.utils import accel

        if self._accel_done:
            return
        self._accel_done = True
        if self.accel["channels_last"]:
            accel.to_channels_last(self)
        if self.accel["compile"]:
            options = self.accel["compile"] if isinstance(self.accel["compile"], dict) else None
            accel.log.info("torch.compile: %s", ", ".join(accel.compile_nets(self, options)))

    def log(self, name: str, value: Any, *args: Any, sync_dist: bool | None = None, **kwargs: Any) -> None:
        """``self.log`` whose ``sync_dist`` defaults to True outside training: validation/test values are then
        reduced over DDP ranks (a no-op on one process); training values stay per-rank, with no collective
        per step."""
        if sync_dist is None:
            sync_dist = not (self._trainer is not None and self.trainer.training)
        super().log(name, value, *args, sync_dist=sync_dist, **kwargs)

    def configure_optimizers(self) -> Any:
        optimizer = build(self.optimizer_config, params=[p for p in self.parameters() if p.requires_grad])
        if not self.scheduler_config:
            return optimizer
        config = dict(self.scheduler_config)
        interval = config.pop("interval", "epoch")
        monitor = config.pop("monitor", None)  # ReduceLROnPlateau steps on a logged metric
        if config.get("total_steps") == "auto":
            config["total_steps"] = int(self.trainer.estimated_stepping_batches)
        if str(config.get("_target_", "")).endswith("OneCycleLR"):
            _check_one_cycle(config)
        scheduler = build(config, optimizer=optimizer)
        lr_scheduler = {"scheduler": scheduler, "interval": interval}
        if monitor is not None:
            lr_scheduler["monitor"] = monitor
        return {"optimizer": optimizer, "lr_scheduler": lr_scheduler}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record which classes to rebuild, so ``bioexp.evaluate`` needs only the checkpoint."""
        cls = type(self)
        provenance = {"task": f"{cls.__module__}.{cls.__qualname__}"}
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None:
            dm_cls = type(datamodule)
            provenance["datamodule"] = f"{dm_cls.__module__}.{dm_cls.__qualname__}"
        checkpoint["bioexp"] = provenance

    def init_weights_from(self, path: str | Path) -> None:
        """Start from a checkpoint's weights only (``init_from=``): optimiser, schedule and epoch count start fresh.

        For fine-tuning and "train N more epochs"; ``ckpt_path=`` is the exact resume. The checkpoint must be
        of this task class (when it says) with exactly this model's parameter names and shapes.
        """
        import torch

        path = Path(path)
        if not path.is_file():
            raise BioexpError(f"init_from: checkpoint not found: {path} (init_from=<run dir>/checkpoints/last.ckpt)")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError) as exc:  # torch.load on non-ckpts
            reason = " ".join(str(exc).split())[:200]
            raise BioexpError(f"init_from: {path} is not a readable checkpoint ({reason})") from None
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
            raise BioexpError(f"init_from: {path} holds no model weights (no state_dict); pass a Lightning .ckpt")
        mine = f"{type(self).__module__}.{type(self).__qualname__}"
        theirs_task = (ckpt.get("bioexp") or {}).get("task")
        if theirs_task is not None and theirs_task != mine:
            raise BioexpError(f"init_from: {path} is a {theirs_task} checkpoint but this run trains {mine}; "
                              "choose the model= it was trained with")
        ours, theirs = self.state_dict(), ckpt["state_dict"]
        missing, unexpected = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
        shapes = [f"{k} {tuple(theirs[k].shape)} vs {tuple(ours[k].shape)}"
                  for k in sorted(ours.keys() & theirs.keys()) if theirs[k].shape != ours[k].shape]
        if missing or unexpected or shapes:
            parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                     f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
                     f"{len(shapes)} of other shape (e.g. {shapes[0]})" if shapes else ""]
            raise BioexpError(f"init_from: {path} does not fit this model: {', '.join(p for p in parts if p)} "
                              "parameters; use the model settings it was trained with")
        self.load_state_dict(theirs)
        log.info("Initialised %d tensors from %s (fresh optimiser and schedule)", len(theirs), path)


def task_class(path: str) -> type[Task]:
    cls = get_class(path)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"{path} is not a bioexp Task")
    return cls


def _check_one_cycle(config: dict[str, Any]) -> None:
    """OneCycleLR's warm-up ends at step ``pct_start * total_steps - 1``: at exactly 0 torch divides by zero
    (a bare ZeroDivisionError, e.g. a 4-step smoke run at pct_start 0.25); below 0 there is no warm-up."""
    total, pct_start = int(config["total_steps"]), float(config.get("pct_start", 0.3))
    warmup_end = float(pct_start * total) - 1
    what = f"pct_start {pct_start:g} x total_steps {total}"
    if warmup_end == 0:
        raise BioexpError(f"OneCycleLR cannot run a warm-up of one step ({what} = 1); train for more steps "
                          "(trainer.max_steps, trainer.max_epochs, trainer.limit_train_batches) or change "
                          "model.scheduler.pct_start")
    if warmup_end < 0:
        log.warning("OneCycleLR: warm-up under one step (%s): the learning rate starts at its peak", what)
