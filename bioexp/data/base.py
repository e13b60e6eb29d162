"""What every bioexp datamodule shares: train/val/test loaders whose randomness depends on (seed, epoch) only."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from bioexp.data.sampling import EpochSampler


class SplitDataModule(L.LightningDataModule):
    """Loaders over ``self.datasets[split]`` built in ``setup``.

    Training order and per-item seeds come from :class:`EpochSampler` (the epoch from the trainer, so a
    resumed fit replays the uninterrupted one). ``seeded_eval`` gives evaluation splits item seeds too
    (in fixed order), for datasets that draw per-item randomness everywhere. Subclasses save ``seed``,
    ``batch_size``, ``num_workers`` and ``pin_memory`` (and optionally ``persistent_workers``) as hparams.
    """

    seeded_eval = False
    datasets: dict[str, Dataset]
    _resume: tuple[int, int] | None = None  # (epoch, batches done in it) from the checkpoint being resumed

    def state_dict(self) -> dict[str, Any]:
        """Where training stands, saved in every checkpoint: the epoch and the batches already trained in it.

        Lightning builds (and, with workers, starts) the first loader of a resumed fit before it tells the
        sampler the epoch, and its ``current_epoch`` then still counts the checkpoint's unfinished epoch;
        so the resumed position is taken from here instead, also for checkpoints written mid-epoch.
        """
        from lightning.pytorch.trainer.states import TrainerFn

        trainer = self.trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return {}
        epoch, done = trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= trainer.num_training_batches:  # saved at the epoch's end: the next one starts afresh
            epoch, done = epoch + 1, 0
        return {"train_epoch": epoch, "train_batches": done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "train_epoch" in state_dict:
            self._resume = (int(state_dict["train_epoch"]), int(state_dict["train_batches"]))

    def _make_loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        hp = self.hparams
        sampler = None
        if shuffle or self.seeded_eval:
            epoch = self.trainer.current_epoch if shuffle and self.trainer is not None else 0
            start = 0
            if shuffle and self._resume is not None:  # the first training loader of a resumed fit
                (epoch, batches), self._resume = self._resume, None
                start = batches * hp.batch_size * self.trainer.world_size  # DDP ranks each took `batches`
            sampler = EpochSampler(len(dataset), seed=hp.seed, epoch=epoch, shuffle=shuffle, start=start)
        # Own generator: creating an iterator draws a worker base seed, which must not shift the
        # global RNG stream that dropout uses (it would, differently, in a resumed run).
        return DataLoader(dataset, batch_size=hp.batch_size, sampler=sampler, num_workers=hp.num_workers,
                          pin_memory=hp.pin_memory and torch.cuda.is_available(),
                          persistent_workers=hp.get("persistent_workers", True) and hp.num_workers > 0,
                          drop_last=shuffle and len(dataset) > hp.batch_size,
                          generator=torch.Generator().manual_seed(hp.seed))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return self._make_loader(self.datasets[split], shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
