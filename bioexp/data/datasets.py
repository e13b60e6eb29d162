"""Torch datasets over decoded-signal caches (shared by every fixed-length signal dataset)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset


class CachedSignalDataset(Dataset):
    """``(signal [C, T], target)`` pairs read from rows of a ``[N, C, T]`` ``.npy`` memmap.

    The memmap is opened lazily in each process, so pickling the dataset for spawned dataloader
    workers or DDP processes sends a path, not gigabytes. ``crop`` draws one random window per
    item (training); without it the whole record is returned (evaluation). Keys may be
    ``(index, item_seed)`` pairs from :class:`~bioexp.data.sampling.EpochSampler`, which make the
    crop reproducible; a plain index draws it from torch's RNG.
    """

    def __init__(self, path: str | Path, rows: np.ndarray, targets: np.ndarray, crop: int | None = None,
                 normalize: str = "record", mean: np.ndarray | None = None, std: np.ndarray | None = None) -> None:
        if len(rows) != len(targets):
            raise ValueError(f"{len(rows)} rows but {len(targets)} targets")
        self.path = Path(path)
        self.rows = np.asarray(rows)
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.float32))
        self.crop, self.normalize, self.mean, self.std = crop, normalize, mean, std
        self._signals: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_signals": None}

    @property
    def signals(self) -> np.ndarray:
        if self._signals is None:
            self._signals = np.load(self.path, mmap_mode="r")
        return self._signals

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, item_seed = key if isinstance(key, tuple) else (key, None)
        x = np.array(self.signals[self.rows[i]], dtype=np.float32)
        if self.normalize == "record":
            x = (x - x.mean(axis=-1, keepdims=True)) / (x.std(axis=-1, keepdims=True) + 1e-6)
        elif self.normalize == "train":
            x = (x - self.mean) / self.std
        if self.crop is not None and self.crop < x.shape[-1]:
            high = x.shape[-1] - self.crop + 1
            start = (int(torch.randint(0, high, ()).item()) if item_seed is None
                     else int(np.random.default_rng(item_seed).integers(high)))
            x = x[:, start : start + self.crop]
        return torch.from_numpy(np.ascontiguousarray(x)), self.targets[i]
