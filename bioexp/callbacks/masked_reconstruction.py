"""Masked-signal-modeling figure: each channel's input, the masked spans shaded, and the prediction in them."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from bioexp.callbacks.plots import log_image
from bioexp.callbacks.reconstruction import ValidationFigure
from bioexp.masking import expand_mask


class MaskedReconstructionPlot(ValidationFigure):
    """After each ``every_n_epochs``-th validation epoch (and the last), plot ``n_examples`` validation windows
    with a fixed mask; writes ``plots/masked_reconstruction.png``. Needs ``reconstruct(x, generator)``
    returning ``(masked, x_hat, mask)`` and ``hparams.patch_size`` (:class:`MaskedSignalModeling`)."""

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.due(trainer):
            return
        with torch.no_grad():
            _, x_hat, mask = pl_module.reconstruct(self._batch, torch.Generator().manual_seed(0))
        channels = pl_module.hparams.get("channels") or [f"ch{i}" for i in range(self._batch.shape[1])]
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / "masked_reconstruction.png"
        draw(self._batch.float().cpu(), x_hat.float().cpu(), mask.cpu(), pl_module.hparams.patch_size, channels,
             path, title=f"epoch {trainer.current_epoch}")
        log_image(trainer, "plots/masked_reconstruction", path)


def draw(x: torch.Tensor, x_hat: torch.Tensor, mask: torch.Tensor, patch_size: int, channels: list[str],
         path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Only masked patches are predicted (the loss ignores the decoder's output on visible ones): draw those.
    predicted = x_hat.masked_fill(~expand_mask(mask, x.shape[1], patch_size), float("nan"))
    fig, axes = plt.subplots(x.shape[1], len(x), figsize=(4.5 * len(x), 2.0 * x.shape[1]), squeeze=False)
    for col in range(len(x)):
        for row, name in enumerate(channels):
            ax = axes[row][col]
            for patch in mask[col].nonzero().flatten().tolist():
                ax.axvspan(patch * patch_size, (patch + 1) * patch_size, color="0.85", lw=0)
            ax.plot(x[col, row], color="black", lw=0.8, label="input")
            ax.plot(predicted[col, row], color="tab:red", lw=0.8, label="prediction")
            ax.set_title(f"{title} · example {col} · {name}", fontsize=8)
            ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=6, loc="upper right")
    fig.suptitle("grey: masked patches (zeroed in the encoder's input), red: the model's prediction there", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
