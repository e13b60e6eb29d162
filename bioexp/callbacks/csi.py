"""CSI-Predictor run files: per-epoch training/validation histories and the AHF confusion-matrix figure."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from bioexp.callbacks.plots import log_image

AHF_LABELS = ("no AHF (≤1.3)", "mild (≤2.2)", "severe (>2.2)")


class CSIReport(L.Callback):
    """Writes ``training_history.json`` / ``validation_history.json`` (one record per epoch, rewritten
    every epoch so a stopped run keeps them) and ``plots/ahf_confusion_test.png`` after testing."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.history: dict[str, list[dict[str, float]]] = {"train": [], "val": []}

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for stage, records in self.history.items():
            record = {name.removesuffix("_epoch"): float(v) for name, v in trainer.callback_metrics.items()
                      if name.startswith(f"{stage}/") and v.numel() == 1 and not name.endswith("_step")}
            if record:
                records.append({"epoch": trainer.current_epoch, **record})
                if stage == "train":
                    records[-1]["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        self.dirpath.mkdir(parents=True, exist_ok=True)
        for stage, name in (("train", "training"), ("val", "validation")):
            (self.dirpath / f"{name}_history.json").write_text(json.dumps(self.history[stage], indent=1) + "\n")

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = state_dict["history"]

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        confusion = getattr(pl_module, "ahf_confusion", {}).get("test")
        if confusion is None:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        counts = confusion.numpy()
        fig, ax = plt.subplots(figsize=(4.6, 4))
        ax.imshow(counts, cmap="Blues")
        for (i, j), n in ((ij, counts[ij]) for ij in zip(*counts.nonzero(), strict=True)):
            ax.text(j, i, str(int(n)), ha="center", va="center", color="black")
        ticks = range(len(AHF_LABELS))
        ax.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="true", title="AHF class (CSI average), test")
        ax.set_xticklabels(AHF_LABELS, fontsize=7)
        ax.set_yticklabels(AHF_LABELS, fontsize=7)
        fig.tight_layout()
        path = self.dirpath / "plots" / "ahf_confusion_test.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        log_image(trainer, "plots/ahf_confusion_test", path)
