"""CSI-Predictor: congestion score per lung zone (6 zones x 5 classes), weighted CE, clinical metrics.

Metrics (unknown class ignored; each stage accumulates torchmetrics confusion matrices and
regressions over the whole epoch):

- per zone and overall: F1 macro and weighted over the scores 0-3 (zones whose true class is
  "unknown" are left out; predicting "unknown" for a gradable zone counts as a miss). Macro averages
  the score classes seen in the targets or predictions, as scikit-learn does;
- overall per-class F1, precision and recall of all five classes, "unknown" (4) included, over every
  zone (as the published code's per-class report);
- CSI average per image (mean score of the gradable zones; predicted: the mean of the zones the
  model grades, or of its best 0-3 score everywhere when it grades none) with MAE, RMSE, Pearson r;
  the same against the labels CSV's own ``csi`` column when the cohort has one (``csi_csv_*``);
- the acute heart failure class of that average (<= 1.3 → 0, <= 2.2 → 1, else 2): accuracy and
  macro precision / recall / F1, and its confusion matrix (kept for the test figure).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError, PearsonCorrCoef
from torchmetrics.classification import MulticlassConfusionMatrix

from bioexp.data.csi import ZONES
from bioexp.nets.csi import CSINet
from bioexp.tasks.base import Task

AHF_THRESHOLDS = (1.3, 2.2)


class WeightedCSILoss(nn.Module):
    """Cross-entropy over all B·zones predictions with class weights [1, 1, 1, 1, unknown_weight].

    Normalised by the summed weights of the targets (``F.cross_entropy``'s weighted mean), so
    down-weighting "unknown" does not shrink the loss of the graded zones.
    """

    def __init__(self, unknown_weight: float = 0.3, num_classes: int = 5) -> None:
        super().__init__()
        self.register_buffer("weight", torch.tensor([1.0] * (num_classes - 1) + [unknown_weight]))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                                           weight=self.weight)


def class_scores(confusion: torch.Tensor, classes: int) -> dict[str, torch.Tensor]:
    """Precision, recall, F1 and support of the first ``classes`` classes of a confusion matrix
    (rows = truth), zero where undefined; ``present`` marks classes seen in targets or predictions."""
    cm = confusion.double()
    tp = cm.diagonal()[:classes]
    predicted, support = cm.sum(0)[:classes], cm.sum(1)[:classes]
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), 0.0)
    recall = torch.where(support > 0, tp / support.clamp(min=1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support,
            "present": (predicted + support) > 0}


def f1_averages(confusion: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Macro (over present classes) and support-weighted F1 of the first ``classes`` classes."""
    s = class_scores(confusion, classes)
    macro = s["f1"][s["present"]].mean() if s["present"].any() else s["f1"].new_zeros(())
    weighted = (s["f1"] * s["support"]).sum() / s["support"].sum().clamp(min=1)
    return macro, weighted


def csi_average(target: torch.Tensor, unknown: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean score of each image's gradable zones, and which images have one."""
    gradable = target != unknown
    count = gradable.sum(1)
    return torch.where(gradable, target, 0).sum(1).float() / count.clamp(min=1), count > 0


def predicted_csi(logits: torch.Tensor, unknown: int) -> torch.Tensor:
    """Mean predicted score of the zones the model grades; its best 0-3 scores if it grades none."""
    pred = logits.argmax(-1)
    graded = pred != unknown
    fallback = logits[..., :unknown].argmax(-1).float().mean(1)
    mean = torch.where(graded, pred, 0).sum(1).float() / graded.sum(1).clamp(min=1)
    return torch.where(graded.any(1), mean, fallback)


def ahf_class(csi: torch.Tensor) -> torch.Tensor:
    """Acute heart failure class of a CSI average: <= 1.3 → 0, <= 2.2 → 1, else 2."""
    return torch.bucketize(csi, torch.tensor(AHF_THRESHOLDS, device=csi.device), right=False)


class CSIMetrics(nn.Module):
    """Epoch accumulators for the metrics of the module docstring; ``compute`` returns named scalars."""

    def __init__(self, num_zones: int = 6, num_classes: int = 5) -> None:
        super().__init__()
        self.unknown = num_classes - 1
        self.zones = nn.ModuleList(MulticlassConfusionMatrix(num_classes, ignore_index=self.unknown)
                                   for _ in range(num_zones))
        self.all_classes = MulticlassConfusionMatrix(num_classes)  # every zone, "unknown" included
        self.mae, self.rmse, self.pearson = MeanAbsoluteError(), MeanSquaredError(squared=False), PearsonCorrCoef()
        self.csv = nn.ModuleDict({"mae": MeanAbsoluteError(), "rmse": MeanSquaredError(squared=False),
                                  "pearson": PearsonCorrCoef()})
        self.ahf = MulticlassConfusionMatrix(len(AHF_THRESHOLDS) + 1)

    def update(self, logits: torch.Tensor, target: torch.Tensor, csv_csi: torch.Tensor | None = None) -> None:
        """``csv_csi``: the labels CSV's own CSI per image (NaN where it has none)."""
        pred = logits.argmax(-1)
        for z, confusion in enumerate(self.zones):
            confusion.update(pred[:, z], target[:, z])
        self.all_classes.update(pred.reshape(-1), target.reshape(-1))
        est = predicted_csi(logits, self.unknown)
        true, valid = csi_average(target, self.unknown)
        if valid.any():
            for metric in (self.mae, self.rmse, self.pearson):
                metric.update(est[valid], true[valid])
            self.ahf.update(ahf_class(est[valid]), ahf_class(true[valid]))
        if csv_csi is not None:
            given = torch.isfinite(csv_csi)
            if given.any():
                for metric in self.csv.values():
                    metric.update(est[given], csv_csi[given].to(est.dtype))

    def compute(self) -> dict[str, torch.Tensor]:
        names = ZONES if len(self.zones) == len(ZONES) else tuple(f"zone{z}" for z in range(len(self.zones)))
        matrices = [c.compute() for c in self.zones]
        out: dict[str, torch.Tensor] = {}
        out["f1_macro"], out["f1_weighted"] = f1_averages(torch.stack(matrices).sum(0), self.unknown)
        for name, cm in zip(names, matrices, strict=True):
            out[f"f1_macro_{name}"], out[f"f1_weighted_{name}"] = f1_averages(cm, self.unknown)
        overall = class_scores(self.all_classes.compute(), self.unknown + 1)
        for c in range(self.unknown + 1):
            for key in ("f1", "precision", "recall"):
                out[f"{key}_{c}"] = overall[key][c]
        if self.mae.total > 0:
            out.update(csi_mae=self.mae.compute(), csi_rmse=self.rmse.compute(), csi_pearson=self.pearson.compute())
            ahf = self.ahf.compute()
            scores = class_scores(ahf, ahf.shape[0])
            present = scores["present"]
            out["ahf_accuracy"] = ahf.diagonal().sum().double() / ahf.sum()
            for key in ("precision", "recall", "f1"):
                out[f"ahf_{key}"] = scores[key][present].mean()
        if self.csv["mae"].total > 0:
            out.update({f"csi_csv_{k}": m.compute() for k, m in self.csv.items()})
        return {k: v.float() for k, v in out.items()}

    def reset(self) -> None:
        for metric in (*self.zones, self.all_classes, self.mae, self.rmse, self.pearson, *self.csv.values(), self.ahf):
            metric.reset()


class CSITask(Task):
    """Trains :class:`~bioexp.nets.csi.CSINet` with :class:`WeightedCSILoss`.

    Logs ``{train,val,test}/loss`` and, for val and test, every metric of :class:`CSIMetrics`
    (``val/f1_weighted``, ``val/csi_mae``, ``test/ahf_accuracy``, ...). ``ahf_confusion[stage]``
    keeps the last AHF confusion matrix for figures.
    """

    def __init__(self, backbone: dict[str, Any], optimizer: dict[str, Any], scheduler: dict[str, Any] | None = None,
                 dropout: float = 0.5, unknown_weight: float = 0.3, num_zones: int = 6, num_classes: int = 5) -> None:
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters()
        self.net = CSINet(backbone, dropout, num_zones, num_classes)
        self.criterion = WeightedCSILoss(unknown_weight, num_classes)
        self.metrics = nn.ModuleDict({stage: CSIMetrics(num_zones, num_classes) for stage in ("val", "test")})
        self.ahf_confusion: dict[str, torch.Tensor] = {}

    @property
    def ddp_find_unused_parameters(self) -> bool:
        """RadDINO's ``mask_token`` (DINOv2 masked-image pretraining) gets no gradient here."""
        return self.hparams.backbone.get("name") == "raddino"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, ...], stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch[:2]
        logits = self(x)
        loss = self.criterion(logits, y)
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True, batch_size=len(x),
                 sync_dist=stage != "train")
        return loss, logits

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def _evaluate(self, batch: tuple[torch.Tensor, ...], stage: str) -> None:
        """Batches are ``(images, zone classes)`` or ``(..., the CSV's csi per image)``."""
        self.metrics[stage].update(self._step(batch, stage)[1].detach(), *batch[1:3])

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _epoch_end(self, stage: str) -> None:
        metrics = self.metrics[stage]
        values = metrics.compute()
        self.log(f"{stage}/f1_weighted", values.pop("f1_weighted"), prog_bar=True, sync_dist=True)
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, sync_dist=True)
        self.ahf_confusion[stage] = metrics.ahf.compute().cpu()
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The checkpoint holds the trained weights: rebuilding it must not look for pretrained ones."""
        super().on_save_checkpoint(checkpoint)
        hparams = copy.deepcopy(dict(checkpoint.get("hyper_parameters", {})))
        if "backbone" in hparams:
            hparams["backbone"].update(pretrained=False, weights_path=None)
            checkpoint["hyper_parameters"] = hparams
