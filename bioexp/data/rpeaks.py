"""R peaks of every record, detected once and cached beside the decoded signals.

Beat-aligned windows (EP-Prior's beat recipe) need each record's R peaks. Detecting them in
every ``__getitem__`` cost more than everything else a loader does; here they are detected once
per record from the signal memmap and stored as a second small memmap, which every later run,
epoch and worker reads. Each row also holds the record's per-lead mean and std, so a loader cuts
a 1-s window out of the memmap and z-scores it by its record without reading the whole record.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from bioexp.data.cache import ArrayCache, cached_stack
from bioexp.data.ecg_io import r_peaks

MAX_PEAKS = 64    # per record; the detector's 0.25-s refractory period allows at most 41 in 10 s
DETECTOR = "r_peaks-v1-zscored+stats"  # part of the cache key: change it when the detection changes


def record_index(signal: np.ndarray, fs: float, max_peaks: int = MAX_PEAKS) -> np.ndarray:
    """One cache row for a ``[C, T]`` record: R-peak indices padded with -1 to ``max_peaks``,
    then the per-lead mean and std (``C`` each).

    Peaks are detected on the per-lead z-scored record, so every lead weighs alike whatever its
    gain and whatever normalisation a run chooses (the windows of ``normalize=record`` are unchanged).
    """
    x = np.asarray(signal, dtype=np.float32)
    mean, std = x.mean(axis=-1), x.std(axis=-1)
    found = r_peaks((x - mean[:, None]) / (std[:, None] + 1e-6), fs)[:max_peaks]
    peaks = np.full(max_peaks, -1.0, dtype=np.float32)  # float32: the cache's dtype; indices < 2**24 are exact
    peaks[: len(found)] = found
    return np.concatenate([peaks, mean, std])


def _row_index(signals_path: str, fs: float, row: str) -> np.ndarray:
    return record_index(np.load(signals_path, mmap_mode="r")[int(row)], fs)


def cached_r_peaks(signals: ArrayCache, cache_dir: str | Path, fs: float, workers: int = 0) -> ArrayCache:
    """``[N, MAX_PEAKS + 2C]`` rows of :func:`record_index` for the rows of a ``[N, C, T]`` signal cache.

    Keyed by the signal cache's file (whose name carries its own key) and the detector version.
    """
    n, channels = len(signals.valid), signals.open().shape[1]
    return cached_stack(cache_dir, f"{signals.path.stem}-rpeaks", [str(i) for i in range(n)],
                        (MAX_PEAKS + 2 * channels,), partial(_row_index, str(signals.path), fs),
                        f"{signals.path.name}|{DETECTOR}|{fs}", workers)


def split_index(row: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A cached row's valid peak indices and its per-lead mean and std (``[C, 1]`` each)."""
    peaks, stats = row[:MAX_PEAKS], np.asarray(row[MAX_PEAKS:])
    channels = len(stats) // 2
    return peaks[peaks >= 0].astype(np.int64), stats[:channels, None], stats[channels:, None]
