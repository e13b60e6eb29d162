"""Callbacks: the NaN guard keeps the last good checkpoint, epoch seeding, learning-curve plots."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from bioexp.callbacks.guards import FiniteLossGuard
from bioexp.callbacks.plots import LearningCurves
from bioexp.callbacks.seeding import EpochSeed
from bioexp.errors import NonFiniteError


class Regression(L.LightningModule):
    """A linear fit whose loss turns NaN from ``nan_epoch`` on; records one random draw per epoch."""

    def __init__(self, nan_epoch: int | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.nan_epoch = nan_epoch
        self.draws: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        if self.nan_epoch is not None and self.current_epoch >= self.nan_epoch:
            loss = loss * float("nan")
        self.log("train/loss", loss)
        return loss

    def on_train_epoch_start(self) -> None:
        self.draws.append(torch.rand(()).item())

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=16)


def _trainer(tmp_path: Path, callbacks: list, epochs: int) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks)


def test_nan_loss_stops_before_the_update_and_keeps_the_last_good_checkpoint(tmp_path: Path):
    model = Regression(nan_epoch=2)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, monitor="val/loss")
    trainer = _trainer(tmp_path, [FiniteLossGuard(), checkpoint], epochs=5)
    with pytest.raises(NonFiniteError, match=r"training loss became nan at epoch 2, step 8; .*last\.ckpt"):
        trainer.fit(model, _loader(), _loader())
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 1 and saved["global_step"] == 8
    weights = saved["state_dict"]["layer.weight"]
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(model.layer.weight.detach(), weights, rtol=0, atol=0)  # the NaN never reached them


def test_epoch_seed_makes_each_epochs_randomness_depend_on_the_epoch_only(tmp_path: Path):
    first, second = Regression(), Regression()
    _trainer(tmp_path, [EpochSeed(7)], epochs=3).fit(first, _loader())
    torch.manual_seed(999)  # whatever came before does not matter
    _trainer(tmp_path, [EpochSeed(7)], epochs=3).fit(second, _loader())
    assert first.draws == second.draws and len(set(first.draws)) == 3


def test_learning_curves_are_plotted_per_metric_family(tmp_path: Path):
    _trainer(tmp_path, [LearningCurves(str(tmp_path / "plots"))], epochs=3).fit(Regression(), _loader(), _loader())
    png = tmp_path / "plots" / "learning_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
