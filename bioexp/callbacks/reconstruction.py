"""Reconstruction figure: input vs reconstruction, with each wave (P, QRS, T) drawn separately."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from bioexp.callbacks.plots import log_image

LEAD_NAMES = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


class ValidationFigure(L.Callback):
    """Keeps the first ``n_examples`` windows of each validation epoch and says when a figure is due:
    every ``every_n_epochs``-th epoch and the last one (subclasses draw it in ``on_validation_epoch_end``)."""

    def __init__(self, dirpath: str, every_n_epochs: int = 5, n_examples: int = 3) -> None:
        self.dirpath, self.every_n_epochs, self.n_examples = Path(dirpath), every_n_epochs, n_examples
        self._batch: torch.Tensor | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0:
            self._batch = batch[0][: self.n_examples].detach()

    def due(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch
        return (not trainer.sanity_checking and self._batch is not None
                and (epoch % self.every_n_epochs == 0 or epoch == trainer.max_epochs - 1))


class ReconstructionPlot(ValidationFigure):
    """After each ``every_n_epochs``-th validation epoch, plot a few validation windows.

    Works with any task that has ``reconstruct(x) -> (x_hat, components)``; writes
    ``plots/reconstruction.png`` (the latest) and sends it to the image-capable loggers.
    """

    def __init__(self, dirpath: str, every_n_epochs: int = 5, n_examples: int = 3, leads: tuple[int, ...] = (1, 7)):
        super().__init__(dirpath, every_n_epochs, n_examples)
        self.leads = leads

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.due(trainer) or not hasattr(pl_module, "reconstruct"):
            return
        with torch.no_grad():
            x_hat, components = pl_module.reconstruct(self._batch)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / "reconstruction.png"
        draw(self._batch.float().cpu(), x_hat.float().cpu(), {k: v.float().cpu() for k, v in components.items()},
             self.leads, path, title=f"epoch {trainer.current_epoch}")
        log_image(trainer, "plots/reconstruction", path)


def draw(x: torch.Tensor, x_hat: torch.Tensor, components: dict[str, torch.Tensor], leads: tuple[int, ...],
         path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(leads), len(x), figsize=(3.6 * len(x), 2.2 * len(leads)), squeeze=False)
    for col in range(len(x)):
        for row, lead in enumerate(leads):
            ax = axes[row][col]
            ax.plot(x[col, lead], color="black", lw=1.2, label="input")
            ax.plot(x_hat[col, lead], color="tab:red", lw=1.0, label="reconstruction")
            for name, part in components.items():
                ax.plot(part[col, lead], lw=0.8, ls="--", label=name)
            ax.set_title(f"{title} · example {col} · {LEAD_NAMES[lead]}", fontsize=8)
            ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
