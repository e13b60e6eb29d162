"""Learning curves written to the run's ``plots/`` and sent to the image-capable loggers."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only


class LearningCurves(L.Callback):
    """Plot every epoch-level scalar (``train/loss`` next to ``val/loss``, ...) at the end of fit."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for name, value in trainer.callback_metrics.items():
            if value.numel() == 1 and not name.endswith("_step"):
                self.history[name.removesuffix("_epoch")].append((trainer.current_epoch, float(value)))

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.history:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        families: dict[str, list[str]] = defaultdict(list)
        for name in sorted(self.history):
            families[name.split("/", 1)[-1]].append(name)
        fig, axes = plt.subplots(1, len(families), figsize=(4 * len(families), 3.2), squeeze=False)
        for ax, (metric, names) in zip(axes[0], families.items(), strict=True):
            for name in names:
                epochs, values = zip(*self.history[name], strict=True)
                ax.plot(epochs, values, marker="o", label=name)
            ax.set(title=metric, xlabel="epoch")
            ax.legend(fontsize=7)
        fig.tight_layout()
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / "learning_curves.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        log_image(trainer, "plots/learning_curves", path)


def log_image(trainer: L.Trainer, key: str, path: Path) -> None:
    """Send a saved figure to W&B and TensorBoard loggers, whichever are active."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)])
        elif isinstance(logger, TensorBoardLogger):
            import matplotlib.image as mpimg

            logger.experiment.add_image(key, mpimg.imread(path)[..., :3], trainer.global_step, dataformats="HWC")
