"""Torch datasets over decoded-signal caches (shared by every fixed-length signal dataset)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from bioexp.data.rpeaks import split_index
from bioexp.utils.fallbacks import warn_fallback


WINDOW_BASELINES = ("none", "median")


class CachedSignalDataset(Dataset):
    """``(signal [C, T], target)`` pairs read from rows of a ``[N, C, T]`` ``.npy`` memmap.

    The memmap is opened lazily in each process, so pickling the dataset for spawned dataloader
    workers or DDP processes sends a path, not gigabytes. Without ``crop`` the whole record is
    returned. With it, one window of ``crop`` samples: ``align="random"`` anywhere, ``"beat"``
    starting ``beat_offset`` seconds before an R peak (so every window holds one centred beat;
    the peaks come from ``peaks``, the memmap of :func:`bioexp.data.rpeaks.cached_r_peaks`, which
    also holds each record's lead statistics, so only the window is read). Training windows are random; with ``random_crop=False``
    (evaluation) they are fixed: the centre, or the beat nearest the centre, or with
    ``eval_stride`` every window at that stride, stacked ``[W, C, crop]``. Keys may be ``(index, item_seed)`` pairs from
    :class:`~bioexp.data.sampling.EpochSampler`, which make random windows reproducible; a plain
    index draws them from torch's RNG. ``window_baseline="median"`` subtracts each lead's median over
    the window: in a beat-centred window that is the isoelectric line, so offsets and slow wander
    are not left for a decoder's waves to model (EP-Prior's P wave otherwise widens into a baseline).
    """

    def __init__(self, path: str | Path, rows: np.ndarray, targets: np.ndarray, crop: int | None = None,
                 normalize: str = "record", mean: np.ndarray | None = None, std: np.ndarray | None = None,
                 align: str = "random", fs: float = 100.0, beat_offset: float = 0.35, random_crop: bool = True,
                 window_baseline: str = "none", peaks: str | Path | None = None,
                 eval_stride: int | None = None) -> None:
        if len(rows) != len(targets):
            raise ValueError(f"{len(rows)} rows but {len(targets)} targets")
        if align not in ("random", "beat"):
            raise ValueError(f"unknown crop alignment {align!r}; choose random or beat")
        if window_baseline not in WINDOW_BASELINES:
            raise ValueError(f"unknown window baseline {window_baseline!r}; choose {' or '.join(WINDOW_BASELINES)}")
        if align == "beat" and peaks is None:
            raise ValueError("beat-aligned windows need the cached R peaks (peaks=...)")
        if peaks is not None and eval_stride is not None:
            raise ValueError("cached R peaks are for single windows, not sliding ones (eval_stride)")
        self.path = Path(path)
        self.rows = np.asarray(rows)
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.float32))
        self.crop, self.normalize, self.mean, self.std = crop, normalize, mean, std
        self.align, self.fs, self.beat_offset, self.random_crop = align, fs, beat_offset, random_crop
        self.window_baseline, self.eval_stride = window_baseline, eval_stride
        self.peaks_path = None if peaks is None else Path(peaks)
        self._signals: np.ndarray | None = None
        self._index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_signals": None, "_index": None}

    @property
    def signals(self) -> np.ndarray:
        if self._signals is None:
            # a plain ndarray view of the map: indexing a np.memmap costs more than the copy it makes
            self._signals = np.load(self.path, mmap_mode="r").view(np.ndarray)
        return self._signals

    @property
    def index(self) -> np.ndarray:
        if self._index is None:
            self._index = np.load(self.peaks_path, mmap_mode="r").view(np.ndarray)
        return self._index

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, item_seed = key if isinstance(key, tuple) else (key, None)
        record = self.signals[self.rows[i]]  # a memmap view: nothing read yet
        peaks = mean = std = None
        if self.peaks_path is not None:  # cached R peaks and record statistics
            peaks, mean, std = split_index(self.index[self.rows[i]])
        length = record.shape[-1]
        if self.eval_stride is None and self.crop is not None and self.crop < length:
            start = self.window_start(length, item_seed, peaks)
            x = np.array(record[:, start : start + self.crop], dtype=np.float32)
        else:
            x = np.array(record, dtype=np.float32)
        if self.normalize == "record":
            if mean is None:
                whole = np.asarray(record, dtype=np.float32)
                mean, std = whole.mean(axis=-1, keepdims=True), whole.std(axis=-1, keepdims=True)
            x = (x - mean) / (std + 1e-6)
        elif self.normalize == "train":
            x = (x - self.mean) / self.std
        if self.eval_stride is not None and not self.random_crop:
            # every window at the stride, as the benchmark's chunked validation set: [W, C, crop]
            x = np.lib.stride_tricks.sliding_window_view(x, self.crop, axis=-1)[:, :: self.eval_stride]
            x = x.transpose(1, 0, 2)
        if self.window_baseline == "median":
            x = x - _median(x)
        return torch.from_numpy(np.ascontiguousarray(x)), self.targets[i]

    def window_start(self, length: int, item_seed: int | None = None, peaks: np.ndarray | None = None) -> int:
        """First sample of the window cut from a record of ``length`` samples (see the class docstring)."""
        assert self.crop is not None
        high = length - self.crop  # last valid start
        candidates = None
        if self.align == "beat":
            starts = peaks - round(self.beat_offset * self.fs)
            starts = starts[(starts >= 0) & (starts <= high)]
            if len(starts):
                candidates = starts
            else:  # no complete beat (asystole, noise): any window
                warn_fallback("beat-aligned crop: no complete beat found in a record; its window is taken anywhere")
        n = high + 1 if candidates is None else len(candidates)
        if not self.random_crop:
            if candidates is None:
                return high // 2
            return int(candidates[np.argmin(np.abs(candidates - high / 2))])
        # An EpochSampler item seed is uniform on [0, 2**62): its residue is a uniform draw (bias < 2**-50),
        # at a fraction of the cost of seeding a generator per item.
        pick = int(torch.randint(0, n, ()).item()) if item_seed is None else item_seed % n
        return pick if candidates is None else int(candidates[pick])


def _median(x: np.ndarray) -> np.ndarray:
    """Median over the last axis, keepdims (``np.median``'s result, without its generic overhead)."""
    n = x.shape[-1]
    half = n // 2
    if n % 2:
        return np.partition(x, half, axis=-1)[..., half : half + 1]
    part = np.partition(x, (half - 1, half), axis=-1)
    return 0.5 * (part[..., half - 1 : half] + part[..., half : half + 1])
