"""What every bioexp datamodule shares: train/val/test loaders whose randomness depends on (seed, epoch) only."""

from __future__ import annotations

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

    def _make_loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        hp = self.hparams
        sampler = None
        if shuffle or self.seeded_eval:
            epoch = self.trainer.current_epoch if shuffle and self.trainer is not None else 0
            sampler = EpochSampler(len(dataset), seed=hp.seed, epoch=epoch, shuffle=shuffle)
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
