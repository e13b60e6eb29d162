"""Torch datasets over decoded-signal caches (shared by every fixed-length signal dataset)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from bioexp.data.ecg_io import r_peaks
from bioexp.utils.fallbacks import warn_fallback

WINDOW_BASELINES = ("none", "median")


class CachedSignalDataset(Dataset):
    """``(signal [C, T], target)`` pairs read from rows of a ``[N, C, T]`` ``.npy`` memmap.

    The memmap is opened lazily in each process, so pickling the dataset for spawned dataloader
    workers or DDP processes sends a path, not gigabytes. Without ``crop`` the whole record is
    returned. With it, one window of ``crop`` samples: ``align="random"`` anywhere, ``"beat"``
    starting ``beat_offset`` seconds before an R peak (so every window holds one centred beat).
    Training windows are random; with ``random_crop=False`` (evaluation) they are fixed: the
    centre, or the beat nearest the centre. Keys may be ``(index, item_seed)`` pairs from
    :class:`~bioexp.data.sampling.EpochSampler`, which make random windows reproducible; a plain
    index draws them from torch's RNG. ``window_baseline="median"`` subtracts each lead's median over
    the window: in a beat-centred window that is the isoelectric line, so offsets and slow wander
    are not left for a decoder's waves to model (EP-Prior's P wave otherwise widens into a baseline).
    """

    def __init__(self, path: str | Path, rows: np.ndarray, targets: np.ndarray, crop: int | None = None,
                 normalize: str = "record", mean: np.ndarray | None = None, std: np.ndarray | None = None,
                 align: str = "random", fs: float = 100.0, beat_offset: float = 0.35, random_crop: bool = True,
                 window_baseline: str = "none") -> None:
        if len(rows) != len(targets):
            raise ValueError(f"{len(rows)} rows but {len(targets)} targets")
        if align not in ("random", "beat"):
            raise ValueError(f"unknown crop alignment {align!r}; choose random or beat")
        if window_baseline not in WINDOW_BASELINES:
            raise ValueError(f"unknown window baseline {window_baseline!r}; choose {' or '.join(WINDOW_BASELINES)}")
        self.path = Path(path)
        self.rows = np.asarray(rows)
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.float32))
        self.crop, self.normalize, self.mean, self.std = crop, normalize, mean, std
        self.align, self.fs, self.beat_offset, self.random_crop = align, fs, beat_offset, random_crop
        self.window_baseline = window_baseline
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
            start = self.window_start(x, item_seed)
            x = x[:, start : start + self.crop]
        if self.window_baseline == "median":
            x = x - np.median(x, axis=-1, keepdims=True)
        return torch.from_numpy(np.ascontiguousarray(x)), self.targets[i]

    def window_start(self, x: np.ndarray, item_seed: int | None = None) -> int:
        """First sample of the window cut from ``x`` (see the class docstring)."""
        assert self.crop is not None
        high = x.shape[-1] - self.crop  # last valid start
        candidates = np.arange(high + 1)
        if self.align == "beat":
            starts = r_peaks(x, self.fs) - round(self.beat_offset * self.fs)
            starts = starts[(starts >= 0) & (starts <= high)]
            if len(starts):
                candidates = starts
            else:  # no complete beat (asystole, noise): any window
                warn_fallback("beat-aligned crop: no complete beat found in a record; its window is taken anywhere")
        if not self.random_crop:
            return int(candidates[np.argmin(np.abs(candidates - high / 2))])
        pick = (int(torch.randint(0, len(candidates), ()).item()) if item_seed is None
                else int(np.random.default_rng(item_seed).integers(len(candidates))))
        return int(candidates[pick])
