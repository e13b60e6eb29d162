"""Multi-label classification (PTB-XL statements): BCE objective, macro AUROC/AUPRC/F1."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MultilabelAUROC, MultilabelAveragePrecision, MultilabelF1Score

from bioexp.tasks.base import Task, build


class MultiLabelClassifier(Task):
    """Trains ``net`` (logits ``[B, num_classes]``) with BCE; logs ``{train,val,test}/loss`` and
    macro ``auroc``, ``auprc``, ``f1`` per epoch."""

    def __init__(self, net: dict[str, Any], num_classes: int, optimizer: dict[str, Any],
                 scheduler: dict[str, Any] | None = None) -> None:
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters()
        self.net = build(net)
        self.criterion = nn.BCEWithLogitsLoss()
        metrics = MetricCollection({
            "auroc": MultilabelAUROC(num_classes, average="macro"),
            "auprc": MultilabelAveragePrecision(num_classes, average="macro"),
            "f1": MultilabelF1Score(num_classes, average="macro"),
        })
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True,
                 batch_size=len(x), sync_dist=stage != "train")
        return loss, logits

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, metrics: MetricCollection) -> None:
        _, logits = self._step(batch, stage)
        metrics.update(torch.sigmoid(logits.float()), batch[1].int())
        self.log_dict(metrics, on_epoch=True, prog_bar=stage == "val")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)
