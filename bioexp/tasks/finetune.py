"""Fine-tuning a pretrained biosignal encoder on a regression target, with channel inflation.

The encoder (built for this data's channels) is filled from an MSM checkpoint by
:func:`bioexp.nets.inflate.inflate_state_dict`: weights of known channels copied, new channels from the
mean of the pretrained ones plus N(0, ``noise_std``), shared weights copied. ``unfreeze`` stages training:
only the head for ``head_only_epochs``, then the last ``last_n_blocks`` mixer blocks (null: all).
The target is standardised with the training set's mean/std; MAE and RMSE are in the target's units.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection

from bioexp.errors import BioexpError
from bioexp.nets.inflate import inflate_state_dict, load_pretrained
from bioexp.tasks.base import Task, build

log = logging.getLogger(__name__)
Batch = tuple[torch.Tensor, torch.Tensor]


class InflatedRegressor(Task):
    """Encoder ``[B, C, L] -> [B, P, D]`` + head ``-> [B, 1]``, trained with MSE on the standardised target."""

    def __init__(self, encoder: dict[str, Any], head: dict[str, Any], optimizer: dict[str, Any], in_channels: int,
                 input_length: int, channels: list[str], target_mean: float, target_std: float,
                 scheduler: dict[str, Any] | None = None, patch_size: int = 125,
                 pretrained: dict[str, Any] | None = None, unfreeze: dict[str, Any] | None = None) -> None:
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters()
        self.encoder = build({**encoder, "in_channels": in_channels, "context_length": input_length,
                              "patch_size": patch_size})
        self.head = build({**head, "latent_dim": self.encoder.latent_dim, "out_dim": 1})
        self.unfreeze = {"head_only_epochs": 0, "last_n_blocks": None, **(unfreeze or {})}
        if pretrained and pretrained.get("checkpoint"):
            self._load_pretrained(pretrained, channels)
        metrics = MetricCollection({"mae": MeanAbsoluteError(), "rmse": MeanSquaredError(squared=False)})
        self.val_metrics, self.test_metrics = metrics.clone(prefix="val/"), metrics.clone(prefix="test/")

    def _load_pretrained(self, pretrained: dict[str, Any], channels: list[str]) -> None:
        state, hparams = load_pretrained(pretrained["checkpoint"], "encoder.")
        old = pretrained.get("channels") or hparams.get("channels")
        if not old:
            raise BioexpError("the checkpoint does not record its channels; set model.pretrained.channels")
        self.encoder.load_state_dict(inflate_state_dict(state, self.encoder.state_dict(), old, channels,
                                                        pretrained.get("noise_std", 0.01), pretrained.get("seed", 0)))
        new = [c for c in channels if c not in old]
        log.info("Encoder from %s (channels %s) into channels %s%s", pretrained["checkpoint"], old, channels,
                 f"; channel-tied weights of {new} start from the pretrained channels' mean" if new else "")

    @property
    def ddp_find_unused_parameters(self) -> bool:
        """Staged unfreezing: the frozen encoder (or its frozen blocks) gets no gradient for a while."""
        return self.unfreeze["head_only_epochs"] > 0 or self.unfreeze["last_n_blocks"] is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions in the target's units, ``[B]``."""
        return self.head(self.encoder(x)).squeeze(-1) * self.hparams.target_std + self.hparams.target_mean

    def on_train_epoch_start(self) -> None:
        """Staged unfreezing (parameters with no gradient are skipped by the optimiser)."""
        head_only, last_n = self.unfreeze["head_only_epochs"], self.unfreeze["last_n_blocks"]
        frozen = self.current_epoch < head_only or last_n is not None
        self.encoder.requires_grad_(not frozen)
        if self.current_epoch >= head_only and last_n:
            for block in self.encoder.blocks[-last_n:]:
                block.requires_grad_(True)

    def _step(self, batch: Batch, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        hp = self.hparams
        pred = self.head(self.encoder(x)).squeeze(-1).float()
        loss = F.mse_loss(pred, (y.float() - hp.target_mean) / hp.target_std)
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True, batch_size=len(x),
                 sync_dist=stage != "train")
        return loss, pred.detach() * hp.target_std + hp.target_mean

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def _eval_step(self, batch: Batch, stage: str, metrics: MetricCollection) -> None:
        _, pred = self._step(batch, stage)
        metrics.update(pred, batch[1].float())
        self.log_dict(metrics, on_epoch=True, prog_bar=stage == "val")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)


def _channel_names(channels: int | Sequence[str], known: Sequence[str]) -> list[str]:
    """Names for a channel count: the known names first, then ``ch<i>`` for the new ones."""
    if not isinstance(channels, int):
        return list(channels)
    return [*known[:channels], *(f"ch{i}" for i in range(len(known), channels))]


def load_pretrained_with_channel_inflate(checkpoint_path: str | Path, pretrain_channels: int | Sequence[str],
                                         finetune_channels: int | Sequence[str],
                                         model_config: dict[str, Any]) -> InflatedRegressor:
    """The guide's fine-tuning entry point: an :class:`InflatedRegressor` for ``finetune_channels`` whose
    encoder is inflated from the MSM checkpoint trained on ``pretrain_channels`` (counts or names; with
    counts, the checkpoint's recorded names are kept and new channels are named ``ch<i>``).
    ``model_config`` holds the other :class:`InflatedRegressor` arguments (encoder, head, optimizer, ...)."""
    _, hparams = load_pretrained(checkpoint_path, "encoder.")
    recorded = list(hparams.get("channels") or [])
    old = _channel_names(pretrain_channels, recorded if isinstance(pretrain_channels, int)
                         and len(recorded) == pretrain_channels else [])
    new = _channel_names(finetune_channels, old)
    pretrained = {**model_config.get("pretrained", {}), "checkpoint": str(checkpoint_path), "channels": old}
    return InflatedRegressor(**{**model_config, "in_channels": len(new), "channels": new, "pretrained": pretrained})
