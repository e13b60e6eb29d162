"""Cardiac Dreamer's run record: config and dataset JSON, the final model, per-patient test errors, figures.

``experiment_config.json`` (the resolved config as JSON), ``dataset_stats.json`` and
``plots/dataset_statistics.png`` at fit start; ``final_model.ckpt`` when training ends;
``plots/training_summary.png`` at fit end; ``test_per_patient.csv`` after testing.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from bioexp.callbacks.plots import log_image
from bioexp.utils.run import write_json

SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def dataset_figure(stats: dict[str, Any], previews: dict[str, list[tuple[str, Any]]], path: Path) -> None:
    """Split ratios, samples per patient (coloured by split), the leakage check, and sample frames."""
    plt = _pyplot()
    fig = plt.figure(figsize=(13, 7.5))
    grid = fig.add_gridspec(2, 3, height_ratios=[1, 1.1])
    ax = fig.add_subplot(grid[0, 0])
    splits = list(stats["samples"])
    ax.bar(splits, [stats["sample_ratios"][s] for s in splits], color=[SPLIT_COLOURS[s] for s in splits])
    for i, s in enumerate(splits):
        ax.text(i, stats["sample_ratios"][s], f"{stats['samples'][s]} samples\n{len(stats['patients'][s])} patients",
                ha="center", va="bottom", fontsize=8)
    ax.set(title=f"split ({stats['mode']}): sample ratios", ylim=(0, 1.0), ylabel="fraction of samples")
    ax = fig.add_subplot(grid[0, 1:])
    owner = {n: s for s, names in stats["patients"].items() for n in names}
    names = sorted(stats["samples_per_patient"])
    ax.bar(range(len(names)), [stats["samples_per_patient"][n] for n in names],
           color=[SPLIT_COLOURS.get(owner.get(n), "grey") for n in names])
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    top = max(stats["samples_per_patient"].values(), default=1)
    ax.set(title="samples per patient (colour = split)", ylabel="transitions", ylim=(0, 1.45 * top))  # legend room
    leak = "no patient in two splits" if stats["no_patient_leakage"] else f"LEAKAGE: {stats['patient_overlap']}"
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in SPLIT_COLOURS.values()],
              labels=list(SPLIT_COLOURS), title=leak, fontsize=8, ncols=3, loc="upper center")
    frames = [(s, n, img) for s, items in previews.items() for n, img in items]
    inner = grid[1, :].subgridspec(1, len(frames))
    for i, (stage, name, image) in enumerate(frames):
        ax = fig.add_subplot(inner[0, i])
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{stage}: {name}", fontsize=8, color=SPLIT_COLOURS[stage])
        ax.axis("off")
    fig.suptitle("Cardiac ultrasound dataset: patient-level splits")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def training_figure(history: dict[str, list[tuple[int, float]]], final: dict[str, float], path: Path) -> None:
    """Loss curves, the main task, the learning rate, loss components, guidance errors, final figures."""
    plt = _pyplot()
    panels = [("total loss", ["train/loss", "val/loss"]), ("main task loss (a'_t1)", ["train/main_task_loss",
                                                                                        "val/main_task_loss"]),
              ("learning rate", ["lr"]),
              ("loss components", ["train/t2_action_loss", "val/t2_action_loss", "train/latent_loss",
                                   "val/latent_loss"]),
              ("guidance error (val)", ["val/guidance_trans_mm", "val/guidance_rot_deg"])]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for ax, (title, names) in zip(axes.flat, panels, strict=False):
        for name in names:
            if history.get(name):
                epochs, values = zip(*history[name], strict=True)
                ax.plot(epochs, values, marker="o", markersize=3, label=name)
        ax.set(title=title, xlabel="epoch")
        if title == "learning rate":
            ax.set_yscale("log")
        if ax.lines:
            ax.legend(fontsize=7)
    ax = axes.flat[-1]
    ax.axis("off")
    text = "\n".join(f"{k}: {v:.4g}" for k, v in sorted(final.items()))
    ax.text(0.0, 1.0, "final metrics\n\n" + text, va="top", family="monospace", fontsize=9)
    fig.suptitle("Cardiac Dreamer training summary")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


class CardiacRunRecord(L.Callback):
    """Writes the run-dir artefacts the Cardiac Dreamer training guide promises (see module docstring)."""

    def __init__(self, dirpath: str, config_file: str | None = None, previews_per_split: int = 2) -> None:
        self.dirpath = Path(dirpath)
        self.config_file = Path(config_file) if config_file else None
        self.previews_per_split = previews_per_split
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        if self.config_file is not None and self.config_file.is_file():
            from omegaconf import OmegaConf

            config = OmegaConf.to_container(OmegaConf.load(self.config_file), resolve=True)
            write_json(self.dirpath / "experiment_config.json", config)
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "statistics"):
            return
        stats = datamodule.statistics()
        write_json(self.dirpath / "dataset_stats.json", stats)
        previews = {s: datamodule.preview(s, self.previews_per_split) for s in stats["patients"]}
        figure = self.dirpath / "plots" / "dataset_statistics.png"
        dataset_figure(stats, previews, figure)
        log_image(trainer, "plots/dataset_statistics", figure)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for name, value in trainer.callback_metrics.items():
            if value.numel() == 1 and not name.endswith("_step"):
                self.history[name.removesuffix("_epoch")].append((trainer.current_epoch, float(value)))
        if trainer.optimizers:
            self.history["lr"].append((trainer.current_epoch, trainer.optimizers[0].param_groups[0]["lr"]))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.dirpath / "final_model.ckpt")  # every rank calls it; rank 0 writes

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.history:
            return
        shown = ("loss", "main_task_loss", "guidance_trans_mm", "guidance_rot_deg")
        final = {k: v[-1][1] for k, v in self.history.items() if k.split("/", 1)[-1] in shown}
        best = trainer.checkpoint_callback
        if best is not None and best.best_model_score is not None:
            final[f"best {best.monitor}"] = float(best.best_model_score)
        final["epochs"] = trainer.current_epoch
        figure = self.dirpath / "plots" / "training_summary.png"
        training_figure(self.history, final, figure)
        log_image(trainer, "plots/training_summary", figure)

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        per_patient = getattr(pl_module, "per_patient", None)
        if not per_patient:
            return
        import pandas as pd

        table = pd.DataFrame.from_dict(per_patient, orient="index").rename_axis("patient")
        table.to_csv(self.dirpath / "test_per_patient.csv", float_format="%.4f")
