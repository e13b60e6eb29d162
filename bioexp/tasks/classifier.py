"""Multi-label classification (PTB-XL statements): BCE objective, macro AUROC/AUPRC/F1."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from torchmetrics import CatMetric, MetricCollection
from torchmetrics.classification import MultilabelAUROC, MultilabelAveragePrecision, MultilabelF1Score

from bioexp.metrics.bootstrap import bootstrap_auroc, interval
from bioexp.tasks.base import Task, build

log = logging.getLogger(__name__)
AGGREGATIONS = ("max", "mean")


class MultiLabelClassifier(Task):
    """Trains ``net`` (logits ``[B, num_classes]``) with BCE; logs ``{train,val,test}/loss`` and
    macro ``auroc``, ``auprc``, ``f1`` per epoch.

    Evaluation batches of windows ``[B, W, C, L]`` (sliding windows of each record) are scored
    window by window and each record's probabilities aggregated over its windows
    (``window_aggregate``: ``max`` as the PTB-XL benchmark, or ``mean``); the loss is over windows
    (the benchmark's ``valid_loss``). Rows without any label (unlabelled records, all-zero targets)
    enter neither loss nor metrics; ``{val,test}/n_labelled`` and ``n_unlabelled`` count them.
    After testing, ``bootstrap`` resamples of the test records give ``interval_metrics``:
    ``test/auroc_ci95`` (2.5-97.5 % quantiles) and ``test/auroc_ci90`` (5-95 %, the benchmark's).
    """

    def __init__(self, net: dict[str, Any], num_classes: int, optimizer: dict[str, Any],
                 scheduler: dict[str, Any] | None = None, window_aggregate: str = "max",
                 bootstrap: int = 100, bootstrap_seed: int = 0) -> None:
        super().__init__(optimizer, scheduler)
        if window_aggregate not in AGGREGATIONS:
            raise ValueError(f"unknown window_aggregate {window_aggregate!r}; choose {' or '.join(AGGREGATIONS)}")
        self.save_hyperparameters()
        self.net = build(net)
        metrics = MetricCollection({
            "auroc": MultilabelAUROC(num_classes, average="macro"),
            "auprc": MultilabelAveragePrecision(num_classes, average="macro"),
            "f1": MultilabelF1Score(num_classes, average="macro"),
        })
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.test_probs, self.test_targets = CatMetric(), CatMetric()
        self.interval_metrics: dict[str, list[float]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor]:
        """Loss over labelled rows, each record's aggregated probabilities, and the labelled mask."""
        x, y = batch
        labelled = y.any(dim=-1)
        if x.ndim == 4:  # [B, W, C, L]: every window of each record
            logits = self(x.flatten(0, 1)).unflatten(0, x.shape[:2])
            target = y[:, None].expand_as(logits)
            probs = torch.sigmoid(logits.float())
            probs = probs.amax(dim=1) if self.hparams.window_aggregate == "max" else probs.mean(dim=1)
        else:
            logits, target = self(x), y
            probs = torch.sigmoid(logits.float())
        # The mean BCE of the labelled records, without a host sync (no boolean indexing, no branch on the data);
        # a batch of unlabelled records only gives a zero loss that keeps the graph.
        per_record = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
        per_record = torch.where(labelled, per_record.flatten(1).mean(1), 0.0)
        n_labelled = labelled.sum()
        loss = per_record.sum() / n_labelled.clamp(min=1)
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True,
                 batch_size=n_labelled.clamp(min=1), sync_dist=stage != "train")
        return loss, probs, labelled

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, metrics: MetricCollection) -> None:
        _, probs, labelled = self._step(batch, stage)
        y = batch[1]
        metrics.update(probs[labelled], y[labelled].int())
        self.log_dict(metrics, on_epoch=True, prog_bar=stage == "val")
        for name, n in (("n_labelled", labelled.sum()), ("n_unlabelled", (~labelled).sum())):
            self.log(f"{stage}/{name}", n.float(), on_step=False, on_epoch=True, reduce_fx="sum", sync_dist=True)
        if stage == "test":
            self.test_probs.update(probs[labelled])
            self.test_targets.update(y[labelled])

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def on_test_epoch_end(self) -> None:
        """Bootstrap intervals of the test macro AUROC (``interval_metrics``, written to metrics.json)."""
        if not self.hparams.bootstrap:
            return
        probs = self.test_probs.compute().cpu().numpy()
        y = self.test_targets.compute().cpu().numpy()
        self.test_probs.reset()
        self.test_targets.reset()
        try:
            values = bootstrap_auroc(y, probs, self.hparams.bootstrap, self.hparams.bootstrap_seed)
        except ValueError as exc:
            log.warning("No bootstrap interval for test/auroc: %s", exc)
            return
        self.interval_metrics = {"test/auroc_ci95": interval(values, 0.95), "test/auroc_ci90": interval(values, 0.90)}
        log.info("test/auroc bootstrap (%d resamples of %d records): 95%% %s, 90%% %s (mean %.4f)", len(values),
                 len(y), *(np.round(v, 4).tolist() for v in self.interval_metrics.values()), values.mean())
